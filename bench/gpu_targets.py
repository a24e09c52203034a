"""The GPU speed matrix's targets, checked on its result files and summarised in markdown.

    .venv/bin/python bench/gpu_targets.py RESULTS_DIR [--output FILE.md]

RESULTS_DIR is what bench/gpu_matrix.sh writes for one GPU (results/gpu-matrix/<device>/): `speed/` with the runs
of modernbert-base-speed-matrix and modernbert-base-speed-matrix-fa2 in two workloads (synthetic texts of a
fixed 512 tokens, and normally distributed lengths) plus one seed Trainer run (bench/seed_trainer.py, recipe
name `...-seed-trainer`) per workload, and `accuracy/` with the repeats of minilm-banking77-gpu-accuracy in a
plain arm and a fast one. Runs are told apart by what their result files recorded (recipe name, resolved
recipe), not by folder, so any folder holding such files will do. The targets (from the issue):

1. MFU: the best bf16 harness arm of the fixed-512 workload (the highest mean `speed.mfu` over an arm's runs)
   reaches at least 0.45.
2. Variable lengths: the best harness arm's `speed.train_samples_per_s` is at least 3x the seed Trainer arm's.
3. Accuracy: the fast arm's macro-F1 (test split, else validation) is within noise of the plain arm's: a
   two-sided Welch's t-test over repeats does not reject at alpha 0.05, and the difference is at most 0.01.

An arm is the runs of one recipe with the same settings (`bf16 sdpa packing compile`), their mean shown with
the standard deviation over runs. Runs that did not complete (failed, out of memory, interrupted) are listed
with their error type and count towards no target. The summary is printed, and written to --output (replaced
if it exists: it is derived from the result files, which stay as they are). Exit code: 0 when every target is
met, 1 when one is missed, else 2 when one has no data (each named).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import stats
from harness.compare import METRICS, Group, Table, counted, dig, load_results, render_markdown, resolve_split

SPEED_RECIPES = ("modernbert-base-speed-matrix", "modernbert-base-speed-matrix-fa2")
SEED_SUFFIX = "-seed-trainer"  # bench/seed_trainer.py names its result's recipe <recipe>-seed-trainer
ACCURACY_RECIPE = "minilm-banking77-gpu-accuracy"
FIXED, VARIABLE = "fixed", "normal"  # recipe.data.synthetic.lengths.distribution of the two speed workloads
MFU_TARGET = 0.45
SPEEDUP_TARGET = 3.0
F1_MARGIN = 0.01  # 1 point of macro-F1
ALPHA = 1 - stats.LEVEL  # what harness.stats' Comparison.significant tests against: 0.05
MET, MISSED, NO_DATA = "met", "missed", "no data"
EXIT_CODES = {MET: 0, MISSED: 1, NO_DATA: 2}
MFU_NOTE = (
    "MFU counts real tokens only (`speed.mfu`: model FLOPs of the tokens with attention_mask 1 over the device's "
    "dense datasheet peak in the run's math mode). For scale: MLPerf-grade BERT ~0.50, the stock Trainer 0.25-0.35."
)


@dataclass
class Outcome:
    """One target's verdict: its one-line summary for the top of the page and its section."""

    title: str
    status: str  # MET, MISSED or NO_DATA
    summary: str  # the deciding numbers, one line
    body: list[str]  # markdown lines of its section: how it was judged, tables


def arm_label(result: dict[str, Any]) -> str:
    """The settings an arm is made of, from the recorded recipe: "bf16 sdpa packing compile"."""
    dtype = dig(result, "recipe", "precision", "dtype") or "?"
    if dtype == "fp32" and dig(result, "recipe", "precision", "tf32"):
        dtype = "fp32 (tf32)"  # its matmuls run on TF32 tensor cores, against TF32's peak in the MFU
    parts = [dtype, dig(result, "recipe", "model", "attn_implementation") or "?"]
    parts += [flag for flag, on in (("packing", is_packed(result)), ("compile", is_compiled(result))) if on]
    return " ".join(parts)


