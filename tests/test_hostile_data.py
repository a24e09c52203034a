"""Hostile data: blank labels and files that cannot be read are input errors (DataError; `harness run` exits 2
and records no run) that name the split, the file and the fix, raised before any model loads."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BANKING, EXTENSIONS, write_frame
from transformers import AutoModelForSequenceClassification

from harness import launcher, modeling
from harness.cli import main
from harness.data import DataError, load_labelled
from harness.recipe import DataSpec, load_recipe

RECIPE = "minilm-banking77-cpu"
@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """Small train/validation/test frames of the shipped banking77 subset, every class in each."""
    train = pd.read_csv(BANKING / "train.csv", keep_default_na=False)
    test = pd.read_csv(BANKING / "test.csv", keep_default_na=False)
    halves = {"validation": test.iloc[::2], "test": test.iloc[1::2]}
    return {"train": train, **{split: df.reset_index(drop=True) for split, df in halves.items()}}


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Loading a model or starting a run's processes fails the test: the data must be refused first."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded or a run started before the data was checked")

    monkeypatch.setattr(modeling, "load_model", loaded)
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", loaded)
    monkeypatch.setattr(launcher, "_launch_processes", loaded)




def write_splits(tmp_path: Path, frames: dict[str, pd.DataFrame], source: str = "csv") -> dict[str, Path]:
    return {split: write_frame(df, tmp_path / f"{split}.{EXTENSIONS[source]}", source) for split, df in frames.items()}


def refused(tmp_path: Path, capsys, files: dict[str, Path], source: str = "csv") -> str:
    """The message with which the recipe's check raises a DataError for these files, after checking that
    `harness run` prints it, exits 2 and records no run."""
    settings = [f"data.source={source}", f"output.checkpoints_dir={tmp_path / 'checkpoints'}"]
    settings += [f"data.{split}_file={path}" for split, path in files.items()]
    with pytest.raises(DataError) as info:
        launcher.check(load_recipe(RECIPE, settings))
    results = tmp_path / "results"
    assert main(["run", RECIPE, "--results-dir", str(results), *(f"--set={s}" for s in settings)]) == 2
    assert f"error: {info.value}\n" in capsys.readouterr().err
    assert not list(results.rglob("*.json"))  # not recorded as a failed run
    return str(info.value)


# --------------------------------------------------------------------------- missing labels


def labels_set_to(value, source: str):
    """A writer of a frame with `value` as the label of its bad rows (None: an empty CSV cell, a JSON null)."""

    def spoil(df: pd.DataFrame, path: Path, bad_rows: list[int]) -> None:
        labels = [value if row in bad_rows else label for row, label in enumerate(df["label"])]
        write_frame(df.assign(label=labels), path, source)

    return spoil


def keyless_json(df: pd.DataFrame, path: Path, bad_rows: list[int]) -> None:
    """JSON lines whose bad rows have no label key at all."""
    lines = df.to_json(orient="records", lines=True, force_ascii=False).splitlines()
    for row in bad_rows:
        lines[row] = df.iloc[[row]][["text"]].to_json(orient="records", lines=True, force_ascii=False).strip()
    path.write_text("\n".join(lines) + "\n")


def nan_parquet(df: pd.DataFrame, path: Path, bad_rows: list[int]) -> None:
    """Numeric labels with float NaN (not null) in the bad rows, as a writer other than pandas leaves them."""
    ids = pd.Categorical(df["label"]).codes.astype(float)
    ids[bad_rows] = float("nan")
    pq.write_table(pa.table({"text": df["text"].tolist(), "label": pa.array(ids.tolist())}), path)


@pytest.mark.parametrize(
    ("source", "split", "spoil"),
    [
        ("csv", "train", labels_set_to(None, "csv")),
        ("csv", "test", labels_set_to(" \t", "csv")),
        ("json", "validation", labels_set_to(None, "json")),
        ("json", "train", keyless_json),
        ("parquet", "test", nan_parquet),
    ],
    ids=["csv-empty-cells", "csv-blank", "json-null", "json-no-key", "parquet-nan"],
)
def test_missing_labels_name_split_file_rows_and_fix(tmp_path, capsys, frames, source, split, spoil):
    """The issue: two empty label cells became an 11th class ''; now they are refused, naming the rows."""
    files = {name: tmp_path / f"{name}.{EXTENSIONS[source]}" for name in frames}
    for name, path in files.items():
        spoil(frames[name], path, [7, 12] if name == split else [])
    message = refused(tmp_path, capsys, files, source)
    assert message == (
        f"{split} split ({files[split]}): 2 missing label(s) in column 'label' (rows 7, 12); "
        "label those rows or remove them"
    )


# --------------------------------------------------------------------------- files that cannot be read


def zero_bytes(path: Path, df: pd.DataFrame) -> None:
    path.write_bytes(b"")


def header_only(path: Path, df: pd.DataFrame) -> None:
    write_frame(df.iloc[:0], path, "csv")


def latin1(path: Path, df: pd.DataFrame) -> None:
    df = df.copy()
    df.loc[3, "text"] = "my café card payment"
    path.write_bytes(df.to_csv(index=False).encode("latin1"))


def renamed_text_column(path: Path, df: pd.DataFrame) -> None:
    write_frame(df.rename(columns={"text": "utterance"}), path, "csv")


def no_label_column(path: Path, df: pd.DataFrame) -> None:
    write_frame(df.drop(columns="label"), path, "csv")


def unreadable(path: Path, df: pd.DataFrame) -> None:
    write_frame(df, path, "csv")
    path.chmod(0)


@pytest.mark.parametrize(
    ("split", "spoil", "says"),
    [
        ("train", zero_bytes, "the file is empty (0 bytes); write the data into it or use another file"),
        ("test", header_only, "the file has no data rows (a header at most); add rows or use another file"),
        ("validation", latin1, "not UTF-8 text (line 5 holds the byte 0xe9); re-save it as UTF-8, "
                               "e.g. iconv -f latin1 -t utf-8 {path} > {stem}-utf8.csv"),
        ("validation", renamed_text_column, "data.text_column: column 'text' is not in the {where} (columns: "
                                            "utterance, label); name that column 'text' in the file, as the "
                                            "train, test split's file does"),
        ("test", no_label_column, "data.label_column: column 'label' is not in the {where} (columns: text); "
                                  "name that column 'label' in the file, as the train, validation split's file does"),
        ("train", unreadable, "cannot be read (Permission denied); make it readable (chmod a+r) or copy it somewhere "
                              "readable"),
    ],
    ids=["zero-bytes", "header-only", "latin1", "renamed-column-in-one-file", "missing-column-in-one-file",
         "unreadable"],
)  # fmt: skip
def test_an_unreadable_file_is_an_input_error_naming_split_file_and_fix(tmp_path, capsys, frames, split, spoil, says):
    if spoil is unreadable and os.geteuid() == 0:
        pytest.skip("root reads a file of mode 000")
    files = write_splits(tmp_path, frames)
    spoil(files[split], frames[split])
    message = refused(tmp_path, capsys, files)
    where = f"{split} split ({files[split]})"
    assert where in message
    assert message.endswith(says.format(where=where, path=files[split], stem=tmp_path / split))


@pytest.mark.parametrize(
    ("source", "content", "says", "fix"),
    [
        ("json", b'{"text": "card arrived?", "label": "card_arrival"}\n{"text": "pin", "label": \n',
         "cannot be read as JSON lines (one JSON object per line) (ArrowInvalid: JSON parse error",
         "; fix the file or convert it to that format"),
        ("json", '{"text": "my café", "label": "card_arrival"}\n'.encode("latin1"),
         "not UTF-8 text (line 1 holds the byte 0xe9)", "validation-utf8.jsonl"),
        ("parquet", b"PAR1 but not really", "cannot be read as Parquet (ArrowInvalid: ",
         "; fix the file or convert it to that format"),
        ("parquet", None, "the file has no data rows", "; add rows or use another file"),
    ],
    ids=["json-malformed", "json-latin1", "parquet-malformed", "parquet-no-rows"],
)  # fmt: skip
def test_a_malformed_json_or_parquet_file_is_an_input_error(tmp_path, capsys, frames, source, content, says, fix):
    files = write_splits(tmp_path, frames, source)
    if content is None:
        write_frame(frames["validation"].iloc[:0], files["validation"], source)
    else:
        files["validation"].write_bytes(content)
    message = refused(tmp_path, capsys, files, source)
    assert message.startswith(f"validation split ({files['validation']}): {says}")
    assert message.endswith(fix)


@pytest.mark.parametrize(("kind", "fix"), [("folder", "give the path of a data file, not of a folder"),
                                           ("absent", "fix the path")])  # fmt: skip
def test_a_folder_or_absent_file_is_named_when_data_is_loaded(tmp_path, frames, kind, fix):
    """`harness run` stops these at preflight; loading the data on its own (a worker, `harness eval`) says so too."""
    files = write_splits(tmp_path, frames)
    files["validation"].unlink()
    if kind == "folder":
        files["validation"].mkdir()
    with pytest.raises(DataError) as info:
        load_labelled(DataSpec(source="csv", **{f"{split}_file": str(path) for split, path in files.items()}))
    assert str(info.value).startswith(f"validation split ({files['validation']}): cannot be read (")
    assert str(info.value).endswith(fix)


def test_files_with_different_extra_columns_load_each_on_its_own(tmp_path, frames):
    """One file's extra column no longer breaks the reading of the others (datasets reads one schema per call)."""
    files = write_splits(tmp_path, frames)
    write_frame(frames["test"].assign(source="support chat"), files["test"], "csv")
    labelled = load_labelled(DataSpec(source="csv", **{f"{split}_file": str(path) for split, path in files.items()}))
    assert labelled.splits["test"]["text"] == frames["test"]["text"].tolist()
    assert len(labelled.splits["train"]) == len(frames["train"])
