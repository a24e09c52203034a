"""Run a recipe on Modal GPUs as `harness run` would run it locally; its result file comes home to results/.

    modal run harness/launch.py --recipe modernbert-emotion-bf16
    modal run harness/launch.py --recipe modernbert-emotion-bf16 --gpu H100:4 --set "hardware.num_processes=4"
    modal run --detach harness/launch.py --recipe ...    # the run goes on if this terminal goes away
    python -m harness.launch --fetch                     # copy finished results from the volume to results/

The recipe, its overrides and the GPU are checked here, before any container starts. A CPU container then fills
the Hugging Face cache volume with the run's model and data set (a Hub refusal ends the run there, before any GPU
is paid for), and the GPU containers, single-use, read that cache offline. In a GPU container the run goes through
harness.launcher.launch, the launch path of local runs (`accelerate launch` for several GPUs); a run over several
nodes is a modal.clustered function whose every node launches its share. Results and checkpoints live on the runs
volume, reloaded when an attempt starts and committed when it ends, so that a preempted or restarted run resumes
from its last checkpoint. Setup, options and costs: docs/modal.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import modal

from harness.environment import GIT_ENV, git_state
from harness.errors import HarnessError
from harness.launcher import MachineRole, RunFailed, launch
from harness.plan import Plan
from harness.recipe import ModelSpec, Recipe, load_recipe, recipe_from_dict
from harness.results import new_run_id, result_path, write_new_json

# Local paths: read only on this machine, when `modal run` builds the image (in a container they do not exist).
REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("recipes", "tests/data")  # folders of the checkout the image carries besides the harness package

HF_MOUNT = "/cache/hf"  # HF_HOME in the container
RUNS_MOUNT = Path("/runs")  # results/ and checkpoints/ of every run
RUNS_VOLUME = "harness-runs"
MODAL_GPU_ENV = "HARNESS_MODAL_GPU"  # recorded by harness.environment as environment.modal.gpu
HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # GPU containers: the cache is filled before
MAIN_PROCESS_PORT = 29500
CPU_PER_GPU = 4.0  # reserved cores: data loading counts in the step times, so it must not depend on a neighbour
FILL_CACHE_CPU = 4.0  # datasets prepares (converts to Arrow) a Hub data set on these cores
FILL_CACHE_TIMEOUT_HOURS = 2.0
RESTARTS = 3  # a preempted or crashed attempt runs again, resuming from the last checkpoint
DEFAULT_TIMEOUT_HOURS = 6.0
MAX_TIMEOUT_HOURS = 24.0  # Modal's limit for one attempt
CLUSTER_NODE_GPUS = 8  # a node of a Modal cluster is a whole 8-GPU machine
# Modal GPU types (https://modal.com/docs/guide/gpu) -> the most GPUs one container can have
GPU_TYPES = {
    "T4": 8, "L4": 8, "A10": 4, "A10G": 4, "L40S": 8, "A100": 8, "A100-40GB": 8, "A100-80GB": 8,
    "RTX-PRO-6000": 8, "H100": 8, "H100!": 8, "H200": 8, "B200": 8, "B200+": 8,
}  # fmt: skip
# The types Modal clusters are made of: A100, H100, H200 and B200 machines of 8 GPUs
# (https://modal.com/docs/guide/multi-node-clusters)
CLUSTER_GPU_TYPES = ("A100", "A100-40GB", "A100-80GB", "H100", "H100!", "H200", "B200", "B200+")
# flash-attn 2 needs compute capability 8.0 (Ampere) or newer; the T4 is Modal's only older GPU (it has no V100)
BELOW_AMPERE = {"T4": "7.5"}
MODEL_FILES = ["*.json", "*.txt", "*.model", "*.py"]  # configs, tokenizer files, remote code: all but the weights
HUB_REFUSALS = (401, 403, 404)  # no or a bad token, a gated repository, no such repository: the same on every retry
TOKEN_FIX = "give the run a Hub token: `modal secret create huggingface HF_TOKEN=hf_...`, then --secrets huggingface"
NCCL_NETWORK = re.compile(r"NCCL INFO (?:Using network |.*via NET/)([^\s/]+)")


class LaunchError(HarnessError):
    """A Modal run that cannot start as asked; the message says how to fix it."""


# --------------------------------------------------------------------------- the app

app = modal.App("harness")

image = (
    # the pinned stack of the Dockerfile, so that Modal and local GPU machines run the same versions
    modal.Image.from_dockerfile(REPO / "Dockerfile", context_dir=REPO)
    .env({"HF_HOME": HF_MOUNT})
    .workdir("/root")  # beside the harness package: recipes' relative data paths resolve as in a checkout
    # ignore=[]: the default keeps .py files only, and the DeepSpeed JSON configs are needed (caches stay out anyway)
    .add_local_python_source("harness", ignore=[])
    .add_local_dir(REPO / "recipes", "/root/recipes")
    .add_local_dir(REPO / "tests" / "data", "/root/tests/data")
)
hf_cache = modal.Volume.from_name("harness-hf-cache", create_if_missing=True)
runs = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True)


@app.function(
    image=image,
    volumes={HF_MOUNT: hf_cache},
    cpu=FILL_CACHE_CPU,
    timeout=int(FILL_CACHE_TIMEOUT_HOURS * 3600),
    retries=RESTARTS,  # a network failure; a refusal by the Hub is answered instead
)
def fill_cache(recipe: dict) -> str | None:
    return fill_hf_cache(recipe_from_dict(recipe), hf_cache)


# GPU, timeout and secrets are set per run (with_options); a retried input is the same plan: same run id, same folder.
# Single-use: a retried attempt starts in a fresh container (no GPU memory or rendezvous port left over from the
# last one, and no container idling between runs).
GPU_CONTAINER: dict[str, Any] = {
    "image": image,
    "volumes": {HF_MOUNT: hf_cache, str(RUNS_MOUNT): runs},
    "env": HUB_OFFLINE,
    "timeout": int(DEFAULT_TIMEOUT_HOURS * 3600),
    "retries": modal.Retries(max_retries=RESTARTS, initial_delay=0.0),
    "single_use_containers": True,
}


@app.function(**GPU_CONTAINER)
def train(recipe: dict, run_id: str, gpu: str, git: dict | None = None) -> dict:
    return run_node(recipe, run_id, gpu, MachineRole(), runs, git=git)


# A clustered function's size is fixed when it is defined, hence one per node count. Its GPU is set per run, but a
# cluster must ask for GPUs when it is defined. rdma=True: NCCL uses the RDMA network through the image's
# libibverbs (Dockerfile); the result records the network it used (environment.modal.nccl_transport).
@app.function(gpu=f"H100:{CLUSTER_NODE_GPUS}", **GPU_CONTAINER)
@modal.clustered(size=2, rdma=True)
def train_2_nodes(recipe: dict, run_id: str, gpu: str, git: dict | None = None) -> dict:
    return run_node(recipe, run_id, gpu, cluster_role(), runs, git=git)


@app.function(gpu=f"H100:{CLUSTER_NODE_GPUS}", **GPU_CONTAINER)
@modal.clustered(size=4, rdma=True)
def train_4_nodes(recipe: dict, run_id: str, gpu: str, git: dict | None = None) -> dict:
    return run_node(recipe, run_id, gpu, cluster_role(), runs, git=git)


TRAINERS = {1: train, 2: train_2_nodes, 4: train_4_nodes}  # node count -> function


# --------------------------------------------------------------------------- checks on this machine


@dataclass(frozen=True)
class LaunchSpec:
    """What a run asks of Modal and what each container will launch."""

    gpu: str  # Modal GPU spec of each container, "TYPE:COUNT"
    nodes: int  # containers: 1, or the size of a modal.clustered function
    processes: int  # over all nodes (the recipe's hardware.num_processes)
    deepspeed: str | None

    def describe(self) -> str:
        where = f"{self.nodes} nodes of {self.gpu} (modal.clustered)" if self.nodes > 1 else self.gpu
        if self.processes == 1 and not self.deepspeed:
            return f"{where}: accelerate launch, one process"
        how = f"accelerate launch, {self.processes} processes"
        if self.deepspeed:
            how += f", DeepSpeed {self.deepspeed}"
        if self.nodes > 1:
            how += f", {self.processes // self.nodes} on each node, the main process on node 0"
        return f"{where}: {how}"


def launch_spec(recipe: Recipe, gpu_override: str = "") -> LaunchSpec:
    """The GPUs for a validated recipe (from --gpu, else hardware.gpu); an error names the fix. No Modal call."""
    hardware = recipe.hardware
    source = "--gpu" if gpu_override else "hardware.gpu"
    text = gpu_override or hardware.gpu
    if not text:
        raise LaunchError(
            "hardware.gpu: the recipe names no Modal GPU; set it (for example A100-80GB:4) or pass --gpu H100"
        )
    kind, _, count_text = text.partition(":")
    kind = kind.upper()  # Modal reads GPU types case-insensitively
    if kind not in GPU_TYPES:
        raise LaunchError(f"{source}: {text!r} is not a Modal GPU type; valid types: {', '.join(GPU_TYPES)}")
    count_text = count_text or "1"
    if not count_text.isdigit() or not 1 <= int(count_text) <= GPU_TYPES[kind]:
        raise LaunchError(f"{source}: {text!r}: the count after ':' must be 1 to {GPU_TYPES[kind]} for {kind}")
    count = int(count_text)
    nodes = hardware.num_machines
    if nodes > 1:
        check_cluster(source, text, kind, count, nodes)
    per_node = hardware.num_processes // nodes
    if count != per_node:
        raise LaunchError(
            f"{source}: {text!r} gives each node {count} GPU(s) but the recipe starts {per_node} process(es) per node "
            f"(hardware.num_processes {hardware.num_processes} over hardware.num_machines {nodes}); "
            f"match them with --set hardware.num_processes={count * nodes}, or --gpu {kind}:{per_node}"
        )
    if hardware.device == "cpu":
        raise LaunchError("hardware.device: 'cpu' would leave the Modal GPUs idle; pass --set hardware.device=cuda")
    if recipe.model.attn_implementation == "flash_attention_2" and kind in BELOW_AMPERE:
        raise LaunchError(
            f"{source}: {text!r}: flash_attention_2 needs a GPU of compute capability 8.0 or newer and {kind} is "
            f"{BELOW_AMPERE[kind]}; pass --gpu L4 (or A10, A100, H100, ...) or --set model.attn_implementation=sdpa"
        )
    check_shipped_files(recipe)
    return LaunchSpec(
        gpu=f"{kind}:{count}", nodes=nodes, processes=hardware.num_processes, deepspeed=hardware.deepspeed
    )


def check_cluster(source: str, text: str, kind: str, count: int, nodes: int) -> None:
    """Several nodes are a Modal cluster: of a size defined here, of whole 8-GPU machines of a type clusters offer."""
    if nodes not in TRAINERS:
        raise LaunchError(f"hardware.num_machines: Modal runs take {', '.join(map(str, TRAINERS))} nodes, not {nodes}")
    if kind not in CLUSTER_GPU_TYPES:
        raise LaunchError(
            f"{source}: {text!r}: Modal clusters are made of {', '.join(CLUSTER_GPU_TYPES)} machines; "
            f"pass for example --gpu H100:{CLUSTER_NODE_GPUS}"
        )
    if count != CLUSTER_NODE_GPUS:
        raise LaunchError(
            f"{source}: {text!r}: a Modal cluster node is a whole machine of {CLUSTER_NODE_GPUS} GPUs; "
            f"use --gpu {kind}:{CLUSTER_NODE_GPUS} --set hardware.num_processes={CLUSTER_NODE_GPUS * nodes}"
        )


def check_shipped_files(recipe: Recipe) -> None:
    """The recipe's local data files must reach the container: under a folder the image carries, or on the volume."""
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(recipe.data, key)
        if not value or PurePosixPath(value).is_relative_to(RUNS_MOUNT):
            continue
        if not any(PurePosixPath(value).is_relative_to(folder) for folder in SHIPPED):
            name = PurePosixPath(value).name
            raise LaunchError(
                f"data.{key}: {value} does not reach Modal (the image carries {' and '.join(SHIPPED)}); put it on the "
                f"runs volume, `modal volume put {RUNS_VOLUME} {value} data/{name}`, and pass "
                f'--set "data.{key}={RUNS_MOUNT}/data/{name}"'
            )
        if not (REPO / value).is_file():
            raise LaunchError(f"data.{key}: {value} does not exist; fix the path or override it: --set data.{key}=PATH")


