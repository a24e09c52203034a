"""`harness report`: one page over result files, for reading in a browser or pasting into a pull request.

The HTML page is self-contained (CSS inline, charts as base64 PNGs, no JavaScript, nothing fetched): compare's
table with its legend and notes, a bar chart per metric, the loss curves of every run, throughput against process
count when process counts differ, throughput against peak memory when memory differs, the failed and interrupted
runs with their errors, and each run's provenance folded away. The markdown page is compare's table under a short
summary, without images. Every string read from a result file is escaped: a recipe name or an error message may
hold markup. Numbers are formatted by harness.compare, so they read as in `harness compare`.

    harness report results/ --baseline 0 --output report.html
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.charts import draw_pareto, pareto_chart, plot_table
from harness.compare import (
    DEFAULT_METRICS,
    METRICS,
    PAIRED,
    TEXT,
    THROUGHPUT,
    Group,
    Table,
    build_table,
    cell_text,
    column_header,
    counted,
    group_runs,
    legend_lines,
    load_results,
    render_markdown,
    scaling_efficiency,
    setup,
    world_size,
)  # fmt: skip
from harness.results import utc_now, write_new_file

FORMATS = {".html": "html", ".htm": "html", ".md": "markdown"}  # output suffix -> format
STATUSES = ("completed", "failed", "interrupted")
BARS = "error bars: the table's ± (standard deviation over a row's runs, else a single run's standard error)"
FACTS = ("recipe_name", "recipe_hash", "started_at", "finished_at", "schema_version")  # a run's provenance, unfolded
PROVENANCE = ("environment", "ran", "recipe")  # ... and folded, as JSON
Code = Callable[[str], str]  # text from a result file -> that text shown verbatim in the output's markup


@dataclass
class Report:
    """compare's table and the runs behind its rows."""

    table: Table
    groups: list[Group]  # one per table row, in its order
    skipped: list[str]  # files that have no row, each with why

    @property
    def results(self) -> list[dict[str, Any]]:
        return [result for group in self.groups for result in group.results]


@dataclass(frozen=True)
class Chart:
    """A figure of the HTML page: what it shows (its alt text and caption) and its PNG."""

    title: str
    caption: str
    png: bytes


def build_report(
    paths: list[str], metrics: list[str] | None = None, split: str = "auto", baseline: str | None = None,
    per_run: bool = False,
) -> Report:  # fmt: skip
    """The report of the result files under paths; unusable files are skipped and named in the table's notes,
    as in `harness compare`. The files are read once, so the charts show the runs the table shows."""
    loaded = load_results(paths)
    table = build_table(loaded.results, metrics or DEFAULT_METRICS, split, baseline, per_run=per_run,
                        paths=loaded.paths)  # fmt: skip
    table.notes = [*loaded.notes(), *table.notes]
    return Report(table, group_runs(loaded.results, loaded.paths, per_run), loaded.skipped)


def report_format(output: Path, fmt: str | None) -> str:
    """The format asked for, else the one the output's suffix names."""
    if fmt is not None:
        return fmt
    if output.suffix.lower() not in FORMATS:
        raise ValueError(f"{output}: cannot tell the format from the suffix {output.suffix!r}; name the file "
                         f"{output.stem}.html or {output.stem}.md, or add --format html|markdown")  # fmt: skip
    return FORMATS[output.suffix.lower()]


def write_report(paths: list[str], output: Path, fmt: str | None = None, **options: Any) -> Path:
    """Renders the report of paths into output, a new file: an existing file is never replaced (checked before
    any work, and again by the atomic write)."""
    fmt = report_format(output, fmt)
    if output.exists():
        raise FileExistsError(f"{output} exists; a report never replaces a file: choose another --output")
    report = build_report(paths, **options)
    text = render_html(report) if fmt == "html" else render_report_markdown(report)
    return write_new_file(output, lambda handle: handle.write(text))


# --- what both formats say


def run_label(result: dict[str, Any]) -> str:
    """A run as compare's bar charts name it: recipe, setup and the end of its run id."""
    return f"{result.get('recipe_name')} {setup(result)} ({str(result.get('run_id'))[-6:]})"


def _row_name(row: dict[str, Any], code: Code) -> str:
    """A row by its run (or repeats group) id and its short setup; the table says what else tells it apart."""
    return f"{code(str(row['run']))} ({code(row['setup'])})"


