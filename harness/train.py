"""The worker: one process of a run. Training loop, evaluation and the result file.

Run in-process by the launcher for one device, or once per process under `accelerate launch`:
    accelerate launch -m harness.train --plan PLAN.json
Only the main process writes checkpoints and results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, broadcast_object_list, gather_object, set_seed
from torch.distributed.elastic.multiprocessing.errors import record
from tqdm.auto import tqdm
from transformers import get_scheduler

from harness.collector import BatchCounts, FlopsModel, StepTimer, cuda_timer, merge_rank_logs, speed_report
from harness.data import eval_loader, load_labelled, tokenize, train_loader
from harness.distributed import deepspeed_config, deepspeed_summary, fsdp_options
from harness.environment import collect_environment
from harness.errors import HarnessError
from harness.evaluation import evaluate, synchronize
from harness.hardware import math_mode, peak_flops
from harness.launcher import exception_info, is_launched_worker, record_failure
from harness.modeling import describe_model, flops_model, load_model, load_tokenizer
from harness.plan import Plan, make_plan
from harness.preflight import Decisions, preflight
from harness.recipe import Recipe, TrainSpec, load_recipe
from harness.results import MemoryReport, RunResult, save_result, utc_now, write_new_json

MIXED_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
CHECKPOINT_INFO = "harness.json"  # beside the weights: labels, recipe and run id, for `harness eval`


def make_accelerator(recipe: Recipe, decisions: Decisions) -> Accelerator:
    """Everything from the recipe, DeepSpeed included, so that `accelerate launch`, torchrun and the harness
    launcher all run the same configuration; the process group comes from the launcher's environment."""
    torch.set_float32_matmul_precision("high" if recipe.precision.tf32 else "highest")
    plugin, backend, fsdp = None, None, None
    if recipe.hardware.fsdp:
        fsdp = FullyShardedDataParallelPlugin(**fsdp_options(recipe))
    if recipe.hardware.deepspeed:
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe))
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # as accelerate launch sets it: DeepSpeed owns the group
        backend = "gloo" if decisions.device == "cpu" else None  # accelerate knows no CPU backend for DeepSpeed
    # a rank that stops answering fails every collective after this long, so a run never hangs forever
    timeout = timedelta(seconds=recipe.hardware.collective_timeout_s)
    group = InitProcessGroupKwargs(backend=backend, timeout=timeout)
    accelerator = Accelerator(
        mixed_precision=MIXED_PRECISION[recipe.precision.dtype],
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        # accelerate's cpu=True would silently drop DeepSpeed; without a GPU, DeepSpeed runs on the CPU itself
        cpu=decisions.device == "cpu" and plugin is None,
        log_with=recipe.train.report_to or None,
        kwargs_handlers=[group],
        deepspeed_plugin=plugin,
        fsdp_plugin=fsdp,
    )
    asked = {"deepspeed": (plugin, DistributedType.DEEPSPEED), "fsdp": (fsdp, DistributedType.FSDP)}
    for key, (requested, expected) in asked.items():
        if requested is not None and accelerator.distributed_type != expected:  # never fall back silently
            raise HarnessError(f"hardware.{key}: asked for, but accelerate set up {accelerator.distributed_type}")
    if accelerator.num_processes != recipe.hardware.num_processes:
        raise HarnessError(
            f"hardware.num_processes: the recipe asks for {recipe.hardware.num_processes} process(es) but "
            f"{accelerator.num_processes} started; launch with `harness run`, or match your accelerate config "
            f"with --set hardware.num_processes={accelerator.num_processes}"
        )
    return accelerator


def share_run_identity(plan: Plan) -> None:
    """Every rank adopts rank 0's run id, so all processes (and machines) write into one run."""
    identity = broadcast_object_list([plan.run_id, plan.checkpoint_dir])
    plan.run_id, plan.checkpoint_dir = identity


