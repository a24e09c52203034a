"""bench/gpu_matrix.sh without a GPU: it validates every recipe and setting it would run, and refuses to measure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_matrix.sh"


def matrix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})  # fmt: skip


def test_check_validates_every_cell_of_both_workloads_and_both_accuracy_arms():
    done = matrix("--check")
    assert done.returncode == 0, done.stdout + done.stderr
    # twice the two speed sweeps (fixed and variable lengths), then the accuracy recipe with the fast settings
    assert done.stdout.count("2 valid, 0 invalid") == 2 and done.stdout.count("1 valid, 0 invalid") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures for real on a GPU")
def test_without_a_gpu_it_measures_nothing():
    done = matrix("--quick")
    assert done.returncode != 0 and "no CUDA GPU: nothing to measure" in done.stderr


def test_an_unknown_option_is_refused():
    done = matrix("--fast")
    assert done.returncode == 2 and "unknown option --fast" in done.stderr
