"""harness/launch.py, the Modal launcher, offline and without Modal credentials: the app and its parts, the
recipe -> GPU mapping and its errors, the cache filled before the GPUs start, the container's work run here on CPU
(volumes faked), results coming home, the locked GPU stack, and that a bad request fails before any call to Modal."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import modal
import modal._cluster
import modal.experimental
import pytest
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

import harness.launch as launch_module
from harness import environment
from harness.environment import GIT_ENV, git_state
from harness.errors import HarnessError
from harness.launch import (
    CLUSTER_GPU_TYPES,
    GPU_TYPES,
    HUB_OFFLINE,
    MODAL_GPU_ENV,
    TRAINERS,
    LaunchError,
    LaunchSpec,
    bring_home,
    check_single_set,
    cluster_role,
    fetch_command,
    fetch_results,
    launch_spec,
    nccl_transport,
    prefetch_model,
    run_node,
    settle_interrupted_swaps,
    start_run,
    timeout_seconds,
)
from harness.launcher import MachineRole, RunFailed, RunInterrupted
from harness.recipe import load_recipe
from harness.results import result_path, write_new_json

REPO = Path(__file__).resolve().parents[1]
SMOKE = "minilm-banking77-cpu"
FAST = "train.epochs=1 data.max_train_samples=64 data.max_eval_samples=64 hardware.device=auto"


def test_importing_the_module_builds_the_app_image_volumes_and_functions():
    assert isinstance(launch_module.app, modal.App)
    assert isinstance(launch_module.image, modal.Image)
    assert all(isinstance(v, modal.Volume) for v in (launch_module.hf_cache, launch_module.runs))
    assert all(isinstance(f, modal.Function) for f in TRAINERS.values())
    assert TRAINERS == {1: launch_module.train, 2: launch_module.train_2_nodes, 4: launch_module.train_4_nodes}
    assert isinstance(launch_module.fill_cache, modal.Function)


def test_gpu_containers_are_single_use_and_read_the_hub_cache_offline():
    """A retried attempt gets a fresh container; the CPU function that fills the cache is the one with no GPU."""
    for function in TRAINERS.values():
        info = function.info()  # the options the function was defined with, read without a Modal call
        assert info.single_use_containers and info.max_retries == 3
        assert set(info.volumes) == {"/cache/hf", "/runs"}
    assert [TRAINERS[n].info().cluster_info.size for n in (2, 4)] == [2, 4]
    assert all(TRAINERS[n].info().cluster_info.rdma for n in (2, 4))
    assert launch_module.GPU_CONTAINER["env"] == HUB_OFFLINE == {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    filler = launch_module.fill_cache.info()
    assert filler.gpus == [] and set(filler.volumes) == {"/cache/hf"} and filler.max_retries == 3


def test_modal_run_help_lists_the_options_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")} | {
        "MODAL_CONFIG_PATH": str(tmp_path / "none.toml")
    }
    modal_cli = Path(sys.executable).with_name("modal")
    out = subprocess.run([str(modal_cli), "run", "harness/launch.py", "--help"], check=False, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for option in ("--recipe", "--set", "--gpu", "--timeout-hours", "--secrets", "--results-dir"):
        assert option in out.stdout
    assert "--fetch" not in out.stdout  # `modal run` would build the image: `python -m harness.launch --fetch`


# --------------------------------------------------------------------------- recipe -> GPUs and launch


@pytest.mark.parametrize(
    ("overrides", "gpu", "expected", "says"),
    [
        ([], "", LaunchSpec("A100-40GB:1", 1, 1, None), "one process"),  # the recipe's own hardware.gpu
        (["hardware.num_processes=4"], "a100-80gb:4", LaunchSpec("A100-80GB:4", 1, 4, None), "launch, 4 processes"),
        (["hardware.num_processes=8", "hardware.deepspeed=zero2"], "H100:8", LaunchSpec("H100:8", 1, 8, "zero2"),
         "8 processes, DeepSpeed zero2"),
        (["hardware.num_processes=16", "hardware.num_machines=2"], "H100:8", LaunchSpec("H100:8", 2, 16, None),
         "2 nodes of H100:8 (modal.clustered): accelerate launch, 16 processes, 8 on each node"),
        (["hardware.gpu=H200:4", "hardware.num_processes=4"], "", LaunchSpec("H200:4", 1, 4, None), "4 processes"),
        (["model.attn_implementation=flash_attention_2"], "", LaunchSpec("A100-40GB:1", 1, 1, None), "one process"),
    ],
)  # fmt: skip
def test_a_recipe_maps_to_a_gpu_spec_and_a_launch(overrides, gpu, expected, says):
    spec = launch_spec(load_recipe("modernbert-emotion-bf16", overrides), gpu)
    assert spec == expected
    assert says in spec.describe()
    assert TRAINERS[spec.nodes] is {1: launch_module.train, 2: launch_module.train_2_nodes}[spec.nodes]


@pytest.mark.parametrize(
    ("recipe", "overrides", "gpu", "says"),
    [
        ("modernbert-emotion-bf16", [], "X100", "valid types: " + ", ".join(GPU_TYPES)),
        ("modernbert-emotion-bf16", [], "H100:4", "--set hardware.num_processes=4"),
        ("modernbert-emotion-bf16", [], "A10:8", "must be 1 to 4 for A10"),
        ("modernbert-emotion-bf16", [], "H100:two", "the count after ':'"),
        ("modernbert-emotion-bf16", ["hardware.num_processes=8", "hardware.num_machines=2"], "H100:4",
         "--gpu H100:8 --set hardware.num_processes=16"),
        ("modernbert-emotion-bf16", ["hardware.num_processes=24", "hardware.num_machines=3"], "H100:8", "not 3"),
        ("modernbert-emotion-bf16", ["hardware.num_processes=16", "hardware.num_machines=2"], "T4:8",
         "Modal clusters are made of " + ", ".join(CLUSTER_GPU_TYPES) + " machines"),
        ("modernbert-emotion-bf16", ["model.attn_implementation=flash_attention_2"], "T4",
         "compute capability 8.0 or newer and T4 is 7.5; pass --gpu L4"),
        ("mbert-multilingual-csv", [], "", "hardware.gpu: the recipe names no Modal GPU"),
        ("mbert-multilingual-csv", [], "T4", "modal volume put harness-runs data/train.csv data/train.csv"),
        (SMOKE, [], "T4", "--set hardware.device=cuda"),
        (SMOKE, ["hardware.device=auto", "data.test_file=tests/data/banking77_10/nope.csv"], "T4", "does not exist"),
    ],
)  # fmt: skip
def test_a_launch_that_cannot_work_says_how_to_fix_it(recipe, overrides, gpu, says):
    with pytest.raises(LaunchError) as error:
        launch_spec(load_recipe(recipe, overrides), gpu)
    assert says in str(error.value)


def test_timeout_and_repeated_set_flags_are_checked():
    assert timeout_seconds(1.5) == 5400
    for hours in (0, 25):
        with pytest.raises(LaunchError, match="--timeout-hours"):
            timeout_seconds(hours)
    check_single_set(["modal", "run", "harness/launch.py", "--set", "a=1 b=2"])
    with pytest.raises(LaunchError, match="one --set"):
        check_single_set(["modal", "run", "harness/launch.py", "--set", "a=1", "--set=b=2"])


@pytest.fixture
def no_modal_calls(monkeypatch):
    """Any call that would reach Modal fails the test."""

    def reached(*args, **kwargs):
        raise AssertionError("a Modal call was made")

    for name in ("remote", "spawn", "with_options"):
        monkeypatch.setattr(modal.Function, name, reached)
    monkeypatch.setattr(modal.Secret, "from_name", reached)


@pytest.mark.parametrize(
    ("recipe", "overrides", "gpu", "says"),
    [
        (
            "minilm-banking77-gpu",
            "",
            "",
            "no recipe named 'minilm-banking77-gpu'; did you mean 'minilm-banking77-cpu'?",
        ),
        ("modernbert-emotion-bf16", "train.epohcs=1", "", "did you mean 'train.epochs'?"),
        ("modernbert-emotion-bf16", "", "X100", "not a Modal GPU type"),
        ("modernbert-emotion-bf16", "", "H100:2", "--set hardware.num_processes=2"),
        ("", "", "", "--recipe: required"),
    ],
)
def test_a_bad_request_fails_before_any_modal_call(no_modal_calls, recipe, overrides, gpu, says):
    with pytest.raises(SystemExit) as stop:
        launch_module.main(recipe=recipe, set=overrides, gpu=gpu)
    assert says in str(stop.value.code)


# --------------------------------------------------------------------------- the container's work, here


class RecordingVolume:
    """A mounted modal.Volume's reload and commit, recorded in order."""

    def __init__(self):
        self.calls = []

    def reload(self):
        self.calls.append("reload")

    def commit(self):
        self.calls.append("commit")


