"""Benchmarks of the commands that must answer at once: `harness --help`, and `harness compare` over 1000 result
files made from one real run's. bench/check_ci.py gates their fastest round against bench/ci-baseline.json."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.compare import compare

TEMPLATE = Path(__file__).with_name("minilm-banking77-cpu-result.json")  # a real run of the CPU smoke recipe
RESULT_FILES = 1000


def varied(template: dict[str, Any], index: int) -> dict[str, Any]:
    """The template as another seed's run: its own run id, seed, throughput and accuracy."""
    result = copy.deepcopy(template)
    result["run_id"] = f"20261201T120000Z-minilm-banking77-cpu-{index:06x}"
    result["recipe"]["train"]["seed"] = index
    result["speed"]["train_samples_per_s"] *= 1 + (index % 13) / 100
    result["accuracy"]["validation"]["accuracy"] -= (index % 7) / 100
    return result


@pytest.fixture(scope="module")
def result_folder(tmp_path_factory) -> Path:
    template = json.loads(TEMPLATE.read_text())
    folder = tmp_path_factory.mktemp("results") / template["recipe_name"]
    folder.mkdir()
    for index in range(RESULT_FILES):
        result = varied(template, index)
        (folder / f"{result['run_id']}.json").write_text(json.dumps(result, indent=2))
    return folder


def test_harness_help(benchmark):
    """A new interpreter each round, as a user's shell starts one: the imports are what is timed."""
    command = [sys.executable, "-m", "harness", "--help"]
    benchmark.pedantic(subprocess.run, args=(command,), kwargs={"check": True, "capture_output": True}, rounds=5)


@pytest.mark.benchmark(timer=time.process_time)
def test_compare_1000_result_files(benchmark, result_folder):
    """Finding, reading, validating and tabulating every file, as `harness compare FOLDER` does. Timed in CPU
    seconds of this process: on a shared machine the wall time grew 2.5-fold with the neighbours' load."""
    table = benchmark.pedantic(compare, args=([str(result_folder)],), rounds=3)
    assert table.count("\n| 20261201T120000Z-") == RESULT_FILES
    benchmark.extra_info["result_files"] = RESULT_FILES
