"""The collector: step timing, token counting, model FLOPs and the speed report.

Timing. A step is one optimizer step (all its accumulation micro-batches). The timer takes one *mark* per
step boundary; step i lasts from mark i-1 to mark i, so the time spent fetching and collating the next batch
is inside the step, as it is in a real run. On CUDA a mark is a CUDA event recorded in stream order: nothing
in the loop waits for the device, and the events are read after one synchronisation at the end. After an
evaluation the timer is restarted so evaluation time never counts as a training step. The first
`warmup_steps` steps (allocator growth, kernel autotuning, lazy initialisation) are excluded from every rate
and step-time statistic.

Model FLOPs, per sequence of n real tokens (Kaplan et al. 2020, with the attention term of PaLM, appendix B):
    forward  = 2 * N * n  +  4 * L * d * n^2
    training = 3 * forward = 6 * N * n + 12 * L * d * n^2
where N is the number of non-embedding parameters (embedding lookups do no multiply-adds), L the number
of layers and d the hidden size; 4 * L * d * n^2 counts Q K^T and A V (each 2 * n^2 * d per layer).
Only real tokens are counted, so padding never raises MFU. MFU = achieved model FLOP/s over the peak of
all devices in the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.results import SpeedReport


@dataclass
class StepLog:
    """Per optimizer step, on one rank: duration and what it processed."""

    durations_s: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    real_tokens: list[int] = field(default_factory=list)
    padded_tokens: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return dict(self.__dict__)


@dataclass
class BatchCounts:
    """What one batch holds, counted on the host at collate time (no device sync needed)."""

    samples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    sum_len_sq: int = 0  # sum over sequences of (real length)^2, for the attention FLOPs term

    def __iadd__(self, other: BatchCounts) -> BatchCounts:
        self.samples += other.samples
        self.real_tokens += other.real_tokens
        self.padded_tokens += other.padded_tokens
        self.sum_len_sq += other.sum_len_sq
        return self


@dataclass
class FlopsModel:
    """Training FLOPs from real token counts (see the module docstring for the formula)."""

    non_embedding_params: int
    num_layers: int
    hidden_size: int

    def training_flops(self, counts: BatchCounts) -> float:
        dense = 6 * self.non_embedding_params * counts.real_tokens
        attention = 12 * self.num_layers * self.hidden_size * counts.sum_len_sq
        return float(dense + attention)


class StepTimer:
    """Marks step boundaries with a clock; `mark` returns a timestamp, `elapsed(a, b)` its seconds."""

    def __init__(self, mark: Callable[[], Any], elapsed: Callable[[Any, Any], float] | None = None):
        self._mark = mark
        self._elapsed = elapsed or (lambda a, b: b - a)
        self._last: Any = None
        self._steps: list[tuple[Any, Any, BatchCounts, float]] = []
        self.log = StepLog()

    def restart(self) -> None:
        """Start timing the next step from now (at the start of training and after each evaluation)."""
        self._last = self._mark()

    def step_done(self, counts: BatchCounts, flops: float) -> None:
        now = self._mark()
        self._steps.append((self._last, now, counts, flops))
        self._last = now

    def finalize(self) -> StepLog:
        """Resolve all marks into durations (on CUDA, call after synchronising the device)."""
        for start, end, counts, flops in self._steps:
            self.log.durations_s.append(self._elapsed(start, end))
            self.log.samples.append(counts.samples)
            self.log.real_tokens.append(counts.real_tokens)
            self.log.padded_tokens.append(counts.padded_tokens)
            self.log.flops.append(flops)
        self._steps.clear()
        return self.log


def cuda_timer() -> StepTimer:
    """A StepTimer whose marks are CUDA events (read once the device is synchronised)."""
    import torch

    def mark() -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    return StepTimer(mark, lambda a, b: a.elapsed_time(b) / 1000.0)


def merge_rank_logs(logs: list[dict[str, list]]) -> StepLog:
    """One global log from every rank's: counts add up, a step lasts as long as its slowest rank."""
    steps = min(len(log["durations_s"]) for log in logs)
    merged = StepLog()
    for i in range(steps):
        merged.durations_s.append(max(log["durations_s"][i] for log in logs))
        merged.samples.append(sum(log["samples"][i] for log in logs))
        merged.real_tokens.append(sum(log["real_tokens"][i] for log in logs))
        merged.padded_tokens.append(sum(log["padded_tokens"][i] for log in logs))
        merged.flops.append(sum(log["flops"][i] for log in logs))
    return merged


def _rate(amount: float, seconds: float) -> float | None:
    return amount / seconds if seconds > 0 else None


def speed_report(
    log: StepLog,
    *,
    warmup_steps: int,
    world_size: int,
    peak_flops_per_device: float | None,
    time_to_first_step_s: float | None,
    train_wall_s: float,
    eval_samples_per_s: float | None,
    total_wall_s: float,
) -> SpeedReport:
    """Summarise a (global) step log. Rates cover the steps after warm-up only."""
    skip = min(warmup_steps, max(len(log.durations_s) - 1, 0))  # always keep at least one step
    durations = log.durations_s[skip:]
    seconds = sum(durations)
    samples = sum(log.samples[skip:])
    flops = sum(log.flops[skip:])
    samples_per_s = _rate(samples, seconds)
    achieved = _rate(flops, seconds)
    mfu = None
    if achieved is not None and peak_flops_per_device:
        mfu = achieved / (peak_flops_per_device * world_size)
    padded_total = sum(log.padded_tokens)
    return SpeedReport(
        warmup_steps=skip,
        measured_steps=len(durations),
        train_samples_per_s=samples_per_s,
        train_real_tokens_per_s=_rate(sum(log.real_tokens[skip:]), seconds),
        train_padded_tokens_per_s=_rate(sum(log.padded_tokens[skip:]), seconds),
        padding_efficiency=sum(log.real_tokens) / padded_total if padded_total else None,
        step_time_mean_s=seconds / len(durations) if durations else None,
        step_time_p50_s=float(np.percentile(durations, 50)) if durations else None,
        step_time_p90_s=float(np.percentile(durations, 90)) if durations else None,
        time_to_first_step_s=time_to_first_step_s,
        train_wall_s=train_wall_s,
        eval_samples_per_s=eval_samples_per_s,
        total_wall_s=total_wall_s,
        train_samples_per_s_per_device=samples_per_s / world_size if samples_per_s else None,
        model_flops_per_step_mean=flops / len(durations) if durations else None,
        achieved_flops_per_s=achieved,
        peak_flops_per_s_per_device=peak_flops_per_device,
        mfu=mfu,
    )