def check_single_set(argv: list[str]) -> None:
    """Modal's command line keeps only the last of repeated options, which would drop overrides without a word."""
    if sum(arg == "--set" or arg.startswith("--set=") for arg in argv) > 1:
        raise LaunchError(
            '--set: give all overrides in one --set, separated by spaces: --set "train.epochs=1 data.max_length=128"'
        )


def timeout_seconds(hours: float) -> int:
    if not 0 < hours <= MAX_TIMEOUT_HOURS:
        raise LaunchError(
            f"--timeout-hours: must be more than 0 and at most {MAX_TIMEOUT_HOURS:g}, Modal's limit for one attempt"
        )
    return int(hours * 3600)


# --------------------------------------------------------------------------- the Hugging Face cache, on a CPU container


def fill_hf_cache(recipe: Recipe, volume: Any) -> str | None:
    """Download the run's model, tokenizer and Hub data set into the cache volume once, on a CPU container, and
    commit it, before the GPU containers start and read it offline: GPUs do not wait while every node downloads
    the same files. Returns why the Hub refused a repository, else None: answered, not raised, because Modal
    retries what raises and a refusal would be the same every time."""
    from harness.data import load_hub_dataset

    model, data = recipe.model, recipe.data
    try:
        with hub_access("model.name", model.name, model.revision):
            prefetch_model(model)
        with hub_access("model.tokenizer", model.tokenizer, model.revision):
            prefetch_tokenizer(model)
        if data.source == "hub" and on_the_hub(data.name):
            with hub_access("data.name", data.name, data.revision):
                load_hub_dataset(data)  # the run's own call: it finds exactly what this prepared
    except LaunchError as refused:
        return str(refused)
    finally:
        volume.commit()
    return None


