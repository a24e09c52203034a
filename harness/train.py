"""The worker: one process of a run. Set-up, the training loop, evaluation, and the result file.

Every run is its own process (or processes), started by the harness launcher through `accelerate launch`:
    accelerate launch --config_file RUN/accelerate.yaml -m harness.train --plan RUN/plan.json
Your own launcher works too (`torchrun ... -m harness.train --recipe NAME`). Only the main process writes
checkpoints and results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    TorchDynamoPlugin,
    broadcast_object_list,
    gather_object,
    set_seed,
)  # fmt: skip
from torch.distributed.elastic.multiprocessing.errors import record
from tqdm.auto import tqdm
from transformers import get_scheduler

from harness.checkpoints import Progress, load_weights, resume, save_checkpoint, save_progress
from harness.collector import BatchCounts, StepLog, StepTimer, cuda_timer
from harness.compiling import CompileStats, CompileWatch, settle_problem_type
from harness.data import LoaderOptions, eval_loader, load_labelled, tokenize, train_loader
from harness.distributed import deepspeed_config, fsdp_options
from harness.energy import EnergyMeter, nvml_reader
from harness.errors import HarnessError
from harness.evaluation import Evaluation, evaluate, synchronize
from harness.failures import (
    BAD_INPUT_EXIT,
    LAUNCHED_ENV,
    exception_info,
    note_exception,
    record_failure,
    stopped_exit_code,
)  # fmt: skip
from harness.modeling import (
    decay_parameter_names,
    describe_model,
    enable_gradient_checkpointing,
    flops_model,
    load_model,
    load_tokenizer,
    numel,
)  # fmt: skip
from harness.packing import PackingCollator, accept_packed_batches, position_ids_start
from harness.plan import Plan, make_plan
from harness.preflight import Decisions, preflight
from harness.profiling import StepProfiler
from harness.recipe import MIXED_PRECISION, Recipe, TrainSpec, load_recipe
from harness.report import gather_and_save, save_interrupted
from harness.results import utc_now
from harness.stopping import Interrupted, StopRequests


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
    pinned = LoaderOptions.for_run(recipe.data, decisions.device).pin_memory
    # torch.compile of the prepared model (inductor): static shapes for bucketed padded batches (one graph per
    # bucket), dynamic ones for packed rows, whose length varies every step
    dynamo = TorchDynamoPlugin(backend="inductor" if recipe.train.compile else "no", dynamic=recipe.data.packing)
    accelerator = Accelerator(
        # several machines may not share a disk: each saves a full copy of the training state (resumable runs)
        project_config=ProjectConfiguration(save_on_each_node=recipe.hardware.num_machines > 1),
        mixed_precision=MIXED_PRECISION[recipe.precision.dtype],
        # pinned host batches are copied to the GPU without blocking the host
        dataloader_config=DataLoaderConfiguration(non_blocking=pinned),
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        # accelerate's cpu=True would silently drop DeepSpeed; without a GPU, DeepSpeed runs on the CPU itself
        cpu=decisions.device == "cpu" and plugin is None,
        log_with=recipe.train.report_to or None,
        kwargs_handlers=[group],
        deepspeed_plugin=plugin,
        fsdp_plugin=fsdp,
        dynamo_plugin=dynamo,
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


def build_optimizer(model: torch.nn.Module, spec: TrainSpec, device: str) -> tuple[torch.optim.Optimizer, bool, dict]:
    """AdamW with weight decay on the parameters the HF Trainer decays (by name: never biases or norms), fused
    where supported. Also returns the size of each group, in elements (full size under ZeRO-3)."""
    decay = decay_parameter_names(model)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decayed = [p for name, p in named if name in decay]
    kept = [p for name, p in named if name not in decay]
    groups = [{"params": decayed, "weight_decay": spec.weight_decay}, {"params": kept, "weight_decay": 0.0}]
    fused = spec.fused == "on" or (spec.fused == "auto" and device in ("cuda", "cpu"))
    optimizer = torch.optim.AdamW(groups, lr=spec.learning_rate, fused=fused)
    sizes = {"decayed_parameters": sum(map(numel, decayed)), "not_decayed_parameters": sum(map(numel, kept))}
    return optimizer, fused, sizes


@dataclass
class Outcome:
    """What the training loop leaves: this rank's step log and the run's progress."""

    log: StepLog
    progress: Progress
    first_step_s: float | None  # from the run's start to the end of step 1
    train_wall_s: float  # the loop's wall time, evaluations included
    resumed_from_step: int | None


class Run:
    """One training run in this process: everything the loop needs, built once."""

    def __init__(self, plan: Plan, stop: StopRequests):
        self.plan, self.recipe, self.stop = plan, plan.recipe, stop
        self.started = plan.started_at_unix or time.time()
        self.started_at = utc_now()
        self.decisions = preflight(self.recipe, plan.results_dir)
        self.device = self.decisions.device
        datasets.disable_progress_bars()  # the training and evaluation bars are the ones that matter
        self.accelerator = make_accelerator(self.recipe, self.decisions)
        share_run_identity(plan)
        set_seed(self.recipe.train.seed)  # initialisation, dropout and batch order; data.seed fixes the data
        with self.accelerator.main_process_first():  # rank 0 fills the datasets cache, the others read it
            self.labelled = load_labelled(self.recipe.data)  # bad data fails here, before the model loads
            self.tokenizer = load_tokenizer(self.recipe.model)
            # max_length: the recipe's, or the model's limit where the recipe allows clamping (recorded)
            spec = dataclasses.replace(self.recipe.data, max_length=self.decisions.max_length)
            self.data = tokenize(self.labelled.splits, self.tokenizer, spec)
        self.labels = self.labelled.labels
        model = load_model(self.recipe.model, self.labels, self.decisions.attn_implementation)
        self.switch_speed_options(model)
        self.flops = flops_model(model)  # full sizes, also of ZeRO-3's partitioned parameters
        optimizer, self.fused, self.decay_groups = build_optimizer(model, self.recipe.train, self.device)
        self.prepare(model, optimizer)
        # read back from the prepared model: its device, and the dtype DeepSpeed or FSDP gave it
        self.model_description = describe_model(self.accelerator.unwrap_model(self.model, keep_torch_compile=False))
        self.best_validation: Evaluation | None = None
        self.energy = EnergyMeter(nvml_reader(self.device))
        self.train_start = time.perf_counter()
        self.progress: Progress | None = None  # the loop's progress, also when it is stopped from outside
        self.batch_in_flight: tuple[str, list[int] | None] = ("setup", None)  # named if it runs out of memory
        self.step_profiler: StepProfiler | None = None

    def switch_speed_options(self, model: torch.nn.Module) -> None:
        """The fast path's switches on the model before it is prepared: packed batches, gradient checkpointing,
        and torch.compile's bookkeeping (accelerate compiles the prepared model)."""
        if self.recipe.data.packing:
            accept_packed_batches(model)
        if self.recipe.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        # torch.compile's work: over the run, and inside the measured window (read when training ends)
        self.compile_watch: CompileWatch | None = None
        self.window_compiles: CompileWatch | None = None
        self.window_compiled: CompileStats | None = None
        if self.recipe.train.compile:
            settle_problem_type(model)  # else the first forward writes it and every graph recompiles at step 2
            # one graph per bucket x batch size (full, last) x mode (training, evaluation) can pass torch's limit
            # of 8, past which new shapes silently run uncompiled (counted as eager_fallbacks)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self.compile_watch, self.window_compiles = CompileWatch(), CompileWatch()
            self.compile_watch.start()

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        train, data = self.recipe.train, self.recipe.data
        self.loader_options = LoaderOptions.for_run(data, self.device, compiled=train.compile)
        packing = PackingCollator(position_ids_start(model.config)) if data.packing else None
        loaders = [train_loader(self.data["train"], self.tokenizer, train.batch_size, train.seed, data.group_by_length,
                                self.recipe.hardware.num_processes, self.loader_options, packing)]  # fmt: skip
        self.eval_splits = [s for s in ("validation", "test") if s in self.data]
        loaders += [eval_loader(self.data[s], self.tokenizer, train.eval_batch_size, self.loader_options)
                    for s in self.eval_splits]  # fmt: skip
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

    @property
    def state_dir(self) -> Path:
        """Where this machine saves the training state of a resumable run: one folder per machine."""
        if self.recipe.hardware.num_machines == 1:
            return self.plan.run_dir / "state"
        machine = self.accelerator.process_index // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return self.plan.run_dir / f"state-machine{machine}"

    # ------------------------------------------------------------------ the loop

    def train(self) -> Outcome:
        acc, train = self.accelerator, self.recipe.train
        timer = cuda_timer() if self.device == "cuda" else StepTimer(time.perf_counter)
        if train.report_to:
            acc.init_trackers("harness", config={"run_id": self.plan.run_id, **self.recipe.to_dict()})
        state = self.progress = resume(acc, self.state_dir) if self.plan.resumable else Progress()
        resumed_from = state.step if state.epochs_done else None
        step, counts, first_step_s = state.step, BatchCounts(), None
        running_loss, micro_batches = torch.zeros((), device=acc.device), 0
        bar = tqdm(total=self.total_steps, initial=step, desc="training", disable=not acc.is_local_main_process)
        self.model.train()
        self.stop.start_training()
        warmup, attempt_steps = self.recipe.collector.warmup_steps, 0
        profiler = self.step_profiler = self.profiler()
        synchronize(self.device)
        self.energy.start_loop()
        if self.untimed_steps == 0:
            self.open_window()
        if profiler and warmup == 0:
            profiler.start()
        train_start = self.train_start = time.perf_counter()
        timer.restart()
        for epoch in range(state.epochs_done, self.epochs):
            self.train_dl.set_epoch(epoch)  # reaches the sampler through accelerate's wrappers: a new order
            for batch, waited in timed_batches(self.train_dl):
                counts += batch.pop("counts")
                counts.data_wait_s += waited
                self.batch_in_flight = ("training", list(batch["input_ids"].shape))
                with acc.accumulate(self.model):  # the optimizer steps only at the last micro-batch
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
                learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step used
                if not acc.optimizer_step_was_skipped:  # fp16 loss scaling skips steps with inf gradients
                    self.scheduler.step()
                step += 1
                state.step = step
                timer.step_done(counts, self.flops.training_flops(counts.lengths))
                counts, attempt_steps = BatchCounts(), attempt_steps + 1
                if profiler:  # the steps after the warm-up, written out before the measured window opens
                    profile_step(profiler, attempt_steps, warmup)
                if attempt_steps == self.untimed_steps:
                    synchronize(self.device)
                    self.open_window()
                    timer.restart()
                bar.update()
                if first_step_s is None:
                    synchronize(self.device)
                    first_step_s = time.time() - self.started
                if step % train.log_every_steps == 0 or step == self.total_steps:
                    state.history.append(self.log_loss(step, epoch, running_loss / micro_batches, learning_rate))
                    bar.set_postfix(loss=f"{state.history[-1]['loss']:.4f}")
                    running_loss.zero_()
                    micro_batches = 0
                if self.evaluates_at(step):
                    with self.outside_the_window(timer):
                        self.evaluate_and_keep_best(step, epoch, state)
                self.stop.check()  # a stop asked for by a signal: every rank leaves here, after the same step
                if step >= self.total_steps:
                    break
            if self.plan.resumable:
                state.step, state.epochs_done = step, epoch + 1
                with self.outside_the_window(timer):
                    save_progress(acc, self.state_dir, state)
            if step >= self.total_steps:
                break
        synchronize(self.device)
        self.energy.pause()
        if profiler:
            profiler.finish()  # a run shorter than its profile: what was profiled
        if self.window_compiles:
            self.window_compiled = self.window_compiles.read() if attempt_steps >= self.untimed_steps else None
        bar.close()
        state.step = step
        return Outcome(timer.finalize(), state, first_step_s, time.perf_counter() - train_start, resumed_from)

    @property
    def untimed_steps(self) -> int:
        """Steps of this attempt before the measured window: the warm-up, then the profiled steps (the profiler
        slows them); their work is charged at the measured rate (harness/collector.py)."""
        return self.recipe.collector.warmup_steps + self.plan.profile_steps

    def open_window(self) -> None:
        """The measured window starts: its energy and its compiles are counted from here on."""
        self.energy.open_window()
        if self.window_compiles:
            self.window_compiles.start()

    def profiler(self) -> StepProfiler | None:
        if not self.plan.profile_steps:
            return None
        return StepProfiler(self.plan.profile_steps, self.plan.profile_dir, self.device, self.accelerator.process_index)

    @contextlib.contextmanager
    def outside_the_window(self, timer: StepTimer):
        """An evaluation or a save: no training step's time and no measured energy. The device finishes the
        steps before it first; the step timer restarts after it."""
        synchronize(self.device)
        self.energy.pause()
        if self.window_compiles:  # an evaluation's compiles are not inside any step's time
            self.window_compiles.pause()
        yield
        synchronize(self.device)
        self.energy.resume()
        if self.window_compiles:
            self.window_compiles.resume()
        timer.restart()

    def log_loss(self, step: int, epoch: int, loss: torch.Tensor, learning_rate: float) -> dict[str, Any]:
        """The mean training loss since the last entry, averaged over ranks. .item() waits for the device:
        once per log interval, never every step."""
        entry = {"step": step, "epoch": epoch, "loss": self.accelerator.reduce(loss, "mean").item(),
                 "learning_rate": learning_rate}  # fmt: skip
        self.accelerator.log({"train/loss": entry["loss"], "train/lr": learning_rate}, step=step)
        return entry

    def evaluates_at(self, step: int) -> bool:
        train = self.recipe.train
        end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
        by_steps = train.eval_strategy == "steps" and step % train.eval_steps == 0
        return by_steps or (train.eval_strategy == "epoch" and end_of_epoch)

    # ------------------------------------------------------------------ evaluation

    def evaluate_and_keep_best(self, step: int, epoch: int, state: Progress) -> None:
        self.batch_in_flight = ("evaluation", None)
        evaluation = evaluate(self.model, self.eval_dls["validation"], self.accelerator, self.device, "validating",
                              self.stop)  # fmt: skip
        scores = evaluation.metrics(self.labels.names)
        metric = self.recipe.train.metric_for_best_model
        summary = {k: scores[k] for k in ("loss", "accuracy", "f1_macro", "f1_micro", "f1_weighted")}
        # the wall time of the training loop (this attempt) when this evaluation ended, evaluations included
        state.evals.append({"step": step, "epoch": epoch, **summary, "train_wall_s": time.perf_counter() - self.train_start})
        if state.target is None and reaches(summary, self.recipe.train.target):
            energies = gather_object([self.energy.joules_since_loop_start()])  # every GPU's, evaluations included
            state.target = {"step": step, "epoch": epoch, "train_wall_s": state.evals[-1]["train_wall_s"],
                            "energy_j": None if None in energies else sum(energies)}  # fmt: skip
        self.accelerator.log({f"eval/{k}": v for k, v in summary.items()}, step=step)
        if is_better(metric, scores[metric], state.best["value"]):
            state.best.update(step=step, value=scores[metric], metrics=scores)
            self.best_validation = evaluation
            if self.recipe.train.save_best:
                info = {"run_id": self.plan.run_id, "step": step, "metric": metric, "value": scores[metric],
                        "labels": self.labels.names, "recipe": self.recipe.to_dict()}  # fmt: skip
                save_checkpoint(self.accelerator, self.model, self.tokenizer, self.plan.best_checkpoint, info)

    def test_weights(self, best: dict[str, Any]) -> str:
        """Which weights the test split is evaluated with: the best checkpoint when one was saved (reloaded
        here), else the final weights of training."""
        if self.recipe.train.save_best and best["step"] is not None:
            load_weights(self.accelerator, self.model, self.plan.best_checkpoint)
            return "best_checkpoint"
        return "final_weights"

    def evaluate_test(self, best: dict[str, Any]) -> tuple[Evaluation | None, str | None]:
        if "test" not in self.eval_dls:
            return None, None
        test_from = self.test_weights(best)
        self.batch_in_flight = ("evaluation", None)
        return evaluate(self.model, self.eval_dls["test"], self.accelerator, self.device, "testing", self.stop), test_from