def build_optimizer(model: torch.nn.Module, spec: TrainSpec, device: str) -> tuple[torch.optim.Optimizer, bool]:
    """AdamW; weight decay on matrices only (biases and norm weights are 1-D), fused where supported."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = spec.fused == "on" or (spec.fused == "auto" and device in ("cuda", "cpu"))
    optimizer = torch.optim.AdamW(groups, lr=spec.learning_rate, fused=fused)
    return optimizer, fused


def save_checkpoint(accelerator: Accelerator, model, tokenizer, path: Path, info: dict[str, Any]) -> None:
    """Save weights + tokenizer to a fresh folder, then swap it in: a crash never leaves half a checkpoint."""
    state = accelerator.get_state_dict(model)  # collective under DeepSpeed ZeRO-3: every rank calls it
    if accelerator.is_main_process:
        staging = path.with_name(path.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(staging, state_dict=state, save_function=accelerator.save)
        tokenizer.save_pretrained(staging)
        write_new_json(staging / CHECKPOINT_INFO, info)
        previous = path.with_name(path.name + ".previous")
        if path.exists():
            path.rename(previous)
        staging.rename(path)
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()


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


@contextlib.contextmanager
def full_size_parameters(plugin: DeepSpeedPlugin | None):
    """Under ZeRO-3, transformers builds partitioned (empty) parameters in from_pretrained; inside this
    context it builds ordinary ones."""
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def peak_memory(device: str) -> dict[str, Any]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    memory = {"peak_host_rss_bytes": rss}
    if device == "cuda":
        memory["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        memory["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return memory


@dataclass
class Progress:
    """Where the training loop is: what a resumed attempt needs to continue."""

    step: int = 0
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"step": None, "value": None, "metrics": None})


class Run:
    """One training run in this process: everything the loop needs, built once."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.recipe = plan.recipe
        self.started = plan.started_at_unix or time.time()
        self.started_at = utc_now()
        self.decisions = preflight(self.recipe)
        datasets.disable_progress_bars()  # the training and evaluation bars are the ones that matter
        self.device = self.decisions.device
        self.accelerator = make_accelerator(self.recipe, self.decisions)
        share_run_identity(plan)
        set_seed(self.recipe.train.seed)
        with self.accelerator.main_process_first():  # rank 0 fills the datasets cache, the others read it
            labelled, self.labels = load_labelled(self.recipe.data, self.recipe.train.seed)  # bad data fails here
            self.tokenizer = load_tokenizer(self.recipe.model)
            self.data = tokenize(labelled, self.tokenizer, self.recipe.data)
        model = load_model(self.recipe.model, self.labels, self.decisions.attn_implementation)
        self.flops: FlopsModel = flops_model(model)
        self.model_description = describe_model(model)
        optimizer, self.fused = build_optimizer(model, self.recipe.train, self.device)
        train = self.recipe.train
        loaders = [train_loader(self.data["train"], self.tokenizer, train.batch_size, train.seed,
                                self.recipe.data.group_by_length)]
        self.eval_splits = [s for s in ("validation", "test") if s in self.data]
        loaders += [eval_loader(self.data[s], self.tokenizer, train.eval_batch_size) for s in self.eval_splits]
        self.model, self.optimizer, self.train_dl, *eval_dls = self.accelerator.prepare(model, optimizer, *loaders)
        self.eval_dls = dict(zip(self.eval_splits, eval_dls))
        self.steps_per_epoch = math.ceil(len(self.train_dl) / train.gradient_accumulation_steps)
        self.total_steps = train.max_steps or train.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.scheduler = get_scheduler(
            train.scheduler, self.optimizer,
            num_warmup_steps=math.ceil(train.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )  # fmt: skip
        self.accelerator.register_for_checkpointing(self.scheduler)  # saved and restored with the run's state
        self.model_description["attn_implementation"] = self.accelerator.unwrap_model(
            self.model
        ).config._attn_implementation

    # ------------------------------------------------------------------ loop

    def train(self) -> dict[str, Any]:
        acc, train = self.accelerator, self.recipe.train
        timer = cuda_timer() if self.device == "cuda" else StepTimer(time.perf_counter)
        if self.recipe.train.report_to:
            acc.init_trackers("harness", config={"run_id": self.plan.run_id, **self.recipe.to_dict()})
        state = self.resume() if self.plan.resumable else Progress()
        history, evals, best, step = state.history, state.evals, state.best, state.step
        first_step_s, counts = None, BatchCounts()
        running_loss, micro_batches = torch.zeros((), device=acc.device), 0
        progress = tqdm(total=self.total_steps, initial=step, desc="training", disable=not acc.is_local_main_process)
        self.model.train()
        train_start = time.perf_counter()
        timer.restart()
        for epoch in range(state.epochs_done, self.epochs):
            self.train_dl.set_epoch(epoch)
            for batch in self.train_dl:
                counts += batch.pop("counts")
                with acc.accumulate(self.model):
                    loss = self.model(**batch).loss
                    acc.backward(loss)
                    if acc.sync_gradients and train.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), train.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                running_loss += loss.detach()
                micro_batches += 1
                if not acc.sync_gradients:
                    continue
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                step += 1
                timer.step_done(counts, self.flops.training_flops(counts))
                counts = BatchCounts()
                progress.update()
                if first_step_s is None:
                    synchronize(self.device)
                    first_step_s = time.time() - self.started
                if step % train.log_every_steps == 0 or step == self.total_steps:
                    # .item() waits for the device: once per log interval, not every step
                    entry = {"step": step, "epoch": epoch, "loss": running_loss.item() / micro_batches,
                             "learning_rate": self.scheduler.get_last_lr()[0]}  # fmt: skip
                    history.append(entry)
                    progress.set_postfix(loss=f"{entry['loss']:.4f}")
                    acc.log({"train/loss": entry["loss"], "train/lr": entry["learning_rate"]}, step=step)
                    running_loss.zero_()
                    micro_batches = 0
                end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
                if (train.eval_strategy == "steps" and step % train.eval_steps == 0) or (
                    train.eval_strategy == "epoch" and end_of_epoch
                ):
                    self._evaluate_and_keep_best(step, epoch, evals, best)
                    timer.restart()
                if step >= self.total_steps:
                    break
            if self.plan.resumable:
                self.save_progress(Progress(step, epoch + 1, history, evals, best))
                timer.restart()
            if step >= self.total_steps:
                break
        synchronize(self.device)
        progress.close()
        train_wall = time.perf_counter() - train_start
        log = timer.finalize()
        return {"log": log, "history": history, "evals": evals, "best": best, "steps": step,
                "first_step_s": first_step_s, "train_wall_s": train_wall,
                "resumed_from_step": state.step if state.epochs_done else None}  # fmt: skip

    # ------------------------------------------------------------------ resume

    @property
    def state_dir(self) -> Path:
        return Path(self.plan.checkpoint_dir) / "state"

    def save_progress(self, progress: Progress) -> None:
        """Model, optimizer, scheduler and RNG states plus the loop's progress, swapped in whole at each epoch
        end, so a preempted run restarts from its last finished epoch."""
        staging = self.state_dir.with_name("state.staging")
        if self.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))  # every rank writes its part (DeepSpeed shards)
        if self.accelerator.is_main_process:
            write_new_json(staging / "progress.json", dataclasses.asdict(progress))
            previous = self.state_dir.with_name("state.previous")
            if self.state_dir.exists():
                self.state_dir.rename(previous)
            staging.rename(self.state_dir)
            shutil.rmtree(previous, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def resume(self) -> Progress:
        """The saved progress of an interrupted attempt of this run, or a fresh start."""
        progress_file = self.state_dir / "progress.json"
        if not progress_file.is_file():
            return Progress()
        self.accelerator.load_state(str(self.state_dir))
        progress = Progress(**json.loads(progress_file.read_text()))
        self.accelerator.print(f"resuming {self.plan.run_id} after epoch {progress.epochs_done} (step {progress.step})")
        return progress

    def _evaluate_and_keep_best(self, step: int, epoch: int, evals: list, best: dict) -> None:
        evaluation = evaluate(self.model, self.eval_dls["validation"], self.accelerator, self.device, "validating")
        scores = evaluation.metrics(self.labels.names)
        metric = self.recipe.train.metric_for_best_model
        summary = {k: scores[k] for k in ("loss", "accuracy", "f1_macro", "f1_micro", "f1_weighted")}
        evals.append({"step": step, "epoch": epoch, **summary})
        self.accelerator.log({f"eval/{k}": v for k, v in summary.items()}, step=step)
        if is_better(metric, scores[metric], best["value"]):
            best.update(step=step, value=scores[metric], metrics=scores)
            if self.recipe.train.save_best:
                info = {"run_id": self.plan.run_id, "step": step, "metric": metric, "value": scores[metric],
                        "labels": self.labels.names, "recipe": self.recipe.to_dict()}  # fmt: skip
                save_checkpoint(self.accelerator, self.model, self.tokenizer, self.plan.best_checkpoint, info)

    def final_accuracy(self, best: dict) -> dict[str, dict[str, Any]]:
        """Validation metrics of the best evaluation; test metrics of the best saved checkpoint."""
        accuracy = {}
        if best["metrics"] is not None:
            accuracy["validation"] = best["metrics"]
        if "test" in self.eval_dls:
            if self.recipe.train.save_best and best["step"] is not None:
                self._load_best_weights()
            evaluation = evaluate(self.model, self.eval_dls["test"], self.accelerator, self.device, "testing")
            accuracy["test"] = evaluation.metrics(self.labels.names)
        return accuracy

    def _load_best_weights(self) -> None:
        """The saved best checkpoint, read back from disk, into the training model on every rank."""
        from transformers import AutoModelForSequenceClassification

        self.accelerator.wait_for_everyone()  # the main process has finished writing the checkpoint
        with full_size_parameters(self.accelerator.state.deepspeed_plugin):
            state = AutoModelForSequenceClassification.from_pretrained(self.plan.best_checkpoint).state_dict()
        model = self.accelerator.unwrap_model(self.model)
        if self.recipe.hardware.fsdp:  # sharded (DTensor) parameters: each rank takes its shard of the full state
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        elif self.deepspeed_stage() == 3:  # parameters are partitioned: gather, let rank 0 load, re-partition
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
                if self.accelerator.is_main_process:
                    model.load_state_dict(state)
        else:
            model.load_state_dict(state)

    def deepspeed_config(self) -> dict[str, Any] | None:
        plugin = self.accelerator.state.deepspeed_plugin
        return plugin.deepspeed_config if plugin is not None else None

    def deepspeed_stage(self) -> int | None:
        config = self.deepspeed_config()
        return config["zero_optimization"]["stage"] if config else None

    # ------------------------------------------------------------------ result

    def device_name(self) -> str | None:
        return torch.cuda.get_device_name() if self.device == "cuda" else None

    def ran(self) -> dict[str, Any]:
        acc = self.accelerator
        train = self.recipe.train
        ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        return {
            "device": self.device,
            "device_name": self.device_name(),
            "world_size": acc.num_processes,
            "ranks_per_node": ranks_per_node,
            "num_machines": acc.num_processes // ranks_per_node,
            "distributed_type": str(acc.distributed_type).split(".")[-1],
            "backend": getattr(acc.state, "backend", None),
            "mixed_precision": acc.mixed_precision,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "fused_optimizer": self.fused,
            "gradient_accumulation_steps": train.gradient_accumulation_steps,
            "global_batch_size": train.batch_size * train.gradient_accumulation_steps * acc.num_processes,
            "precision": self.recipe.precision.dtype,
            "deepspeed": deepspeed_summary(self.deepspeed_config()) if self.deepspeed_config() else None,
            "fsdp": fsdp_options(self.recipe) if self.recipe.hardware.fsdp else None,
            "fallbacks": self.decisions.fallbacks,
            **self.model_description,
        }

    def result(self, outcome: dict[str, Any], accuracy: dict, environment: dict, memory: list[dict]) -> RunResult:
        recipe, acc = self.recipe, self.accelerator
        world = acc.num_processes
        log = merge_rank_logs(outcome["logs"])
        peak = peak_flops(self.device_name(), math_mode(recipe.precision.dtype, recipe.precision.tf32))
        speed = speed_report(
            log,
            warmup_steps=recipe.collector.warmup_steps,
            world_size=world,
            peak_flops_per_device=peak,
            time_to_first_step_s=outcome["first_step_s"],
            train_wall_s=outcome["train_wall_s"],
            eval_samples_per_s=next((a["samples_per_s"] for a in accuracy.values()), None),
            total_wall_s=time.time() - self.started,
        )
        best = outcome["best"]
        return RunResult(
            run_id=self.plan.run_id, kind="train", status="completed",
            recipe_name=recipe.name, recipe_hash=recipe.hash, recipe=recipe.to_dict(),
            started_at=self.started_at, finished_at=utc_now(),
            ran=self.ran(), speed=speed,
            memory=memory_report(memory),
            accuracy=accuracy,
            training={
                "optimizer_steps": outcome["steps"], "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
                "num_samples": {split: len(ds) for split, ds in self.data.items()},
                "labels": self.labels.names,
                "loss_history": outcome["history"], "evaluations": outcome["evals"],
                "best": {"step": best["step"], "metric": recipe.train.metric_for_best_model, "value": best["value"],
                         "checkpoint": str(self.plan.best_checkpoint) if recipe.train.save_best else None},
                "resumed_from_step": outcome["resumed_from_step"],
                "step_log": log.to_dict(),
            },
            environment=environment,
        )  # fmt: skip


def execute(plan: Plan) -> Path | None:
    """Run the plan in this process; the main process returns the result file's path."""
    run = Run(plan)
    acc = run.accelerator
    outcome = run.train()
    accuracy = run.final_accuracy(outcome["best"])
    outcome["logs"] = gather_object([outcome["log"].to_dict()])
    memory = gather_object([{"rank": acc.process_index, **peak_memory(run.device)}])
    acc.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # an orderly exit: no rank tears the group down mid-use
    if not acc.is_main_process:
        return None
    result = run.result(outcome, accuracy, collect_environment(), memory)
    return save_result(Path(plan.results_dir), result)


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.plan:
        return Plan.read(args.plan)
    plan = make_plan(load_recipe(args.recipe, args.set), results_dir=args.results_dir)
    plan.started_at_unix = time.time()
    return plan


@record  # a failing rank's traceback reaches the launcher (torch elastic's error file)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One process of a run: `accelerate launch -m harness.train`.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", type=Path, help="a plan written by the harness launcher")
    source.add_argument("--recipe", help="a recipe name or path, for your own `accelerate launch` setup")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results-dir")
    args = parser.parse_args(argv)
    plan = plan_from_args(args)
    started_at = utc_now()
    try:
        path = execute(plan)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        state = PartialState()
        if state.is_main_process and not is_launched_worker():  # the harness launcher records its own runs
            record_failure(plan, started_at, exception_info(error, rank=state.process_index))
        raise
    if path:
        print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