def is_packed(result: dict[str, Any]) -> bool:
    """Whether the run trained on packed batches (data.packing)."""
    return bool(dig(result, "recipe", "data", "packing"))


def is_compiled(result: dict[str, Any]) -> bool:
    """Whether the run trained a torch.compile'd model (train.compile)."""
    return bool(dig(result, "recipe", "train", "compile"))


def is_fast(result: dict[str, Any]) -> bool:
    """The accuracy check's fast arm: anything but plain fp32, padded batches, eager PyTorch."""
    return dig(result, "recipe", "precision", "dtype") != "fp32" or is_packed(result) or is_compiled(result)


def judged(recipe_name: str) -> bool:
    """Whether runs of this recipe count towards a target (or are its seed Trainer reference)."""
    return recipe_name in (*SPEED_RECIPES, ACCURACY_RECIPE) or recipe_name.endswith(SEED_SUFFIX)


def is_seed_trainer(result: dict[str, Any]) -> bool:
    """Whether bench/seed_trainer.py wrote the result (the stock Trainer arm), by the name it gives its recipe."""
    return str(result.get("recipe_name", "")).endswith(SEED_SUFFIX)


def lengths(result: dict[str, Any]) -> dict[str, Any]:
    """The synthetic workload's length distribution ({} for data that is not synthetic)."""
    return dig(result, "recipe", "data", "synthetic", "lengths") or {}


def workload_text(result: dict[str, Any]) -> str:
    """The workload as a reader wants it named: "fixed, 512 tokens"."""
    spec = lengths(result)
    if spec.get("distribution") == FIXED:
        return f"fixed, {spec.get('length')} tokens"
    details = ", ".join(f"{key} {value}" for key, value in spec.items() if key != "distribution" and value is not None)
    return f"{spec.get('distribution')} lengths ({details})"


def completed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that finished: only they count towards a target."""
    return [result for result in results if result.get("status") == "completed"]


def speed_arms(results: list[dict[str, Any]], distribution: str) -> list[Group]:
    """The completed speed runs of one workload, one Group per recipe and settings (label: the settings); the
    seed Trainer's among them, told apart by their recipe name."""
    arms: dict[tuple[str, str], Group] = {}
    for result in completed(results):
        name = result.get("recipe_name", "")
        if (name in SPEED_RECIPES or is_seed_trainer(result)) and lengths(result).get("distribution") == distribution:
            group = arms.setdefault((name, arm_label(result)), Group(arm_label(result), [], []))
            group.results.append(result)
            group.paths.append(None)
    return list(arms.values())


def best(arms: list[Group], metric: str) -> Group | None:
    """The arm with the highest mean of metric; None if no arm has it."""
    scored = [arm for arm in arms if arm.mean(metric) is not None]
    return max(scored, key=lambda arm: arm.mean(metric)) if scored else None


def by_metric(arms: list[Group], metric: str) -> list[Group]:
    """Highest mean first; arms without the metric (an unknown device's MFU is null) last."""
    return sorted(arms, key=lambda arm: (arm.mean(metric) is None, -(arm.mean(metric) or 0)))


def arms_table(arms: list[Group], metrics: list[str]) -> list[str]:
    """A pipe table of the arms as harness compare renders it: mean ± std over an arm's runs, each metric's
    direction in its header."""
    rows = []
    for arm in arms:
        row = {"recipe": arm.results[0].get("recipe_name"), "setup": arm.label, "n": len(arm.results)}
        for name in metrics:
            values = arm.values(name)
            row[name], row[f"{name}_std"] = stats.mean_std(values) if values else (None, None)
        rows.append(row)
    return render_markdown(Table(["recipe", "setup", "n", *metrics], rows)).splitlines()


def describe(arm: Group) -> str:
    """An arm in running text: **settings** (recipe, n runs)."""
    return f"**{arm.label}** ({arm.results[0].get('recipe_name')}, {counted(len(arm.results), 'run')})"


