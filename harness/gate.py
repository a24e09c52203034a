"""`harness gate BASELINE CANDIDATE`: a pass/fail verdict for CI on a candidate's runs against a baseline's.

BASELINE and CANDIDATE are result files or folders; a folder's completed runs are one group (repeats), compared
by their mean. Three checks, in this order:

- **Environment.** The runs must come from the same stack: GPU names, NVIDIA driver, CUDA of torch, Python, the
  CPU model (runs without a GPU) and every recorded package version except the harness itself (the code under
  test) and modal (the launcher client, which trains nothing). Throughput from another machine or another torch
  says nothing about the code, so a difference is refused (exit 2) naming the fields, unless --allow-env-change.
- **Speed.** The candidate's mean of --metric (train_samples_per_s by default; a ↓ metric such as step_p50_s
  works the other way round) may be at most --max-slowdown (a fraction, 0.10) worse than the baseline's mean.
- **Quality: non-inferiority.** For each --quality metric (accuracy and macro-F1 of the test split, else the
  validation split), d = candidate - baseline must be shown to exceed -margin (--margin 0.01: one point) by a
  one-sided test at --alpha: H0 "d <= -margin" is rejected when the one-sided (1 - alpha) lower confidence
  bound of d lies above -margin. The bound comes from Welch's t over seeds when both sides have 2+ runs, and
  from a paired bootstrap of the two runs' predictions of the same examples when both are single runs that
  kept them. Otherwise no test is possible and the point estimate d itself must exceed -margin (said so).
  Noisy repeats can fail this check although the candidate's mean is not worse: the burden of proof is on the
  candidate, as in any non-inferiority test; add repeats or widen the margin.

Exit codes: 0 every check passed, 1 a check failed (each printed with its numbers), 2 bad input (unreadable or
failed runs, a metric a side lacks) or an environment mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness import stats
from harness.compare import Group, load_results, metric, paired_predictions
from harness.errors import HarnessError

NOT_THE_STACK = ("harness", "modal")  # package versions that do not make two runs' speed incomparable
BOOTSTRAP_RESAMPLES = 2000


class EnvironmentMismatch(HarnessError):
    """Baseline and candidate ran on different hardware or software: their numbers do not compare."""


@dataclass(frozen=True)
class Check:
    """One verdict, printed as a line with the numbers behind it."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class LowerBound:
    """Where candidate - baseline lies at least, with confidence 1 - alpha, and which test says so."""

    difference: float  # candidate mean - baseline mean
    bound: float  # the one-sided lower confidence bound of the difference (the difference itself: no test)
    test: str | None  # None: no test was possible


def load_side(path: str, role: str) -> Group:
    """The completed runs under path as one group. A run that failed or was interrupted is bad input: its
    speed and accuracy do not exist, and a gate must not pass by leaving it out."""
    try:
        loaded = load_results([path], strict=True)
    except ValueError as error:  # unreadable or invalid files, none found
        raise HarnessError(f"{role}: {error}") from None
    unfinished = [f"{result['run_id']} ({result['status']})" for result in loaded.results
                  if result["status"] != "completed"]  # fmt: skip
    if unfinished:
        raise HarnessError(f"{role} {path}: not completed: {', '.join(unfinished)}; gate compares completed runs")
    return Group(path, loaded.results, list(loaded.paths))