@pytest.mark.filterwarnings("ignore:The fill_cache function is executing locally")
def test_the_container_body_runs_the_smoke_recipe_and_its_result_comes_home(tmp_path, monkeypatch, capsys):
    """main() as `modal run` calls it, with Modal replaced by the containers' bodies run here on CPU; volumes in
    tmp (their reloads and commits recorded)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(MODAL_GPU_ENV, "restored after the test")
    calls, resumes, sent_git, real_launch = [], [], [], launch_module.launch
    hf_volume, runs_volume = RecordingVolume(), RecordingVolume()

    def launch_spy(plan, role=None, resume=False):
        resumes.append(resume)
        return real_launch(plan, role, resume=resume)

    def remote(recipe, run_id, gpu, git):
        monkeypatch.setenv("MODAL_TASK_ID", "ta-test")  # as in a Modal container: the result records the GPU
        sent_git.append(git)
        return run_node(recipe, run_id, gpu, MachineRole(), runs_volume, runs_dir=tmp_path / "runs", git=git)

    def with_options(self, **kwargs):
        filling = self is launch_module.fill_cache
        calls.append(("fill_cache" if filling else "train", kwargs))
        return SimpleNamespace(remote=launch_module.fill_cache.local if filling else remote)

    monkeypatch.setattr(launch_module, "launch", launch_spy)
    monkeypatch.setattr(launch_module, "hf_cache", hf_volume)
    monkeypatch.setattr(modal.Function, "with_options", with_options)
    monkeypatch.setattr(modal.Secret, "from_name", lambda name: f"secret {name}")
    launch_module.main(recipe=SMOKE, set=FAST, gpu="t4", timeout_hours=2, secrets="huggingface, wandb",
                       results_dir=str(tmp_path / "results"))  # fmt: skip

    secrets = ["secret huggingface", "secret wandb"]
    assert calls == [
        ("fill_cache", {"secrets": secrets}),  # the packaged model and local files: nothing to download
        ("train", {"gpu": "T4:1", "cpu": 4.0, "timeout": 7200, "secrets": secrets}),
    ]
    assert hf_volume.calls == ["commit"] and runs_volume.calls == ["reload", "commit"]
    assert resumes == [True]
    (home,) = (tmp_path / "results" / SMOKE).glob("*.json")
    run_id = home.stem
    on_volume = tmp_path / "runs" / "results" / SMOKE / f"{run_id}.json"
    assert home.read_text() == on_volume.read_text()
    result = json.loads(home.read_text())
    assert result["status"] == "completed" and result["run_id"] == run_id
    assert result["environment"]["modal"] == {"gpu": "T4:1"}
    assert sent_git == [git_state()] and result["environment"]["git"]["commit"] == git_state()["commit"]
    assert result["recipe"]["train"]["epochs"] == 1
    assert (tmp_path / "runs" / "checkpoints" / SMOKE / run_id / "best").is_dir()
    assert result["training"]["resumed_from_step"] is None  # a first attempt starts from scratch
    assert f"result: {home}" in capsys.readouterr().out

    # an input retried after its run finished (the container stopped before answering) answers the same result
    again = run_node(result["recipe"], run_id, "T4:1", MachineRole(), RecordingVolume(), runs_dir=tmp_path / "runs")
    assert again == {"result": result, "error": None} and resumes == [True, True]
    assert home.read_text() == on_volume.read_text()


def test_the_launching_checkouts_commit_is_recorded_where_there_is_no_git(monkeypatch):
    monkeypatch.setattr(environment, "_run", lambda *args, **kwargs: None)  # as in the image: no .git
    monkeypatch.setenv(GIT_ENV[0], "abc123")
    monkeypatch.setenv(GIT_ENV[1], "1")
    assert git_state() == {"commit": "abc123", "dirty": True}
    monkeypatch.delenv(GIT_ENV[0])
    assert git_state() == {"commit": None, "dirty": None}


def test_a_failed_run_comes_home_as_a_failed_result(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(SMOKE, shlex.split(FAST))

    def failing_launch(plan, role=None, resume=False):
        attempt = Path(plan.checkpoint_dir) / "failed-attempt.json"
        write_new_json(attempt, {"run_id": plan.run_id, "status": "failed", "schema_version": "1.0"})
        raise RunFailed("rank 1 failed", attempt)

    monkeypatch.setattr(launch_module, "launch", failing_launch)
    outcome = run_node(recipe.to_dict(), "run-2", "T4:1", MachineRole(), RecordingVolume(), runs_dir=tmp_path)
    assert outcome["error"] is None and outcome["result"]["status"] == "failed"
    assert bring_home(outcome, SMOKE, "run-2", tmp_path / "home") == tmp_path / "home" / SMOKE / "run-2.json"


def test_a_run_that_cannot_start_is_answered_not_retried(tmp_path):
    recipe = load_recipe(SMOKE, ["hardware.device=auto", "data.train_file=tests/data/banking77_10/missing.csv"])
    outcome = run_node(recipe.to_dict(), "run-1", "T4:1", MachineRole(), RecordingVolume(), runs_dir=tmp_path)
    assert outcome["result"] is None and "missing.csv does not exist" in outcome["error"]
    with pytest.raises(LaunchError, match="missing.csv"):
        bring_home(outcome, SMOKE, "run-1", tmp_path / "results")


def test_nodes_of_a_cluster_meet_at_node_0(monkeypatch):
    """Through modal.Cluster.from_context(), over the context Modal sets when a clustered container starts."""
    info = modal.experimental.ClusterInfo(rank=1, cluster_id="cu-1", container_ips=["fd00::1", "fd00::2"],
                                          container_ipv4_ips=["10.0.0.1", "10.0.0.2"], fabric_ids=[])  # fmt: skip
    monkeypatch.setattr(modal._cluster, "current_cluster_context", info)
    assert cluster_role() == MachineRole(machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29500)
    monkeypatch.setattr(info, "container_ipv4_ips", [])
    assert cluster_role().main_process_ip == "fd00::1"


@pytest.mark.parametrize("ending", ["completed", "failed", "cannot start", "preempted"])
def test_the_runs_volume_is_reloaded_first_and_committed_last_however_the_attempt_ends(tmp_path, monkeypatch, ending):
    """A retried attempt (a fresh container) starts from what the last one committed; a preempted one (raised, so
    retried) has committed its last saved state first."""
    monkeypatch.chdir(REPO)
    volume = RecordingVolume()

    def attempt(plan, role=None, resume=False):
        assert volume.calls == ["reload"]
        assert (plan.run_dir / "state").is_dir()  # a swap the last attempt left half done, settled
        path = result_path(Path(plan.results_dir), plan.recipe.name, plan.run_id)
        if ending == "completed":
            write_new_json(path, {"run_id": plan.run_id, "status": "completed"})
        elif ending == "failed":
            raise RunFailed("rank 0 failed", write_new_json(plan.run_dir / "failed.json", {"status": "failed"}))
        elif ending == "cannot start":
            raise HarnessError("data.train_file: no such file")
        else:
            raise RunInterrupted("stopped by SIGTERM")

    monkeypatch.setattr(launch_module, "launch", attempt)
    recipe = load_recipe(SMOKE, shlex.split(FAST)).to_dict()
    (tmp_path / "checkpoints" / SMOKE / "run-3" / "state.previous").mkdir(parents=True)
    if ending == "preempted":
        with pytest.raises(RunInterrupted):
            run_node(recipe, "run-3", "T4:1", MachineRole(), volume, runs_dir=tmp_path)
    else:
        outcome = run_node(recipe, "run-3", "T4:1", MachineRole(), volume, runs_dir=tmp_path)
        answer = outcome["result"]["status"] if outcome["result"] else outcome["error"]
        assert answer == {"completed": "completed", "failed": "failed"}.get(ending, "data.train_file: no such file")
    assert volume.calls == ["reload", "commit"]


def test_a_checkpoint_swap_cut_short_is_settled_before_the_run_resumes(tmp_path):
    """swap_in renames NAME to NAME.previous, then NAME.staging to NAME, then removes NAME.previous."""
    for folder in ("state.previous", "state.staging", "best", "best.previous"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "progress.json").write_text(folder)
    settle_interrupted_swaps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "state", "state.staging"]
    assert (tmp_path / "state" / "progress.json").read_text() == "state.previous"  # the last state saved whole
    assert (tmp_path / "best" / "progress.json").read_text() == "best"
    settle_interrupted_swaps(tmp_path / "a run not started yet")


NCCL_OVER_RDMA = """\
node0:41:41 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal network plugin.
node0:41:41 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/RoCE [1]mlx5_1:1/RoCE [RO]; OOB eth0:10.0.0.1<0>
node0:41:41 [0] NCCL INFO Using network IB
node0:41:58 [0] NCCL INFO Channel 00/0 : 8[0] -> 0[0] [receive] via NET/IB/0/GDRDMA
"""
NCCL_OVER_TCP = """\
node0:42:42 [1] NCCL INFO NET/IB : No device found.
node0:42:42 [1] NCCL INFO NET/Socket : Using [0]eth0:10.0.0.1<0>
node0:42:42 [1] NCCL INFO Using network Socket
node0:42:60 [1] NCCL INFO Channel 00/0 : 9[1] -> 1[1] [receive] via NET/Socket/0
"""


@pytest.mark.parametrize(
    ("logs", "transport"),
    [([NCCL_OVER_RDMA], "NET/IB"), ([NCCL_OVER_TCP], "NET/Socket"), ([NCCL_OVER_RDMA, NCCL_OVER_TCP],
     "NET/IB, NET/Socket"), (["node0:41:41 [0] NCCL INFO cudaDriverVersion 12080\n"], None), ([], None)],
)  # fmt: skip
def test_the_nccl_transport_is_read_from_nccl_logs(tmp_path, logs, transport):
    for index, text in enumerate(logs):
        (tmp_path / f"node0-{index}.log").write_text(text)
    assert nccl_transport(tmp_path) == transport


def test_a_multi_node_run_logs_nccl_and_records_its_transport(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE", MODAL_GPU_ENV):
        monkeypatch.setenv(name, "restored after the test")

    def attempt(plan, role=None, resume=False):  # what the ranks of node 0 leave behind
        Path(os.environ["NCCL_DEBUG_FILE"].replace("%h", "node0").replace("%p", "41")).write_text(NCCL_OVER_RDMA)
        path = result_path(Path(plan.results_dir), plan.recipe.name, plan.run_id)
        write_new_json(path, {"status": "completed", "environment": {"modal": {"gpu": "H100:8"}}})

    monkeypatch.setattr(launch_module, "launch", attempt)
    recipe = load_recipe(SMOKE, ["hardware.num_machines=2", "hardware.num_processes=2", "hardware.device=auto"])
    outcome = run_node(recipe.to_dict(), "run-4", "H100:8", MachineRole(), RecordingVolume(), runs_dir=tmp_path)
    assert outcome["result"]["environment"]["modal"] == {"gpu": "H100:8", "nccl_transport": "NET/IB"}
    assert os.environ["NCCL_DEBUG"] == "INFO" and os.environ["NCCL_DEBUG_SUBSYS"] == "INIT,NET"
    assert os.environ["NCCL_DEBUG_FILE"] == str(tmp_path / "checkpoints" / SMOKE / "run-4" / "nccl" / "%h-%p.log")


# --------------------------------------------------------------------------- the Hugging Face cache, before the GPUs


def test_the_model_is_fetched_once_with_one_weights_format(monkeypatch):
    import huggingface_hub

    fetched = []
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx", "tokenizer.json"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, name, revision=None: files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **kwargs: fetched.append((name, kwargs)))
    prefetch_model(load_recipe("modernbert-emotion-bf16").model)
    prefetch_model(load_recipe(SMOKE).model)  # a packaged model: nothing to download
    prefetch_model(load_recipe(SMOKE, ["model.name=/runs/models/mine"]).model)  # on the runs volume: read there
    patterns = ["*.json", "*.txt", "*.model", "*.py", "*.safetensors"]
    assert fetched == [("answerdotai/ModernBERT-base", {"revision": None, "allow_patterns": patterns})]


def hub_error(kind, status):
    """An error of huggingface_hub as it raises them, for an HTTP answer with this status."""
    return kind(f"{status} Client Error", response=SimpleNamespace(status_code=status, headers={}, request=None))


def gated_dataset(spec):
    try:
        raise hub_error(GatedRepoError, 403)
    except GatedRepoError as error:  # what datasets raises for a gated data set
        raise DatasetNotFoundError(f"Dataset '{spec.name}' is a gated dataset on the Hub.") from error


@pytest.mark.filterwarnings("ignore:The fill_cache function is executing locally")
@pytest.mark.parametrize(
    ("where", "error", "says"),
    [
        ("model", hub_error(GatedRepoError, 403), "model.name: answerdotai/ModernBERT-base is gated on the Hub: accept "
         "its conditions at https://huggingface.co/answerdotai/ModernBERT-base"),
        ("model", hub_error(RepositoryNotFoundError, 401), "model.name: the Hub answered 401 for "
         "answerdotai/ModernBERT-base: check the repository id, or, if the repository is private, give the run"),
        ("model", hub_error(RevisionNotFoundError, 404), "model.revision: answerdotai/ModernBERT-base has no revision"),
        ("model", hub_error(HfHubHTTPError, 403), "model.name: the Hub answered 403"),
        ("data", None, "data.name: dair-ai/emotion is gated on the Hub: accept its conditions at "
         "https://huggingface.co/datasets/dair-ai/emotion"),
    ],
)  # fmt: skip
def test_a_hub_refusal_is_answered_with_its_fix_before_any_gpu_starts(monkeypatch, where, error, says):
    """The CPU function returns the refusal (Modal retries only what raises) and still commits what it fetched."""
    import huggingface_hub

    import harness.data

    def list_repo_files(self, name, revision=None):
        if where == "model":
            raise error
        return ["config.json", "model.safetensors"]

    volume = RecordingVolume()
    monkeypatch.setattr(launch_module, "hf_cache", volume)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **kwargs: None)
    monkeypatch.setattr(harness.data, "load_hub_dataset", gated_dataset)
    answer = launch_module.fill_cache.local(load_recipe("modernbert-emotion-bf16").to_dict())
    assert says in answer
    token_fix = "`modal secret create huggingface HF_TOKEN=hf_...`, then --secrets huggingface"
    assert (token_fix in answer) == (not isinstance(error, RevisionNotFoundError))  # a token cannot add a revision
    assert volume.calls == ["commit"]


@pytest.mark.filterwarnings("ignore:The fill_cache function is executing locally")
def test_other_hub_errors_raise_so_that_modal_retries_them(monkeypatch):
    import huggingface_hub

    volume = RecordingVolume()
    monkeypatch.setattr(launch_module, "hf_cache", volume)

    def unavailable(self, name, revision=None):
        raise hub_error(HfHubHTTPError, 503)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unavailable)
    with pytest.raises(HfHubHTTPError, match="503"):
        launch_module.fill_cache.local(load_recipe("modernbert-emotion-bf16").to_dict())
    assert volume.calls == ["commit"]


@pytest.mark.parametrize("refused", [None, "model.name: the Hub answered 404 for x/y: check the repository id"])
def test_the_cache_is_filled_on_a_cpu_before_the_gpus_start(monkeypatch, refused):
    calls = []

    def with_options(self, **kwargs):
        filling = self is launch_module.fill_cache
        name = "fill_cache" if filling else "train"

        def remote(*args):
            calls.append(name)
            return refused if filling else {"result": {"status": "completed"}, "error": None}

        return SimpleNamespace(remote=remote)

    monkeypatch.setattr(modal.Function, "with_options", with_options)
    chosen = load_recipe("modernbert-emotion-bf16")
    outcome = start_run(chosen, launch_spec(chosen), "run-5", 3600, [])
    if refused:
        assert calls == ["fill_cache"] and outcome == {"result": None, "error": refused}  # no GPU started
    else:
        assert calls == ["fill_cache", "train"] and outcome["result"] == {"status": "completed"}


# --------------------------------------------------------------------------- detached runs: fetching results


class FolderVolume:
    """A modal.Volume's listdir/read_file over a local folder."""

    def __init__(self, root: Path):
        self.root = root

    def listdir(self, path, recursive=False):
        if not (self.root / path).exists():
            raise modal.exception.NotFoundError(path)
        kinds = modal.volume.FileEntryType
        return [SimpleNamespace(path=str(p.relative_to(self.root)), type=kinds.FILE if p.is_file() else kinds.DIRECTORY)
                for p in sorted((self.root / path).rglob("*"))]  # fmt: skip

    def read_file(self, path):
        yield (self.root / path).read_bytes()