def _error_line(result: dict[str, Any]) -> str:
    """The error's type and the first line of its message, at most 200 characters."""
    error = result.get("error") or {}
    message = (str(error.get("message") or "").strip().splitlines() or [""])[0]
    text = f"{error.get('type') or 'error'}: {message}"
    return text if len(text) <= 200 else text[:199] + "…"


def _best(table: Table, name: str) -> dict[str, Any] | None:
    """The row with the best mean of a metric, by its direction; None unless two rows or more have it."""
    rows = [row for row in table.rows if row.get(name) is not None]
    if len(rows) < 2:
        return None
    pick = max if METRICS[name].direction == "↑" else min
    return pick(rows, key=lambda row: row[name])


def summary_lines(report: Report, code: Code) -> list[str]:
    """What a reader should know first: the runs by status, the files skipped, the baseline, the best rows in
    throughput and quality, and every run that did not complete with its error. code() shows text from result
    files verbatim, so that markup in it stays text."""
    statuses = Counter(result.get("status") for result in report.results)
    counts = ", ".join(f"{statuses[status]} {status}" for status in STATUSES if statuses[status])
    lines = [f"{counted(len(report.results), 'run')} in {counted(len(report.table.rows), 'row')}: {counts}"]
    if report.skipped:
        lines.append(f"result files skipped: {len(report.skipped)} (named under the table)")
    if report.table.baseline is not None:
        lines.append(f"baseline: {code(report.table.baseline)}")
    for name in (THROUGHPUT, *PAIRED):
        best = _best(report.table, name) if name in report.table.columns else None
        if best is not None:
            lines.append(f"best {column_header(name)}: {cell_text(name, best)}, {_row_name(best, code)}")
    lines.extend(f"{result.get('status')}: {code(str(result.get('run_id')))}, {code(_error_line(result))}"
                 for result in report.results if result.get("status") != "completed")  # fmt: skip
    return lines


# --- markdown


def _code_span(text: str) -> str:
    """Markdown inline code showing text verbatim (no emphasis, links or HTML): on one line, fenced by more
    backticks than any run of them inside."""
    text = " ".join(str(text).split())
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_report_markdown(report: Report) -> str:
    """The summary as a list, then compare's markdown table with its legend and notes: a pull request comment."""
    summary = "".join(f"- {line}\n" for line in summary_lines(report, _code_span))
    return f"## Benchmark report\n\n{summary}\n{render_markdown(report.table)}"


# --- charts


