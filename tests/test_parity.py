"""The harness's training loop against the reference implementation, transformers.Trainer: the packaged MiniLM
from the same initial weights, fed the same batches in the same order with the same hyperparameters, gives the
same loss and learning rate at every step. This checks the optimizer (AdamW, decay groups), the schedule
(linear with warm-up), gradient clipping and the loss. Dropout is off: its random draws are not part of what
is compared."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from harness.data import load_labelled, tokenize, train_loader
from harness.launcher import launch
from harness.modeling import load_model, load_tokenizer
from harness.plan import make_plan
from harness.recipe import load_recipe
from harness.results import load_result

pytestmark = pytest.mark.slow

STEPS = 20
SETTINGS = [
    f"train.max_steps={STEPS}", "train.batch_size=16", "train.learning_rate=1e-4", "train.warmup_ratio=0.1",
    "train.weight_decay=0.01", "train.max_grad_norm=1.0", "train.scheduler=linear", "train.seed=42",
    "train.eval_strategy=no", "train.save_best=false", "train.log_every_steps=1", "data.test_file=null",
    "model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
]  # fmt: skip


class Recorder(TrainerCallback):
    """The learning rate each optimizer step uses (read before the scheduler moves on)."""

    def __init__(self):
        self.learning_rates: list[float] = []

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.learning_rates.append(lr_scheduler.get_last_lr()[0])


class SameBatchesTrainer(Trainer):
    """transformers.Trainer fed a given DataLoader, recording each step's loss."""

    def __init__(self, loader: DataLoader, **kwargs):
        super().__init__(**kwargs)
        self.loader, self.losses = loader, []

    def get_train_dataloader(self) -> DataLoader:
        return self.accelerator.prepare(self.loader)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.losses.append(loss.item())
        return loss


def without_counts(collate):
    def collate_for_trainer(features):
        batch = collate(features)
        batch.pop("counts")  # the harness's host-side counts: not a model input
        return batch

    return collate_for_trainer


def trainer_steps(recipe, tmp_path: Path) -> tuple[list[float], list[float]]:
    """Per-step losses and learning rates of transformers.Trainer on the harness's own batches."""
    labelled = load_labelled(recipe.data)
    tokenizer = load_tokenizer(recipe.model)
    data = tokenize(labelled.splits, tokenizer, recipe.data)
    train = recipe.train
    loader = train_loader(data["train"], tokenizer, train.batch_size, train.seed, recipe.data.group_by_length, 1)
    loader.collate_fn = without_counts(loader.collate_fn)
    set_seed(train.seed)  # as the harness does before building the model: the same classifier initialisation
    model = load_model(recipe.model, labelled.labels, "sdpa")
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=STEPS, per_device_train_batch_size=train.batch_size,
        learning_rate=train.learning_rate, weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm,
        lr_scheduler_type="linear", warmup_steps=2,  # ceil(0.1 x 20), as the harness rounds warmup_ratio
        optim="adamw_torch_fused", seed=train.seed, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, dataloader_pin_memory=False,
    )  # fmt: skip
    recorder = Recorder()
    trainer = SameBatchesTrainer(loader, model=model, args=args, callbacks=[recorder])
    trainer.train()
    return trainer.losses, recorder.learning_rates


def test_the_loop_matches_transformers_trainer_step_by_step(tmp_path):
    recipe = load_recipe("minilm-banking77-cpu", [*SETTINGS, f"output.checkpoints_dir={tmp_path / 'ck'}"])
    result = load_result(launch(make_plan(recipe, results_dir=str(tmp_path / "results"))))
    history = result["training"]["loss_history"]
    assert [entry["step"] for entry in history] == list(range(1, STEPS + 1))
    assert result["ran"]["fused_optimizer"] is True and result["ran"]["parameter_dtype"] == "float32"

    losses, learning_rates = trainer_steps(recipe, tmp_path)
    assert len(losses) == len(learning_rates) == STEPS
    assert [entry["learning_rate"] for entry in history] == pytest.approx(learning_rates, abs=1e-12)
    assert learning_rates[:3] == pytest.approx([0.0, 5e-5, 1e-4])  # the warm-up, then the linear decay
    assert [entry["loss"] for entry in history] == pytest.approx(losses, abs=1e-5)
    assert losses[-1] < losses[0] - 0.1  # it learns: the comparison is not of two idle loops
    assert torch.get_default_dtype() == torch.float32