def test_fetch_copies_only_the_results_not_yet_home(tmp_path):
    volume, home = tmp_path / "volume", tmp_path / "results"
    assert fetch_results(FolderVolume(volume), home) == []  # nothing has run yet
    for name, text in [("a/1.json", '{"run_id": "1"}'), ("a/2.json", '{"run_id": "2"}'), ("a/.3.json.x.tmp", "{")]:
        (volume / "results" / name).parent.mkdir(parents=True, exist_ok=True)
        (volume / "results" / name).write_text(text)
    (home / "a").mkdir(parents=True)
    (home / "a" / "1.json").write_text("kept as it is")

    assert fetch_results(FolderVolume(volume), home) == [home / "a" / "2.json"]
    assert json.loads((home / "a" / "2.json").read_text()) == {"run_id": "2"}
    assert (home / "a" / "1.json").read_text() == "kept as it is"
    assert fetch_results(FolderVolume(volume), home) == []


def test_fetch_is_a_volume_read_without_modal_run(tmp_path, capsys):
    """`python -m harness.launch --fetch`: `modal run` would build the image before reading the volume."""
    (tmp_path / "volume" / "results" / "a").mkdir(parents=True)
    (tmp_path / "volume" / "results" / "a" / "1.json").write_text('{"run_id": "1"}')
    fetch_command(["--fetch", "--results-dir", str(tmp_path / "home")], FolderVolume(tmp_path / "volume"))
    assert capsys.readouterr().out == f"fetched: {tmp_path / 'home' / 'a' / '1.json'}\n"
    fetch_command(["--fetch", "--results-dir", str(tmp_path / "home")], FolderVolume(tmp_path / "volume"))
    assert capsys.readouterr().out == "no new results\n"
    with pytest.raises(SystemExit):
        fetch_command([], FolderVolume(tmp_path / "volume"))


