"""GPU checks: the GPU paths run for real and their numbers are checked against values measured another way.
Skipped without CUDA. Run them with `scripts/gpu-check.sh` (or `pytest -m gpu`) on a CUDA machine, offline:
the ModernBERT-base shape is built from its config with random weights, the tokenizer is the packaged MiniLM's.
With HARNESS_GPU_RESULTS=DIR the result files are kept there (the script keeps them under results/gpu-check/)."""

import os
import time
from pathlib import Path

import pytest
import torch

from harness import train
from harness.cli import main
from harness.hardware import math_mode, peak_flops
from harness.plan import make_plan
from harness.recipe import load_recipe
from harness.results import find_result_files, load_result
from harness.stopping import StopRequests

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (see scripts/gpu-check.sh)"),
]

SPEED = "modernbert-shape-bf16-speed"
TOKENS = 128  # every training text is longer: truncation makes every sequence exactly this long
SHORT = ["train.epochs=1", "train.eval_strategy=no", "train.save_best=false", "data.test_file=null",
         "collector.warmup_steps=5"]  # fmt: skip


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    kept = os.environ.get("HARNESS_GPU_RESULTS")
    return Path(kept) if kept else tmp_path_factory.mktemp("gpu-results")


@pytest.fixture(scope="module")
def fixed_length_csv(tmp_path_factory) -> Path:
    """2048 texts of 300 words, two labels: after truncation every sequence has exactly TOKENS real tokens, so
    the model FLOPs of a step can be computed by hand; about 58 steps of 32, so the loop lasts long enough for
    a 2% comparison of its step times with its wall time."""
    folder = tmp_path_factory.mktemp("fixed")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    rows = [" ".join(words[(i + j) % 10] for j in range(300)) + f",{i % 2}" for i in range(2048)]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return folder / "train.csv"


def run_speed_recipe(results_dir: Path, tmp_path: Path, *overrides: str) -> dict:
    """The speed recipe through `harness run` (a process of its own, as users run it)."""
    flags = [f"--set={o}" for o in [*SHORT, f"output.checkpoints_dir={tmp_path / 'ck'}", *overrides]]
    before = set(find_result_files([results_dir])) if results_dir.exists() else set()
    assert main(["run", SPEED, "--results-dir", str(results_dir), *flags]) == 0
    (path,) = set(find_result_files([results_dir])) - before
    return load_result(path)


