"""Local launcher: starts a planned run in this process (one device). No torch at import time."""

from __future__ import annotations

import time
from pathlib import Path

from harness.plan import Plan


def launch(plan: Plan) -> Path:
    """Run the plan and return the result file's path."""
    plan.started_at_unix = plan.started_at_unix or time.time()
    from harness import train  # torch and the training stack load only when a run starts

    path = train.execute(plan)
    assert path is not None  # a single process is the main process
    return path