def on_the_hub(name: str | None) -> bool:
    """A Hub repository id: not a packaged model, an architecture's bare config, a folder of the image, or a path on
    the runs volume (absolute; the GPU containers read it there)."""
    return bool(name) and not name.startswith(("package:", "config:", "/")) and not Path(name).is_dir()


def prefetch_model(spec: ModelSpec) -> None:
    """The model's configs, tokenizer files and one weights format: safetensors where the repository has them, as
    transformers loads."""
    if not on_the_hub(spec.name):
        return
    from huggingface_hub import HfApi, snapshot_download

    patterns = list(MODEL_FILES)
    if not spec.random_init:
        files = HfApi().list_repo_files(spec.name, revision=spec.revision)
        patterns.append("*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin")
    snapshot_download(spec.name, revision=spec.revision, allow_patterns=patterns)


def prefetch_tokenizer(spec: ModelSpec) -> None:
    """A tokenizer from a repository of its own (model.tokenizer), at the model's revision, as the run loads it."""
    if spec.tokenizer != spec.name and on_the_hub(spec.tokenizer):
        from huggingface_hub import snapshot_download

        snapshot_download(spec.tokenizer, revision=spec.revision, allow_patterns=MODEL_FILES)


@contextlib.contextmanager
def hub_access(key: str, name: str | None, revision: str | None) -> Iterator[None]:
    """A refusal by the Hub (401, 403, 404) while fetching `name` becomes a LaunchError that names the fix."""
    try:
        yield
    except Exception as error:
        refusal = hub_refusal(error)
        if refusal is None:
            raise
        raise LaunchError(refusal_fix(refusal, key, name, revision)) from error


