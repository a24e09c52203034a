"""Evaluation: probabilities for every sample exactly once, on one or many processes, and their metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from harness import metrics as metrics_lib

if TYPE_CHECKING:
    from harness.stopping import StopRequests


@dataclass
class Evaluation:
    probs: np.ndarray  # (samples, classes), float64
    labels: np.ndarray | None  # None when the data has no labels (predict)
    rows: np.ndarray | None  # original row numbers, when the loader carries them
    seconds: float

    @property
    def samples_per_s(self) -> float | None:
        return len(self.probs) / self.seconds if self.seconds > 0 else None

    def metrics(self, label_names: list[str]) -> dict[str, Any]:
        result = metrics_lib.classification_metrics(self.labels, self.probs, label_names)
        picked = self.probs[np.arange(len(self.labels)), self.labels]
        result["loss"] = float(-np.log(np.clip(picked, 1e-12, None)).mean())  # cross-entropy, nats
        # the best constant predictor on this split: the bar any trained model must clear
        result["majority_class_accuracy"] = float(np.bincount(self.labels).max() / len(self.labels))
        result["samples_per_s"] = self.samples_per_s
        return result


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def evaluate(model, loader, accelerator: Accelerator, device: str, desc: str, stop: StopRequests | None = None) -> Evaluation:
    """Probabilities for every sample exactly once: gather_for_metrics drops the duplicates that
    distributed samplers add to even out the last batch. Labels and row numbers travel with them.
    stop: a training run's stop requests, checked after each batch (a long evaluation can be stopped)."""
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {"probs": [], "labels": [], "row": []}
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
            batch.pop("counts")
            carried = {key: batch.pop(key) for key in ("labels", "row") if key in batch}
            probs = model(**batch).logits.float().softmax(-1)
            for key, value in accelerator.gather_for_metrics({"probs": probs, **carried}).items():
                collected[key].append(value.cpu())
            if stop is not None:
                stop.check()
    synchronize(device)
    seconds = time.perf_counter() - start
    model.train()
    joined = {key: torch.cat(parts).numpy() if parts else None for key, parts in collected.items()}
    return Evaluation(joined["probs"].astype(np.float64), joined["labels"], joined["row"], seconds)
