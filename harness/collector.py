"""The collector: step timing, sample and token counting, model FLOPs and the speed report.

Timing. A step is one optimizer step (all its accumulation micro-batches). The timer takes one *mark* per
step boundary; step i lasts from mark i-1 to mark i, so the time spent fetching and collating the next batch
is inside the step, as it is in a real run. On CUDA a mark is a CUDA event recorded in stream order: nothing
in the loop waits for the device, and the events are read after one synchronisation at the end. After an
evaluation the timer is restarted so evaluation time never counts as a training step.

Warm-up. The first `warmup_steps` steps (allocator growth, kernel autotuning, lazy initialisation) are not
timed into any rate. Their *work* still counts: it is charged at the measured steps' seconds per padded
token, so a rate is (all samples) / (measured seconds + warm-up work x measured seconds per padded token).
Excluding the warm-up samples instead would bias every rate by which batches happened to come first, and
length grouping puts the longest batch first: up to +5% samples/s in the grouped run's favour.

Counting. Samples and real tokens (attention_mask == 1) count each training sample once; the repeats that even
out the last round of an epoch over several processes are counted apart (`repeated_samples`). Padded tokens
are every position computed, repeats included.

Model FLOPs, per sequence of n real tokens (Kaplan et al. 2020, with the attention term of PaLM, appendix B):
    forward  = 2 * N * n  +  4 * d * sum over layers of n * min(n, window)  +  2 * H
    training = 3 * forward = 6 * N * n + 12 * d * sum_l n * min(n, w_l) + 6 * H
N: parameters applied to every token (non-embedding: lookups do no multiply-adds; without the pooler and
classifier). H: parameters applied once per sequence (pooler and classifier head, on the [CLS] or pooled
vector). d: hidden size. w_l: the attention window of layer l (infinite for global attention; ModernBERT's
local layers see 128 tokens), so 4 * d * n * min(n, w) counts Q K^T and A V (each 2 * n * min(n, w) * d).
Only real tokens of first-time samples are counted, so padding and repeats never raise MFU. MFU = achieved
model FLOP/s over the peak of all devices in the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.results import SpeedReport


@dataclass
class StepLog:
    """Per optimizer step, on one rank (or summed over ranks): duration and what it processed."""

    durations_s: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    real_tokens: list[int] = field(default_factory=list)
    padded_tokens: list[int] = field(default_factory=list)
    repeated_samples: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    data_wait_s: list[float] = field(default_factory=list)  # host seconds the step waited for its batches

    def to_dict(self) -> dict[str, list]:
        return dict(self.__dict__)


@dataclass
class BatchCounts:
    """What one batch holds, counted on the host at collate time (no device sync needed)."""

    samples: int = 0  # first-time samples of this epoch
    real_tokens: int = 0  # their tokens with attention_mask == 1
    padded_tokens: int = 0  # every position computed, pads and repeats included
    repeated_samples: int = 0  # repeats that even out the last round over several processes
    lengths: list[int] = field(default_factory=list)  # real length of each first-time sample, for the FLOPs
    data_wait_s: float = 0.0  # host seconds spent waiting for the batch (set by the training loop)

    def __iadd__(self, other: BatchCounts) -> BatchCounts:
        self.samples += other.samples
        self.real_tokens += other.real_tokens
        self.padded_tokens += other.padded_tokens
        self.repeated_samples += other.repeated_samples
        self.lengths += other.lengths
        self.data_wait_s += other.data_wait_s
        return self


@dataclass
class FlopsModel:
    """Training FLOPs from the real lengths of the sequences (see the module docstring for the formula)."""

    per_token_params: int  # N
    per_sequence_params: int  # H
    hidden_size: int  # d
    attention_windows: list[int | None]  # per layer; None: global attention

    def training_flops(self, lengths: list[int]) -> float:
        """Called every step on the host: a sum per distinct window (ModernBERT has two), not per layer."""
        dense = 6 * self.per_token_params * sum(lengths) + 6 * self.per_sequence_params * len(lengths)
        pairs = sum(layers * sum(n * min(n, window or n) for n in lengths)
                    for window, layers in Counter(self.attention_windows).items())  # fmt: skip
        return float(dense + 12 * self.hidden_size * pairs)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
            self.log.repeated_samples.append(counts.repeated_samples)
            self.log.flops.append(flops)
            self.log.data_wait_s.append(counts.data_wait_s)
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
    for key, values in merged.__dict__.items():
        combine = max if key in ("durations_s", "data_wait_s") else sum  # the slowest rank sets a step's time
        values.extend(combine(log[key][i] for log in logs) for i in range(steps))
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
    """Summarise a (global) step log. Rates cover every step, the warm-up steps' time estimated from the
    measured steps' seconds per padded token (module docstring); step-time statistics cover measured steps."""
    skip = min(warmup_steps, max(len(log.durations_s) - 1, 0))  # always keep at least one step
    durations = log.durations_s[skip:]
    measured_s = sum(durations)
    measured_padded = sum(log.padded_tokens[skip:])
    warmup_s = measured_s * sum(log.padded_tokens[:skip]) / measured_padded if measured_padded else 0.0
    seconds = measured_s + warmup_s  # the whole run's training work at the steady rate
    samples, flops = sum(log.samples), sum(log.flops)
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
        train_real_tokens_per_s=_rate(sum(log.real_tokens), seconds),
        train_padded_tokens_per_s=_rate(padded_total, seconds),
        padding_efficiency=sum(log.real_tokens) / padded_total if padded_total else None,
        repeated_samples=sum(log.repeated_samples),
        data_wait_fraction=sum(log.data_wait_s[skip:]) / measured_s if measured_s and log.data_wait_s else None,
        step_time_mean_s=measured_s / len(durations) if durations else None,
        step_time_p50_s=float(np.percentile(durations, 50)) if durations else None,
        step_time_p90_s=float(np.percentile(durations, 90)) if durations else None,
        time_to_first_step_s=time_to_first_step_s,
        train_wall_s=train_wall_s,
        train_samples_per_s_wall=_rate(samples, train_wall_s),
        eval_samples_per_s=eval_samples_per_s,
        total_wall_s=total_wall_s,
        train_samples_per_s_per_device=samples_per_s / world_size if samples_per_s else None,
        model_flops_per_step_mean=flops / len(log.flops) if log.flops else None,
        achieved_flops_per_s=achieved,
        peak_flops_per_s_per_device=peak_flops_per_device,
        mfu=mfu,
    )