def hub_refusal(error: BaseException | None) -> Any:
    """The Hub's 401, 403 or 404 error behind error (datasets raises errors of its own from them), or None."""
    from huggingface_hub.errors import HfHubHTTPError

    while error is not None:
        if isinstance(error, HfHubHTTPError) and error.response.status_code in HUB_REFUSALS:
            return error
        error = error.__cause__ or error.__context__
    return None


def refusal_fix(refusal: Any, key: str, name: str | None, revision: str | None) -> str:
    """What to change, named as the recipe key (or the secret) to change: a token fixes no revision."""
    from huggingface_hub.errors import GatedRepoError, RevisionNotFoundError

    section = key.partition(".")[0]
    if isinstance(refusal, GatedRepoError):
        page = f"https://huggingface.co/{'datasets/' if section == 'data' else ''}{name}"
        return f"{key}: {name} is gated on the Hub: accept its conditions at {page} with your account, then {TOKEN_FIX}"
    if isinstance(refusal, RevisionNotFoundError):
        return f"{section}.revision: {name} has no revision {revision!r}; fix {section}.revision or remove it"
    return (
        f"{key}: the Hub answered {refusal.response.status_code} for {name}: check the repository id, "
        f"or, if the repository is private, {TOKEN_FIX}"
    )


# --------------------------------------------------------------------------- in a GPU container


