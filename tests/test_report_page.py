"""harness report: pages rendered from the committed result files under tests/data/report, read back with the
standard library's HTML parser and checked against harness compare's table of the same files."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.cli import main
from harness.compare import compare
from harness.report_page import build_report, render_html, render_report_markdown

pytest.importorskip("matplotlib")

FIXTURES = Path(__file__).parent / "data" / "report"
RUNS = FIXTURES / "runs"  # a --repeats group, a 2-process run, classic padding, a failed, an interrupted, a truncated file
HOSTILE = FIXTURES / "hostile"  # a failed run whose recipe name, error and environment hold markup
SEED_42 = RUNS / "minilm-banking77-cpu" / "20261201T160210Z-minilm-banking77-cpu-3f9a1c.json"
SEED_43 = RUNS / "minilm-banking77-cpu" / "20261201T161214Z-minilm-banking77-cpu-b7e402.json"
CLASSIC = RUNS / "minilm-banking77-cpu-classic-padding"  # more memory than the others
FAILED_MESSAGE = "Signal 9 (SIGKILL) received by PID 48213"
INTERRUPTED_MESSAGE = "stopped by SIGINT after step 30 of 68"
TRUNCATED = "20261201T172507Z-minilm-banking77-cpu-5d0e7a.json"
# Charts of the fixtures in RUNS: a bar chart per default metric that a CPU run has (mfu and CUDA memory it has not),
# the loss curves, the scaling chart (1 and 2 processes) and the memory chart (classic padding takes more)
BAR_CHARTS = ["train_samples_per_s ↑", "train_samples_per_s_wall ↑", "real_tokens_per_s ↑", "padding_efficiency ↑",
              "step_p50_s ↓", "peak_rss_gib ↓", "accuracy ↑", "f1_macro ↑"]  # fmt: skip
OTHER_CHARTS = ["loss curves", "scaling: train_samples_per_s against processes", "throughput against peak memory"]


class Page(HTMLParser):
    """What a test reads back from a page: every tag with its attributes, the table's cells, the images, the
    provenance blocks, the text of each <pre>, and all text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self.pres: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._pre: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "pre" and self._pre is not None:
            self.pres.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for part in (self._cell, self._pre):
            if part is not None:
                part.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def images(self) -> dict[str, bytes]:
        """alt text -> PNG bytes of every image embedded as a data: URI."""
        prefix = "data:image/png;base64,"
        return {attrs["alt"]: base64.b64decode(attrs["src"][len(prefix):]) for attrs in self.all("img")
                if (attrs.get("src") or "").startswith(prefix)}  # fmt: skip


