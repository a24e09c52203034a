"""Run a recipe on Modal GPUs as `harness run` would run it locally; its result file comes home to results/.

    modal run harness/launch.py --recipe modernbert-emotion-bf16
    modal run harness/launch.py --recipe modernbert-emotion-bf16 --gpu H100:4 --set "hardware.num_processes=4"
    modal run --detach harness/launch.py --recipe ...    # the run goes on if this terminal goes away
    modal run harness/launch.py --fetch                  # copy finished results from the volume to results/

The recipe, its overrides and the GPU are checked here, before any container starts. In the container the run goes
through harness.launcher.launch, the launch path of local runs (`accelerate launch` for several GPUs); a run over
several nodes is a modal.clustered function whose every node launches its share. State lives on two volumes: the
Hugging Face cache (models and data sets are downloaded once) and the runs (results and checkpoints), so that a
preempted or restarted container resumes from the run's last checkpoint. Setup, options and costs: docs/modal.md.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import modal
import modal.experimental

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
MAIN_PROCESS_PORT = 29500
CPU_PER_GPU = 4.0  # reserved cores: data loading counts in the step times, so it must not depend on a neighbour
RESTARTS = 3  # a preempted or crashed attempt runs again, resuming from the last checkpoint
DEFAULT_TIMEOUT_HOURS = 6.0
MAX_TIMEOUT_HOURS = 24.0  # Modal's limit for one attempt
CLUSTER_NODE_GPUS = 8  # a node of a Modal cluster is a whole 8-GPU machine
# Modal GPU types (https://modal.com/docs/guide/gpu) -> the most GPUs one container can have
GPU_TYPES = {
    "T4": 8, "L4": 8, "A10": 4, "A10G": 4, "L40S": 8, "A100": 8, "A100-40GB": 8, "A100-80GB": 8,
    "RTX-PRO-6000": 8, "H100": 8, "H100!": 8, "H200": 8, "B200": 8, "B200+": 8,
}  # fmt: skip


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

# GPU, timeout and secrets are set per run (with_options); a retried input is the same plan: same run id, same folder
CONTAINER: dict[str, Any] = {
    "image": image,
    "volumes": {HF_MOUNT: hf_cache, str(RUNS_MOUNT): runs},
    "timeout": int(DEFAULT_TIMEOUT_HOURS * 3600),
    "retries": modal.Retries(max_retries=RESTARTS, initial_delay=0.0),
}


@app.function(**CONTAINER)
def train(recipe: dict, run_id: str, gpu: str, git: dict | None = None) -> dict:
    return run_node(recipe, run_id, gpu, MachineRole(), git=git)


# A clustered function's size is fixed when it is defined, hence one per node count. Its GPU is set per run, but a
# cluster must ask for GPUs when it is defined.
@app.function(gpu=f"H100:{CLUSTER_NODE_GPUS}", **CONTAINER)
@modal.clustered(size=2, rdma=True)
def train_2_nodes(recipe: dict, run_id: str, gpu: str, git: dict | None = None) -> dict:
    return run_node(recipe, run_id, gpu, cluster_role(), git=git)


@app.function(gpu=f"H100:{CLUSTER_NODE_GPUS}", **CONTAINER)
@modal.clustered(size=4, rdma=True)
def train_4_nodes(recipe: dict, run_id: str, gpu: str, git: dict | None = None) -> dict:
    return run_node(recipe, run_id, gpu, cluster_role(), git=git)


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
    if nodes > 1 and nodes not in TRAINERS:
        raise LaunchError(f"hardware.num_machines: Modal runs take {', '.join(map(str, TRAINERS))} nodes, not {nodes}")
    if nodes > 1 and count != CLUSTER_NODE_GPUS:
        raise LaunchError(
            f"{source}: {text!r}: a Modal cluster node is a whole machine of {CLUSTER_NODE_GPUS} GPUs; "
            f"use --gpu {kind}:{CLUSTER_NODE_GPUS} --set hardware.num_processes={CLUSTER_NODE_GPUS * nodes}"
        )
    per_node = hardware.num_processes // nodes
    if count != per_node:
        raise LaunchError(
            f"{source}: {text!r} gives each node {count} GPU(s) but the recipe starts {per_node} process(es) per node "
            f"(hardware.num_processes {hardware.num_processes} over hardware.num_machines {nodes}); "
            f"match them with --set hardware.num_processes={count * nodes}, or --gpu {kind}:{per_node}"
        )
    if hardware.device == "cpu":
        raise LaunchError("hardware.device: 'cpu' would leave the Modal GPUs idle; pass --set hardware.device=cuda")
    check_shipped_files(recipe)
    return LaunchSpec(
        gpu=f"{kind}:{count}", nodes=nodes, processes=hardware.num_processes, deepspeed=hardware.deepspeed
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


# --------------------------------------------------------------------------- in the container


def run_node(
    recipe: dict, run_id: str, gpu: str, role: MachineRole, runs_dir: Path = RUNS_MOUNT, git: dict | None = None
) -> dict:
    """One container's work: its node's share of the run, through the launcher of local runs.

    Returns {"result": the result document (node 0; None on other nodes), "error": why the run could not start}.
    A run that cannot start, or that failed, is answered rather than raised: Modal retries what raises, and bad
    input or a failing rank would fail again. What raises (RunInterrupted: preempted workers) is retried and
    resumes from the last epoch saved on the volume.
    """
    plan = Plan(
        recipe=recipe_from_dict(recipe),
        run_id=run_id,
        results_dir=str(runs_dir / "results"),
        checkpoint_dir=str(runs_dir / "checkpoints" / recipe["name"] / run_id),
    )
    os.environ[MODAL_GPU_ENV] = gpu  # the workers inherit it
    if git and git.get("commit"):  # the image has no .git: the commit of the local checkout that launched the run
        os.environ.update({GIT_ENV[0]: git["commit"], GIT_ENV[1]: "1" if git.get("dirty") else "0"})
    path = result_path(Path(plan.results_dir), plan.recipe.name, run_id)
    try:
        prefetch_model(plan.recipe.model)
        # a retried attempt continues from the state saved in the run's folder, or finds the run finished
        launch(plan, role, resume=True)
    except RunFailed as failure:
        if failure.path is not None:  # node 0: the failed attempt becomes the run's result and comes home
            write_new_json(path, json.loads(failure.path.read_text()))
    except HarnessError as error:
        return {"result": None, "error": str(error)}
    if role.machine_rank or not path.is_file():
        return {"result": None, "error": None}  # Modal returns node 0's answer only
    return {"result": json.loads(path.read_text()), "error": None}


def prefetch_model(spec: ModelSpec) -> None:
    """Download the model into the Hugging Face cache in this one process, before the ranks start and each asks
    the Hub for it. (The launcher loads the data set once itself, before launching.) Each node of a cluster
    fetches into its own view of the volume: the same files, so their commits agree."""
    if spec.name.startswith(("package:", "config:")) or Path(spec.name).is_dir():
        return
    from huggingface_hub import HfApi, snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.py"]  # configs, tokenizer files, remote code
    if not spec.random_init:  # one weights format: safetensors where the repository has them, as transformers loads
        files = HfApi().list_repo_files(spec.name, revision=spec.revision)
        patterns.append("*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin")
    snapshot_download(spec.name, revision=spec.revision, allow_patterns=patterns)


def cluster_role() -> MachineRole:
    """This container's place in a modal.clustered run: its rank, and node 0's address for the rendezvous."""
    info = modal.experimental.get_cluster_info()
    main_ip = (info.container_ipv4_ips or info.container_ips)[0]
    return MachineRole(machine_rank=info.rank, main_process_ip=main_ip, main_process_port=MAIN_PROCESS_PORT)


# --------------------------------------------------------------------------- results come home


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


@app.local_entrypoint()
def main(
    recipe: str = "",
    set: str = "",
    gpu: str = "",
    timeout_hours: float = 0.0,
    secrets: str = "",
    results_dir: str = "",
    fetch: bool = False,
) -> None:
    """--recipe NAME runs it (overrides in one --set, space-separated; --gpu TYPE:COUNT; --timeout-hours per attempt,
    default the recipe's hardware.timeout_hours, else 6; --secrets names of Modal secrets, comma-separated);
    --fetch copies finished results from the runs volume into the results folder."""
    from harness.compare import compare

    try:
        if fetch:
            copied = fetch_results(runs, Path(results_dir or "results"))
            print("\n".join(f"fetched: {path}" for path in copied) or "no new results")
            return
        if not recipe:
            raise LaunchError("--recipe: required (a recipe name from `harness list`, or a YAML path); or --fetch")
        check_single_set(sys.argv)
        chosen = load_recipe(recipe, shlex.split(set))
        spec = launch_spec(chosen, gpu)
        timeout_hours = timeout_hours or chosen.hardware.timeout_hours or DEFAULT_TIMEOUT_HOURS
        timeout = timeout_seconds(timeout_hours)
        secret_names = [name.strip() for name in secrets.split(",") if name.strip()]
        run_id = new_run_id(chosen.name)
        print(f"run {run_id}: recipe {chosen.name} (hash {chosen.hash}) on Modal, {spec.describe()}")
        print(f"{timeout_hours:g} h per attempt, up to {RESTARTS} restarts from the last checkpoint", flush=True)
        trainer = TRAINERS[spec.nodes].with_options(
            gpu=spec.gpu,
            cpu=CPU_PER_GPU * spec.processes / spec.nodes,
            timeout=timeout,
            secrets=[modal.Secret.from_name(name) for name in secret_names],
        )
        outcome = trainer.remote(chosen.to_dict(), run_id, spec.gpu, git_state())
        path = bring_home(outcome, chosen.name, run_id, Path(results_dir or chosen.output.results_dir))
    except HarnessError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"result: {path}\n\n{compare([str(path)])}")
    if outcome["result"]["status"] != "completed":
        raise SystemExit(1)