def run_node(
    recipe: dict,
    run_id: str,
    gpu: str,
    role: MachineRole,
    volume: Any,
    runs_dir: Path = RUNS_MOUNT,
    git: dict | None = None,
) -> dict:
    """One container's work: its node's share of the run, through the launcher of local runs.

    Returns {"result": the result document (node 0; None on other nodes), "error": why the run could not start}.
    A run that cannot start, or that failed, is answered rather than raised: Modal retries what raises, and bad
    input or a failing rank would fail again. What raises (RunInterrupted: preempted workers) is retried and
    resumes from the last epoch saved on the volume.

    The runs volume (`volume`, mounted at runs_dir) is reloaded first, so that this attempt starts from what the
    last one committed, and committed last, however the attempt ends, so that its result and its last training
    state are durable before Modal answers or retries (docs/modal.md, "Volumes").
    """
    volume.reload()
    plan = Plan(
        recipe=recipe_from_dict(recipe),
        run_id=run_id,
        results_dir=str(runs_dir / "results"),
        checkpoint_dir=str(runs_dir / "checkpoints" / recipe["name"] / run_id),
    )
    settle_interrupted_swaps(plan.run_dir)
    os.environ[MODAL_GPU_ENV] = gpu  # the workers inherit it
    if git and git.get("commit"):  # the image has no .git: the commit of the local checkout that launched the run
        os.environ.update({GIT_ENV[0]: git["commit"], GIT_ENV[1]: "1" if git.get("dirty") else "0"})
    nccl_logs = plan.run_dir / "nccl"
    several_nodes = plan.recipe.hardware.num_machines > 1
    if several_nodes:
        nccl_logs.mkdir(parents=True, exist_ok=True)
        os.environ.update(nccl_debug_env(nccl_logs))
    path = result_path(Path(plan.results_dir), plan.recipe.name, run_id)
    try:
        # a retried attempt continues from the state saved in the run's folder, or finds the run finished
        launch(plan, role, resume=True)
    except RunFailed as failure:
        if failure.path is not None:  # node 0: the failed attempt becomes the run's result and comes home
            write_new_json(path, json.loads(failure.path.read_text()))
    except HarnessError as error:
        return {"result": None, "error": str(error)}
    finally:
        volume.commit()
    if role.machine_rank or not path.is_file():
        return {"result": None, "error": None}  # Modal returns node 0's answer only
    result = json.loads(path.read_text())
    return {"result": with_nccl_transport(result, nccl_logs) if several_nodes else result, "error": None}


def settle_interrupted_swaps(run_dir: Path) -> None:
    """Finish the checkpoint swap a stopped attempt may have left half done. A folder is swapped in by two renames
    (harness.checkpoints.swap_in: NAME to NAME.previous, then NAME.staging to NAME) and NAME.previous is removed
    last. NAME.previous alone goes back to NAME, so that the run resumes from its last saved state rather than from
    scratch; beside NAME it is removed, as the swap would have (the next swap could not rename onto it)."""
    for previous in run_dir.glob("*.previous"):
        final = previous.with_name(previous.name.removesuffix(".previous"))
        if final.exists():
            shutil.rmtree(previous)
        else:
            previous.rename(final)


def cluster_role() -> MachineRole:
    """This container's place in a modal.clustered run: its rank, and node 0's address for the rendezvous."""
    cluster = modal.Cluster.from_context()
    main_ip = (cluster.container_ips(family="ipv4") or cluster.container_ips())[0]
    return MachineRole(
        machine_rank=cluster.container_rank(), main_process_ip=main_ip, main_process_port=MAIN_PROCESS_PORT
    )