def _png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    """A figure of one axis drawn by draw, as PNG bytes. matplotlib's object API, no pyplot state."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    draw(figure.subplots())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def charted_metrics(table: Table) -> list[str]:
    """The metric columns that some row has a value of: a chart of none would be empty."""
    return [name for name in table.columns if name in METRICS and any(row.get(name) is not None for row in table.rows)]


def metric_charts(table: Table) -> list[Chart]:
    """A bar chart per metric column that some row has, drawn by charts.plot_table from a table of that metric
    alone, so its bars and error bars are those of `harness compare --plot`. Their caption is BARS, said once."""
    names = charted_metrics(table)
    with tempfile.TemporaryDirectory() as folder:
        images = [plot_table(Table([name], table.rows), Path(folder) / f"{i}.png") for i, name in enumerate(names)]
        return [Chart(column_header(name), "", image.read_bytes()) for name, image in zip(names, images)]


def _curve(result: dict[str, Any], key: str) -> tuple[list[Any], list[Any]]:
    """(steps, losses) of the entries of training.<key> (loss_history or evaluations) that have both."""
    entries = (result.get("training") or {}).get(key) or []
    kept = [entry for entry in entries if entry.get("step") is not None and entry.get("loss") is not None]
    return [entry["step"] for entry in kept], [entry["loss"] for entry in kept]


def loss_chart(results: list[dict[str, Any]]) -> Chart | None:
    """Every run's training loss by optimizer step, its validation loss at each evaluation in the same colour;
    None when no run logged a loss. Interrupted runs show the steps they made."""
    logged = [result for result in results if _curve(result, "loss_history")[0]]
    if not logged:
        return None

    def draw(axis: Any) -> None:
        for i, result in enumerate(logged):
            color = f"C{i % 10}"
            axis.plot(*_curve(result, "loss_history"), color=color, label=run_label(result))
            axis.plot(*_curve(result, "evaluations"), color=color, linestyle=":", marker="o")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss (nats)")
        axis.legend(fontsize=7, loc="best")

    caption = ("solid: training loss (mean since the previous log entry); dotted circles: validation loss at each "
               "evaluation")
    return Chart("loss curves", caption, _png(draw, (9, 4.5)))


def scaling_chart(groups: list[Group]) -> Chart | None:
    """Throughput against process count, when rows with a throughput differ in it: each row a point, filled and
    labelled with its scaling_eff where compare computed one, and dashed the ideal it divided by (N times the
    1-process throughput of rows of one configuration at one global batch). None when all ran on as many processes."""
    sizes, speeds = [world_size(group.results[0]) for group in groups], [group.mean(THROUGHPUT) for group in groups]
    points = [point for point in zip(sizes, speeds, scaling_efficiency(groups)) if point[1] is not None]
    if len({size for size, _, _ in points}) < 2:
        return None
    widest = max(size for size, _, _ in points)
    ideals = dict.fromkeys(round(speed / (size * eff), 6) for size, speed, eff in points if eff)  # one per base
    kinds = {True: "scaling_eff beside it", False: "no 1-process row of its configuration and global batch"}

    def draw(axis: Any) -> None:
        for measured, kind in kinds.items():
            shown = [(size, speed) for size, speed, eff in points if (eff is not None) == measured]
            if shown:
                axis.scatter(*zip(*shown), facecolors="C0" if measured else "none", edgecolors="C0", label=kind,
                             zorder=3)  # fmt: skip
        for size, speed, eff in points:
            if eff is not None:
                axis.annotate(f"{eff:.2f}", (size, speed), xytext=(6, -10), textcoords="offset points", fontsize=8)
        for i, base in enumerate(ideals):
            axis.plot([1, widest], [base, base * widest], color="grey", linestyle="--",
                      label="ideal: N × 1-process throughput" if i == 0 else None)  # fmt: skip
        axis.set_xticks(sorted({size for size, _, _ in points}))
        axis.set_xlabel("processes")
        axis.set_ylabel(f"{THROUGHPUT} {METRICS[THROUGHPUT].direction}")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=7, loc="upper left")

    caption = "each point a row of the table; the notes under the table say which rows scaling_eff cannot compare"
    return Chart(f"scaling: {THROUGHPUT} against processes", caption, _png(draw, (7, 4.5)))


def memory_chart(groups: list[Group]) -> Chart | None:
    """compare's Pareto chart of throughput against peak memory, when rows differ in memory as the table shows it
    or a run ran out of memory; else None."""
    chart = pareto_chart(groups)
    shown = {METRICS["peak_memory_gib"].fmt(point.memory_gib) for point in chart.points}
    if len(shown) < 2 and not chart.out_of_memory:
        return None
    caption = ("filled: CUDA peak allocated; hollow: host peak RSS; ringed and joined: the Pareto front; red x: out "
               "of memory")
    return Chart("throughput against peak memory", caption, _png(lambda axis: draw_pareto(axis, chart), (8, 5.5)))


# --- HTML

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; white-space: nowrap; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td, tr.interrupted td { background: #fff3f0; }
.status-failed, .status-interrupted { color: #b00020; font-weight: 600; }
.notes { color: #444; font-size: 13px; }
td.differs { white-space: normal; min-width: 16em; max-width: 28em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; }
figure { margin: 0 0 1em; border: 1px solid #eee; padding: .5em; width: fit-content; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; max-width: 60em; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
details { margin: .3em 0; } summary { cursor: pointer; }
"""


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_code(text: str) -> str:
    return f"<code>{_escape(text)}</code>"


def _table_cell(column: str, row: dict[str, Any]) -> str:
    """A cell as compare prints it, HTML-escaped; words as they are (compare's markdown escapes their pipes), in a
    class of their column's name (and status's value)."""
    value = row.get(column)
    if column not in TEXT:
        return f'<td class="num">{_escape(cell_text(column, row))}</td>'
    classes = f"{column} status-{value}" if column == "status" else column
    return f'<td class="{_escape(classes)}">{_escape("" if value is None else value)}</td>'


