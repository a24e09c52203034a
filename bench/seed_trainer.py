"""The seed Trainer arm: a harness recipe's workload fine-tuned with the stock Hugging Face Trainer recipe.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/seed_trainer.py RECIPE [--set KEY=VALUE ...] [--results-dir DIR] [--warmup-steps N]

What is compared, and why. The issue "Variable-length workload: harness at least 3x the seed Trainer recipe's
samples/s" sets the harness against what users run today (../shared/seeds/000_cf74dd7d86a76bd1.txt): texts
tokenised with `ds.map(tokenizer(text, padding=True, truncation=True, max_length=...), batched=True)` (every row
padded to the longest text of its 1000-row map chunk), `DataCollatorWithPadding`, plainly shuffled batches and
`transformers.Trainer` with `bf16=True, optim="adamw_torch_fused"`. This script runs that recipe on exactly the
workload of a harness recipe (RECIPE): the same texts, labels and splits (harness.data.load_labelled), the same
model and tokenizer (harness.modeling, with the recipe's attention implementation), batch size, epochs or
max_steps, learning rate, weight decay, warm-up ratio, scheduler, gradient clipping, seed, max_length, precision
(bf16/fp16 autocast per precision.dtype), TF32 switch (set as the harness sets it) and fused AdamW by the
harness's own rule (train.fused: auto fuses on CUDA and on CPU, where torch has fused kernels too). Only the
Trainer side differs: chunk padding inside datasets.map, random order without length grouping, the Trainer's
own loop, no evaluation during training (eval_strategy "no", so training is timed alone) and one evaluation at
the end, on the test split if there is one, else validation.

It writes ONE result file in the harness's schema, under `<results dir>/<recipe>-seed-trainer/`, so that
`harness compare` and `harness report` show it beside harness runs. Its numbers come from the harness's own code:
a TrainerCallback marks step boundaries (a torch.cuda.synchronize() before each time.perf_counter() on CUDA)
into harness.collector.StepTimer, a counting wrapper of DataCollatorWithPadding records each batch's samples,
real tokens (attention_mask sum) and padded tokens (input_ids.numel()) into harness.collector.BatchCounts, and
harness.collector.speed_report turns the step log and harness.modeling.flops_model's FLOPs into the speed report,
the first --warmup-steps steps (default: collector.warmup_steps) charged at the measured rate as the harness does.
Accuracy is harness.evaluation.Evaluation.metrics, memory harness.report.peak_memory / memory_report, energy
harness.energy.EnergyMeter (GPUs with NVML only), provenance harness.environment.collect_environment, and the
per-example predictions are saved as the harness saves them, for paired comparisons with a harness run.

The result's `recipe` is RECIPE as resolved, with the settings this arm ran in place of the harness's: name
`<name>-seed-trainer`, data.padding "chunk", data.group_by_length false, data.pad_to_multiple_of 1 (the collator
rounds nothing), data.num_workers 0 (the counting collator must run in this process; also the Trainer's
default) and train.eval_strategy "no" with save_best false; `harness compare` names them under "differs". `ran`
says `trainer: transformers.Trainer`, `padding: chunk`, the Trainer's `optimizer` and whether AdamW ran fused
(`fused_optimizer`, read back from the Trainer's optimizer), the autocast mode (`mixed_precision`, from the
Trainer's accelerator) and, read back from the model, `attn_implementation` and `parameter_dtype`.

What cannot be filled as the harness fills it:
- speed.data_wait_fraction and training.step_log.data_wait_s: null / empty. The Trainer fetches its batches
  inside its own loop; no callback sees that wait.
- speed.time_to_first_step_s counts from this script's start, not from a launcher's (there is none).
- training.evaluations is empty and training.best null (no evaluation during training); a validation split is
  evaluated with the final weights when there is no test split (training.test_from is null then).
- One process only: recipes with several processes, DeepSpeed or FSDP are refused (exit 2).
Stock behaviour kept as it is: with train.gradient_accumulation_steps > 1, transformers 5's Trainer takes a
sequence classifier's loss (whose forward accepts **kwargs) as already normalised over the accumulated batches,
so it sums the micro-batches' losses instead of averaging them: gradients and the logged loss are that many
times larger than the harness's (AdamW is nearly scale-free, gradient clipping is not).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from datasets import DatasetDict
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)  # fmt: skip

from harness.collector import BatchCounts, FlopsModel, StepLog, StepTimer, speed_report
from harness.data import CLASSIC_CHUNK_ROWS, Labelled, LoaderOptions, load_labelled
from harness.energy import EnergyMeter, nvml_reader
from harness.environment import collect_environment
from harness.errors import HarnessError
from harness.evaluation import Evaluation, synchronize
from harness.failures import BAD_INPUT_EXIT
from harness.hardware import math_mode, peak_flops
from harness.modeling import describe_model, flops_model, load_model, load_tokenizer
from harness.preflight import Decisions, preflight
from harness.recipe import Recipe, load_recipe
from harness.report import add_energy, device_name, memory_report, peak_memory, prediction_arrays
from harness.results import (
    RunResult,
    SpeedReport,
    new_run_id,
    predictions_path,
    save_predictions,
    save_result,
    utc_now,
)  # fmt: skip

SUFFIX = "-seed-trainer"
PADDING_DETAIL = (f"datasets.map(tokenizer(padding=True, truncation=True, max_length), batched=True, "
                  f"batch_size={CLASSIC_CHUNK_ROWS}), then DataCollatorWithPadding")  # fmt: skip


def seed_tokenize(splits: DatasetDict, tokenizer: Any, max_length: int) -> DatasetDict:
    """Token ids as the seed script makes them: datasets.map in batches of 1000 rows, each padded to its longest
    text (padding=True) and truncated to max_length. The text column stays; the Trainer drops it."""

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        return tokenizer(batch["text"], padding=True, truncation=True, max_length=max_length)

    return splits.map(encode, batched=True, batch_size=CLASSIC_CHUNK_ROWS)


class CountingCollator:
    """DataCollatorWithPadding, as the seed script uses it, that also queues what each batch holds. A queue,
    not a running sum: the Trainer and accelerate fetch batches ahead of the step that trains on them."""

    def __init__(self, tokenizer: Any):
        self.pad = DataCollatorWithPadding(tokenizer)
        self.counts: deque[BatchCounts] = deque()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.pad(features)
        lengths = batch["attention_mask"].sum(dim=1).tolist()  # on the host, before the batch moves
        self.counts.append(BatchCounts(samples=len(lengths), real_tokens=sum(lengths),
                                       padded_tokens=int(batch["input_ids"].numel()), lengths=lengths))  # fmt: skip
        return batch


class StepMarks(TrainerCallback):
    """Marks optimizer-step boundaries into a harness StepTimer, with each step's batch counts and FLOPs, and
    opens the energy window after the warm-up steps. On CUDA a mark synchronises first; the Trainer already
    waits for the device at every micro-batch (its NaN/inf check of the loss), so the marks add no stall."""

    def __init__(self, collator: CountingCollator, flops: FlopsModel, device: str, warmup_steps: int, started: float):
        self.collator, self.flops, self.device, self.warmup_steps = collator, flops, device, warmup_steps
        self.started = started  # time.time() when the script started
        self.timer = StepTimer(self.mark)
        self.energy = EnergyMeter(nvml_reader(device))
        self.step_counts = BatchCounts()
        self.train_start: float | None = None
        self.first_step_s: float | None = None
        self.train_wall_s: float | None = None

    def mark(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.timer.restart()
        self.train_start = time.perf_counter()  # just after the synchronising mark
        self.energy.start_loop()
        if self.warmup_steps == 0:
            self.energy.open_window()

    def on_substep_end(self, args, state, control, **kwargs):
        self.step_counts += self.collator.counts.popleft()  # a micro-batch before the step's last

    def on_step_end(self, args, state, control, **kwargs):
        self.step_counts += self.collator.counts.popleft()
        self.timer.step_done(self.step_counts, self.flops.training_flops(self.step_counts.lengths))
        self.step_counts = BatchCounts()
        if self.first_step_s is None:
            self.first_step_s = time.time() - self.started
        if state.global_step == self.warmup_steps:
            self.energy.open_window()  # the device was synchronised by this step's mark

    def on_train_end(self, args, state, control, **kwargs):
        self.train_wall_s = self.mark() - self.train_start
        self.energy.pause()

    def step_log(self) -> StepLog:
        log = self.timer.finalize()
        log.data_wait_s.clear()  # not measured (module docstring): null, never a made-up 0
        return log


def optimizer_name(recipe: Recipe, device: str) -> str:
    """The Trainer's optim: fused AdamW by the harness's rule for train.fused (auto: on CUDA and CPU)."""
    fused = recipe.train.fused == "on" or (recipe.train.fused == "auto" and device in ("cuda", "cpu"))
    return "adamw_torch_fused" if fused else "adamw_torch"


def training_arguments(recipe: Recipe, device: str, output_dir: str) -> TrainingArguments:
    """The seed script's TrainingArguments with the recipe's hyperparameters; nothing saved, no evaluation."""
    train, dtype = recipe.train, recipe.precision.dtype
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1): a ratio, rounded up as the harness rounds it
        lr_scheduler_type=train.scheduler,
        max_grad_norm=train.max_grad_norm or 0.0,  # 0: no clipping
        seed=train.seed,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        optim=optimizer_name(recipe, device),
        train_sampling_strategy="random",  # the Trainer's default: no length grouping
        dataloader_num_workers=0,  # the counting collator queues its counts in this process
        dataloader_pin_memory=LoaderOptions.for_run(recipe.data, device).pin_memory,
        eval_strategy="no",  # training timed alone; one evaluation after it
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=train.log_every_steps,
        report_to="none",
        use_cpu=device == "cpu",
    )


def seed_recipe(recipe: Recipe) -> Recipe:
    """The recipe as this arm ran it (module docstring), so that `harness compare` names what differs."""
    data = replace(recipe.data, padding="chunk", group_by_length=False, pad_to_multiple_of=1,
                               num_workers=0)  # fmt: skip
    train = replace(recipe.train, eval_strategy="no", save_best=False)
    return replace(recipe, name=recipe.name + SUFFIX, data=data, train=train)


def final_evaluation(trainer: Trainer, data: DatasetDict, device: str) -> tuple[str, Evaluation]:
    """The final weights on the test split, else validation, timed with the device synchronised."""
    split = "test" if "test" in data else "validation"
    synchronize(device)
    start = time.perf_counter()
    output = trainer.predict(data[split])
    synchronize(device)
    seconds = time.perf_counter() - start
    probs = torch.from_numpy(output.predictions).float().softmax(-1).double().numpy()  # as harness.evaluation
    labels = np.asarray(output.label_ids, dtype=np.int64)
    return split, Evaluation(probs, labels, np.arange(len(labels)), seconds)


def ran(trainer: Trainer, decisions: Decisions, flops: FlopsModel) -> dict[str, Any]:
    """What ran, read back from the Trainer, its optimizer and the model, in the harness's `ran` fields plus
    this arm's own (trainer, padding, optimizer)."""
    args, optimizer = trainer.args, trainer.optimizer
    # the Trainer's groups: the decayed parameters first, then biases and norms (harness.modeling's rule)
    groups = [sum(p.numel() for p in group["params"]) for group in optimizer.param_groups]
    loader = {"num_workers": args.dataloader_num_workers, "pin_memory": args.dataloader_pin_memory,
              "pad_to_multiple_of": None}  # fmt: skip
    return {
        "trainer": "transformers.Trainer",
        "transformers_version": transformers.__version__,
        "padding": "chunk",
        "padding_detail": PADDING_DETAIL,
        "train_sampling_strategy": args.train_sampling_strategy,
        "optimizer": args.optim.value,  # TrainingArguments made it an OptimizerNames
        "fused_optimizer": bool(optimizer.defaults.get("fused")),
        "device": decisions.device,
        "device_name": device_name(decisions.device),
        "world_size": args.world_size,
        "ranks_per_node": 1,
        "num_machines": 1,
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
        "mixed_precision": trainer.accelerator.mixed_precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_threads": torch.get_num_threads(),
        "loader": loader,
        "weight_decay_groups": {"decayed_parameters": groups[0], "not_decayed_parameters": sum(groups[1:])},
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "global_batch_size": args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "fallbacks": decisions.fallbacks,
        "flops_model": flops.to_dict(),
        **describe_model(trainer.model),  # attn_implementation, parameter dtype and device: from the model
    }