def profile_step(profiler: StepProfiler, step: int, warmup: int) -> None:
    """Profile the steps warmup + 1 .. warmup + N of the attempt: start after the warm-up, count each step after."""
    if step == warmup:
        profiler.start()
    elif step > warmup:
        profiler.step_done()


def timed_batches(loader) -> Iterator[tuple[dict[str, Any], float]]:
    """Each batch with the host seconds spent waiting for it: a step that waits for its data is host-bound."""
    batches = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch, time.perf_counter() - start


def reaches(scores: dict[str, float], target: dict[str, float]) -> bool:
    """Every metric of the target reached: at least its value, or at most for the loss."""
    if not target:
        return False
    return all(scores[k] <= v if k == "loss" else scores[k] >= v for k, v in target.items())


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def out_of_memory(run: Run | None, error: Exception) -> dict[str, Any]:
    """For a run out of GPU memory: that it is one, and the batch that did not fit (what to lower)."""
    if not isinstance(error, torch.OutOfMemoryError):
        return {}
    phase, shape = run.batch_in_flight if run else ("setup", None)
    batch_size = {"training": run.recipe.train.batch_size, "evaluation": run.recipe.train.eval_batch_size}
    return {"type": "OutOfMemory", "phase": phase, "batch_size": batch_size.get(phase), "batch_shape": shape}


