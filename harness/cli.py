"""The `harness` command. Subcommands import the training stack only when they need it, so
`harness --help`, `list`, `validate` and `compare` answer without loading torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.failures import stopped_exit_code
from harness.plan import Plan, make_plan
from harness.recipe import REPO_RECIPES, Recipe, RecipeError, find_recipe, load_recipe, recipe_files


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for path in recipe_files(args.root):
        try:
            recipe = load_recipe(str(path))
        except RecipeError as error:
            rows.append((path.stem, "INVALID", str(error).split(": ", 1)[-1][:60], "", ""))
            continue
        source = recipe.data.name or recipe.data.train_file or ""
        setup = f"{recipe.precision.dtype} {recipe.model.attn_implementation} x{recipe.hardware.num_processes}"
        rows.append((recipe.name, recipe.model.name, source, setup, recipe.description))
    widths = [max(len(r[i]) for r in rows + [("recipe", "model", "data", "setup", "")]) for i in range(4)]
    header = ("recipe", "model", "data", "setup", "description")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    paths: list[Path] = []
    for target in args.paths or [str(REPO_RECIPES)]:
        target_path = Path(target)
        paths += recipe_files(target_path) if target_path.is_dir() else [find_recipe(target)]
    failures = 0
    for path in paths:
        try:
            recipe = load_recipe(str(path), args.set)
            print(f"ok      {path}  ({recipe.name}, hash {recipe.hash})")
        except RecipeError as error:
            failures += 1
            print(f"INVALID {error}")
    print(f"{len(paths) - failures} valid, {failures} invalid")
    return 1 if failures or not paths else 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.compare import compare
    from harness.launcher import MachineRole, RunFailed, RunStopped, check, launch

    recipes = [load_recipe(name, args.set) for name in args.recipes]  # all validated before any run starts
    for recipe in recipes:
        check(recipe, args.results_dir)  # the stack, the folders and the data of every run, before the first starts
    plans = [plan for recipe in recipes for plan in repeat_plans(recipe, args.repeats, args.results_dir)]
    for plan in plans:
        plan.profile_steps = args.profile
    role = MachineRole(args.machine_rank, args.main_process_ip, args.main_process_port)
    paths, failed, stopped_by = [], 0, None
    for index, plan in enumerate(plans):
        seed = f", seed {plan.recipe.train.seed}" if plan.repeats else ""
        print(f"run {plan.run_id}: recipe {plan.recipe.name} (hash {plan.recipe.hash}{seed})", flush=True)
        try:
            paths.append(launch(plan, role, checked=True))
        except RunStopped as stop:  # Ctrl-C or SIGTERM: record this run, start no other
            print(f"STOPPED: {stop}", file=sys.stderr, flush=True)
            paths.append(stop.path)
            stopped_by = stop.signal_name
        except RunFailed as error:
            print(f"FAILED: {error}", file=sys.stderr, flush=True)
            failed += 1
            paths.append(error.path)
        print(f"result: {paths[-1] or 'written by machine 0, under its run id'}", flush=True)
        if stopped_by:
            if plans[index + 1:]:
                print(f"not started: {len(plans) - index - 1} run(s) after the stop", file=sys.stderr)
            break
    existing = [str(p) for p in paths if p and p.is_file()]  # machines other than machine 0 write no results
    if existing:
        print()
        try:
            print(compare(existing, baseline="0" if len(existing) > 1 else None))
        except ValueError as error:  # no table can be made (every file unreadable): the runs' outcome stands
            print(f"note: no comparison table: {error}", file=sys.stderr)
    return stopped_exit_code(stopped_by) if stopped_by else 1 if failed else 0


def repeat_plans(recipe: Recipe, repeats: int, results_dir: str | None) -> list[Plan]:
    """One plan, or one per seed train.seed .. train.seed + repeats - 1, tagged as one group; data.seed stays,
    so every repeat trains and is evaluated on the same data."""
    from harness.results import new_run_id

    if repeats == 1:
        return [make_plan(recipe, results_dir=results_dir)]
    group = new_run_id(recipe.name)
    return [
        make_plan(recipe.with_seed(recipe.train.seed + i), results_dir=results_dir,
                  repeats={"group": group, "index": i, "count": repeats})
        for i in range(repeats)
    ]  # fmt: skip


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.sweep import run_sweep

    return run_sweep(args.recipe, args.set, repeats=args.repeats, rerun=args.rerun, results_dir=args.results_dir)


def cmd_find_batch(args: argparse.Namespace) -> int:
    from harness.find_batch import find_batch
    from harness.launcher import RunStopped

    recipe = load_recipe(args.recipe, args.set)
    try:
        result = find_batch(recipe, start=args.start, maximum=args.max, steps=args.steps)
    except RunStopped as stop:
        print(f"STOPPED: {stop}", file=sys.stderr)
        return stopped_exit_code(stop.signal_name)
    return 0 if result.answer else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.charts import compare_pareto, plot_table
    from harness.compare import (
        COST_METRICS,
        DEFAULT_METRICS,
        PIVOT_RENDERERS,
        RENDERERS,
        THROUGHPUT,
        compare_table,
        pivot_table,
    )
    from harness.prices import load_prices

    rows, cols = ([key.strip() for key in (text or "").split(",") if key.strip()] for text in (args.rows, args.cols))
    pivot = bool(rows or cols)
    clashes = [flag for flag, given in (("--metrics", args.metrics), ("--plot", args.plot)) if given]
    if pivot and clashes:
        raise HarnessError(f"{' and '.join(clashes)}: not with --rows/--cols, whose pivot shows one metric (--value)")
    if args.value and not pivot:
        raise HarnessError("--value: lays one metric out by settings, with --rows and/or --cols (see --help)")
    defaults = DEFAULT_METRICS + (COST_METRICS if args.prices or args.price else [])  # prices given: show costs
    try:
        prices = load_prices(args.prices, args.price)
        if pivot:
            table = pivot_table(args.paths, rows, cols, args.value or THROUGHPUT, split=args.split,
                                baseline=args.baseline, strict=args.strict, prices=prices)  # fmt: skip
        else:
            table = compare_table(args.paths, args.metrics.split(",") if args.metrics else defaults, split=args.split,
                                  baseline=args.baseline, ratio_of=args.ratio_of, per_run=args.per_run,
                                  strict=args.strict, prices=prices)  # fmt: skip
    except ValueError as error:  # unknown metric, key, baseline or price (the message names the fix), unusable files
        raise HarnessError(str(error)) from None
    text = (PIVOT_RENDERERS if pivot else RENDERERS)[args.format](table)
    print(text, end="" if text.endswith("\n") else "\n")
    if args.format != "markdown":  # markdown prints its notes under the table; keep CSV and JSON parseable
        for note in table.notes:
            print(f"note: {note}", file=sys.stderr)
    if args.plot:
        print(f"plot: {plot_table(table, args.plot)}")
    if args.pareto:
        print(f"pareto: {compare_pareto(args.paths, args.pareto, per_run=args.per_run, strict=args.strict)}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from harness.gate import run_gate

    quality = tuple(name.strip() for name in args.quality.split(",") if name.strip())
    return run_gate(args.baseline, args.candidate, speed_metric=args.metric, max_slowdown=args.max_slowdown,
                    quality=quality, margin=args.margin, alpha=args.alpha, split=args.split,
                    allow_env_change=args.allow_env_change)  # fmt: skip


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report_page import write_report

    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()] if args.metrics else None
    try:
        path = write_report(args.paths, args.output, args.format, metrics=metrics, split=args.split,
                            baseline=args.baseline, per_run=args.per_run)  # fmt: skip
    except ValueError as error:  # unknown metric or baseline, no readable result, no format (the message says)
        raise HarnessError(str(error)) from None
    print(f"report: {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from harness.inference import predict

    path = predict(args.checkpoint, args.file, top_k=args.top_k, output=args.output,
                   text_column=args.text_column, batch_size=args.batch_size)  # fmt: skip
    print(f"predictions: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.inference import evaluate_checkpoint

    path = evaluate_checkpoint(args.checkpoint, split=args.split, file=args.file, results_dir=args.results_dir,
                               batch_size=args.batch_size)  # fmt: skip
    print(f"result: {path}")
    return 0


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one or more recipes and print their comparison table")
    run.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe name (see `harness list`) or YAML path")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe value, e.g. --set train.learning_rate=3e-5 (repeatable)")
    run.add_argument("--results-dir", help="where result files go (default: the recipe's output.results_dir)")
    run.add_argument("--repeats", type=positive, default=1, metavar="N",
                     help="run each recipe N times with seeds train.seed .. train.seed+N-1, each in its own "
                          "process, as one group: compare shows their mean ± std")  # fmt: skip
    run.add_argument("--profile", type=positive, default=0, metavar="N",
                     help="profile N training steps after the warm-up: a torch profiler trace, the top operators and "
                          "(CUDA) a memory snapshot beside the result; these steps are not timed")
    multi = run.add_argument_group("multi-machine runs (hardware.num_machines > 1): run on every machine")
    multi.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (0 writes the results)")
    multi.add_argument("--main-process-ip", help="address of the machine of rank 0")
    multi.add_argument("--main-process-port", type=int, help="a free port on the machine of rank 0")
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="run every cell of a recipe's sweep: axes, each in its own processes")
    sweep.add_argument("recipe", metavar="RECIPE", help="a recipe with a sweep: section (name or YAML path)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value of every cell, e.g. --set train.max_steps=20 (repeatable)")
    sweep.add_argument("--results-dir", help="where result files go (default: the recipe's output.results_dir)")
    sweep.add_argument("--repeats", type=positive, default=1, metavar="N",
                       help="run each cell with seeds train.seed .. train.seed+N-1, as one group per cell")
    sweep.add_argument("--rerun", action="store_true",
                       help="run every cell again, also those with a completed result of the same recipe hash")
    sweep.set_defaults(func=cmd_sweep)

    find = sub.add_parser("find-batch", help="the largest train.batch_size that fits: short tries, doubling then "
                                             "bisecting, each in its own processes")  # fmt: skip
    find.add_argument("recipe", metavar="RECIPE", help="recipe name (see `harness list`) or YAML path")
    find.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a recipe value, e.g. --set precision.dtype=bf16 (repeatable)")
    find.add_argument("--start", type=positive, default=8, help="the first batch size tried (default: 8)")
    find.add_argument("--max", type=positive, default=4096, help="the largest batch size tried (default: 4096)")
    find.add_argument("--steps", type=positive, default=3, help="optimizer steps of each try (default: 3)")
    find.set_defaults(func=cmd_find_batch)

    listing = sub.add_parser("list", help="list the recipes")
    listing.add_argument("--root", type=Path, default=None, help="recipe folder (default: recipes/)")
    listing.set_defaults(func=cmd_list)

    validate = sub.add_parser("validate", help="validate recipe files (default: every file under recipes/)")
    validate.add_argument("paths", nargs="*", help="recipe files, folders (recursive) or names")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=cmd_validate)

    comp = sub.add_parser("compare", help="compare result files or folders in a table")
    comp.add_argument("paths", nargs="+", help="result files or folders (searched recursively)")
    comp.add_argument("--metrics", help="comma-separated metric names (default: a speed/memory/accuracy set)")
    comp.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    comp.add_argument("--split", default="auto", help="accuracy split: test, validation or auto (test if present)")
    comp.add_argument("--baseline",
                      help="run id, unique prefix or row number to compute ratios against; with --rows/--cols, a "
                           "column value (each cell against its row's cell there, e.g. fp32) or a row value")
    comp.add_argument("--ratio-of", default="train_samples_per_s", help="metric of the ratio column")
    comp.add_argument("--per-run", action="store_true",
                      help="one row per run, also for the runs of a --repeats group (default: their mean ± std)")
    comp.add_argument("--plot", type=Path, help="also draw the metrics as bar charts into this image (matplotlib)")
    comp.add_argument("--rows", metavar="KEYS",
                      help="pivot: a row per value of these comma-separated keys (recipe keys such as model.name, "
                           "or ran.* fields such as ran.world_size)")
    comp.add_argument("--cols", metavar="KEYS", help="pivot: a column per value of these keys (e.g. precision.dtype)")
    comp.add_argument("--value", metavar="METRIC",
                      help="pivot: the metric of the cells, mean ± std over their runs (default: train_samples_per_s)")
    comp.add_argument("--prices", action="append", default=[], metavar="FILE.json",
                      help="GPU prices per hour replacing the shipped ones (harness/gpu_prices.json's format), for "
                           "the cost_usd and usd_per_million_samples metrics")
    comp.add_argument("--price", action="append", default=[], metavar="DEVICE=USD",
                      help="one GPU's price per hour, by torch device name or GPU type, e.g. "
                           "'NVIDIA H100 80GB HBM3=3.95' or 'H100=3.95' (repeatable)")
    comp.add_argument("--pareto", type=Path, metavar="FILE.png",
                      help="also draw throughput against peak memory, the Pareto front joined and out-of-memory runs "
                           "marked, into this image (matplotlib)")
    comp.add_argument("--strict", action="store_true",
                      help="fail (exit 2) when a result file cannot be read or is not valid, instead of skipping "
                           "it with a note under the table")  # fmt: skip
    comp.set_defaults(func=cmd_compare)

    gate = sub.add_parser("gate", help="exit 1 when a candidate is slower or less accurate than a baseline (CI)",
                          description="Compare a candidate's runs with a baseline's: exit 0 pass, 1 regression (the "
                                      "failed check is printed with its numbers), 2 bad input or runs from different "
                                      "environments (GPU, driver, CPU, Python, package versions).")  # fmt: skip
    gate.add_argument("baseline", metavar="BASELINE", help="result file or folder (a folder's runs: one group)")
    gate.add_argument("candidate", metavar="CANDIDATE", help="result file or folder")
    gate.add_argument("--metric", default="train_samples_per_s", help="speed metric (default: train_samples_per_s)")
    gate.add_argument("--max-slowdown", type=float, default=0.10,
                      help="largest allowed slowdown of the candidate's mean, a fraction (default: 0.10)")
    gate.add_argument("--quality", default="accuracy,f1_macro",
                      help="comma-separated metrics that must not be worse (default: accuracy,f1_macro; '' for none)")
    gate.add_argument("--margin", type=float, default=0.01,
                      help="non-inferiority margin: candidate - baseline must be shown above -margin (default: 0.01)")
    gate.add_argument("--alpha", type=float, default=0.05, help="level of the one-sided test (default: 0.05)")
    gate.add_argument("--split", default="auto", help="accuracy split: test, validation or auto (test if present)")
    gate.add_argument("--allow-env-change", action="store_true",
                      help="compare runs from different GPUs, drivers, CPUs or package versions (named in a note)")
    gate.set_defaults(func=cmd_gate)

    report = sub.add_parser("report", help="write one page (HTML or markdown) over result files or folders")
    report.add_argument("paths", nargs="+", help="result files or folders (searched recursively)")
    report.add_argument("--output", type=Path, required=True, metavar="FILE",
                        help="the page to write, FILE.html (self-contained: table, charts, provenance) or FILE.md "
                             "(summary and table, for a pull request); an existing file is never replaced")
    report.add_argument("--format", choices=["html", "markdown"], help="default: from the suffix of --output")
    report.add_argument("--metrics", help="comma-separated metric names (default: a speed/memory/accuracy set)")
    report.add_argument("--split", default="auto", help="accuracy split: test, validation or auto (test if present)")
    report.add_argument("--baseline", help="run id, unique prefix or row number the other rows are compared with")
    report.add_argument("--per-run", action="store_true",
                        help="one row per run, also for the runs of a --repeats group (default: their mean ± std)")
    report.set_defaults(func=cmd_report)

    pred = sub.add_parser("predict", help="write top-k predictions of a saved checkpoint for a file")
    pred.add_argument("checkpoint", help="a checkpoint folder saved by a run (…/best)")
    pred.add_argument("file", help="CSV, JSON lines or Parquet file with a text column")
    pred.add_argument("--top-k", type=int, default=1)
    pred.add_argument("--text-column", default="text")
    pred.add_argument("--output", help="output CSV (default: <file>.predictions.csv)")
    pred.add_argument("--batch-size", type=int, default=64)
    pred.set_defaults(func=cmd_predict)

    ev = sub.add_parser("eval", help="evaluate a saved checkpoint and write a result file")
    ev.add_argument("checkpoint", help="a checkpoint folder saved by a run (…/best)")
    where = ev.add_mutually_exclusive_group()
    where.add_argument("--split", default=None, help="split of the recipe's data: validation or test")
    where.add_argument("--file", help="a labelled CSV, JSON lines or Parquet file")
    ev.add_argument("--results-dir", default="results")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (HarnessError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before any run started (a started run records where it stopped)
        print("interrupted", file=sys.stderr)
        return stopped_exit_code("SIGINT")


if __name__ == "__main__":
    sys.exit(main())
