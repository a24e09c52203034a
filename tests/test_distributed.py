"""Two processes on CPU (gloo): a real distributed run, its numbers, DeepSpeed ZeRO-2 under torchrun, and a
rank killed mid-run. Every test asserts world_size == 2: two processes that silently train alone would
otherwise pass."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.results import find_result_files, load_result

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "banking77_10"
SMOKE = "minilm-banking77-cpu"
EVAL_ROWS = 101  # odd: the distributed sampler pads the last batch with duplicates that must not be counted
TWO_PROCESSES = {
    "hardware.device": "cpu",
    "hardware.num_processes": 2,
    "train.epochs": 1,
    "train.batch_size": 16,
    "data.max_train_samples": 128,  # 8 batches: 4 per rank
    "data.validation_file": DATA / "test.csv",
    "data.max_eval_samples": EVAL_ROWS,
    "data.test_file": "null",
    "collector.warmup_steps": 1,
}


def set_flags(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_result(folder: Path) -> dict:
    (path,) = find_result_files([folder])
    return load_result(path)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    flags = set_flags({**TWO_PROCESSES, "output.checkpoints_dir": out / "checkpoints"})
    assert main(["run", SMOKE, "--results-dir", str(out / "results"), *flags]) == 0
    return only_result(out / "results")


def test_two_processes_train_one_model(two_process_run):
    result = two_process_run
    ran = result["ran"]
    assert ran["world_size"] == 2 and ran["ranks_per_node"] == 2 and ran["num_machines"] == 1
    assert ran["distributed_type"] == "MULTI_CPU" and ran["backend"] == "gloo"
    assert ran["global_batch_size"] == 32
    assert [m["rank"] for m in result["memory"]["per_rank"]] == [0, 1]
    assert result["memory"]["peak_host_rss_bytes"] == max(m["peak_host_rss_bytes"] for m in result["memory"]["per_rank"])


def test_throughput_is_global_and_counts_each_sample_once(two_process_run):
    speed, log = two_process_run["speed"], two_process_run["training"]["step_log"]
    assert len(log["samples"]) == 4 and all(n == 32 for n in log["samples"])  # 16 per rank, 2 ranks
    assert sum(log["samples"]) == 128
    skip = speed["warmup_steps"]
    global_rate = sum(log["samples"][skip:]) / sum(log["durations_s"][skip:])
    assert speed["train_samples_per_s"] == pytest.approx(global_rate)
    assert speed["train_samples_per_s_per_device"] == pytest.approx(global_rate / 2)


def test_distributed_eval_equals_a_single_process_eval_of_the_checkpoint(two_process_run, tmp_path):
    reported = two_process_run["accuracy"]["validation"]
    assert reported["num_samples"] == EVAL_ROWS  # no duplicates from the padded last batch
    best = two_process_run["training"]["best"]["checkpoint"]
    assert main(["eval", best, "--split", "validation", "--results-dir", str(tmp_path)]) == 0
    single = only_result(tmp_path)["accuracy"]["validation"]
    assert single["num_samples"] == EVAL_ROWS
    for key in ("accuracy", "f1_macro", "f1_micro", "top2_accuracy", "loss"):
        assert single[key] == pytest.approx(reported[key], abs=1e-6), key
    assert single["confusion_matrix"] == reported["confusion_matrix"]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_under_torchrun(tmp_path, stage):
    pytest.importorskip("deepspeed")
    flags = set_flags({**TWO_PROCESSES, "hardware.deepspeed": f"zero{stage}", "output.checkpoints_dir": tmp_path / "ck"})
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", "harness.train", "--recipe", SMOKE,
               "--results-dir", str(tmp_path / "results"), *flags]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = only_result(tmp_path / "results")
    assert result["status"] == "completed"
    assert result["ran"]["world_size"] == 2 and result["ran"]["distributed_type"] == "DEEPSPEED"
    assert result["ran"]["deepspeed"] == {"stage": stage, "offload_optimizer": "none", "offload_param": "none"}
    assert result["accuracy"]["validation"]["num_samples"] == EVAL_ROWS
    assert sum(result["training"]["step_log"]["samples"]) == 128
    # the saved checkpoint holds the full model (ZeRO-3 gathers its partitions when saving)
    best = result["training"]["best"]["checkpoint"]
    assert main(["eval", best, "--split", "validation", "--results-dir", str(tmp_path / "eval")]) == 0
    single = only_result(tmp_path / "eval")["accuracy"]["validation"]
    assert single["accuracy"] == pytest.approx(result["accuracy"]["validation"]["accuracy"], abs=1e-6)


def worker_pids(marker: str) -> dict[int, int]:
    """rank -> pid of the harness.train workers started with this marker in their environment."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(
                item.split("=", 1) for item in (entry / "environ").read_bytes().decode().split("\0") if "=" in item
            )
            cmdline = (entry / "cmdline").read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            continue
        if environ.get("HARNESS_TEST_MARKER") == marker and "harness.train" in cmdline and "RANK" in environ:
            found[int(environ["RANK"])] = int(entry.name)
    return found


def test_a_killed_rank_fails_the_run_within_bounded_time(tmp_path):
    marker = str(tmp_path)
    flags = set_flags({**TWO_PROCESSES, "train.epochs": 20, "output.checkpoints_dir": tmp_path / "ck"})
    command = [sys.executable, "-m", "harness.cli", "run", SMOKE, "--results-dir", str(tmp_path / "results"), *flags]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "HARNESS_TEST_MARKER": marker},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while 1 not in (pids := worker_pids(marker)):
        assert time.monotonic() < deadline and process.poll() is None, "rank 1 never started"
        time.sleep(0.5)
    time.sleep(15)  # let the ranks load the model and start training together
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    output, _ = process.communicate(timeout=120)  # bounded: the launcher must end the run, not hang
    assert time.monotonic() - killed_at < 120
    assert process.returncode == 1, output[-3000:]
    result = only_result(tmp_path / "results")
    assert result["status"] == "failed" and result["speed"] is None
    assert result["error"]["rank"] == 1 and result["error"]["signal"] == "SIGKILL"
    assert not worker_pids(marker)  # rank 0 did not outlive the run
