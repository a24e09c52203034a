"""torch.compile support: length buckets, and CompileWatch's counts checked against what torch 2.13 really does.

The counts asserted are the ones torch 2.13 gives on CPU (backend "eager": dynamo's tracing and guards without
code generation, so no C++ compiler is needed and each compile takes a fraction of a second). Each test starts
from torch._dynamo.reset(): no graph compiled by another test is reused.
"""

import pytest
import torch
from torch import nn
from torch._dynamo import utils as dynamo_utils

from harness.compiling import CompileStats, CompileWatch, bucket_length, default_buckets, settle_problem_type


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Tiny(nn.Module):
    """A sequence classifier small enough to compile in a tenth of a second: embed, mean-pool, classify."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, labels):
        return nn.functional.cross_entropy(self.head(self.embed(input_ids).mean(1)), labels)


def train_step(model, length, batch_size=4):
    ids = torch.randint(0, 50, (batch_size, length))
    model(ids, torch.zeros(batch_size, dtype=torch.long)).backward()


def compiled(dynamic=False):
    torch.manual_seed(0)
    return torch.compile(Tiny(), backend="eager", dynamic=dynamic)


def watched(model, lengths, **step):
    watch = CompileWatch()
    watch.start()
    for length in lengths:
        train_step(model, length, **step)
    return watch.read()


# --------------------------------------------------------------------------- buckets


def test_default_buckets():
    assert default_buckets(512) == [32, 64, 128, 256, 512]
    assert default_buckets(128) == [32, 64, 128]
    assert default_buckets(100) == [32, 64, 100]  # max_length is always the last bucket: every text fits
    assert default_buckets(33) == [32, 33]
    assert default_buckets(32) == [32]
    assert default_buckets(20) == [20]
    with pytest.raises(ValueError, match="at least 1"):
        default_buckets(0)


def test_bucket_length():
    buckets = [32, 64, 100]
    assert [bucket_length(n, buckets) for n in (1, 31, 32, 33, 64, 65, 100)] == [32, 32, 32, 64, 64, 100, 100]
    with pytest.raises(ValueError, match="101 tokens.*last bucket, 100"):
        bucket_length(101, buckets)
    with pytest.raises(ValueError, match="ascending"):
        bucket_length(10, [64, 32])
    with pytest.raises(ValueError, match="ascending"):
        bucket_length(10, [])


# --------------------------------------------------------------------------- CompileWatch


def test_static_shapes_compile_once_per_length():
    # 16 compiles; 32 fails the guard on input_ids' size at index 1 and compiles a second graph (the one
    # recompile); the second 16 and 32 and the last 16 find their graphs in the cache
    stats = watched(compiled(), [16, 16, 32, 32, 16])
    assert (stats.compiles, stats.recompiles, stats.graph_breaks, stats.eager_fallbacks) == (2, 1, 0, 0)
    # torch 2.13 words it "0/0: tensor 'input_ids' size mismatch at index 1. expected 16, actual 32"
    assert len(stats.recompile_reasons) == 1
    assert stats.recompile_reasons[0].startswith("0/0: ")
    assert "size mismatch at index 1. expected 16, actual 32" in stats.recompile_reasons[0]
    assert stats.compile_s > 0


def test_buckets_bound_the_compiles_and_unbucketed_lengths_hit_the_recompile_limit():
    lengths = [5, 17, 30, 33, 64, 65, 100, 12, 99, 41, 77, 3]  # 12 lengths, 3 buckets
    buckets = default_buckets(100)
    bucketed = watched(compiled(), [bucket_length(n, buckets) for n in lengths])
    assert (bucketed.compiles, bucketed.recompiles, bucketed.eager_fallbacks) == (3, 2, 0)
    assert bucketed.compiles == len({bucket_length(n, buckets) for n in lengths})

    torch._dynamo.reset()
    # every length its own graph, until torch's recompile_limit (8) graphs of the function: the 9th new length
    # is not compiled, and from then on new lengths run eagerly (torch only warns) - the eager fallback counted
    assert torch._dynamo.config.recompile_limit == 8
    raw = watched(compiled(), lengths)
    assert (raw.compiles, raw.recompiles, raw.eager_fallbacks) == (8, 7, 1)
    assert len(raw.recompile_reasons) == 5  # the first five of the seven
    assert "size mismatch at index 1. expected 5, actual 17" in raw.recompile_reasons[0]


def test_batch_size_and_evaluation_recompile():
    # the last, smaller batch of an epoch is a new shape; evaluation under no_grad fails the grad-mode guard
    model = compiled()
    watch = CompileWatch()
    watch.start()
    train_step(model, 32, batch_size=4)
    train_step(model, 32, batch_size=3)
    with torch.no_grad():
        model.eval()
        model(torch.randint(0, 50, (4, 32)), torch.zeros(4, dtype=torch.long))
    stats = watch.read()
    assert (stats.compiles, stats.recompiles) == (3, 2)
    assert "size mismatch at index 0. expected 4, actual 3" in stats.recompile_reasons[0]
    assert "grad_mode" in stats.recompile_reasons[1]


def test_dynamic_shapes():
    lengths = list(range(16, 80, 5))  # 13 distinct lengths
    # dynamic=True: one graph with a symbolic length serves them all
    stats = watched(compiled(dynamic=True), lengths)
    assert (stats.compiles, stats.recompiles, stats.eager_fallbacks) == (1, 0, 0)
    torch._dynamo.reset()
    # dynamic=None (torch's and accelerate's default): static first, then "automatic dynamic": the second
    # length recompiles the graph with that dimension symbolic, and no length after it recompiles
    stats = watched(compiled(dynamic=None), lengths)
    assert (stats.compiles, stats.recompiles, stats.eager_fallbacks) == (2, 1, 0)


def test_the_watch_counts_only_its_window():
    before = torch.compile(lambda x: x.sin(), backend="eager", dynamic=False)
    before(torch.ones(3))  # a compile and a recompile before start(): not the run's
    before(torch.ones(4))
    watch = CompileWatch()
    watch.start()
    before(torch.ones(3))  # a cached graph: nothing compiled
    assert watch.read() == CompileStats()
    model = compiled()
    train_step(model, 16)
    stats = watch.read()
    assert (stats.compiles, stats.recompiles) == (1, 0)
    assert stats.compile_s > 0
    torch._dynamo.reset()  # clears torch's cumulative compile timers, not the per-compile records
    train_step(model, 16)
    later = watch.read()  # the watch keeps running: a longer window
    assert (later.compiles, later.recompiles) == (2, 0)
    assert later.compile_s > stats.compile_s
    with pytest.raises(RuntimeError, match="before start"):
        CompileWatch().read()


def test_lost_records_fall_back_to_the_cumulative_timers():
    model = compiled()
    train_step(model, 8)  # a record before the window: the watch's marker
    watch = CompileWatch()
    watch.start()
    for length in (16, 32, 64):
        train_step(model, length)
    full = watch.read()
    limit = dynamo_utils._compilation_metrics.maxlen
    try:
        dynamo_utils.set_compilation_metrics_limit(1)  # the ring drops all but the last record: the marker too
        lost = watch.read()
    finally:
        dynamo_utils.set_compilation_metrics_limit(limit)
    assert (full.compiles, full.recompiles) == (3, 3)
    assert (lost.compiles, lost.recompiles) == (3, 1)  # compiles from the counters; recompiles a lower bound
    assert lost.compile_s == pytest.approx(full.compile_s, abs=1e-5)  # the same timers, summed by torch


def test_a_lazily_compiled_backward_counts():
    # AOTAutograd backends compile the backward graph at the first backward call: its own record in torch's
    # log (is_forward=False), its time in compile_s, not a compile or a recompile of its own
    torch.manual_seed(0)
    model = torch.compile(Tiny(), backend="aot_eager", dynamic=False)
    watch = CompileWatch()
    watch.start()
    timers = dynamo_utils.calculate_time_spent()
    train_step(model, 16)
    stats = watch.read()
    spent = dynamo_utils.calculate_time_spent()
    records = dynamo_utils.get_compilation_metrics()[-2:]
    assert [r.is_forward for r in records] == [True, False]
    assert (stats.compiles, stats.recompiles) == (1, 0)
    assert stats.compile_s == pytest.approx(sum(r.duration_us for r in records) / 1e6)
    assert spent["entire_backward_compile"] > timers.get("entire_backward_compile", 0)
    assert stats.compile_s == pytest.approx(spent["total_wall_time"] - timers["total_wall_time"], abs=1e-5)


def test_to_dict():
    stats = CompileStats(compiles=2, recompiles=1, compile_s=1.23456789, recompile_reasons=["0/0: why"])
    assert stats.to_dict() == {"compiles": 2, "recompiles": 1, "graph_breaks": 0, "compile_s": 1.234568,
                               "eager_fallbacks": 0, "recompile_reasons": ["0/0: why"]}  # fmt: skip


def test_graph_breaks_are_counted():
    def broken(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    fn = torch.compile(broken, backend="eager")
    watch = CompileWatch()
    watch.start()
    fn(torch.ones(3))
    stats = watch.read()
    assert (stats.graph_breaks, stats.compiles, stats.recompiles) == (1, 2, 0)  # a graph on each side


def test_hugging_face_classifier_sets_problem_type_on_its_first_forward():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3)  # fmt: skip

    def run(settle):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = BertForSequenceClassification(config.__class__(**config.to_dict()))
        if settle:
            assert settle_problem_type(model)
            assert not settle_problem_type(model)  # already set: left alone
        step = torch.compile(model, backend="eager", dynamic=False)
        watch = CompileWatch()
        watch.start()
        for _ in range(2):
            ids = torch.randint(0, 50, (2, 16))
            step(
                input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros(2, dtype=torch.long)
            ).loss.backward()
        return watch.read()

    # left to the model, step 1 writes config.problem_type, which the compiled forward guards on: step 2
    # recompiles the same shape
    unsettled = run(settle=False)
    assert (unsettled.compiles, unsettled.recompiles) == (2, 1)
    assert "problem_type is None" in unsettled.recompile_reasons[0]
    settled = run(settle=True)
    assert (settled.compiles, settled.recompiles) == (1, 0)


@pytest.mark.slow
def test_inductor_on_cpu(tmp_path):
    """The default backend for real: C++ code generated and compiled (about 15 s cold on two cores)."""
    from torch._inductor.utils import fresh_cache

    model = torch.compile(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
    watch = CompileWatch()
    with fresh_cache(dir=str(tmp_path)):  # a cold cache: a real compile, and none left behind
        watch.start()
        with torch.no_grad():
            model(torch.randn(4, 8))
            model(torch.randn(4, 8))
        stats = watch.read()
    assert stats.compiles == 1 and stats.recompiles == 0
    assert stats.compile_s > 0


def test_a_paused_watch_leaves_out_what_compiles_meanwhile():
    """A training window with an evaluation cut out: compiles before the pause and after the resume count, the
    ones in between do not; pausing an unstarted watch changes nothing."""
    import torch

    torch._dynamo.reset()
    model = torch.compile(torch.nn.Linear(4, 2), backend="eager", dynamic=False)
    watch = CompileWatch()
    watch.pause()
    watch.resume()
    with pytest.raises(RuntimeError):
        watch.read()  # still unstarted
    watch.start()
    model(torch.randn(3, 4))  # counted
    watch.pause()
    model(torch.randn(5, 4))  # not counted
    assert watch.read().compiles == 1
    watch.resume()
    model(torch.randn(7, 4))  # counted
    stats = watch.read()
    assert stats.compiles == 2 and stats.recompiles == 1
