"""What is known about accelerators: dense peak FLOP/s for MFU. No torch here.

Peaks are the vendors' datasheet numbers for dense math (no 2:4 sparsity: half the starred datasheet figure),
per device. Devices are matched by their exact name as `torch.cuda.get_device_name()` reports it, never by a
fragment: "NVIDIA L40" is not an L4 and "NVIDIA RTX A1000" is not an A100. A device not in this table gets
MFU = null in its results: the harness never guesses a peak.
"""

from __future__ import annotations

TERA = 1e12


def _peaks(fp32: float, tf32: float | None, bf16: float | None, fp16: float) -> dict[str, float]:
    """TFLOP/s by math mode; a mode the device lacks (bf16 before Ampere) is left out."""
    modes = {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": fp16}
    return {mode: value * TERA for mode, value in modes.items() if value is not None}


H100_SXM = _peaks(67, 494.5, 989.5, 989.5)  # H200 SXM has the same compute as H100 SXM
H100_NVL = _peaks(60, 417.5, 835.5, 835.5)  # H200 NVL likewise
A100 = _peaks(19.5, 156, 312, 312)  # PCIe and SXM, 40 and 80 GB
V100_SXM2 = _peaks(15.7, None, None, 125)
V100_PCIE = _peaks(14, None, None, 112)

# torch.cuda.get_device_name() -> peak FLOP/s by math mode
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "NVIDIA B200": _peaks(75, 1125, 2250, 2250),
    "NVIDIA H200": H100_SXM,
    "NVIDIA H200 NVL": H100_NVL,
    "NVIDIA H100 80GB HBM3": H100_SXM,
    "NVIDIA H100 NVL": H100_NVL,
    "NVIDIA H100 PCIe": _peaks(51, 378, 756.5, 756.5),
    "NVIDIA A100-SXM4-80GB": A100,
    "NVIDIA A100-SXM4-40GB": A100,
    "NVIDIA A100 80GB PCIe": A100,
    "NVIDIA A100-PCIE-40GB": A100,
    "NVIDIA L40S": _peaks(91.6, 183, 362, 362),
    "NVIDIA L40": _peaks(90.5, 90.5, 181, 181),
    "NVIDIA L4": _peaks(30.3, 60, 121, 121),
    "NVIDIA A10": _peaks(31.2, 62.5, 125, 125),
    "NVIDIA A10G": _peaks(35, 35, 70, 70),  # AWS's variant (Modal's A10G): fewer tensor FLOPs than the A10
    "Tesla T4": _peaks(8.1, None, None, 65),
    "Tesla V100-SXM2-16GB": V100_SXM2,
    "Tesla V100-SXM2-32GB": V100_SXM2,
    "Tesla V100-PCIE-16GB": V100_PCIE,
    "Tesla V100-PCIE-32GB": V100_PCIE,
}


def math_mode(dtype: str, tf32: bool) -> str:
    """The matmul mode that bounds a run: the autocast dtype, or tf32/fp32 for fp32 runs."""
    if dtype in ("bf16", "fp16"):
        return dtype
    return "tf32" if tf32 else "fp32"


def peak_flops(device_name: str | None, mode: str) -> float | None:
    """Dense peak FLOP/s of one device in this math mode, or None when not known (CPUs included)."""
    if not device_name:
        return None
    return PEAK_FLOPS.get(" ".join(device_name.split()), {}).get(mode)