def markdown_cells(text: str) -> list[list[str]]:
    """The header and rows of the first pipe table in text."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for i, line in enumerate(lines) if i != 1]


@pytest.fixture(scope="module")
def page() -> tuple[str, Page]:
    text = render_html(build_report([str(RUNS)]))
    return text, Page(text)


def test_the_html_table_is_compares_table_of_the_same_files(page):
    _, parsed = page
    expected = markdown_cells(compare([str(RUNS)]))
    assert parsed.rows == expected
    header, *rows = expected
    assert header[6:8] == ["train_samples_per_s ↑", "train_samples_per_s_wall ↑"] and header[-1] == "scaling_eff"
    assert [row[2] for row in rows] == ["completed", "completed", "failed", "interrupted", "completed"]
    assert rows[0][6] == "3.74 ± 0.102" and rows[1][-1] == "0.78"  # a group's mean ± std; x2 against x1


def test_one_image_per_chart_all_embedded(page):
    _, parsed = page
    images = parsed.images()
    assert list(images) == [*BAR_CHARTS, *OTHER_CHARTS]
    assert len(parsed.all("img")) == len(images)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images.values())


def test_scaling_and_memory_charts_only_when_they_have_something_to_show():
    one_process = Page(render_html(build_report([str(SEED_42), str(SEED_43), str(CLASSIC)], metrics=["accuracy"])))
    assert list(one_process.images()) == ["accuracy ↑", "loss curves", "throughput against peak memory"]
    one_row = Page(render_html(build_report([str(SEED_42), str(SEED_43)], metrics=["accuracy"])))
    assert list(one_row.images()) == ["accuracy ↑", "loss curves"]


def test_the_page_is_self_contained(page):
    text, parsed = page
    assert not parsed.all("script") and not parsed.all("link") and not parsed.all("iframe")
    links = [value for _, attrs in parsed.tags for key, value in attrs.items() if key in ("src", "href")]
    assert links and all(value.startswith("data:") for value in links)
    assert "http://" not in text and "https://" not in text


def test_provenance_of_every_run_folded_away(page):
    _, parsed = page
    report = build_report([str(RUNS)])
    blocks = [attrs for attrs in parsed.all("details") if attrs.get("class") == "provenance"]
    assert len(blocks) == len(report.results) == 6
    recipes = [json.loads(pre) for pre in parsed.pres if pre.lstrip().startswith('{\n  "name"')]
    assert sorted(recipe["name"] for recipe in recipes) == sorted(result["recipe"]["name"] for result in report.results)
    assert any('"cpu_count": 2' in pre for pre in parsed.pres)  # the environment


def test_failed_and_interrupted_runs_show_their_errors(page):
    _, parsed = page
    assert any(FAILED_MESSAGE in pre for pre in parsed.pres)
    assert any(INTERRUPTED_MESSAGE in pre for pre in parsed.pres)
    assert {"failed", "interrupted"} <= {attrs.get("class") for attrs in parsed.all("tr")}


def test_skipped_files_are_listed(page):
    _, parsed = page
    text = "".join(parsed.text)
    assert "skipped 1 of 7 result files" in text and TRUNCATED in text and "truncated?" in text


def test_markup_from_result_files_is_shown_as_text():
    text = render_html(build_report([str(HOSTILE)]))
    parsed = Page(text)
    assert [name for name, _ in parsed.tags if name in ("script", "img", "iframe")] == []
    shown = "".join(parsed.text)
    assert "<script>alert('recipe')</script>" in shown  # in the table, as text
    assert '<img src="https://example.com/x.png" onerror="alert(1)">' in shown  # the error message
    assert "</pre><script>alert('cpu')</script>" in shown  # the environment, in the provenance
    assert "&lt;script&gt;" in text and "https://" not in "".join(str(attrs) for _, attrs in parsed.tags)


def test_markdown_is_a_summary_and_compares_table():
    report = build_report([str(RUNS)])
    text = render_report_markdown(report)
    summary, table = text.split("\n\n", 2)[1:]
    assert text.startswith("## Benchmark report\n")
    assert table == compare([str(RUNS)])
    lines = summary.splitlines()
    assert lines[0] == "- 6 runs in 5 rows: 4 completed, 1 failed, 1 interrupted"
    assert lines[1] == "- result files skipped: 1 (named under the table)"
    assert lines[2] == ("- best train_samples_per_s ↑: 5.87, `20261201T162301Z-minilm-banking77-cpu-0c58d1` "
                        "(`cpu fp32 sdpa x2`)")
    assert any(line.startswith("- failed: `") and FAILED_MESSAGE in line for line in lines)
    assert "data:image" not in text and "<img" not in text


def test_markdown_shows_hostile_text_in_code_spans():
    summary = render_report_markdown(build_report([str(HOSTILE)])).split("\n\n")[1]
    assert summary.splitlines()[-1] == (
        "- failed: `20261201T180000Z-<b>bold</b>-000000`, `` RuntimeError: <img src=\"https://example.com/x.png\" "
        "onerror=\"alert(1)\"> and `</pre><script>alert(2)</script>` ``"
    )  # code spans: no markup, whatever backticks the text holds


def test_cli_writes_a_new_file_and_never_replaces_one(tmp_path, capsys):
    output = tmp_path / "report.md"
    assert main(["report", str(RUNS), "--output", str(output), "--baseline", "0"]) == 0
    assert capsys.readouterr().out == f"report: {output}\n"
    written = output.read_text()
    assert written.startswith("## Benchmark report") and "baseline: `" in written
    assert main(["report", str(RUNS), "--output", str(output)]) == 2
    assert f"{output} exists" in capsys.readouterr().err
    assert output.read_text() == written


def test_cli_format_from_suffix_or_option(tmp_path, capsys):
    assert main(["report", str(HOSTILE), "--output", str(tmp_path / "page.html")]) == 0
    assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(HOSTILE), "--output", str(tmp_path / "page.txt")]) == 2
    assert "--format html|markdown" in capsys.readouterr().err and not (tmp_path / "page.txt").exists()
    assert main(["report", str(HOSTILE), "--output", str(tmp_path / "page.txt"), "--format", "markdown"]) == 0
    assert (tmp_path / "page.txt").read_text().startswith("## Benchmark report")
