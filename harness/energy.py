"""GPU energy from NVML's total-energy counter (millijoules since the driver loaded, Volta and newer).

Each rank reads the counter of its own GPU, always after the device has been synchronised, so the reading covers
the work queued before it. Two quantities come out of the readings:
- the measured window's energy: from the end of the warm-up steps to the end of training, with evaluations and
  saves left out (the window the step times cover): divided by its training samples, joules per sample;
- the energy since the training loop started, evaluations included: what reaching a quality target cost, beside
  the wall time to it.
On CPU, without nvidia-ml-py or on a GPU without the counter, there is no reading and every energy is null.
"""

from __future__ import annotations

from collections.abc import Callable

Reader = Callable[[], float]  # joules of this rank's GPU since some fixed point


def nvml_reader(device: str) -> Reader | None:
    """A reader of this rank's GPU's energy counter, or None where there is none to read."""
    if device != "cuda":
        return None
    try:
        import pynvml
        import torch

        handle = torch.cuda._get_pynvml_handler(torch.cuda.current_device())  # NVML's index of torch's device
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where the GPU has no counter
    except Exception:  # noqa: BLE001 (no nvidia-ml-py, no driver access, no counter): an unknown energy, not a guess
        return None
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0


class EnergyMeter:
    """Readings of one rank's GPU energy; the caller synchronises the device before each call."""

    def __init__(self, read: Reader | None):
        self.read = read
        self.loop_start: float | None = None
        self.window_j = 0.0
        self.window_open = False  # the measured window has started (the warm-up steps are done)
        self.since: float | None = None  # the reading at which the current stretch of the window began

    def start_loop(self) -> None:
        if self.read:
            self.loop_start = self.read()

    def open_window(self) -> None:
        self.window_open = True
        self.resume()

    def pause(self) -> None:
        """An evaluation or a save begins: the stretch of training since the last resume is added."""
        if self.read and self.since is not None:
            self.window_j += self.read() - self.since
            self.since = None

    def resume(self) -> None:
        if self.read and self.window_open:
            self.since = self.read()

    def window_joules(self) -> float | None:
        """The measured window's energy so far (call after the last pause)."""
        return self.window_j if self.read and self.window_open else None

    def joules_since_loop_start(self) -> float | None:
        return self.read() - self.loop_start if self.read and self.loop_start is not None else None
