"""What is known about accelerators: dense peak FLOP/s for MFU. No torch here.

Peaks are the vendors' datasheet numbers for dense math (no 2:4 sparsity), per device. An accelerator that
is not in this table gets MFU = null in its results: the harness never guesses a peak.
"""

from __future__ import annotations

TERA = 1e12

# device-name fragment (as torch.cuda.get_device_name reports it) -> peak FLOP/s by math mode.
# Order matters: the first fragment found in the name wins, so specific names come first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"fp32": 51 * TERA, "tf32": 378 * TERA, "bf16": 756 * TERA, "fp16": 756 * TERA}),
    ("H100 NVL", {"fp32": 60 * TERA, "tf32": 417.5 * TERA, "bf16": 835 * TERA, "fp16": 835 * TERA}),
    ("H100", {"fp32": 67 * TERA, "tf32": 494.5 * TERA, "bf16": 989.5 * TERA, "fp16": 989.5 * TERA}),
    ("H200", {"fp32": 67 * TERA, "tf32": 494.5 * TERA, "bf16": 989.5 * TERA, "fp16": 989.5 * TERA}),
    ("A100", {"fp32": 19.5 * TERA, "tf32": 156 * TERA, "bf16": 312 * TERA, "fp16": 312 * TERA}),
    ("L40S", {"fp32": 91.6 * TERA, "tf32": 183 * TERA, "bf16": 362 * TERA, "fp16": 362 * TERA}),
    ("L4", {"fp32": 30.3 * TERA, "tf32": 60 * TERA, "bf16": 121 * TERA, "fp16": 121 * TERA}),
    ("T4", {"fp32": 8.1 * TERA, "fp16": 65 * TERA}),
    ("V100", {"fp32": 15.7 * TERA, "fp16": 125 * TERA}),
]


def math_mode(dtype: str, tf32: bool) -> str:
    """The matmul mode that bounds a run: the autocast dtype, or tf32/fp32 for fp32 runs."""
    if dtype in ("bf16", "fp16"):
        return dtype
    return "tf32" if tf32 else "fp32"


def peak_flops(device_name: str | None, mode: str) -> float | None:
    """Dense peak FLOP/s of one device in this math mode, or None when not known (CPUs included)."""
    if not device_name:
        return None
    for fragment, peaks in PEAK_FLOPS:
        if fragment in device_name:
            return peaks.get(mode)
    return None