def _row_html(table: Table, row: dict[str, Any]) -> str:
    """A table row in a class of its status, so that failed and interrupted rows stand out."""
    cells = "".join(_table_cell(column, row) for column in table.columns)
    return f'<tr class="{_escape(row.get("status"))}">{cells}</tr>'


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{_escape(column_header(column))}</th>" for column in table.columns)
    rows = "".join(_row_html(table, row) for row in table.rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _notes_html(lines: list[str]) -> str:
    """compare's legend and notes as a list; a "- " line (a skipped file) is an item of the note above it."""
    notes: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("- ") and notes:
            notes[-1][1].append(line[2:])
        else:
            notes.append((line, []))
    items = "".join(f"<li>{_escape(note)}" + (f"<ul>{''.join(f'<li>{_escape(sub)}</li>' for sub in subs)}</ul>"
                    if subs else "") + "</li>" for note, subs in notes)  # fmt: skip
    return f'<ul class="notes">{items}</ul>' if notes else ""


def _json_html(value: Any) -> str:
    return f"<pre>{_escape(json.dumps(value, indent=2, ensure_ascii=False, default=str))}</pre>"


def _failures_html(results: list[dict[str, Any]]) -> str:
    """Each run that did not complete: its status, error type and whole message, the rest of the error folded."""
    stopped = [result for result in results if result.get("status") != "completed"]
    if not stopped:
        return ""
    items = []
    for result in stopped:
        error = result.get("error") or {}
        status = _escape(result.get("status"))
        items.append(f'<li>{_html_code(str(result.get("run_id")))} <span class="status-{status}">{status}</span> '
                     f"({_escape(result.get('recipe_name'))}): <strong>{_escape(error.get('type') or '')}</strong>"
                     f"<pre>{_escape(error.get('message') or '')}</pre>"
                     f"<details><summary>the whole error</summary>{_json_html(error)}</details></li>")  # fmt: skip
    return f"<h2>Failed and interrupted runs</h2><ul>{''.join(items)}</ul>"


def _figure_html(chart: Chart) -> str:
    """The chart as an embedded image; its caption (if any) under it, titled."""
    source = "data:image/png;base64," + base64.b64encode(chart.png).decode("ascii")
    caption = f"<figcaption><strong>{_escape(chart.title)}</strong>: {_escape(chart.caption)}</figcaption>"
    return f'<figure><img src="{source}" alt="{_escape(chart.title)}">{caption if chart.caption else ""}</figure>'


def _charts_html(report: Report) -> str:
    """The bar charts side by side, with the metrics that have none (no row has a value); then the loss curves,
    the scaling and the memory charts, where the runs give them something to show."""
    charted = charted_metrics(report.table)
    empty = [name for name in report.table.columns if name in METRICS and name not in charted]
    missing = f"; no chart for {', '.join(empty)}: no run has a value" if empty else ""
    bars = "".join(map(_figure_html, metric_charts(report.table)))
    others = [loss_chart(report.results), scaling_chart(report.groups), memory_chart(report.groups)]
    return (f'<h2>Charts</h2><p class="notes">{_escape(BARS + missing)}</p><div class="grid">{bars}</div>'
            + "".join(_figure_html(chart) for chart in others if chart is not None))


def _provenance_html(groups: list[Group]) -> str:
    """Per run, folded: where its file is, when it ran, and its environment, ran and recipe as JSON."""
    blocks = []
    for group in groups:
        for result, path in zip(group.results, group.paths):
            facts = {"file": str(path), **{key: result.get(key) for key in FACTS}}
            sections = "".join(f"<h4>{key}</h4>{_json_html(result.get(key))}" for key in PROVENANCE)
            blocks.append(f'<details class="provenance"><summary>{_html_code(str(result.get("run_id")))} '
                          f"{_escape(result.get('status'))}</summary>{_json_html(facts)}{sections}</details>")
    return f"<h2>Provenance</h2>{''.join(blocks)}"


def render_html(report: Report) -> str:
    """The page: summary, table with legend and notes, failures, charts, provenance. No script, no link out."""
    summary = "".join(f"<li>{line}</li>" for line in summary_lines(report, _html_code))
    body = (f"<h1>Benchmark report</h1><p class=\"notes\">written {_escape(utc_now())} by harness report</p>"
            f"<ul>{summary}</ul><h2>Comparison</h2>{_table_html(report.table)}"
            f"{_notes_html([*legend_lines(report.table), *report.table.notes])}{_failures_html(report.results)}"
            f"{_charts_html(report)}{_provenance_html(report.groups)}")  # fmt: skip
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>harness report: '
            f"{len(report.results)} runs</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