def fmt(metric: str, value: float) -> str:
    """A value as harness compare prints that metric."""
    return METRICS[metric].fmt(value)


def mfu_target(results: list[dict[str, Any]]) -> Outcome:
    """Target 1: the best bf16 harness arm of the fixed workload reaches MFU_TARGET."""
    title = f"1. MFU ≥ {MFU_TARGET:.2f} (fixed-length workload, bf16, best harness arm)"
    arms = speed_arms(results, FIXED)
    harness_bf16 = [arm for arm in arms if not is_seed_trainer(arm.results[0])
                    and dig(arm.results[0], "recipe", "precision", "dtype") == "bf16"]  # fmt: skip
    top = best(harness_bf16, "mfu")
    body = [MFU_NOTE]
    if top is None:
        why = "no bf16 harness run recorded speed.mfu (null: the device's peak is unknown)"
        if not harness_bf16:
            why = "no completed bf16 run of modernbert-base-speed-matrix(-fa2) in the fixed-length workload"
        return Outcome(title, NO_DATA, why, [*body, "", f"No data: {why}."])
    mfu = top.mean("mfu")
    body += ["", f"Workload: {workload_text(top.results[0])}.",
             f"Best bf16 harness arm: {describe(top)}, MFU {fmt('mfu', mfu)}."]  # fmt: skip
    if mfu >= MFU_TARGET:
        status, verdict = MET, f"{fmt('mfu', mfu)} ≥ {MFU_TARGET:.2f}, {points(mfu - MFU_TARGET)} to spare"
    else:
        status = MISSED
        verdict = (f"{fmt('mfu', mfu)} < {MFU_TARGET:.2f}: missed by {points(MFU_TARGET - mfu)} "
                   f"({mfu / MFU_TARGET:.2f}x the target)")  # fmt: skip
    body += [f"Verdict: **{status}**: {verdict}.", "", "Every arm of the workload (seed Trainer: reference row):", ""]
    body += arms_table(by_metric(arms, "mfu"), ["mfu", "train_samples_per_s"])
    return Outcome(title, status, f"{top.label}: MFU {verdict}", body)


def points(fraction: float) -> str:
    """A difference of fractions in percentage points: 0.038 -> "3.8 percentage points"."""
    return f"{fraction * 100:.1f} percentage points"


def speedup_target(results: list[dict[str, Any]]) -> Outcome:
    """Target 2: on variable lengths, the best harness arm trains SPEEDUP_TARGET x the seed Trainer's samples/s."""
    title = f"2. Variable-length workload: best harness arm ≥ {SPEEDUP_TARGET:g}x the seed Trainer's samples/s"
    metric = "train_samples_per_s"
    arms = speed_arms(results, VARIABLE)
    top = best([arm for arm in arms if not is_seed_trainer(arm.results[0])], metric)
    # against the fastest seed Trainer arm if there are several (other precisions): the harder comparison
    seed = best([arm for arm in arms if is_seed_trainer(arm.results[0])], metric)
    missing = [what for what, arm in (("harness arm", top), ("seed Trainer arm", seed)) if arm is None]
    if missing:
        why = f"no completed {' and no '.join(missing)} with train_samples_per_s in the {VARIABLE}-length workload"
        return Outcome(title, NO_DATA, why, [f"No data: {why}."])
    fast, slow = top.mean(metric), seed.mean(metric)
    ratio = fast / slow
    if ratio >= SPEEDUP_TARGET:
        status, verdict = MET, f"{ratio:.2f}x ≥ {SPEEDUP_TARGET:g}x ({ratio - SPEEDUP_TARGET:.2f}x to spare)"
    else:
        status = MISSED
        verdict = (f"{ratio:.2f}x < {SPEEDUP_TARGET:g}x: {SPEEDUP_TARGET - ratio:.2f}x short (the target needs "
                   f"{fmt(metric, SPEEDUP_TARGET * slow)} samples/s)")  # fmt: skip
    body = [
        f"Workload: {workload_text(top.results[0])}.",
        f"Best harness arm: {describe(top)}: {fmt(metric, fast)} samples/s.",
        f"Seed Trainer arm: {describe(seed)}: {fmt(metric, slow)} samples/s.",
        f"Ratio {fmt(metric, fast)} / {fmt(metric, slow)} = {verdict}: **{status}**.",
        "",
        *arms_table(by_metric(arms, metric), [metric, "padding_efficiency", "real_tokens_per_s"]),
    ]
    return Outcome(title, status, f"{top.label} / seed Trainer = {verdict}", body)