def nccl_debug_env(log_dir: Path) -> dict[str, str]:
    """NCCL's setup and network lines, one file per rank process (%h: host, %p: process id) in log_dir rather than
    in the container's log: they name the network NCCL chose, which the result then records."""
    return {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET", "NCCL_DEBUG_FILE": str(log_dir / "%h-%p.log")}


def nccl_transport(log_dir: Path) -> str | None:
    """The network NCCL used between nodes, from its logs in log_dir: "NET/IB" is RDMA (InfiniBand or RoCE),
    "NET/Socket" TCP, where NCCL falls back to when it finds no RDMA device or library. Networks that differed
    between attempts are all listed; None if no log names one."""
    logs = (log.read_text("utf-8", "replace") for log in log_dir.glob("*.log"))
    found = {f"NET/{name}" for text in logs for name in NCCL_NETWORK.findall(text)}
    return ", ".join(sorted(found)) or None


def with_nccl_transport(result: dict, log_dir: Path) -> dict:
    """The result document with the network NCCL used between the nodes, as environment.modal.nccl_transport."""
    environment = result.setdefault("environment", {})
    environment["modal"] = {**(environment.get("modal") or {}), "nccl_transport": nccl_transport(log_dir)}
    return result


# --------------------------------------------------------------------------- on this machine: start, results come home


def start_run(recipe: Recipe, spec: LaunchSpec, run_id: str, timeout: int, secrets: list) -> dict:
    """Fill the Hugging Face cache on a CPU container, then start the GPU containers, which read it offline; a
    refusal by the Hub is answered before any GPU starts. Returns the GPU function's answer, or the refusal."""
    refused = fill_cache.with_options(secrets=secrets).remote(recipe.to_dict())
    if refused:
        return {"result": None, "error": refused}
    trainer = TRAINERS[spec.nodes].with_options(
        gpu=spec.gpu, cpu=CPU_PER_GPU * spec.processes / spec.nodes, timeout=timeout, secrets=secrets
    )
    return trainer.remote(recipe.to_dict(), run_id, spec.gpu, git_state())


def bring_home(outcome: dict, recipe_name: str, run_id: str, results_dir: Path) -> Path:
    """Write the run's result where `harness run` would have: <results dir>/<recipe>/<run id>.json."""
    if outcome["error"]:
        raise LaunchError(outcome["error"])
    if outcome["result"] is None:
        raise LaunchError(f"run {run_id} answered no result; its log is on the Modal dashboard")
    path = result_path(results_dir, recipe_name, run_id)
    return path if path.exists() else write_new_json(path, outcome["result"])  # --fetch may have brought it already


def fetch_results(volume: Any, results_dir: Path) -> list[Path]:
    """Copy the result files of the runs volume that results_dir lacks; an existing file is never overwritten."""
    try:
        entries = volume.listdir("results", recursive=True)
    except modal.exception.NotFoundError:
        return []  # no run has finished yet
    copied = []
    for entry in entries:
        relative = PurePosixPath(entry.path.lstrip("/")).relative_to("results")
        # a result file, not one being written (write_new_json's temporary files start with a dot)
        if entry.type != modal.volume.FileEntryType.FILE or relative.suffix != ".json" or relative.name.startswith("."):
            continue
        target = results_dir.joinpath(*relative.parts)
        if not target.exists():
            copied.append(write_new_json(target, json.loads(b"".join(volume.read_file(entry.path)))))
    return copied


def fetch_command(argv: list[str], volume: Any = runs) -> None:
    """`python -m harness.launch --fetch`: a volume read, so no `modal run`, which would build the image first."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.launch", description="Copy finished results from the Modal runs volume."
    )
    parser.add_argument("--fetch", action="store_true", required=True, help="copy result files not yet here")
    parser.add_argument("--results-dir", default="results", help="where they go (default: results)")
    args = parser.parse_args(argv)
    copied = fetch_results(volume, Path(args.results_dir))
    print("\n".join(f"fetched: {path}" for path in copied) or "no new results")


@app.local_entrypoint()
def main(
    recipe: str = "",
    set: str = "",
    gpu: str = "",
    timeout_hours: float = 0.0,
    secrets: str = "",
    results_dir: str = "",
) -> None:
    """--recipe NAME runs it (overrides in one --set, space-separated; --gpu TYPE:COUNT; --timeout-hours per attempt,
    default the recipe's hardware.timeout_hours, else 6; --secrets names of Modal secrets, comma-separated).
    Results of detached runs: `python -m harness.launch --fetch`."""
    from harness.compare import compare

    try:
        if not recipe:
            raise LaunchError(
                "--recipe: required (a recipe name from `harness list`, or a YAML path); results of detached runs "
                "come home with `python -m harness.launch --fetch`"
            )
        check_single_set(sys.argv)
        chosen = load_recipe(recipe, shlex.split(set))
        spec = launch_spec(chosen, gpu)
        timeout_hours = timeout_hours or chosen.hardware.timeout_hours or DEFAULT_TIMEOUT_HOURS
        timeout = timeout_seconds(timeout_hours)
        secret_names = [name.strip() for name in secrets.split(",") if name.strip()]
        run_id = new_run_id(chosen.name)
        print(f"run {run_id}: recipe {chosen.name} (hash {chosen.hash}) on Modal, {spec.describe()}")
        print(f"{timeout_hours:g} h per attempt, up to {RESTARTS} restarts from the last checkpoint", flush=True)
        outcome = start_run(chosen, spec, run_id, timeout, [modal.Secret.from_name(name) for name in secret_names])
        path = bring_home(outcome, chosen.name, run_id, Path(results_dir or chosen.output.results_dir))
    except HarnessError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"result: {path}\n\n{compare([str(path)])}")
    if outcome["result"]["status"] != "completed":
        raise SystemExit(1)


if __name__ == "__main__":
    fetch_command(sys.argv[1:])
