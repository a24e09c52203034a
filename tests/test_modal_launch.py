"""harness/launch.py, the Modal launcher, offline and without Modal credentials: the app and its parts, the
recipe -> GPU mapping and its errors, the container's work run here on CPU, results coming home, and that a bad
request fails before any call to Modal."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import modal
import modal.experimental
import pytest

import harness.launch as launch_module
from harness import environment
from harness.environment import GIT_ENV, git_state
from harness.launch import (
    GPU_TYPES,
    MODAL_GPU_ENV,
    TRAINERS,
    LaunchError,
    LaunchSpec,
    bring_home,
    check_single_set,
    cluster_role,
    fetch_results,
    launch_spec,
    prefetch_model,
    run_node,
    timeout_seconds,
)
from harness.launcher import MachineRole, RunFailed
from harness.recipe import load_recipe
from harness.results import write_new_json

REPO = Path(__file__).resolve().parents[1]
SMOKE = "minilm-banking77-cpu"
FAST = "train.epochs=1 data.max_train_samples=64 data.max_eval_samples=64 hardware.device=auto"


def test_importing_the_module_builds_the_app_image_volumes_and_functions():
    assert isinstance(launch_module.app, modal.App)
    assert isinstance(launch_module.image, modal.Image)
    assert all(isinstance(v, modal.Volume) for v in (launch_module.hf_cache, launch_module.runs))
    assert all(isinstance(f, modal.Function) for f in TRAINERS.values())
    assert TRAINERS == {1: launch_module.train, 2: launch_module.train_2_nodes, 4: launch_module.train_4_nodes}


def test_modal_run_help_lists_the_options_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")} | {
        "MODAL_CONFIG_PATH": str(tmp_path / "none.toml")
    }
    modal_cli = Path(sys.executable).with_name("modal")
    out = subprocess.run([str(modal_cli), "run", "harness/launch.py", "--help"], check=False, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for option in ("--recipe", "--set", "--gpu", "--timeout-hours", "--secrets", "--fetch"):
        assert option in out.stdout


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


def test_the_container_body_runs_the_smoke_recipe_and_its_result_comes_home(tmp_path, monkeypatch, capsys):
    """main() as `modal run` calls it, with Modal replaced by the container's body run here on CPU; volumes in tmp."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(MODAL_GPU_ENV, "restored after the test")
    options, resumes, sent_git, real_launch = {}, [], [], launch_module.launch

    def launch_spy(plan, role=None, resume=False):
        resumes.append(resume)
        return real_launch(plan, role, resume=resume)

    def remote(recipe, run_id, gpu, git):
        monkeypatch.setenv("MODAL_TASK_ID", "ta-test")  # as in a Modal container: the result records the GPU
        sent_git.append(git)
        return run_node(recipe, run_id, gpu, MachineRole(), runs_dir=tmp_path / "runs", git=git)

    def with_options(self, **kwargs):
        options.update(kwargs)
        return SimpleNamespace(remote=remote)

    monkeypatch.setattr(launch_module, "launch", launch_spy)
    monkeypatch.setattr(modal.Function, "with_options", with_options)
    monkeypatch.setattr(modal.Secret, "from_name", lambda name: f"secret {name}")
    launch_module.main(recipe=SMOKE, set=FAST, gpu="t4", timeout_hours=2, secrets="huggingface, wandb",
                       results_dir=str(tmp_path / "results"))  # fmt: skip

    assert options == {"gpu": "T4:1", "cpu": 4.0, "timeout": 7200, "secrets": ["secret huggingface", "secret wandb"]}
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
    again = run_node(result["recipe"], run_id, "T4:1", MachineRole(), runs_dir=tmp_path / "runs")
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
    monkeypatch.setattr(launch_module, "prefetch_model", lambda spec: None)
    outcome = run_node(recipe.to_dict(), "run-2", "T4:1", MachineRole(), runs_dir=tmp_path)
    assert outcome["error"] is None and outcome["result"]["status"] == "failed"
    assert bring_home(outcome, SMOKE, "run-2", tmp_path / "home") == tmp_path / "home" / SMOKE / "run-2.json"


def test_a_run_that_cannot_start_is_answered_not_retried(tmp_path):
    recipe = load_recipe(SMOKE, ["hardware.device=auto", "data.train_file=tests/data/banking77_10/missing.csv"])
    outcome = run_node(recipe.to_dict(), "run-1", "T4:1", MachineRole(), runs_dir=tmp_path)
    assert outcome["result"] is None and "missing.csv does not exist" in outcome["error"]
    with pytest.raises(LaunchError, match="missing.csv"):
        bring_home(outcome, SMOKE, "run-1", tmp_path / "results")


def test_nodes_of_a_cluster_meet_at_node_0(monkeypatch):
    info = modal.experimental.ClusterInfo(rank=1, cluster_id="cu-1", container_ips=["fd00::1", "fd00::2"],
                                          container_ipv4_ips=["10.0.0.1", "10.0.0.2"], fabric_ids=[])  # fmt: skip
    monkeypatch.setattr(modal.experimental, "get_cluster_info", lambda: info)
    assert cluster_role() == MachineRole(machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29500)


def test_the_model_is_fetched_once_with_one_weights_format(monkeypatch):
    import huggingface_hub

    fetched = []
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx", "tokenizer.json"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, name, revision=None: files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **kwargs: fetched.append((name, kwargs)))
    prefetch_model(load_recipe("modernbert-emotion-bf16").model)
    prefetch_model(load_recipe(SMOKE).model)  # a packaged model: nothing to download
    patterns = ["*.json", "*.txt", "*.model", "*.py", "*.safetensors"]
    assert fetched == [("answerdotai/ModernBERT-base", {"revision": None, "allow_patterns": patterns})]


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
