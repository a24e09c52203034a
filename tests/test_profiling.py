"""`harness run --profile N`: StepProfiler profiles N steps of a real (tiny) training loop and writes a trace,
a table of the top operators and, on CUDA, a memory snapshot; nothing it writes replaces a file."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from harness.profiling import StepProfiler


class TinyTraining:
    """A one-layer BERT fine-tuned on random batches with AdamW, as the harness loop steps it."""

    def __init__(self, device: str):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, num_labels=3)  # fmt: skip
        self.device = device
        self.model = BertForSequenceClassification(config).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def step(self) -> None:
        input_ids = torch.randint(0, 100, (4, 16), device=self.device)
        labels = torch.randint(0, 3, (4,), device=self.device)
        self.model(input_ids=input_ids, labels=labels).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def profile_run(folder: Path, device: str = "cpu", steps: int = 3, run_steps: int = 3, warmup: int = 2,
                profiler: StepProfiler | None = None) -> tuple[StepProfiler, list[bool]]:  # fmt: skip
    """Warm-up steps unprofiled, then start() and step_done() after each of `run_steps` steps, then finish()
    as the harness does when its loop ends."""
    training = TinyTraining(device)
    for _ in range(warmup):
        training.step()
    profiler = profiler or StepProfiler(steps, folder, device, rank=0)
    profiler.start()
    answers = []
    for _ in range(run_steps):
        training.step()
        answers.append(profiler.step_done())
    profiler.finish()
    return profiler, answers


def trace_events(folder: Path, rank: int = 0) -> list[dict]:
    with gzip.open(folder / f"profile-rank{rank}-trace.json.gz", "rt") as handle:
        return json.load(handle)["traceEvents"]


def profiler_steps(events: list[dict]) -> list[str]:
    return sorted(e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#"))


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> tuple[Path, StepProfiler, list[bool]]:
    folder = tmp_path_factory.mktemp("profile")
    profiler, answers = profile_run(folder)
    return folder, profiler, answers


def test_step_done_says_when_all_steps_are_profiled(profiled):
    _, profiler, answers = profiled
    assert answers == [False, False, True]
    assert profiler.step_done() is True  # finished: a no-op


def test_trace_holds_each_profiled_step_and_the_matrix_products(profiled):
    folder, _, _ = profiled
    events = trace_events(folder)
    assert profiler_steps(events) == ["ProfilerStep#0", "ProfilerStep#1", "ProfilerStep#2"]
    names = {e.get("name") for e in events}
    assert names & {"aten::mm", "aten::addmm"}
    linear = next(e for e in events if e.get("name") == "aten::addmm")
    assert linear["args"]["Input Dims"]  # record_shapes


def test_top_operators_name_device_steps_and_aten_ops(profiled):
    folder, profiler, _ = profiled
    lines = (folder / profiler.files()["top_operators"]).read_text().splitlines()
    assert lines[0] == "device cpu, rank 0: 3 step(s) profiled, sorted by self_cpu_time_total"
    operators = [line.split()[0] for line in lines[1:] if line.strip() and not line.startswith("-")]
    assert sum(name.startswith("aten::") for name in operators) >= 5  # the table's names are right-aligned
    assert "aten::mm" in operators


def test_files_names_exactly_what_is_in_the_folder(profiled):
    folder, profiler, _ = profiled
    assert profiler.files() == {"trace": "profile-rank0-trace.json.gz", "top_operators": "profile-rank0-top.txt"}
    assert sorted(profiler.files().values()) == sorted(os.listdir(folder))  # no snapshot on CPU, no temp file


def test_a_second_profile_never_replaces_the_first(tmp_path):
    late = StepProfiler(1, tmp_path, "cpu", rank=0)  # made while the folder is free: fails when it writes
    profile_run(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(FileExistsError, match="never replaces a file"):
        StepProfiler(3, tmp_path, "cpu", rank=0)  # found at once, before any profiling
    with pytest.raises(FileExistsError, match="profile-rank0-trace.json.gz exists"):
        profile_run(tmp_path, steps=1, run_steps=0, warmup=0, profiler=late)
    assert late.files() == {}
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    StepProfiler(3, tmp_path, "cpu", rank=1)  # another rank's names are free


def test_finish_writes_the_steps_of_a_run_that_ended_early(tmp_path):
    profiler, answers = profile_run(tmp_path, steps=3, run_steps=1)
    assert answers == [False]
    assert profiler_steps(trace_events(tmp_path)) == ["ProfilerStep#0"]
    top = (tmp_path / "profile-rank0-top.txt").read_text()
    assert top.startswith("device cpu, rank 0: 1 of 3 steps profiled")
    profiler.finish()  # idempotent
    assert profiler.step_done() is True
    assert sorted(profiler.files().values()) == sorted(os.listdir(tmp_path))


def test_finish_without_start_writes_nothing(tmp_path):
    profiler = StepProfiler(2, tmp_path, "cpu", rank=0)
    profiler.finish()
    assert profiler.files() == {} and os.listdir(tmp_path) == []


def test_at_least_one_step():
    with pytest.raises(ValueError, match="at least 1"):
        StepProfiler(0, Path("unused"), "cpu", rank=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (see scripts/gpu-check.sh)")
def test_cuda_profile_has_kernels_and_a_memory_snapshot(tmp_path):
    profiler, answers = profile_run(tmp_path, device="cuda")
    assert answers == [False, False, True]
    files = profiler.files()
    assert files["memory_snapshot"] == "profile-rank0-memory.pickle"
    assert sorted(files.values()) == sorted(os.listdir(tmp_path))
    with open(tmp_path / files["memory_snapshot"], "rb") as handle:
        snapshot = pickle.load(handle)
    assert isinstance(snapshot, dict) and snapshot["segments"]
    assert any(trace for trace in snapshot["device_traces"])  # the allocations of the profiled steps
    events = trace_events(tmp_path)
    assert any(e.get("cat") == "kernel" for e in events)
    top = (tmp_path / files["top_operators"]).read_text()
    assert top.startswith("device cuda, rank 0: 3 step(s) profiled, sorted by self_cuda_time_total")
