"""A plan: one validated recipe bound to a run id and output folders. What launchers hand to workers.

Plans travel as JSON files between the launcher and each worker process. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.recipe import Recipe, recipe_from_dict
from harness.results import inside, new_run_id


@dataclass
class Plan:
    recipe: Recipe
    run_id: str
    results_dir: str
    checkpoint_dir: str
    started_at_unix: float | None = None  # set by the launcher, so time-to-first-step counts process start
    resumable: bool = False  # save training state each epoch; continue from it if the run folder has one
    repeats: dict[str, Any] | None = None  # {group, index, count}: one of the seeds of `harness run --repeats N`
    profile_steps: int = 0  # `harness run --profile N`: profile N steps after the warm-up (harness/profiling.py)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best"

    @property
    def profile_dir(self) -> Path:
        """Beside the run's result: its profiler trace, top operators and CUDA memory snapshot."""
        return inside(self.results_dir, self.recipe.name, f"{self.run_id}-profile")

    @property
    def run_dir(self) -> Path:
        """The run's own folder: checkpoints, saved state, launch files and failure notes of its processes."""
        return Path(self.checkpoint_dir)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_dict(),
            "run_id": self.run_id,
            "results_dir": self.results_dir,
            "checkpoint_dir": self.checkpoint_dir,
            "started_at_unix": self.started_at_unix,
            "resumable": self.resumable,
            "repeats": self.repeats,
            "profile_steps": self.profile_steps,
        }

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Plan:
        return cls(**{**raw, "recipe": recipe_from_dict(raw["recipe"])})

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))


def make_plan(recipe: Recipe, results_dir: str | None = None, run_id: str | None = None,
              repeats: dict[str, Any] | None = None) -> Plan:  # fmt: skip
    """A fresh run id; checkpoints go to <checkpoints_dir>/<recipe>/<run id>, never reused."""
    run_id = run_id or new_run_id(recipe.name)
    return Plan(
        recipe=recipe,
        run_id=run_id,
        results_dir=results_dir or recipe.output.results_dir,
        checkpoint_dir=str(inside(recipe.output.checkpoints_dir, recipe.name, run_id)),
        repeats=repeats,
    )