def environment(result: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run's environment that must match for its numbers to compare with another run's."""
    env = result.get("environment") or {}
    accelerators = env.get("accelerators") or {}
    gpus = [gpu.get("name") for gpu in accelerators.get("gpus") or []]
    fields = {"gpus": gpus, "driver": accelerators.get("driver"), "cuda": accelerators.get("torch_cuda"),
              "python": env.get("python")}  # fmt: skip
    if not gpus:  # a CPU run's speed is the CPU's
        fields["cpu"] = env.get("cpu")
    packages = env.get("packages") or {}
    fields.update({f"packages.{name}": version for name, version in packages.items() if name not in NOT_THE_STACK})
    return fields


def environment_differences(base: Group, cand: Group) -> list[str]:
    """'field: baseline values vs candidate values' for each field whose values differ between the sides."""

    def values(group: Group, key: str) -> list[str]:
        return sorted({json.dumps(environment(result).get(key)) for result in group.results})

    # a field that some run does not record (a package an older harness did not list) is unknown there, not changed
    recorded = [environment(result) for result in base.results + cand.results]
    keys = [key for key in recorded[0] if all(key in fields for fields in recorded)]
    return [f"{key}: {', '.join(values(base, key))} (baseline) vs {', '.join(values(cand, key))} (candidate)"
            for key in keys if values(base, key) != values(cand, key)]  # fmt: skip


def side_values(group: Group, role: str, name: str, split: str) -> list[float]:
    """The metric in every run of one side; a side without it is bad input, not a pass."""
    values = group.values(name, split)
    if len(values) < len(group.results):
        raise HarnessError(f"{role} {group.label}: {len(group.results) - len(values)} of {len(group.results)} "
                           f"run(s) have no {name} (split {split}); choose a metric every run recorded")  # fmt: skip
    return values


def speed_check(base: Group, cand: Group, name: str, max_slowdown: float, split: str) -> Check:
    """The candidate's mean at most max_slowdown worse than the baseline's, in the metric's direction."""
    b, c = (float(np.mean(side_values(group, role, name, split)))
            for group, role in ((base, "baseline"), (cand, "candidate")))  # fmt: skip
    slowdown = (b - c) / b if metric(name).direction == "↑" else (c - b) / b
    change = f"{abs(slowdown):.1%} {'slower' if slowdown >= 0 else 'faster'}"
    detail = (f"baseline {b:.4g} (n={len(base.results)}), candidate {c:.4g} (n={len(cand.results)}): {change}, "
              f"limit {max_slowdown:.1%} slower")  # fmt: skip
    return Check(f"speed {name}", slowdown <= max_slowdown, detail)


def accuracy_difference(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """accuracy(a) - accuracy(b) along the last axis (rows), for every leading index (bootstrap resample)."""
    return (a == labels).mean(axis=-1) - (b == labels).mean(axis=-1)


def f1_difference(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """macro-F1(a) - macro-F1(b), batched as accuracy_difference is."""
    from harness.metrics import macro_f1  # loads scikit-learn: only when a paired test runs

    return macro_f1(labels, a) - macro_f1(labels, b)


PAIRED_DIFFERENCES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": accuracy_difference,
    "f1_macro": f1_difference,
}


def welch_lower_bound(cand: list[float], base: list[float], alpha: float) -> float:
    """Welch's one-sided (1 - alpha) lower bound of mean(cand) - mean(base): d - t(1 - alpha, df) * se, with
    se² = var_c / n_c + var_b / n_b and the Welch-Satterthwaite df."""
    from scipy.stats import ttest_ind

    result = ttest_ind(cand, base, equal_var=False, alternative="greater")
    return float(result.confidence_interval(1 - alpha).low)


def paired_lower_bound(pair: tuple[np.ndarray, np.ndarray, np.ndarray], name: str, alpha: float) -> float:
    """The alpha quantile of a paired bootstrap of the difference over the same examples (seeded)."""
    difference = PAIRED_DIFFERENCES[name]
    boot = stats.paired_bootstrap(list(pair), difference, seed=0, n_resamples=BOOTSTRAP_RESAMPLES)
    return float(np.quantile(boot.bootstrap_distribution, alpha))


def lower_bound(base: Group, cand: Group, name: str, split: str, alpha: float) -> LowerBound:
    """The strongest test the runs allow (module docstring): Welch over seeds, a paired bootstrap of two single
    runs' predictions, else none (the bound is the difference itself)."""
    b, c = side_values(base, "baseline", name, split), side_values(cand, "candidate", name, split)
    difference = float(np.mean(c) - np.mean(b))
    if len(b) >= 2 and len(c) >= 2 and (np.ptp(b) > 0 or np.ptp(c) > 0):
        return LowerBound(difference, welch_lower_bound(c, b, alpha), f"Welch's t over seeds, n={len(b)}/{len(c)}")
    pair = paired_predictions(cand, base, split) if name in PAIRED_DIFFERENCES else None
    if pair is not None:
        bootstrap = f"paired bootstrap of {len(pair[0])} examples"
        return LowerBound(difference, paired_lower_bound(pair, name, alpha), bootstrap)
    return LowerBound(difference, difference, None)


def quality_check(base: Group, cand: Group, name: str, margin: float, alpha: float, split: str) -> Check:
    """Non-inferiority: the lower bound of candidate - baseline above -margin."""
    result = lower_bound(base, cand, name, split, alpha)
    bound = (f"one-sided {1 - alpha:.0%} lower bound {result.bound:+.4f}" if result.test else
             "no test possible (single runs without paired predictions, or no variation): the difference itself")
    verdict = f"{'>' if result.bound > -margin else '<='} -margin {-margin:+.4f}"
    test = f" ({result.test})" if result.test else ""
    detail = f"candidate - baseline {result.difference:+.4f}; {bound} {verdict}{test}"
    return Check(f"non-inferiority {name}", result.bound > -margin, detail)


def check_options(speed_metric: str, quality: list[str], max_slowdown: float, margin: float, alpha: float) -> None:
    """Bad options are refused before any file is read (metric() names the closest metric)."""
    for name in (speed_metric, *quality):
        try:
            metric(name)
        except ValueError as error:
            raise HarnessError(str(error)) from None
    if max_slowdown < 0 or margin < 0:
        raise HarnessError("--max-slowdown and --margin: must be 0 or more (fractions: 0.10 is 10%, 0.01 one point)")
    if not 0 < alpha < 0.5:
        raise HarnessError(f"--alpha: must be in (0, 0.5), got {alpha}; 0.05 is usual")


def run_gate(baseline: str, candidate: str, *, speed_metric: str = "train_samples_per_s", max_slowdown: float = 0.10,
             quality: tuple[str, ...] = ("accuracy", "f1_macro"), margin: float = 0.01, alpha: float = 0.05,
             split: str = "auto", allow_env_change: bool = False) -> int:  # fmt: skip
    """Print every check's verdict; 0 when all pass, 1 when one fails. Bad input and an environment mismatch
    raise HarnessError (the command's exit code 2)."""
    check_options(speed_metric, list(quality), max_slowdown, margin, alpha)
    base, cand = load_side(baseline, "baseline"), load_side(candidate, "candidate")
    differences = environment_differences(base, cand)
    if differences and not allow_env_change:
        raise EnvironmentMismatch(
            "baseline and candidate ran on different environments, so their numbers do not compare:\n  "
            + "\n  ".join(differences)
            + "\nrun the baseline again on this machine and stack, or pass --allow-env-change to compare anyway"
        )
    for difference in differences:
        print(f"note: environment differs (allowed by --allow-env-change): {difference}")
    checks = [speed_check(base, cand, speed_metric, max_slowdown, split),
              *(quality_check(base, cand, name, margin, alpha, split) for name in quality)]  # fmt: skip
    for check in checks:
        print(check.line())
    failed = [check.name for check in checks if not check.passed]
    print(f"gate: FAILED ({', '.join(failed)})" if failed else "gate: passed")
    return 1 if failed else 0
