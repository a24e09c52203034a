"""The result of a finished run: every rank's numbers gathered, what ran read back from the runtime, the
per-example predictions and the result file, written by the main process only."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import gather_object

from harness.collector import StepLog, merge_rank_logs, speed_report
from harness.distributed import deepspeed_summary, fsdp_options
from harness.environment import collect_environment
from harness.evaluation import Evaluation
from harness.failures import record_failure
from harness.hardware import math_mode, peak_flops
from harness.packing import attention_mode
from harness.results import (
    MemoryReport,
    RunResult,
    SpeedReport,
    predictions_path,
    save_predictions,
    save_result,
    save_somewhere,
    utc_now,
)  # fmt: skip

if TYPE_CHECKING:
    from harness.checkpoints import Progress
    from harness.plan import Plan
    from harness.train import Outcome, Run


def peak_memory(device: str) -> dict[str, Any]:
    """This process's peaks: host RSS always, CUDA allocated and reserved on GPUs. Every run is a process of
    its own, so no earlier run's memory is in them."""
    memory: dict[str, Any] = {"peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # KiB
    if device == "cuda":
        memory["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        memory["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return memory


def memory_report(per_rank: list[dict[str, Any]]) -> MemoryReport:
    """Each field's maximum over ranks (the rank that runs out first), with every rank's numbers kept."""

    def most(key: str) -> int | None:
        values = [m[key] for m in per_rank if m.get(key) is not None]
        return max(values) if values else None

    return MemoryReport(
        peak_host_rss_bytes=most("peak_host_rss_bytes"),
        cuda_peak_allocated_bytes=most("cuda_peak_allocated_bytes"),
        cuda_peak_reserved_bytes=most("cuda_peak_reserved_bytes"),
        per_rank=per_rank,
    )


def prediction_arrays(evaluations: dict[str, Evaluation]) -> dict[str, np.ndarray]:
    """Per split, the true and the predicted class of every example in the split's row order, so that two runs
    on the same data can be compared example by example (a paired test)."""
    arrays = {}
    for split, evaluation in evaluations.items():
        order = np.argsort(evaluation.rows)
        arrays[f"{split}.labels"] = evaluation.labels[order].astype(np.int32)
        arrays[f"{split}.preds"] = evaluation.probs.argmax(axis=1)[order].astype(np.int32)
    return arrays


def ran(run: Run) -> dict[str, Any]:
    """What actually ran, read from the runtime and the prepared model rather than copied from the recipe."""
    acc, recipe = run.accelerator, run.recipe
    train = recipe.train
    deepspeed = acc.state.deepspeed_plugin
    ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
    return {
        "device": run.device,
        "device_name": device_name(run.device),
        "world_size": acc.num_processes,
        "ranks_per_node": ranks_per_node,
        "num_machines": acc.num_processes // ranks_per_node,
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "backend": getattr(acc.state, "backend", None),
        "mixed_precision": acc.mixed_precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_threads": torch.get_num_threads(),  # intra-op threads of each process
        "fused_optimizer": run.fused,
        "loader": {"num_workers": run.train_dl.num_workers, "pin_memory": run.train_dl.pin_memory,  # as prepared
                   "non_blocking": acc.dataloader_config.non_blocking,
                   "pad_to_multiple_of": run.loader_options.pad_to_multiple_of,
                   "length_buckets": list(run.loader_options.length_buckets or []) or None},
        "packing": packing_summary(run),
        "profile": profile_summary(run),
        "compile": compile_summary(run),
        "weight_decay_groups": run.decay_groups,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "global_batch_size": train.batch_size * train.gradient_accumulation_steps * acc.num_processes,
        "precision": recipe.precision.dtype,
        "deepspeed": deepspeed_summary(deepspeed.deepspeed_config) if deepspeed else None,
        "fsdp": fsdp_options(recipe) if recipe.hardware.fsdp else None,
        "fallbacks": run.decisions.fallbacks,
        "flops_model": run.flops.to_dict(),
        **run.model_description,
    }


def packing_summary(run: Run) -> dict[str, Any] | None:
    """How training batches were packed (data.packing), or None when they were padded."""
    if not run.recipe.data.packing:
        return None
    return {"train_batches": "packed", "evaluation_batches": "padded",
            "attention": attention_mode(run.decisions.attn_implementation)}  # fmt: skip


def compile_summary(run: Run) -> dict[str, Any] | None:
    """train.compile: how, and what compiling cost on this rank: over the whole run (the first steps and the
    evaluations included) and inside the measured window, where a recompile's time is inside the step times."""
    if run.compile_watch is None:
        return None
    window, plugin = run.window_compiled, run.accelerator.state.dynamo_plugin  # read back from accelerate
    return {"backend": plugin.backend.value.lower(), "mode": plugin.mode, "dynamic": plugin.dynamic,
            "run": run.compile_watch.read().to_dict(), "measured_window": window.to_dict() if window else None}  # fmt: skip


def profile_summary(run: Run) -> dict[str, Any] | None:
    """`harness run --profile N`: which steps were profiled and where the files are (this rank's names)."""
    if not run.plan.profile_steps:
        return None
    first = run.recipe.collector.warmup_steps + 1
    return {"steps": [first, first + run.plan.profile_steps - 1], "folder": str(run.plan.profile_dir),
            "files": run.step_profiler.files() if run.step_profiler else {}}  # fmt: skip


def device_name(device: str) -> str | None:
    return torch.cuda.get_device_name() if device == "cuda" else None


def gather_and_save(run: Run, outcome: Outcome, test: Evaluation | None, test_from: str | None) -> Path | None:
    """Collect every rank's step log and memory, end the process group, and (main process) write the
    predictions and the result file; returns the result's path on the main process."""
    acc = run.accelerator
    logs = gather_object([outcome.log.to_dict()])
    memory = gather_object([{"rank": acc.process_index, **peak_memory(run.device)}])
    energies = gather_object([run.energy.window_joules()])
    acc.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # an orderly exit: no rank tears the group down mid-use
    if not acc.is_main_process:
        return None
    evaluations = {split: e for split, e in (("validation", run.best_validation), ("test", test)) if e is not None}
    results_dir, name, run_id = Path(run.plan.results_dir), run.recipe.name, run.plan.run_id
    predictions = None
    if evaluations:
        arrays = prediction_arrays(evaluations)

        def write(folder: Path) -> Path:
            return save_predictions(predictions_path(folder, name, run_id), arrays)

        predictions = save_somewhere(results_dir, write)
        results_dir = predictions.parent.parent  # the result goes beside its predictions (a fallback if need be)
    result = build_result(run, outcome, test, test_from, logs, memory, energies)
    result.predictions_file = predictions.name if predictions else None
    return save_result(results_dir, result)


def add_energy(speed: SpeedReport, log: StepLog, energies: list[float | None]) -> None:
    """The measured window's energy over every GPU, and per training sample of the measured steps."""
    if None in energies or speed.measured_steps == 0:
        return
    speed.energy_j = sum(energies)
    samples = sum(log.samples[speed.warmup_steps:])
    speed.joules_per_sample = speed.energy_j / samples if samples else None


def target_record(run: Run, progress: Progress, log: StepLog, resumed_from: int | None) -> dict[str, Any] | None:
    """Time to target: when the first evaluation reached train.target (null fields if none did), with the
    optimizer steps and the training samples it took. A target reached in an earlier attempt of a resumed run
    has no sample count here (this attempt's step log does not cover it)."""
    target = run.recipe.train.target
    if not target:
        return None
    reached = progress.target or {}
    steps_before = resumed_from or 0
    samples = None
    if reached and reached["step"] > steps_before:
        samples = sum(log.samples[: reached["step"] - steps_before])
    return {"metrics": target, "reached": bool(reached), "step": reached.get("step"), "epoch": reached.get("epoch"),
            "samples": samples, "train_wall_s": reached.get("train_wall_s"), "energy_j": reached.get("energy_j")}  # fmt: skip


def build_result(run: Run, outcome: Outcome, test: Evaluation | None, test_from: str | None,
                 logs: list[dict], memory: list[dict], energies: list[float | None]) -> RunResult:  # fmt: skip
    recipe, progress = run.recipe, outcome.progress
    best, names = progress.best, run.labels.names
    accuracy = {}
    if best["metrics"] is not None:
        accuracy["validation"] = best["metrics"]
    if test is not None:
        accuracy["test"] = test.metrics(names)
    final = test or run.best_validation  # the schema's eval_samples_per_s: the test split's, else validation's
    log = merge_rank_logs(logs)
    device = device_name(run.device)
    speed = speed_report(
        log,
        warmup_steps=run.untimed_steps,
        world_size=run.accelerator.num_processes,
        peak_flops_per_device=peak_flops(device, math_mode(recipe.precision.dtype, recipe.precision.tf32)),
        time_to_first_step_s=outcome.first_step_s,
        train_wall_s=outcome.train_wall_s,
        eval_samples_per_s=final.samples_per_s if final else None,
        total_wall_s=time.time() - run.started,
    )
    add_energy(speed, log, energies)
    return RunResult(
        run_id=run.plan.run_id, kind="train", status="completed",
        recipe_name=recipe.name, recipe_hash=recipe.hash, recipe=recipe.to_dict(),
        started_at=run.started_at, finished_at=utc_now(),
        ran=ran(run), speed=speed, memory=memory_report(memory), accuracy=accuracy,
        training={
            "optimizer_steps": progress.step, "epochs": run.epochs, "steps_per_epoch": run.steps_per_epoch,
            "num_samples": {split: len(ds) for split, ds in run.data.items()},
            "labels": names,
            "data": {"dataset_commit": run.labelled.commit, "fingerprints": run.labelled.fingerprints(),
                     "synthetic": run.labelled.synthetic},
            "loss_history": progress.history, "evaluations": progress.evals,
            "best": {"step": best["step"], "metric": recipe.train.metric_for_best_model, "value": best["value"],
                     "checkpoint": str(run.plan.best_checkpoint) if recipe.train.save_best else None},
            "test_from": test_from,
            "target": target_record(run, progress, log, outcome.resumed_from_step),
            "resumed_from_step": outcome.resumed_from_step,
            "step_log": log.to_dict(),
        },
        environment=collect_environment(),
        repeats=run.plan.repeats,
    )  # fmt: skip


def progress_so_far(run: Run | None) -> dict[str, Any]:
    """A stopped run's training record: the steps it made, its loss and evaluations, its best checkpoint and the
    saved state a resumable run continues from."""
    if run is None or run.progress is None:
        return {}
    progress, best = run.progress, run.progress.best
    checkpoint = run.plan.best_checkpoint if best["step"] is not None and run.recipe.train.save_best else None
    return {
        "optimizer_steps": progress.step, "total_steps": run.total_steps, "epochs_done": progress.epochs_done,
        "loss_history": progress.history, "evaluations": progress.evals,
        "best": {"step": best["step"], "metric": run.recipe.train.metric_for_best_model, "value": best["value"],
                 "metrics": best["metrics"], "checkpoint": str(checkpoint) if checkpoint else None},
        "saved_state": str(run.state_dir) if (run.state_dir / "progress.json").is_file() else None,
    }  # fmt: skip


def save_interrupted(plan: Plan, started_at: str, signal_name: str, run: Run | None) -> Path | None:
    """The main process records where a run stopped by a signal got to (status "interrupted"); every rank
    left the loop after the same step, so the record is the run's, not one rank's."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    training = progress_so_far(run)
    where = f" after step {training['optimizer_steps']} of {training['total_steps']}" if training else " while loading"
    error = {"type": "Interrupted", "signal": signal_name, "rank": None, "message": f"stopped by {signal_name}{where}"}
    return record_failure(plan, started_at, error, status="interrupted", training=training)
