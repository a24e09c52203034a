"""bench/check_ci.py, CI's benchmark gate: the limits it enforces, on a made-up pytest-benchmark report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

CHECKER = Path(__file__).resolve().parents[2] / "bench" / "check_ci.py"
spec = importlib.util.spec_from_file_location("check_ci", CHECKER)
check_ci = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_ci)

BASELINE = json.loads(check_ci.BASELINE.read_text())


def report(**values: float) -> dict:
    """A report holding the committed baseline's own numbers, except those given."""
    numbers = {**BASELINE["recorded"], **BASELINE["at_least"], **values}
    seconds = [{"name": test, "stats": {stat: numbers[name]}, "extra_info": {}}
               for name, (test, stat) in check_ci.SECONDS.items()]  # fmt: skip
    extra = {name: numbers[name] for name in (*check_ci.RATIOS, *check_ci.EPOCHS)}
    return {"benchmarks": [*seconds, {"name": check_ci.PADDING, "stats": {}, "extra_info": extra}]}


def test_the_baseline_passes_and_a_slower_step_is_only_recorded():
    assert check_ci.failures(check_ci.measured(report(train_step_s=60.0)), BASELINE) == []


def test_a_ratio_20_percent_below_the_baseline_and_a_slow_help_fail_by_name():
    ratio = BASELINE["at_least"]["harness_over_classic_speed"]
    lines = check_ci.failures(check_ci.measured(report(harness_over_classic_speed=0.75 * ratio, help_s=1.5)), BASELINE)
    assert [line.split()[0] for line in lines] == ["harness_over_classic_speed", "help_s"]
    assert f"is below {0.8 * ratio:.3f} (baseline {ratio:.3f} - 20%)" in lines[0]
    assert lines[1] == "help_s 1.500 s is over its limit of 1.0 s (fastest round)"


def test_a_report_without_the_benchmarks_is_refused():
    with pytest.raises(SystemExit, match="benchmark report lacks test_collate_a_batch"):
        check_ci.measured({"benchmarks": [entry for entry in report()["benchmarks"]
                                          if entry["name"] != "test_collate_a_batch"]})  # fmt: skip