@pytest.fixture(scope="module")
def precision_runs(results_dir, fixed_length_csv, tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("runs")
    data = [f"data.train_file={fixed_length_csv}", f"data.max_length={TOKENS}", "data.validation_fraction=0.1"]
    runs = {}
    for dtype, tf32 in (("bf16", "true"), ("fp16", "true"), ("fp32", "false")):
        runs[dtype] = run_speed_recipe(results_dir, tmp / dtype, f"precision.dtype={dtype}",
                                       f"precision.tf32={tf32}", *data)  # fmt: skip
    return runs


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_each_precision_runs_on_the_gpu_and_says_what_ran(precision_runs, dtype):
    result = precision_runs[dtype]
    ran = result["ran"]
    assert result["status"] == "completed"
    assert ran["device"] == "cuda" and ran["parameter_device"].startswith("cuda")  # read from the prepared model
    assert ran["device_name"] == torch.cuda.get_device_name()
    assert ran["mixed_precision"] == {"fp32": "no"}.get(dtype, dtype)
    assert ran["attn_implementation"] == "sdpa" and ran["parameter_dtype"] == "float32"  # fp32 master weights
    assert result["memory"]["cuda_peak_allocated_bytes"] > 0


def test_bf16_peak_memory_is_below_fp32(precision_runs):
    peaks = {dtype: r["memory"]["cuda_peak_allocated_bytes"] for dtype, r in precision_runs.items()}
    assert peaks["bf16"] < peaks["fp32"], peaks


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_mfu_equals_a_hand_computation_from_the_recorded_counts(precision_runs, dtype):
    result = precision_runs[dtype]
    log, speed, model = result["training"]["step_log"], result["speed"], result["ran"]["flops_model"]
    assert all(real == samples * TOKENS for real, samples in zip(log["real_tokens"], log["samples"]))
    pairs = sum(TOKENS * (TOKENS if w is None else min(TOKENS, w)) for w in model["attention_windows"])
    per_sequence = (6 * model["per_token_params"] * TOKENS + 12 * model["hidden_size"] * pairs
                    + 6 * model["per_sequence_params"])  # fmt: skip
    flops = per_sequence * sum(log["samples"])
    skip = speed["warmup_steps"]
    measured_s = sum(log["durations_s"][skip:])
    seconds = measured_s * sum(log["padded_tokens"]) / sum(log["padded_tokens"][skip:])
    precision = result["recipe"]["precision"]
    peak = peak_flops(torch.cuda.get_device_name(), math_mode(precision["dtype"], precision["tf32"]))
    if peak is None:
        pytest.skip(f"{torch.cuda.get_device_name()} is not in the peak table: MFU is null, as it must be")
    assert speed["mfu"] == pytest.approx(flops / seconds / peak, rel=1e-9)
    assert 0 < speed["mfu"] < 1


def test_cuda_event_step_times_sum_to_the_synchronised_wall_time(precision_runs):
    """No evaluation and no saving inside the loop: the training loop's wall time (ended by a synchronisation)
    is the span of its steps, which the CUDA events measure without any synchronisation of their own."""
    result = precision_runs["bf16"]
    events = sum(result["training"]["step_log"]["durations_s"])
    assert events == pytest.approx(result["speed"]["train_wall_s"], rel=0.02)


def test_cuda_peak_memory_equals_max_memory_allocated_read_here(fixed_length_csv, tmp_path):
    """The worker in this process, then torch's own counter read here."""
    recipe = load_recipe(SPEED, [*SHORT, f"data.train_file={fixed_length_csv}", f"data.max_length={TOKENS}",
                                 "data.validation_fraction=0.1", f"output.checkpoints_dir={tmp_path / 'ck'}"])  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    started = time.time()
    plan = make_plan(recipe, results_dir=str(tmp_path / "results"))
    with StopRequests(watch_parent=False) as stop:
        result = load_result(train.finish(train.Run(plan, stop)))
    assert result["memory"]["cuda_peak_allocated_bytes"] == torch.cuda.max_memory_allocated()
    assert result["memory"]["cuda_peak_reserved_bytes"] == torch.cuda.max_memory_reserved()
    assert result["speed"]["total_wall_s"] <= time.time() - started + 1


def test_attention_implementations_give_the_same_logits():
    """eager, sdpa, flex_attention and (when installed) flash_attention_2 on one ModernBERT-base-shaped model
    in bf16, on a padded batch: the same logits within bf16 tolerance."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    implementations = ["eager", "sdpa", "flex_attention"]
    try:
        import flash_attn  # noqa: F401

        implementations.append("flash_attention_2")
    except ImportError:
        pass
    torch.manual_seed(0)
    config = AutoConfig.for_model("modernbert", num_labels=4)
    reference = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    state = reference.state_dict()
    lengths = [512, 300, 17, 128]
    ids = torch.randint(5, 30000, (len(lengths), max(lengths)), device="cuda")
    mask = (torch.arange(max(lengths), device="cuda")[None, :] < torch.tensor(lengths, device="cuda")[:, None]).long()
    logits = {}
    for implementation in implementations:
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation=implementation)
        model.load_state_dict(state)
        model = model.to("cuda", torch.bfloat16).eval()
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model(input_ids=ids, attention_mask=mask).logits.float()
    for implementation, value in logits.items():
        torch.testing.assert_close(value, logits["eager"], atol=3e-2, rtol=3e-2, msg=implementation)


def flash_attention_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flash_attention_2"])
def test_packed_logits_equal_the_padded_forward_on_the_gpu(implementation):
    """data.packing on CUDA in bf16, ModernBERT-base shape (sliding and global layers): each sample's logits
    from the packed row equal its padded forward's within bf16 tolerance, for the varlen kernel (flash-attn)
    and the block-diagonal masks (sdpa, eager)."""
    if implementation == "flash_attention_2" and not flash_attention_installed():
        pytest.skip("flash-attn is not installed")
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from harness.packing import PackingCollator, accept_packed_batches

    torch.manual_seed(0)
    config = AutoConfig.for_model("modernbert", num_labels=4)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=implementation)
    model = accept_packed_batches(model.to("cuda", torch.bfloat16).eval())
    lengths = [512, 300, 17, 128, 200]
    rows = [{"input_ids": torch.randint(5, 30000, (n,)).tolist(), "labels": i % 4, "length": n}
            for i, n in enumerate(lengths)]  # fmt: skip
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    packed = PackingCollator()([dict(r) for r in rows])
    packed.pop("counts")
    packed = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
    with torch.no_grad():
        reference = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits.float()
        logits = model(**packed).logits.float()
    torch.testing.assert_close(logits, reference, atol=3e-2, rtol=3e-2)


def test_fast_path_switches_run_on_the_gpu_and_say_so(results_dir, fixed_length_csv, tmp_path):
    """torch.compile, packing and gradient checkpointing together on the speed recipe: the run completes and its
    result records each switch as it ran (compile counts, packed batches with no padding, checkpointing)."""
    attention = "flash_attention_2" if flash_attention_installed() else "sdpa"
    result = run_speed_recipe(results_dir, tmp_path, f"data.train_file={fixed_length_csv}", "train.compile=true",
                              "data.packing=true", "train.gradient_checkpointing=true", "data.pad_to_multiple_of=null",
                              f"model.attn_implementation={attention}")  # fmt: skip
    ran = result["ran"]
    assert ran["compile"]["run"]["compiles"] >= 1 and ran["compile"]["run"]["eager_fallbacks"] == 0
    assert ran["packing"]["train_batches"] == "packed" and ran["gradient_checkpointing"] is True
    assert result["speed"]["padding_efficiency"] == 1.0
    assert ran["attn_implementation"] == attention


def test_profile_writes_a_trace_and_a_cuda_memory_snapshot(results_dir, fixed_length_csv, tmp_path):
    import gzip
    import json
    import pickle

    flags = [f"--set={o}" for o in [*SHORT, f"output.checkpoints_dir={tmp_path / 'ck'}", "train.max_steps=12",
                                    f"data.train_file={fixed_length_csv}"]]  # fmt: skip
    out = tmp_path / "results"
    assert main(["run", SPEED, "--results-dir", str(out), "--profile", "3", *flags]) == 0
    (path,) = find_result_files([out])
    profile = load_result(path)["ran"]["profile"]
    folder = Path(profile["folder"])
    with gzip.open(folder / profile["files"]["trace"], "rt") as handle:
        events = json.load(handle)["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events)
    with open(folder / profile["files"]["memory_snapshot"], "rb") as handle:
        assert "segments" in pickle.load(handle)
