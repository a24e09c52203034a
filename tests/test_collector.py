"""Collector arithmetic with a fake clock: warm-up work charged at the steady rate, tokens and repeats counted
right, model FLOPs and MFU by hand, and the peak table matched by exact device names."""

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from harness.collector import BatchCounts, StepTimer, merge_rank_logs, speed_report
from harness.data import EpochOrder
from harness.hardware import math_mode, peak_flops
from harness.modeling import count_parameters, flops_model


class FakeClock:
    """Returns the next scripted time on each call."""

    def __init__(self, times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


def counts(samples, lengths, padded_len, repeated=0):
    return BatchCounts(samples=samples, real_tokens=sum(lengths), padded_tokens=(samples + repeated) * padded_len,
                       repeated_samples=repeated, lengths=list(lengths))  # fmt: skip


def report_of(log, warmup, world_size=1, peak=None, train_wall_s=0.0):
    return speed_report(
        log, warmup_steps=warmup, world_size=world_size, peak_flops_per_device=peak,
        time_to_first_step_s=None, train_wall_s=train_wall_s, eval_samples_per_s=None, total_wall_s=0.0,
    )  # fmt: skip


def timed_log(times, batches):
    timer = StepTimer(FakeClock(times))
    timer.restart()
    for batch in batches:
        timer.step_done(batch, flops=1000.0 * batch.real_tokens)
    return timer.finalize()


def test_step_durations_come_from_consecutive_marks():
    log = timed_log([10.0, 13.0, 14.0, 14.5, 15.5], [counts(2, [3, 5], 5)] * 4)
    assert log.durations_s == [3.0, 1.0, 0.5, 1.0]


def test_warmup_time_is_excluded_but_its_work_is_charged_at_the_steady_rate():
    # step 1 is slow (compilation, allocator growth): 30 s for 40 padded tokens; steps 2-4 take 1.0, 0.5, 1.0 s
    batches = [counts(4, [10, 10, 10, 10], 10), counts(2, [3, 5], 5), counts(2, [3, 5], 8), counts(4, [1, 2, 3, 4], 4)]
    report = report_of(timed_log([0.0, 30.0, 31.0, 31.5, 32.5], batches), warmup=1, train_wall_s=40.0)
    measured_s, measured_padded = 1.0 + 0.5 + 1.0, 10 + 16 + 16
    seconds = measured_s * (40 + measured_padded) / measured_padded  # step 1's 40 tokens at 2.5 s / 42 tokens
    assert report.warmup_steps == 1 and report.measured_steps == 3
    assert report.train_samples_per_s == pytest.approx((4 + 2 + 2 + 4) / seconds)
    assert report.train_real_tokens_per_s == pytest.approx((40 + 8 + 8 + 10) / seconds)
    assert report.train_padded_tokens_per_s == pytest.approx(measured_padded / measured_s)
    assert report.padding_efficiency == pytest.approx((40 + 8 + 8 + 10) / (40 + 10 + 16 + 16))
    assert report.step_time_mean_s == pytest.approx(measured_s / 3)
    assert report.step_time_p50_s == pytest.approx(1.0)
    assert report.step_time_p90_s == pytest.approx(np.percentile([1.0, 0.5, 1.0], 90))
    assert report.train_samples_per_s_wall == pytest.approx(12 / 40.0)  # evaluations and warm-up included


def test_warmup_longer_than_the_run_keeps_the_last_step():
    report = report_of(timed_log([0.0, 1.0, 3.0], [counts(1, [2], 2)] * 2), warmup=10)
    assert report.measured_steps == 1 and report.step_time_mean_s == pytest.approx(2.0)
    assert report.train_samples_per_s == pytest.approx(2 / 4.0)  # step 1's work at step 2's rate: 4 s for 2


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("warmup", [3, 10])
def test_the_rate_is_unbiased_by_which_batches_fall_into_the_warmup(grouped, warmup):
    """Length grouping puts the longest batch first, so excluding the warm-up samples would flatter the rate.
    With a step costing time in proportion to its padded tokens, the reported rate must equal total samples /
    total time of the same steps."""
    lengths = np.random.default_rng(0).integers(5, 120, size=2000).tolist()
    order = EpochOrder(lengths, batch_size=32, seed=0, group_by_length=grouped, num_processes=1)
    batches = [counts(len(b), [lengths[i] for i in b], max(lengths[i] for i in b)) for b in BatchSampler(order, 32, False)]
    seconds_per_token = 1e-4
    times = np.concatenate([[0.0], np.cumsum([seconds_per_token * b.padded_tokens for b in batches])]).tolist()
    report = report_of(timed_log(times, batches), warmup=warmup)
    truth = sum(b.samples for b in batches) / times[-1]
    assert report.train_samples_per_s == pytest.approx(truth, rel=0.01)
    if grouped:  # the old way (warm-up samples left out) is off by more than the 1% allowed
        naive = sum(b.samples for b in batches[warmup:]) / (times[-1] - times[warmup])
        assert abs(naive / truth - 1) > 0.01


def test_batch_counts_add_up_over_accumulation_micro_batches():
    total = BatchCounts()
    total += counts(2, [3, 5], 5)
    total += counts(3, [1, 1, 2], 2, repeated=1)
    assert (total.samples, total.real_tokens, total.padded_tokens, total.repeated_samples) == (5, 12, 18, 1)
    assert total.lengths == [3, 5, 1, 1, 2]


def meta_model(model_type: str, **overrides):
    config = AutoConfig.for_model(model_type, num_labels=3, **overrides)
    with torch.device("meta"):  # shapes only: no memory, no weights
        return AutoModelForSequenceClassification.from_config(config)


D = 768


def bert_base_flops(n: int) -> float:
    """BERT-base (12 layers, d 768, FFN 3072, biases) by hand, per sequence of n tokens."""
    layer = 4 * D * D + 4 * D + 2 * D * 3072 + 3072 + D + 2 * 2 * D  # Q K V O, FFN in and out, two LayerNorms
    per_token = 12 * layer + 2 * D  # and the embedding LayerNorm (lookup tables do no multiply-adds)
    per_sequence = D * D + D + 3 * D + 3  # pooler and classifier: once per sequence
    return 6 * per_token * n + 12 * D * 12 * n * n + 6 * per_sequence


def modernbert_base_flops(n: int) -> float:
    """ModernBERT-base (22 layers, d 768, GLU FFN 1152, no biases; layers 0, 3, ..., 21 global, the other 14 a
    128-token window) by hand, per sequence of n tokens."""
    layer = 3 * D * D + D * D + D * 2 * 1152 + 1152 * D + 2 * D  # Wqkv, Wo, Wi (GLU), Wo, two LayerNorms
    per_token = 22 * layer - D + 2 * D  # layer 0 has no attention norm; embedding norm and final norm
    per_sequence = D * D + D + 3 * D + 3  # head (dense, norm) and classifier
    attention = 12 * D * n * (8 * n + 14 * min(n, 128))
    return 6 * per_token * n + attention + 6 * per_sequence


@pytest.mark.parametrize("n", [128, 512, 8192])
@pytest.mark.parametrize("model_type, by_hand", [("bert", bert_base_flops), ("modernbert", modernbert_base_flops)])
def test_training_flops_of_base_shapes_by_hand(model_type, by_hand, n):
    model = flops_model(meta_model(model_type))
    assert model.training_flops([n]) == by_hand(n)
    assert model.training_flops([n, n, n]) == 3 * by_hand(n)


def test_modernbert_local_layers_are_charged_their_window_only():
    full = flops_model(meta_model("modernbert", global_attn_every_n_layers=1))  # every layer global
    windowed = flops_model(meta_model("modernbert"))
    at_512 = windowed.training_flops([512]) / full.training_flops([512]) - 1
    at_8192 = windowed.training_flops([8192]) / full.training_flops([8192]) - 1
    assert -0.10 < at_512 < -0.05 and -0.50 < at_8192 < -0.40  # all-global charging over-counted both


def test_mfu_by_hand():
    timer = StepTimer(FakeClock([0.0, 1.0, 2.0, 4.0]))
    timer.restart()
    for flops in (5e12, 6e12, 8e12):
        timer.step_done(counts(8, [4] * 8, 4), flops)
    report = report_of(timer.finalize(), warmup=1, world_size=2, peak=312e12)
    seconds = 3.0 * (32 + 64) / 64  # steps 2 and 3 take 3 s for 64 padded tokens; step 1 has 32 more
    achieved = (5e12 + 6e12 + 8e12) / seconds
    assert report.achieved_flops_per_s == pytest.approx(achieved)
    assert report.mfu == pytest.approx(achieved / (2 * 312e12))
    assert report.train_samples_per_s_per_device == pytest.approx(24 / seconds / 2)


def test_mfu_is_null_when_the_peak_is_unknown():
    report = report_of(timed_log([0.0, 1.0, 2.0], [counts(1, [2], 2)] * 2), warmup=0)
    assert report.achieved_flops_per_s == pytest.approx(2000.0)
    assert report.mfu is None


def test_ranks_merge_into_global_numbers():
    rank0 = {"durations_s": [1.0, 2.0], "samples": [4, 4], "real_tokens": [10, 12], "padded_tokens": [16, 16],
             "repeated_samples": [0, 0], "flops": [1.0, 1.0], "data_wait_s": [0.1, 0.0]}  # fmt: skip
    rank1 = {"durations_s": [1.5, 1.0], "samples": [4, 3], "real_tokens": [9, 7], "padded_tokens": [12, 12],
             "repeated_samples": [0, 1], "flops": [2.0, 2.0], "data_wait_s": [0.0, 0.3]}  # fmt: skip
    merged = merge_rank_logs([rank0, rank1])
    assert merged.durations_s == [1.5, 2.0]  # the slowest rank sets the step time
    assert merged.data_wait_s == [0.1, 0.3]  # ...and the longest wait for data is the step's
    assert merged.samples == [8, 7] and merged.real_tokens == [19, 19] and merged.flops == [3.0, 3.0]
    assert merged.repeated_samples == [0, 1] and merged.padded_tokens == [28, 28]


# torch.cuda.get_device_name() strings of real devices, and the dense bf16 peak each must get
DEVICE_NAMES = {
    "NVIDIA H100 80GB HBM3": 989.5e12,
    "NVIDIA H100 PCIe": 756.5e12,
    "NVIDIA H100 NVL": 835.5e12,
    "NVIDIA H200": 989.5e12,
    "NVIDIA H200 NVL": 835.5e12,  # not the H200 SXM's
    "NVIDIA B200": 2250e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A10G": 70e12,
    "NVIDIA A10": 125e12,
    "NVIDIA L4": 121e12,
    "NVIDIA L40": 181e12,  # not the L4's
    "NVIDIA L40S": 362e12,
    "Tesla T4": None,  # no bf16 on Turing: unknown, not guessed
    "Tesla V100-SXM2-16GB": None,
    "NVIDIA RTX A1000": None,  # not an A100
    "NVIDIA GeForce RTX 4090": None,
    "NVIDIA GH200 480GB": None,
}


@pytest.mark.parametrize("name, bf16", DEVICE_NAMES.items())
def test_peak_table_matches_exact_device_names(name, bf16):
    assert peak_flops(name, "bf16") == bf16


def test_peak_math_modes():
    assert peak_flops("NVIDIA A100-SXM4-80GB", math_mode("bf16", False)) == 312e12
    assert peak_flops("NVIDIA H100 80GB HBM3", math_mode("fp32", True)) == 494.5e12
    assert peak_flops("NVIDIA H100 80GB HBM3", math_mode("fp32", False)) == 67e12
    assert peak_flops("Tesla T4", math_mode("fp16", False)) == 65e12
    assert peak_flops(None, "fp32") is None


def test_non_embedding_parameters_of_a_tiny_bert():
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, type_vocab_size=2, num_labels=3)  # fmt: skip
    model = BertForSequenceClassification(config)
    total, non_embedding = count_parameters(model)
    embedding_tables = (100 + 64 + 2) * 16  # word, position and token-type tables
    assert total == sum(p.numel() for p in model.parameters())
    assert non_embedding == total - embedding_tables
