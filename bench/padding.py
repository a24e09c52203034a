"""Benchmark: the harness's batching against the padding of other fine-tuning setups, same model, data and
hyperparameters, several seeds per arm.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/padding.py --data-dir ../shared/data/banking77 --seeds 3

Three arms on banking77-style CSVs (text,label; train.csv and test.csv), differing only in batching:
  harness  each batch padded to its own longest text, length-grouped batches (minilm-banking77-cpu)
  dynamic  each batch padded to its own longest text, plainly shuffled: the HF Trainer's default
           (DataCollatorWithPadding, no group_by_length)
  classic  texts padded at tokenisation to the longest of each 1000-row chunk, plainly shuffled
           (`dataset.map(tokenizer(padding=True), batched=True)` scripts; minilm-banking77-cpu-classic-padding)
Every seed runs the three arms one after the other, each in its own process, so machine noise reaches all
arms alike. Printed: the comparison table (mean ± std over seeds, Welch's t against the classic arm), then
samples/s and macro-F1 of each arm as mean ± std. Target on short-text data: the harness at least 3x the
classic samples/s with macro-F1 within noise. Not a test: it takes most of an hour on two cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import repeat_plans
from harness.compare import build_table, render_markdown
from harness.launcher import check, launch
from harness.recipe import load_recipe
from harness.results import load_result
from harness.stats import mean_std, welch

REPO = Path(__file__).resolve().parent.parent
ARMS = {  # arm -> (recipe, extra overrides)
    "harness": ("minilm-banking77-cpu", []),
    "dynamic": ("minilm-banking77-cpu", ["data.group_by_length=false"]),
    "classic": ("minilm-banking77-cpu-classic-padding", []),
}
METRICS = ["train_samples_per_s", "train_samples_per_s_wall", "real_tokens_per_s", "padded_tokens_per_s",
           "padding_efficiency", "step_p50_s", "f1_macro", "accuracy"]  # fmt: skip


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.train_file={args.data_dir / 'train.csv'}",
        f"data.test_file={args.data_dir / 'test.csv'}",
        f"data.max_train_samples={args.train_samples}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        "train.save_best=false",
        "train.eval_strategy=no",  # one evaluation, on the test file, after training
        f"output.checkpoints_dir={args.results_dir / 'checkpoints'}",
    ]


def run_arms(args: argparse.Namespace) -> dict[str, list[Path]]:
    """Every arm for every seed, seed by seed; the result files of each arm."""
    plans = {}
    for arm, (recipe_name, extra) in ARMS.items():
        recipe = load_recipe(recipe_name, overrides(args) + extra)
        check(recipe)  # the stack and the data, before anything runs
        plans[arm] = repeat_plans(recipe, args.seeds, str(args.results_dir))
    paths: dict[str, list[Path]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            paths[arm].append(launch(plans[arm][seed], checked=True))
    return paths


def summary(results: dict[str, list[dict]]) -> str:
    def values(arm: str, get) -> list[float]:
        return [get(result) for result in results[arm]]

    def speed(result: dict) -> float:
        return result["speed"]["train_samples_per_s"]

    def f1(result: dict) -> float:
        return result["accuracy"]["test"]["f1_macro"]

    lines = []
    for arm in ARMS:
        (s, s_std), (f, f_std) = mean_std(values(arm, speed)), mean_std(values(arm, f1))
        efficiency = mean_std([r["speed"]["padding_efficiency"] for r in results[arm]])[0]
        lines.append(f"{arm:8s} {s:7.1f} ± {s_std or 0:5.1f} samples/s  padding efficiency {efficiency:.3f}  "
                     f"macro-F1 {f:.3f} ± {f_std or 0:.3f}   (n = {len(results[arm])} seeds)")  # fmt: skip
    ratio = mean_std(values("harness", speed))[0] / mean_std(values("classic", speed))[0]
    lines.append(f"speed-up harness / classic {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    test = welch(values("harness", f1), values("classic", f1))
    if test is None:
        lines.append("macro-F1: fewer than 2 seeds per arm, no test")
    else:
        verdict = "beyond noise" if test.significant else "within noise"
        lines.append(f"macro-F1 harness - classic {test.difference:+.3f}, 95% interval [{test.ci95[0]:+.3f}, "
                     f"{test.ci95[1]:+.3f}], Welch p = {test.p_value:.2f}: {verdict}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "banking77")
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (train.seed, train.seed + 1, ...)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    paths = run_arms(args)
    results = {arm: [load_result(path) for path in files] for arm, files in paths.items()}
    ordered = [path for arm in ARMS for path in paths[arm]]
    table = build_table([load_result(p) for p in ordered], METRICS, baseline="2", paths=ordered)  # row 2: classic
    print(render_markdown(table))
    print(summary(results))


if __name__ == "__main__":
    main()
