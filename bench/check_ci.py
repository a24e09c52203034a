"""CI's benchmark gate: checks the JSON that pytest-benchmark wrote for tests/benchmarks against bench/ci-baseline.json.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/benchmarks --benchmark-json bench/out/ci-benchmarks.json
    .venv/bin/python bench/check_ci.py bench/out/ci-benchmarks.json            # exit 1 naming each failed limit
    .venv/bin/python bench/check_ci.py bench/out/ci-benchmarks.json --update   # refresh the baseline from it

Gated: the harness-vs-classic speed ratio and the harness arm's padding efficiency may drop at most `max_drop`
(20%) below the baseline's values; `harness --help` and `harness compare` over 1000 result files must stay under
their limits in seconds (compare's in CPU seconds), judged on the fastest round (a busy machine only adds time).
The other times (a training step, a collation, an epoch of each padding arm) are printed beside the baseline
machine's but not gated: on a shared machine they say more about the neighbours than about the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BASELINE = Path(__file__).with_name("ci-baseline.json")
PADDING = "test_padding_harness_vs_classic"
SECONDS = {  # measured name -> (benchmark, statistic): absolute times, in seconds
    "help_s": ("test_harness_help", "min"),
    "compare_1000_files_cpu_s": ("test_compare_1000_result_files", "min"),  # CPU seconds (see its test)
    "train_step_s": ("test_one_training_step", "median"),
    "collate_batch_s": ("test_collate_a_batch", "median"),
}
RATIOS = ("harness_over_classic_speed", "harness_padding_efficiency")  # from the padding benchmark's extra_info
EPOCHS = ("harness_epoch_s", "classic_epoch_s")  # ... recorded beside them


def measured(report: dict[str, Any]) -> dict[str, float]:
    """The numbers the gate and its printout read, by name, from a pytest-benchmark JSON report."""
    benchmarks = {benchmark["name"]: benchmark for benchmark in report["benchmarks"]}
    missing = sorted(({test for test, _ in SECONDS.values()} | {PADDING}) - set(benchmarks))
    if missing:
        sys.exit(f"benchmark report lacks {', '.join(missing)}: run pytest tests/benchmarks (benchmarks enabled) "
                 "with --benchmark-json and pass that file")  # fmt: skip
    values = {name: benchmarks[test]["stats"][stat] for name, (test, stat) in SECONDS.items()}
    values.update({name: benchmarks[PADDING]["extra_info"][name] for name in (*RATIOS, *EPOCHS)})
    return values


def failures(values: dict[str, float], baseline: dict[str, Any]) -> list[str]:
    """One line per limit the measured values break."""
    lines = []
    keep = 1 - baseline["max_drop"]
    for name, reference in baseline["at_least"].items():
        if values[name] < keep * reference:
            lines.append(f"{name} {values[name]:.3f} is below {keep * reference:.3f} (baseline {reference:.3f} "
                         f"- {baseline['max_drop']:.0%})")  # fmt: skip
    for name, limit in baseline["at_most_s"].items():
        if values[name] > limit:
            lines.append(f"{name} {values[name]:.3f} s is over its limit of {limit} s (fastest round)")
    return lines


def report_lines(values: dict[str, float], baseline: dict[str, Any]) -> list[str]:
    """Every number beside the baseline machine's, the gated ones marked."""
    gated = {*baseline["at_least"], *baseline["at_most_s"]}
    reference = {**baseline["recorded"], **baseline["at_least"]}
    return [f"{'gated   ' if name in gated else 'recorded'} {name:28s} {value:10.4g}   baseline machine "
            f"{reference.get(name, float('nan')):10.4g}" for name, value in values.items()]  # fmt: skip


def updated(baseline: dict[str, Any], values: dict[str, float], report: dict[str, Any]) -> dict[str, Any]:
    """The baseline with this report's values and where they come from; the limits stay as they are."""
    cpu = report["machine_info"].get("cpu", {})
    machine = (f"{cpu.get('brand_raw') or report['machine_info']['processor']}, {cpu.get('count')} cores, "
               f"Python {report['machine_info']['python_version']}, {report['machine_info']['system']} "
               f"{report['machine_info']['release']}")  # fmt: skip
    return {
        **baseline,
        "measured": {"date": report["datetime"][:10], "machine": machine, "by": "bench/check_ci.py --update"},
        "at_least": {name: round(values[name], 4) for name in baseline["at_least"]},
        "recorded": {name: round(value, 5) for name, value in values.items() if name not in baseline["at_least"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="pytest-benchmark's --benchmark-json output")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--update", action="store_true", help="write this report's values into the baseline")
    args = parser.parse_args()
    report, baseline = json.loads(args.report.read_text()), json.loads(args.baseline.read_text())
    values = measured(report)
    if args.update:
        args.baseline.write_text(json.dumps(updated(baseline, values, report), indent=2) + "\n")
        print(f"{args.baseline}: updated from {args.report}")
        return 0
    print("\n".join(report_lines(values, baseline)))
    broken = failures(values, baseline)
    for line in broken:
        print(f"FAIL {line}", file=sys.stderr)
    print(f"benchmark gate: {'FAILED' if broken else 'passed'} (baseline {args.baseline}, measured "
          f"{baseline['measured']['date']} on {baseline['measured']['machine']})")  # fmt: skip
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
