"""What the stack rehearsals (scripts/rehearse-stack.sh) check besides the other tests marked `stack`: every
module of the harness imports on the stack, and a 3-step run of the shipped synthetic recipe completes there,
recording that stack's versions."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil

import pytest

import harness
from harness.cli import main
from harness.results import find_result_files, load_result
from tests.conftest import minilm_tokenizer_folder

pytestmark = pytest.mark.stack

# modules that need a package of their own: only the laptop that launches on Modal has modal
NEEDS = {"harness.launch": "modal"}


def harness_modules() -> list[str]:
    """Every module of the package but the entry point that runs the CLI when imported."""
    modules = pkgutil.walk_packages(harness.__path__, "harness.")
    return sorted(module.name for module in modules if module.name != "harness.__main__")


@pytest.mark.parametrize("name", harness_modules())
def test_every_module_imports_on_this_stack(name):
    needed = NEEDS.get(name)
    if needed and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{name} needs {needed}, which this stack does not have")
    importlib.import_module(name)


def test_a_three_step_run_completes_and_records_this_stack(tmp_path):
    overrides = ["train.max_steps=3", "collector.warmup_steps=1", f"model.tokenizer={minilm_tokenizer_folder()}",
                 f"output.checkpoints_dir={tmp_path / 'ck'}"]  # fmt: skip
    flags = [f"--set={o}" for o in overrides]
    assert main(["run", "bert-shape-synthetic-cpu", "--results-dir", str(tmp_path), *flags]) == 0
    (path,) = find_result_files([tmp_path])
    result = load_result(path)
    assert result["status"] == "completed"
    assert result["training"]["step_log"]["samples"] == [32, 32, 32]  # 3 optimizer steps of 32 texts
    recorded = result["environment"]["packages"]
    for package in ("torch", "transformers", "accelerate", "huggingface-hub"):
        assert recorded[package] == importlib.metadata.version(package)
