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


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.compare import DEFAULT_METRICS, RENDERERS, compare_table, plot_table

    metrics = args.metrics.split(",") if args.metrics else DEFAULT_METRICS
    try:
        table = compare_table(args.paths, metrics, split=args.split, baseline=args.baseline, ratio_of=args.ratio_of,
                              per_run=args.per_run, strict=args.strict)  # fmt: skip
    except ValueError as error:  # unknown metric or baseline (the message lists the valid ones), unusable files
        raise HarnessError(str(error)) from None
    text = RENDERERS[args.format](table)
    print(text, end="" if text.endswith("\n") else "\n")
    if args.format != "markdown":  # markdown prints its notes under the table; keep CSV and JSON parseable
        for note in table.notes:
            print(f"note: {note}", file=sys.stderr)
    if args.plot:
        print(f"plot: {plot_table(table, args.plot)}")
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
    multi = run.add_argument_group("multi-machine runs (hardware.num_machines > 1): run on every machine")
    multi.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (0 writes the results)")
    multi.add_argument("--main-process-ip", help="address of the machine of rank 0")
    multi.add_argument("--main-process-port", type=int, help="a free port on the machine of rank 0")
    run.set_defaults(func=cmd_run)

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
    comp.add_argument("--baseline", help="run id, unique prefix or row number to compute ratios against")
    comp.add_argument("--ratio-of", default="train_samples_per_s", help="metric of the ratio column")
    comp.add_argument("--per-run", action="store_true",
                      help="one row per run, also for the runs of a --repeats group (default: their mean ± std)")
    comp.add_argument("--plot", type=Path, help="also draw the metrics as bar charts into this image (matplotlib)")
    comp.add_argument("--strict", action="store_true",
                      help="fail (exit 2) when a result file cannot be read or is not valid, instead of skipping "
                           "it with a note under the table")  # fmt: skip
    comp.set_defaults(func=cmd_compare)

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