def accuracy_target(results: list[dict[str, Any]]) -> Outcome:
    """Target 3: the fast arm's macro-F1 within noise of the plain arm's (Welch over repeats, and F1_MARGIN)."""
    title = "3. Accuracy: fast arm's macro-F1 within noise of the plain arm's"
    runs = [result for result in completed(results) if result.get("recipe_name") == ACCURACY_RECIPE]
    plain = Group("plain", [run for run in runs if not is_fast(run)], [])
    fast = Group("fast", [run for run in runs if is_fast(run)], [])
    criteria = (
        f"Within noise means both: (a) a two-sided Welch's t-test over the repeats does not reject equal means at "
        f"alpha {ALPHA:.2f}; (b) |fast − plain| ≤ {F1_MARGIN} ({F1_MARGIN * 100:g} point of F1)."
    )
    scores = {arm.label: arm.values("f1_macro") for arm in (plain, fast)}
    body = [criteria, "", *accuracy_table(plain, fast)]
    few = [f"{label} {counted(len(values), 'run')}" for label, values in scores.items() if len(values) < 2]
    if few:
        why = f"not enough repeats with macro-F1 (at least 2 per arm; found {', '.join(few)})"
        return Outcome(title, NO_DATA, why, [*body, "", f"No data: {why}."])
    test = stats.welch(scores["fast"], scores["plain"])
    difference = stats.mean_std(scores["fast"])[0] - stats.mean_std(scores["plain"])[0]
    rejected = test is not None and test.significant
    close = abs(difference) <= F1_MARGIN
    status = MET if close and not rejected else MISSED
    if test is None:  # stats.welch: neither arm varies over its seeds
        welch_text = "Welch's t-test undefined (no arm varies over its repeats): not rejected"
    else:
        low, high = test.ci95
        welch_text = (f"Welch's t-test p = {test.p_value:.3g} (95% CI of the difference [{low:+.4f}, {high:+.4f}]): "
                      f"{'rejected' if rejected else 'not rejected'} at alpha {ALPHA:.2f}")  # fmt: skip
    margin_text = f"|difference| {abs(difference):.4f} {'≤' if close else '>'} {F1_MARGIN}"
    split = "/".join(sorted({resolve_split(run, "auto") for run in runs}))
    body += ["", f"Split: {split}. fast − plain = {difference:+.4f}.",
             f"(a) {welch_text}; (b) {margin_text}: **{status}**."]  # fmt: skip
    p_text = "Welch undefined (no spread)" if test is None else f"Welch p = {test.p_value:.3g}"
    summary = f"fast − plain macro-F1 {difference:+.4f}, {p_text}; {margin_text}"
    return Outcome(title, status, summary, body)


def accuracy_table(plain: Group, fast: Group) -> list[str]:
    """The two arms' macro-F1, mean ± std over repeats, with the settings each arm's runs recorded."""
    rows = []
    for arm in (plain, fast):
        values = arm.values("f1_macro")
        mean, std = stats.mean_std(values) if values else (None, None)
        settings = ", ".join(dict.fromkeys(arm_label(run) for run in arm.results)) or "no completed run"
        rows.append({"setup": f"{arm.label}: {settings}", "n": len(values), "f1_macro": mean, "f1_macro_std": std})
    return render_markdown(Table(["setup", "n", "f1_macro"], rows)).splitlines()


