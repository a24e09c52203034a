"""Saved checkpoints: `harness predict` (top-k labels for a file) and `harness eval` (a result file)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from datasets import DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from harness.checkpoints import CHECKPOINT_INFO
from harness.data import (
    DataError,
    check_labels,
    check_texts,
    encode_labels,
    eval_loader,
    load_files,
    load_labelled,
    source_of,
    tokenize,
)  # fmt: skip
from harness.environment import collect_environment
from harness.evaluation import Evaluation, evaluate
from harness.metrics import top_k_predictions
from harness.modeling import describe_model
from harness.recipe import MIXED_PRECISION, DataSpec, recipe_from_dict
from harness.results import RunResult, new_run_id, save_result, utc_now


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The run's info (labels, recipe, run id) of a saved checkpoint, read without loading its weights."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise DataError(f"{folder}: not a saved checkpoint (no config.json); pass the run's …/best folder")
    info_file = folder / CHECKPOINT_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if "labels" not in info:
        id2label = json.loads((folder / "config.json").read_text())["id2label"]
        info["labels"] = [id2label[str(i)] for i in range(len(id2label))]
    return info


def load_checkpoint(path: str | Path, info: dict[str, Any]) -> tuple[Accelerator, Any, Any]:
    """An accelerator in the run's precision, and the checkpoint's model (prepared: on the device) and tokenizer;
    loaded only once the input has been checked."""
    accelerator = Accelerator(mixed_precision=run_precision(info))
    model = AutoModelForSequenceClassification.from_pretrained(path)
    return accelerator, accelerator.prepare_model(model, evaluation_mode=True), AutoTokenizer.from_pretrained(path)


def run_precision(info: dict[str, Any]) -> str:
    """The autocast mode the checkpoint's run trained and evaluated in (fp32 without a recipe), checked against
    this machine, so that a checkpoint's evaluation equals the one inside its run."""
    from harness.preflight import check_precision, resolve_device

    dtype = info.get("recipe", {}).get("precision", {}).get("dtype", "fp32")
    check_precision(dtype, resolve_device("auto"))
    return MIXED_PRECISION[dtype]


def read_file(file: str, split: str, text_column: str, label_column: str | None = None) -> DatasetDict:
    """A CSV / JSON lines / Parquet file as the one split `split`, its columns, texts and labels checked, text
    in "text"."""
    files = {split: file}
    data = load_files(files, source_of(file))
    columns = data[split].column_names
    for column, flag in ((text_column, "--text-column"), (label_column, "the recipe's data.label_column")):
        if column and column not in columns:
            raise DataError(f"{file}: no column '{column}' (columns: {', '.join(columns)}); check {flag}")
    check_texts(data, text_column, files)
    if label_column:
        check_labels(data, label_column, files)
    return data.rename_column(text_column, "text") if text_column != "text" else data


def _run_eval(accelerator: Accelerator, model, tokenizer, data: DatasetDict, spec: DataSpec,
              batch_size: int) -> dict[str, Evaluation]:  # fmt: skip
    tokenized = tokenize(data, tokenizer, spec)
    device = accelerator.device.type
    return {
        split: evaluate(model, accelerator.prepare_data_loader(eval_loader(ds, tokenizer, batch_size)),
                        accelerator, device, split)
        for split, ds in tokenized.items()
    }  # fmt: skip


def predict(checkpoint: str, file: str, *, top_k: int, output: str | None, text_column: str, batch_size: int) -> Path:
    """A CSV with the input text and the top-k labels and probabilities per row, in input order."""
    info = checkpoint_info(checkpoint)
    out = Path(output or f"{file}.predictions.csv")
    if out.exists():
        raise FileExistsError(f"{out} exists; predictions never replace a file: pass another --output")
    data = read_file(file, "predict", text_column)
    texts = data["predict"]["text"]
    data = data.map(lambda _, i: {"row": i}, with_indices=True)
    accelerator, model, tokenizer = load_checkpoint(checkpoint, info)
    # the run's max_length, else the longest the model takes
    limit = info.get("recipe", {}).get("data", {}).get("max_length")
    spec = DataSpec(source="csv", train_file=file, max_length=limit or model.config.max_position_embeddings)
    inputs = data.select_columns(["text", "row"])
    evaluation = _run_eval(accelerator, model, tokenizer, inputs, spec, batch_size)["predict"]
    probs = evaluation.probs[np.argsort(evaluation.rows)]  # back to input order
    k = min(top_k, probs.shape[1])
    with out.open("x", newline="") as handle:  # "x": never overwrite an earlier predictions file
        writer = csv.writer(handle)
        writer.writerow(["text"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "score")])
        for text, best in zip(texts, top_k_predictions(probs, info["labels"], k)):
            writer.writerow([text] + [v for label, score in best for v in (label, f"{score:.6f}")])
    return out


def evaluate_checkpoint(checkpoint: str, *, split: str | None, file: str | None, results_dir: str,
                        batch_size: int) -> Path:  # fmt: skip
    """Accuracy metrics of a checkpoint on a split of its recipe's data, or on a labelled file."""
    started_at, start = utc_now(), time.time()
    info = checkpoint_info(checkpoint)
    if "recipe" not in info and not file:
        raise DataError(f"{checkpoint}: no {CHECKPOINT_INFO} with the recipe; evaluate a file with --file")
    recipe = recipe_from_dict(info["recipe"]) if "recipe" in info else None
    names = info["labels"]
    if file:
        spec = recipe.data if recipe else DataSpec(source="csv", train_file=file)
        split_name = "eval"
        data = encode_labels(read_file(file, split_name, spec.text_column, spec.label_column), spec.label_column, names)
    else:
        split_name = split or "test"
        spec = recipe.data
        labelled = load_labelled(spec)
        data, labels = labelled.splits, labelled.labels
        if labels.names != names:
            raise DataError(f"{checkpoint}: the data's labels differ from the checkpoint's ({names})")
        if split_name not in data:
            raise DataError(f"split '{split_name}' is not in the recipe's data (it has: {', '.join(data)})")
        data = DatasetDict({split_name: data[split_name]})
    data = data.select_columns(["text", "labels"])
    accelerator, model, tokenizer = load_checkpoint(checkpoint, info)
    evaluation = _run_eval(accelerator, model, tokenizer, data, spec, batch_size)[split_name]
    recipe_dict: dict[str, Any] = info.get("recipe", {})
    result = RunResult(
        run_id=new_run_id(f"eval-{info.get('run_id', Path(checkpoint).name)}"[:80]),
        kind="eval", status="completed",
        recipe_name=recipe.name if recipe else "eval",
        recipe_hash=recipe.hash if recipe else "",
        recipe=recipe_dict, started_at=started_at, finished_at=utc_now(),
        ran={"device": accelerator.device.type, "mixed_precision": accelerator.mixed_precision,
             "checkpoint": str(checkpoint), "source_run_id": info.get("run_id"), "split": split_name, "file": file,
             **describe_model(model)},
        accuracy={split_name: evaluation.metrics(names)},
        training={"eval_wall_s": time.time() - start},
        environment=collect_environment(),
    )  # fmt: skip
    return save_result(Path(results_dir), result)
