"""Benchmark: the harness's batching against classic chunk padding, same model, data and hyperparameters.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/padding.py --data-dir ../shared/data/banking77

Runs two recipes that differ only in batching (minilm-banking77-cpu and its -classic-padding variant) on
banking77-style CSVs (text,label; train.csv and test.csv), then prints samples/s of each, their ratio,
padding efficiency and macro-F1 on the test file with its bootstrap standard error. Target on short-text data:
the harness at least 3x the classic samples/s with macro-F1 within noise.
Not a test: it takes minutes, and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.compare import compare
from harness.launcher import launch
from harness.plan import make_plan
from harness.recipe import load_recipe
from harness.results import load_result

REPO = Path(__file__).resolve().parent.parent
RECIPES = {"harness": "minilm-banking77-cpu", "classic": "minilm-banking77-cpu-classic-padding"}


def run_both(args: argparse.Namespace) -> dict[str, dict]:
    overrides = [
        f"data.train_file={args.data_dir / 'train.csv'}",
        f"data.test_file={args.data_dir / 'test.csv'}",
        f"data.max_train_samples={args.train_samples}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        "train.save_best=false",
        "train.eval_strategy=no",  # one evaluation, on the test file, after training
        f"output.checkpoints_dir={args.results_dir / 'checkpoints'}",
    ]
    results = {}
    for label, recipe_name in RECIPES.items():
        plan = make_plan(load_recipe(recipe_name, overrides), results_dir=str(args.results_dir))
        results[label] = load_result(launch(plan))
    return results


def summary(results: dict[str, dict]) -> str:
    lines = []
    for label, result in results.items():
        speed, test = result["speed"], result["accuracy"]["test"]
        lines.append(
            f"{label:8s} {speed['train_samples_per_s']:8.1f} samples/s  padding efficiency "
            f"{speed['padding_efficiency']:.3f}  macro-F1 {test['f1_macro']:.3f} ± {test['f1_macro_stderr']:.3f}"
        )
    ratio = results["harness"]["speed"]["train_samples_per_s"] / results["classic"]["speed"]["train_samples_per_s"]
    f1 = {k: r["accuracy"]["test"] for k, r in results.items()}
    gap = f1["harness"]["f1_macro"] - f1["classic"]["f1_macro"]
    noise = 2 * (f1["harness"]["f1_macro_stderr"] ** 2 + f1["classic"]["f1_macro_stderr"] ** 2) ** 0.5
    lines.append(f"speed-up {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    lines.append(f"macro-F1 difference {gap:+.3f} (2 standard errors: {noise:.3f}; "
                 f"{'within noise' if abs(gap) <= noise else 'OUTSIDE noise'})")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "banking77")
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    results = run_both(args)
    paths = [str(Path(args.results_dir) / r["recipe_name"] / f"{r['run_id']}.json") for r in results.values()]
    metrics = ["train_samples_per_s", "real_tokens_per_s", "padded_tokens_per_s", "padding_efficiency",
               "step_p50_s", "f1_macro", "accuracy"]  # fmt: skip
    print(compare(paths, metrics=metrics, baseline="1"))
    print(summary(results))


if __name__ == "__main__":
    main()