# --------------------------------------------------------------------------- the pinned stack


def test_the_pinned_stack_is_one_consistent_list():
    """Every package pinned once, in one file that the Dockerfile installs (and Modal builds from the Dockerfile);
    the flash-attn wheel is the one built for the pinned torch and the Dockerfile's Python."""
    lines = [line for line in (REPO / "harness" / "gpu-requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    pins = dict(line.split("==") for line in lines if "==" in line)
    (wheel,) = [line for line in lines if line.startswith("flash-attn @ ")]
    assert len(pins) + 1 == len(lines)
    torch_minor = ".".join(pins["torch"].split(".")[:2])
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"torch{torch_minor}cxx11abiTRUE-cp312-cp312-linux_x86_64.whl" in wheel and "python3.12" in dockerfile
    assert "-r /tmp/gpu-requirements.txt" in dockerfile
    assert not re.search(r"==\d", dockerfile)  # no version lives in the Dockerfile besides its CUDA base image


def test_the_whole_gpu_stack_is_locked_at_the_pinned_versions():
    """harness/gpu-constraints.txt pins every package the image installs, at the versions gpu-requirements.txt
    names, and both of the Dockerfile's pip installs use it; a rebuild resolves the same stack."""

    def pins(name):
        lines = [line for line in (REPO / "harness" / name).read_text().splitlines()
                 if line.strip() and not line.startswith("#")]  # fmt: skip
        pairs = (line.partition("==") for line in lines if "==" in line)
        return {re.sub(r"[-_.]+", "-", name).lower(): version for name, _, version in pairs}

    required, locked = pins("gpu-requirements.txt"), pins("gpu-constraints.txt")
    assert {name: locked.get(name) for name in required} == required
    assert {"deepspeed", "einops", "triton", "nvidia-nccl-cu12", "pydantic", "pyarrow"} <= set(locked)  # pulled in
    constraint_lines = [line for line in (REPO / "harness" / "gpu-constraints.txt").read_text().splitlines()
                        if line.strip() and not line.startswith("#")]  # fmt: skip
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", line) for line in constraint_lines)  # no URL, no range
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY harness/gpu-requirements.txt harness/gpu-constraints.txt /tmp/" in dockerfile
    assert dockerfile.count("pip install -c /tmp/gpu-constraints.txt") == 1
    assert dockerfile.count("--no-build-isolation -c /tmp/gpu-constraints.txt -r /tmp/gpu-requirements.txt") == 1


def test_the_image_has_the_rdma_user_space_that_nccl_needs_between_nodes():
    dockerfile = (REPO / "Dockerfile").read_text()
    rdma = ("libibverbs1", "libibverbs-dev", "libhwloc15", "libnl-route-3-200")  # as Modal's cluster examples
    assert all(package in dockerfile for package in rdma)
