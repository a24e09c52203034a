"""Stopping a run from outside: Ctrl-C, a scheduler's SIGTERM, a preempted container.

The first SIGINT or SIGTERM asks the run to stop at the next optimizer step (or evaluation batch) and to record
where it stopped; every rank stops at the same point, because the ranks agree on it through a small all-reduce
at each of those points. A second signal ends the process at once. Before the training loop starts (loading
data and weights), the first signal stops the process at once too: there is nothing to record but the start.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from harness.failures import stopped_exit_code

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was asked to stop by a signal; raised on every rank at the same step."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


class StopRequests:
    """The signal handlers of one worker process, and the ranks' agreement on when to stop."""

    def __init__(self, watch_parent: bool):
        self.signal_name: str | None = None
        self.at_once = True  # while loading; from the first step on, stop at the next agreed point (or finish)
        self.group = None
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        if watch_parent:  # the harness launcher was stopped at once: its workers must not run on alone
            threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()

    def __enter__(self) -> StopRequests:
        return self

    def __exit__(self, *exc) -> None:
        """The handlers this process had before (a run called in-process, as tests do, leaves none behind)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # the second signal: end now, as the signal itself would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal_name = name
        if self.at_once:
            raise Interrupted(name)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"\n{name}: stopping after this step and recording the run; send it again to stop at once",
                  file=sys.stderr, flush=True)  # fmt: skip

    def start_training(self) -> None:
        """From here on a signal is answered at the next check, by every rank together. With several processes
        they agree through a CPU (gloo) group of their own: no GPU synchronisation at each check."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            self.group = dist.new_group(backend="gloo")
        self.at_once = False

    def check(self) -> None:
        """Raise Interrupted, on every rank at the same call, when any rank has been asked to stop."""
        code = STOP_SIGNALS.index(signal.Signals[self.signal_name]) + 1 if self.signal_name else 0
        if self.group is not None:
            flag = torch.tensor([code], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            code = int(flag.item())
        if code:
            raise Interrupted(self.signal_name or STOP_SIGNALS[code - 1].name)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(stopped_exit_code("SIGTERM"))
