"""`harness find-batch`: the largest per-device train.batch_size that fits in memory, by doubling, then bisecting.

Each try is a short run of the recipe at one batch size (a few optimizer steps, no evaluation, no checkpoint,
no test split, results into a temporary folder removed afterwards) in processes of its own, started through
harness.launcher.launch, so that running out of memory in one try cannot poison the next. A synthetic workload
is tried at its worst case: every text at the longest length the recipe draws. A try does not fit when the run
fails with error.type "OutOfMemory"; any other failure stops the search with that error.

The search (`search`) takes the function that runs one try, so it is tested with a fake one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.recipe import LengthsSpec, Recipe, recipe_from_dict

TRY_STEPS = 3  # optimizer steps of one try: the first allocates the optimizer state, the later ones its peak


@dataclass
class Search:
    """The tries in the order made, (batch size, fits), and the answer: the largest size that fit, or None."""

    tries: list[tuple[int, bool]] = field(default_factory=list)
    answer: int | None = None


def search(fits: Callable[[int], bool], start: int = 8, maximum: int = 4096,
           report: Callable[[int, bool], None] | None = None) -> Search:  # fmt: skip
    """Double from start while a size fits (the last doubling capped at maximum), then bisect between the largest
    size that fit and the smallest that did not, to the exact size. When start does not fit, bisect below it."""
    if not 1 <= start <= maximum:
        raise HarnessError(f"--start {start}: must be at least 1 and at most --max ({maximum})")
    result = Search()

    def attempt(size: int) -> bool:
        ok = fits(size)
        result.tries.append((size, ok))
        if report:
            report(size, ok)
        return ok

    good, bad = 0, None  # the largest size known to fit (0: none), the smallest known not to
    size = start
    while True:
        if attempt(size):
            good = size
            if size >= maximum:
                break
            size = min(size * 2, maximum)
        else:
            bad = size
            break
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        if attempt(middle):
            good = middle
        else:
            bad = middle
    result.answer = good or None
    return result


def try_recipe(recipe: Recipe, batch_size: int, steps: int = TRY_STEPS) -> Recipe:
    """The recipe as one try runs it: batch_size per device, `steps` optimizer steps, no evaluation, no saved
    checkpoint, no test split, no trackers; a synthetic workload with exactly batch_size x steps training texts,
    all of the longest length it draws (the worst case), and one evaluation text per split."""
    raw = recipe.to_dict()
    raw["name"] = recipe.name
    raw["train"].update(batch_size=batch_size, max_steps=steps, eval_strategy="no", save_best=False, target={},
                        report_to=[], gradient_accumulation_steps=1)  # fmt: skip
    raw["collector"]["warmup_steps"] = 0
    data = raw["data"]
    if data["source"] == "synthetic":
        longest = worst_length(recipe.data.synthetic.lengths, recipe.data.max_length)
        data["synthetic"].update(train_samples=batch_size * steps * recipe.hardware.num_processes, eval_samples=1,
                                 lengths={"distribution": "fixed", "length": longest})  # fmt: skip
    elif data["source"] == "hub":
        data["test_split"] = None
    else:
        data["test_file"] = None
    return recipe_from_dict(raw)


def worst_length(lengths: LengthsSpec, max_length: int) -> int:
    """The longest text a synthetic distribution draws (a histogram: up to data.max_length)."""
    return {"fixed": lengths.length, "uniform": lengths.max, "normal": lengths.max}.get(lengths.distribution,
                                                                                          max_length)  # fmt: skip


def run_try(recipe: Recipe, batch_size: int, steps: int = TRY_STEPS) -> bool:
    """Run one try in processes of its own (harness.launcher.launch): True if it completed, False if it ran out of
    memory; any other failure raises HarnessError with the run's error. Its files go to a temporary folder that
    is removed afterwards."""
    from harness import launcher
    from harness.plan import make_plan

    folder = Path(tempfile.mkdtemp(prefix="harness-find-batch-"))
    try:
        tried = try_recipe(recipe, batch_size, steps)
        tried = dataclasses.replace(tried, output=dataclasses.replace(
            tried.output, results_dir=str(folder / "results"), checkpoints_dir=str(folder / "checkpoints")))  # fmt: skip
        try:
            launcher.launch(make_plan(tried))
        except launcher.RunStopped:
            raise
        except launcher.RunFailed as failure:
            error = recorded_error(failure.path)
            if error.get("type") == "OutOfMemory":
                return False
            raise HarnessError(
                f"find-batch: the try at batch size {batch_size} failed with {error.get('type', 'an error')}: "
                f"{error.get('message', failure)}; fix that first (the search needs runs that fail only for memory)"
            ) from None
        return True
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def recorded_error(path: Path | None) -> dict:
    """The error of a failed run's result file ({} when it cannot be read)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("error") or {}
    except (OSError, TypeError, ValueError):
        return {}


def find_batch(recipe: Recipe, start: int = 8, maximum: int = 4096, steps: int = TRY_STEPS,
               print_fn: Callable[[str], None] = print) -> Search:  # fmt: skip
    """The search with real tries, each printed as it ends, then the answer."""

    def report(size: int, ok: bool) -> None:
        print_fn(f"try batch_size={size}: {'fits' if ok else 'out of memory'}")

    result = search(lambda size: run_try(recipe, size, steps), start, maximum, report)
    if result.answer is None:
        print_fn(f"{recipe.name}: no batch size fits, not even 1")
    else:
        capped = " (the --max asked for)" if result.answer == maximum else ""
        print_fn(f"{recipe.name}: largest train.batch_size that fits: {result.answer}{capped} "
                 f"({len(result.tries)} tries)")  # fmt: skip
    return result