def error_text(result: dict[str, Any]) -> str:
    """A run that did not complete, as its error says: the type, and for out of memory what did not fit."""
    error = result.get("error") or {}
    text = f"{result.get('status')}, {error.get('type', 'no error recorded')}"
    if error.get("type") == "OutOfMemory":
        shape = "×".join(map(str, error.get("batch_shape") or [])) or "?"
        text += f" ({error.get('phase')}, batch_size {error.get('batch_size')} per device, batch {shape})"
    return text


def not_completed_lines(results: list[dict[str, Any]]) -> list[str]:
    """One line per run that did not complete: which run, which arm and workload, and why."""
    lines = []
    for result in results:
        if result.get("status") != "completed":
            where = f", {workload_text(result)}" if lengths(result) else ""
            lines.append(f"- `{result.get('run_id')}` ({result.get('recipe_name')}, {arm_label(result)}{where}): "
                         f"{error_text(result)}")  # fmt: skip
    return lines


def header_lines(results_dir: str, results: list[dict[str, Any]], notes: list[str]) -> list[str]:
    """Where the numbers come from: the folder, the devices, what was read and what could not be."""
    devices = list(dict.fromkeys(name for result in results if (name := dig(result, "ran", "device_name"))))
    lines = [
        f"Results: `{results_dir}`: {counted(len(results), 'result')} read ({len(completed(results))} completed).",
        f"Device: {', '.join(devices) if devices else 'none recorded (ran.device_name is null: CPU runs?)'}.",
    ]
    if len(devices) > 1:
        lines.append("**Warning**: runs of several devices are pooled in the arms below; pass one device's folder.")
    others = Counter(name for result in results if not judged(name := result.get("recipe_name", "")))
    if others:  # a folder of other runs is named, not silently read as a matrix without data
        counts = ", ".join(f"{name} ({count})" for name, count in others.items())
        lines.append(f"Not part of the matrix (no target reads them): {counts}.")
    return lines + notes


def render(results_dir: str, results: list[dict[str, Any]], notes: list[str], outcomes: list[Outcome]) -> str:
    """The whole summary page in markdown."""
    lines = ["# GPU speed matrix: targets", "", *header_lines(results_dir, results, notes)]
    lines += ["", "↑ after a metric's name: higher is better. Tables show mean ± std over an arm's runs.", ""]
    lines += [f"- {outcome.title}: **{outcome.status}**: {outcome.summary}" for outcome in outcomes]
    failed = not_completed_lines(results)
    lines += ["", f"Exit code {exit_code(outcomes)}.", "", "## Runs that did not complete (no target counts them)", ""]
    lines += failed or ["None."]
    for outcome in outcomes:
        lines += ["", f"## {outcome.title}: {outcome.status}", "", *outcome.body]
    return "\n".join(lines) + "\n"


def exit_code(outcomes: list[Outcome]) -> int:
    """1 if a target is missed, else 2 if one has no data, else 0."""
    statuses = {outcome.status for outcome in outcomes}
    return next((EXIT_CODES[status] for status in (MISSED, NO_DATA) if status in statuses), 0)


TARGETS: list[Callable[[list[dict[str, Any]]], Outcome]] = [mfu_target, speedup_target, accuracy_target]


def main(argv: list[str] | None = None) -> int:
    """Read the results, judge every target, print (and write) the summary; the exit code says how it went."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="results/gpu-matrix/<device>/ (searched deeply)")
    parser.add_argument("--output", type=Path, metavar="FILE.md", help="also write the summary here")
    args = parser.parse_args(argv)
    try:
        loaded = load_results([args.results_dir])
    except (ValueError, FileNotFoundError) as error:  # nothing readable: no target has data
        print(f"error: {error}; no data for any target", file=sys.stderr)
        return EXIT_CODES[NO_DATA]
    outcomes = [target(loaded.results) for target in TARGETS]
    text = render(args.results_dir, loaded.results, loaded.notes(), outcomes)
    print(text, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return exit_code(outcomes)


if __name__ == "__main__":
    sys.exit(main())