def loss_history(trainer: Trainer) -> list[dict[str, Any]]:
    """The Trainer's logged training losses, in the harness's loss_history fields."""
    return [{"step": e["step"], "epoch": e["epoch"], "loss": e["loss"], "learning_rate": e["learning_rate"]}
            for e in trainer.state.log_history if "loss" in e]  # fmt: skip


def check_single_process(recipe: Recipe) -> None:
    """This arm is one process on one device: the Trainer's own multi-process set-up is not what is compared."""
    if recipe.hardware.distributed:
        raise HarnessError("hardware: the seed Trainer arm runs one process; set hardware.num_processes=1 and no "
                           "deepspeed or fsdp")  # fmt: skip


@dataclass
class Workload:
    """The recipe's data and model, loaded and checked by the harness's own code."""

    decisions: Decisions  # device, attention implementation and max_length, as preflight decides them
    labelled: Labelled
    tokenizer: Any
    data: DatasetDict  # tokenised as the seed script tokenises
    model: PreTrainedModel


def load_workload(recipe: Recipe, results_dir: str) -> Workload:
    """Bad input is refused before any work, as `harness run` refuses it (preflight, then the data checks)."""
    check_single_process(recipe)
    decisions = preflight(recipe, results_dir)
    torch.set_float32_matmul_precision("high" if recipe.precision.tf32 else "highest")  # as the harness sets TF32
    labelled = load_labelled(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    data = seed_tokenize(labelled.splits, tokenizer, decisions.max_length)
    set_seed(recipe.train.seed)  # as the harness, before the model: the same initialisation
    model = load_model(recipe.model, labelled.labels, decisions.attn_implementation)
    return Workload(decisions, labelled, tokenizer, data, model)


@dataclass
class Trained:
    """What training and the final evaluation leave."""

    trainer: Trainer
    marks: StepMarks
    split: str  # the evaluated split
    evaluation: Evaluation


def train_and_evaluate(recipe: Recipe, work: Workload, warmup_steps: int, started: float) -> Trained:
    """trainer.train() with the step marks, then one evaluation of the final weights."""
    collator = CountingCollator(work.tokenizer)
    marks = StepMarks(collator, flops_model(work.model), work.decisions.device, warmup_steps, started)
    with tempfile.TemporaryDirectory() as output_dir:  # the Trainer wants one; nothing is saved there
        trainer = Trainer(model=work.model, args=training_arguments(recipe, work.decisions.device, output_dir),
                          train_dataset=work.data["train"], data_collator=collator, processing_class=work.tokenizer,
                          callbacks=[marks])  # fmt: skip
        trainer.train()
        trainer.data_collator = collator.pad  # evaluation batches are no training work: not counted
        split, evaluation = final_evaluation(trainer, work.data, work.decisions.device)
    return Trained(trainer, marks, split, evaluation)


def seed_speed(recipe: Recipe, trained: Trained, log: StepLog, warmup_steps: int, started: float) -> SpeedReport:
    """The speed report by the harness's own code, from the step log the callback kept."""
    device, marks = trained.marks.device, trained.marks
    peak = peak_flops(device_name(device), math_mode(recipe.precision.dtype, recipe.precision.tf32))
    speed = speed_report(
        log,
        warmup_steps=warmup_steps,
        world_size=trained.trainer.args.world_size,
        peak_flops_per_device=peak,
        time_to_first_step_s=marks.first_step_s,
        train_wall_s=marks.train_wall_s,
        eval_samples_per_s=trained.evaluation.samples_per_s,
        total_wall_s=time.time() - started,
    )
    add_energy(speed, log, [marks.energy.window_joules()])
    return speed


def training_record(recipe: Recipe, work: Workload, trained: Trained, log: StepLog) -> dict[str, Any]:
    """The result's `training`, in the harness's fields (no evaluation during training: none, and no best)."""
    state, train = trained.trainer.state, recipe.train
    batches = math.ceil(len(work.data["train"]) / train.batch_size)
    return {
        "optimizer_steps": state.global_step, "epochs": state.num_train_epochs,
        "steps_per_epoch": math.ceil(batches / train.gradient_accumulation_steps),
        "num_samples": {split: len(ds) for split, ds in work.data.items()},
        "labels": work.labelled.labels.names,
        "data": {"dataset_commit": work.labelled.commit, "fingerprints": work.labelled.fingerprints(),
                 "synthetic": work.labelled.synthetic},
        "loss_history": loss_history(trained.trainer), "evaluations": [],
        "best": {"step": None, "metric": train.metric_for_best_model, "value": None, "checkpoint": None},
        "test_from": "final_weights" if trained.split == "test" else None,
        "target": None, "resumed_from_step": None,
        "step_log": log.to_dict(),
    }  # fmt: skip


def run_seed_trainer(recipe: Recipe, results_dir: str | None = None, warmup_steps: int | None = None) -> Path:
    """Train and evaluate the recipe's workload with the stock Trainer recipe; the result file's path."""
    started, started_at = time.time(), utc_now()
    results_dir = results_dir or recipe.output.results_dir
    warmup = recipe.collector.warmup_steps if warmup_steps is None else warmup_steps
    work = load_workload(recipe, results_dir)
    trained = train_and_evaluate(recipe, work, warmup, started)
    log = trained.marks.step_log()
    speed = seed_speed(recipe, trained, log, warmup, started)
    recorded = seed_recipe(recipe)
    run_id = new_run_id(recorded.name)
    arrays = prediction_arrays({trained.split: trained.evaluation})
    predictions = save_predictions(predictions_path(Path(results_dir), recorded.name, run_id), arrays)
    result = RunResult(
        run_id=run_id, kind="train", status="completed",
        recipe_name=recorded.name, recipe_hash=recorded.hash, recipe=recorded.to_dict(),
        started_at=started_at, finished_at=utc_now(),
        ran=ran(trained.trainer, work.decisions, trained.marks.flops), speed=speed,
        memory=memory_report([{"rank": 0, **peak_memory(work.decisions.device)}]),
        accuracy={trained.split: trained.evaluation.metrics(work.labelled.labels.names)},
        training=training_record(recipe, work, trained, log),
        environment=collect_environment(),
        predictions_file=predictions.name,
    )  # fmt: skip
    return save_result(Path(results_dir), result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", help="a harness recipe name or path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--results-dir", help="default: the recipe's output.results_dir")
    parser.add_argument("--warmup-steps", type=int, help="steps not timed; default: collector.warmup_steps")
    args = parser.parse_args(argv)
    if args.warmup_steps is not None and args.warmup_steps < 0:
        parser.error("--warmup-steps: must be >= 0")
    try:
        path = run_seed_trainer(load_recipe(args.recipe, args.set), args.results_dir, args.warmup_steps)
    except HarnessError as error:  # bad input: refused with its fix named, as `harness run` refuses it
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT_EXIT
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
