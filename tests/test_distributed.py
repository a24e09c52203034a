"""Two processes on CPU (gloo): a real distributed run and its numbers, DeepSpeed ZeRO-2 and ZeRO-3 through
`harness run` (and under torchrun, your own launcher), and a rank killed mid-run. Every test asserts
world_size == 2: two processes that silently train alone would otherwise pass."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import steady_rate

from harness.cli import main
from harness.data import load_labelled, tokenize, train_loader
from harness.modeling import load_model, load_tokenizer
from harness.recipe import load_recipe
from harness.results import find_result_files, load_result

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "banking77_10"
SMOKE = "minilm-banking77-cpu"
EVAL_ROWS = 101  # odd: the distributed sampler pads the last batch with duplicates that must not be counted
TRAIN_ROWS = 120  # 3 rounds of 2 x 16 and 24 more: the last round is evened out with 8 repeats
TWO_PROCESSES = {
    "hardware.device": "cpu",
    "hardware.num_processes": 2,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.log_every_steps": 1,
    "data.max_train_samples": TRAIN_ROWS,
    "data.validation_file": DATA / "test.csv",
    "data.max_eval_samples": EVAL_ROWS,
    "data.test_file": "null",
    "collector.warmup_steps": 1,
    # no dropout: the first step's loss can then be computed here from the initial weights
    "model.config_overrides": "{hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
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
    assert ran["cpu_threads"] == max(1, torch.get_num_threads() // 2)  # the machine's threads shared
    assert [m["rank"] for m in result["memory"]["per_rank"]] == [0, 1]
    assert result["memory"]["peak_host_rss_bytes"] == max(m["peak_host_rss_bytes"] for m in result["memory"]["per_rank"])


def test_throughput_is_global_and_counts_each_sample_once(two_process_run):
    speed, log = two_process_run["speed"], two_process_run["training"]["step_log"]
    assert log["samples"] == [32, 32, 32, 24] and log["repeated_samples"] == [0, 0, 0, 8]  # repeats apart
    assert speed["repeated_samples"] == 8 and sum(log["samples"]) == TRAIN_ROWS
    assert log["padded_tokens"][-1] >= 32 * 1  # the repeats are computed, so their positions count as padded
    rate = steady_rate(log, speed["warmup_steps"])
    assert speed["train_samples_per_s"] == pytest.approx(rate)
    assert speed["train_samples_per_s_per_device"] == pytest.approx(rate / 2)


def test_the_logged_loss_is_the_mean_over_ranks(two_process_run):
    """Step 1's loss, computed here from the initial weights on the two batches the ranks took: the mean over
    both ranks, not rank 0's alone."""
    recipe = load_recipe(SMOKE, set_flags(TWO_PROCESSES)[1::2])
    labelled = load_labelled(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    data = tokenize(labelled.splits, tokenizer, recipe.data)
    loader = train_loader(data["train"], tokenizer, 16, recipe.train.seed, True, num_processes=2)
    loader.batch_sampler.sampler.set_epoch(0)
    first_round = iter(loader)
    torch.manual_seed(recipe.train.seed)  # what set_seed does for torch: the same classifier initialisation
    model = load_model(recipe.model, labelled.labels, "sdpa").eval()
    with torch.no_grad():
        losses = [model(**{k: v for k, v in next(first_round).items() if k != "counts"}).loss.item() for _ in "01"]
    logged = two_process_run["training"]["loss_history"][0]
    assert logged["step"] == 1
    assert logged["loss"] == pytest.approx(sum(losses) / 2, abs=1e-5)
    assert abs(logged["loss"] - losses[0]) > 1e-4  # not rank 0's alone


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
def test_deepspeed_through_harness_run_counts_as_ddp_does(two_process_run, tmp_path, stage):
    """The documented path (`harness run ... --set hardware.deepspeed=zero2`), two processes: the same parameter
    counts, decay groups and FLOPs per step as the DDP run of the same recipe (ZeRO-3 partitions parameters,
    which must not make them look empty), and a checkpoint that holds the full model."""
    pytest.importorskip("deepspeed")
    flags = set_flags({**TWO_PROCESSES, "hardware.deepspeed": f"zero{stage}", "output.checkpoints_dir": tmp_path / "ck"})
    environment = dict(os.environ)
    assert main(["run", SMOKE, "--results-dir", str(tmp_path / "results"), *flags]) == 0
    assert dict(os.environ) == environment  # torch elastic's OMP_NUM_THREADS=1 must not reach the next run
    result = only_result(tmp_path / "results")
    ran, ddp = result["ran"], two_process_run["ran"]
    assert result["status"] == "completed"
    assert ran["world_size"] == 2 and ran["distributed_type"] == "DEEPSPEED"
    assert ran["deepspeed"] == {"stage": stage, "offload_optimizer": "none", "offload_param": "none"}
    for key in ("num_parameters", "num_non_embedding_parameters", "weight_decay_groups", "flops_model"):
        assert ran[key] == ddp[key], key
    assert ran["num_parameters"] == 22_717_066  # all-MiniLM-L6-v2 with a 10-class head (read off its files)
    assert result["training"]["step_log"]["flops"] == two_process_run["training"]["step_log"]["flops"]
    assert result["accuracy"]["validation"]["num_samples"] == EVAL_ROWS
    assert sum(result["training"]["step_log"]["samples"]) == TRAIN_ROWS
    best = result["training"]["best"]["checkpoint"]  # ZeRO-3 gathers its partitions when saving
    assert main(["eval", best, "--split", "validation", "--results-dir", str(tmp_path / "eval")]) == 0
    single = only_result(tmp_path / "eval")["accuracy"]["validation"]
    assert single["accuracy"] == pytest.approx(result["accuracy"]["validation"]["accuracy"], abs=1e-6)


def test_deepspeed_zero3_bf16_on_one_process_through_harness_run(tmp_path):
    """What ran is read from the prepared model: DeepSpeed's bf16 engine holds bf16 parameters."""
    pytest.importorskip("deepspeed")
    flags = set_flags({**TWO_PROCESSES, "hardware.num_processes": 1, "hardware.deepspeed": "zero3",
                       "precision.dtype": "bf16", "train.max_steps": 2, "output.checkpoints_dir": tmp_path / "ck"})  # fmt: skip
    assert main(["run", SMOKE, "--results-dir", str(tmp_path / "results"), *flags]) == 0
    ran = only_result(tmp_path / "results")["ran"]
    assert ran["world_size"] == 1 and ran["distributed_type"] == "DEEPSPEED" and ran["deepspeed"]["stage"] == 3
    assert ran["num_parameters"] == 22_717_066
    assert (ran["parameter_dtype"], ran["mixed_precision"]) == ("bfloat16", "bf16")


def test_your_own_launcher_torchrun_with_deepspeed(tmp_path):
    """`torchrun -m harness.train --recipe ...`: the worker sets DeepSpeed up from the recipe by itself."""
    pytest.importorskip("deepspeed")
    flags = set_flags({**TWO_PROCESSES, "hardware.deepspeed": "zero2", "train.max_steps": 2,
                       "output.checkpoints_dir": tmp_path / "ck"})  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", "harness.train", "--recipe", SMOKE,
               "--results-dir", str(tmp_path / "results"), *flags]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = only_result(tmp_path / "results")
    assert result["ran"]["world_size"] == 2 and result["ran"]["distributed_type"] == "DEEPSPEED"
    assert result["training"]["optimizer_steps"] == 2


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
