"""Collector arithmetic with a fake clock: warm-up excluded, tokens counted right, MFU by hand."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from harness.collector import BatchCounts, FlopsModel, StepTimer, merge_rank_logs, speed_report
from harness.hardware import math_mode, peak_flops
from harness.modeling import count_parameters


class FakeClock:
    """Returns the next scripted time on each call."""

    def __init__(self, times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


def counts(samples, lengths, padded_len):
    return BatchCounts(
        samples=samples, real_tokens=sum(lengths), padded_tokens=samples * padded_len,
        sum_len_sq=sum(n * n for n in lengths),
    )  # fmt: skip


def timed_log(times, batches, warmup):
    timer = StepTimer(FakeClock(times))
    timer.restart()
    for batch in batches:
        timer.step_done(batch, flops=1000.0 * batch.real_tokens)
    log = timer.finalize()
    report = speed_report(
        log, warmup_steps=warmup, world_size=1, peak_flops_per_device=None,
        time_to_first_step_s=None, train_wall_s=0.0, eval_samples_per_s=None, total_wall_s=0.0,
    )  # fmt: skip
    return log, report


def test_step_durations_come_from_consecutive_marks():
    batches = [counts(2, [3, 5], 5)] * 4
    log, _ = timed_log([10.0, 13.0, 14.0, 14.5, 15.5], batches, warmup=0)
    assert log.durations_s == [3.0, 1.0, 0.5, 1.0]


def test_warmup_steps_are_excluded_from_rates_and_step_times():
    # step 1 is slow (compilation, allocator growth); steps 2-4 take 1.0, 0.5, 1.0 s
    batches = [counts(4, [10, 10, 10, 10], 10), counts(2, [3, 5], 5), counts(2, [3, 5], 8), counts(4, [1, 2, 3, 4], 4)]
    _, report = timed_log([0.0, 30.0, 31.0, 31.5, 32.5], batches, warmup=1)
    seconds = 1.0 + 0.5 + 1.0
    assert report.warmup_steps == 1 and report.measured_steps == 3
    assert report.train_samples_per_s == pytest.approx((2 + 2 + 4) / seconds)
    assert report.train_real_tokens_per_s == pytest.approx((8 + 8 + 10) / seconds)
    assert report.train_padded_tokens_per_s == pytest.approx((10 + 16 + 16) / seconds)
    # padding efficiency covers every step, warm-up included: real / padded tokens
    assert report.padding_efficiency == pytest.approx((40 + 8 + 8 + 10) / (40 + 10 + 16 + 16))
    assert report.step_time_mean_s == pytest.approx(seconds / 3)
    assert report.step_time_p50_s == pytest.approx(1.0)
    assert report.step_time_p90_s == pytest.approx(np.percentile([1.0, 0.5, 1.0], 90))


def test_warmup_longer_than_the_run_keeps_the_last_step():
    _, report = timed_log([0.0, 1.0, 3.0], [counts(1, [2], 2)] * 2, warmup=10)
    assert report.measured_steps == 1 and report.step_time_mean_s == pytest.approx(2.0)


def test_batch_counts_add_up_over_accumulation_micro_batches():
    total = BatchCounts()
    total += counts(2, [3, 5], 5)
    total += counts(3, [1, 1, 2], 2)
    assert (total.samples, total.real_tokens, total.padded_tokens, total.sum_len_sq) == (5, 12, 16, 40)


def test_training_flops_by_hand():
    # N = 1e6 non-embedding parameters, L = 2 layers, d = 4; sequences of 3 and 5 real tokens:
    # 6 * 1e6 * 8 = 48,000,000 dense; 12 * 2 * 4 * (9 + 25) = 3,264 attention.
    model = FlopsModel(non_embedding_params=1_000_000, num_layers=2, hidden_size=4)
    assert model.training_flops(counts(2, [3, 5], 5)) == 48_003_264


def test_mfu_by_hand():
    timer = StepTimer(FakeClock([0.0, 1.0, 2.0, 4.0]))
    timer.restart()
    for flops in (5e12, 6e12, 8e12):
        timer.step_done(counts(8, [4] * 8, 4), flops)
    report = speed_report(
        timer.finalize(), warmup_steps=1, world_size=2, peak_flops_per_device=312e12,
        time_to_first_step_s=1.0, train_wall_s=4.0, eval_samples_per_s=None, total_wall_s=5.0,
    )  # fmt: skip
    achieved = (6e12 + 8e12) / 3.0  # steps 2 and 3 take 1 s and 2 s
    assert report.achieved_flops_per_s == pytest.approx(achieved)
    assert report.mfu == pytest.approx(achieved / (2 * 312e12))
    assert report.train_samples_per_s_per_device == pytest.approx(16 / 3.0 / 2)


def test_mfu_is_null_when_the_peak_is_unknown():
    _, report = timed_log([0.0, 1.0, 2.0], [counts(1, [2], 2)] * 2, warmup=0)
    assert report.achieved_flops_per_s == pytest.approx(2000.0)
    assert report.mfu is None


def test_ranks_merge_into_global_numbers():
    rank0 = {"durations_s": [1.0, 2.0], "samples": [4, 4], "real_tokens": [10, 12], "padded_tokens": [16, 16],
             "flops": [1.0, 1.0]}  # fmt: skip
    rank1 = {"durations_s": [1.5, 1.0], "samples": [4, 3], "real_tokens": [9, 7], "padded_tokens": [12, 12],
             "flops": [2.0, 2.0]}  # fmt: skip
    merged = merge_rank_logs([rank0, rank1])
    assert merged.durations_s == [1.5, 2.0]  # the slowest rank sets the step time
    assert merged.samples == [8, 7] and merged.real_tokens == [19, 19] and merged.flops == [3.0, 3.0]


def test_peak_flops_table():
    assert peak_flops("NVIDIA A100-SXM4-80GB", math_mode("bf16", False)) == 312e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA H100 80GB HBM3", math_mode("fp32", True)) == 494.5e12
    assert peak_flops("Tesla T4", "bf16") is None  # no bf16 on Turing: unknown, not guessed
    assert peak_flops("Some Future GPU", "bf16") is None
    assert peak_flops(None, "fp32") is None


def test_non_embedding_parameters_of_a_tiny_bert():
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, type_vocab_size=2, num_labels=3)  # fmt: skip
    model = BertForSequenceClassification(config)
    total, non_embedding = count_parameters(model)
    embedding_tables = (100 + 64 + 2) * 16  # word, position and token-type tables
    assert total == sum(p.numel() for p in model.parameters())
    assert non_embedding == total - embedding_tables
    assert isinstance(model.bert.embeddings.word_embeddings, torch.nn.Embedding)
