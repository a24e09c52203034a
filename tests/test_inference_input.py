"""`harness predict` and `harness eval` check their input before any weights load."""

import json

import pytest

from harness import inference
from harness.cli import main


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A checkpoint folder with a config only; loading its weights fails the test."""
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))

    def no_weights(path):
        raise AssertionError("weights loaded before the input was checked")

    monkeypatch.setattr(inference, "load_checkpoint", no_weights)
    return folder


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_labels_come_from_the_config_without_loading_weights(checkpoint):
    assert inference.checkpoint_info(checkpoint)["labels"] == ["neg", "pos"]


@pytest.mark.parametrize(("content", "expected"), [
    ("body,label\nhello,pos\n", "no column 'text'"),
    ("text,label\nhello,pos\n ,neg\n", "empty or missing text"),
    ("", "the file is empty (0 bytes); write the data into it or use another file"),
    ("text,label\n", "the file has no data rows (a header at most); add rows or use another file"),
])  # fmt: skip
def test_predict_and_eval_reject_bad_files_first(checkpoint, tmp_path, capsys, content, expected):
    data = write(tmp_path, "data.csv", content)
    assert main(["predict", str(checkpoint), data, "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert expected in err and data in err and "Traceback" not in err
    assert main(["eval", str(checkpoint), "--file", data, "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert expected in err and data in err and "Traceback" not in err
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "r").exists()


def test_eval_rejects_blank_labels_naming_the_rows(checkpoint, tmp_path, capsys):
    data = write(tmp_path, "data.csv", "text,label\nhello,pos\nbye, \nhi,\n")
    assert main(["eval", str(checkpoint), "--file", data, "--results-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.endswith(
        f"error: eval split ({data}): 2 missing label(s) in column 'label' (rows 1, 2); "
        "label those rows or remove them\n"
    )
    assert not (tmp_path / "r").exists()


def test_eval_rejects_labels_the_model_does_not_know(checkpoint, tmp_path, capsys):
    data = write(tmp_path, "data.csv", "text,label\nhello,pos\nbye,maybe\n")
    assert main(["eval", str(checkpoint), "--file", data, "--results-dir", str(tmp_path / "r")]) == 2
    assert "maybe" in capsys.readouterr().err


def test_predict_refuses_an_existing_output_before_work(checkpoint, tmp_path, capsys):
    data = write(tmp_path, "data.csv", "text\nhello\n")
    existing = write(tmp_path, "out.csv", "earlier predictions\n")
    assert main(["predict", str(checkpoint), data, "--output", existing]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "out.csv").read_text() == "earlier predictions\n"