def finish(run: Run) -> Path | None:
    """Train, test and write the result; the main process returns the result file's path."""
    outcome = run.train()
    test, test_from = run.evaluate_test(outcome.progress.best)
    return gather_and_save(run, outcome, test, test_from)


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.plan:
        return Plan.read(args.plan)
    plan = make_plan(load_recipe(args.recipe, args.set), results_dir=args.results_dir)
    plan.started_at_unix = time.time()
    return plan


@record  # a failing process's exception reaches the launcher (torch elastic's error file)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One process of a run: `accelerate launch -m harness.train`.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", type=Path, help="a plan written by the harness launcher")
    source.add_argument("--recipe", help="a recipe name or path, for your own `accelerate launch` setup")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results-dir")
    args = parser.parse_args(argv)
    plan = plan_from_args(args)
    with StopRequests(watch_parent=os.environ.get(LAUNCHED_ENV) == "1") as stop:
        started_at, run = utc_now(), None
        try:
            run = Run(plan, stop)
            path = finish(run)
        except HarnessError as error:
            print(f"error: {error}", file=sys.stderr)
            return BAD_INPUT_EXIT
        except Interrupted as interruption:
            path = save_interrupted(plan, started_at, interruption.signal_name, run)
            if path:
                print(f"{interruption}: result: {path}", file=sys.stderr)
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            return stopped_exit_code(interruption.signal_name)
        except Exception as error:
            state = PartialState()
            info = {**exception_info(error, rank=state.process_index), **out_of_memory(run, error)}
            note_exception(plan, info)  # read by the harness launcher for the rank that failed first
            if state.is_main_process and os.environ.get(LAUNCHED_ENV) != "1":  # your own launcher: record it here
                record_failure(plan, started_at, info)
            raise
    if path:
        print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
