"""Result files: atomic, never overwritten, versioned."""

import json
import os
import re

import pytest

from harness.results import (
    SCHEMA_VERSION,
    ResultFileError,
    RunResult,
    find_result_files,
    load_result,
    new_run_id,
    result_problems,
    save_result,
    scan_result_files,
    write_new_json,
)  # fmt: skip


def make_result(run_id="r1"):
    return RunResult(run_id=run_id, kind="train", status="completed", recipe_name="demo", recipe_hash="abc",
                     recipe={}, started_at="t0", finished_at="t1")  # fmt: skip


def test_save_writes_one_file_per_run_under_the_recipe(tmp_path):
    path = save_result(tmp_path, make_result())
    assert path == tmp_path / "demo" / "r1.json"
    document = load_result(path)
    assert document["schema_version"] == SCHEMA_VERSION and document["run_id"] == "r1"
    assert [p.name for p in path.parent.iterdir()] == ["r1.json"]  # no temporary file left behind


def test_an_existing_run_is_never_overwritten(tmp_path):
    path = save_result(tmp_path, make_result())
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_result(tmp_path, make_result())
    assert path.read_bytes() == before
    assert len(list(path.parent.iterdir())) == 1


def test_write_new_json_is_complete_or_absent(tmp_path):
    class Unserialisable:
        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_new_json(tmp_path / "x.json", {"a": Unserialisable()})
    assert list(tmp_path.iterdir()) == []


def test_run_ids_are_unique_and_sortable():
    ids = [new_run_id("demo") for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(i.split("-")[0].endswith("Z") for i in ids)


def test_load_rejects_other_files_and_future_major_versions(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a harness result"):
        load_result(tmp_path / "other.json")
    future = make_result().to_dict() | {"schema_version": "3.0"}
    (tmp_path / "future.json").write_text(json.dumps(future))
    with pytest.raises(ValueError, match="not readable"):
        load_result(tmp_path / "future.json")


def test_find_result_files_recurses_and_skips_hidden(tmp_path):
    save_result(tmp_path, make_result("a"))
    save_result(tmp_path / "nested", make_result("b"))
    (tmp_path / ".partial.json.tmp").write_text("{")
    found = find_result_files([tmp_path])
    assert [p.name for p in found] == ["a.json", "b.json"]
    with pytest.raises(FileNotFoundError):
        find_result_files([tmp_path / "missing"])


def test_load_names_a_truncated_file_with_line_and_column(tmp_path):
    text = json.dumps(make_result().to_dict(), indent=2)
    (tmp_path / "cut.json").write_text(text[: text.index('"recipe_hash"') + 5])
    with pytest.raises(ResultFileError) as raised:
        load_result(tmp_path / "cut.json")
    assert str(raised.value) == (f"{tmp_path / 'cut.json'}: invalid JSON at line 6, column 3: Unterminated string "
                                 "starting at (the file ends there: truncated?)")  # fmt: skip


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"speed": {"train_samples_per_s": "fast"}},
         'speed.train_samples_per_s: expected a number or null, got "fast"'),
        ({"accuracy": []}, "accuracy: expected an object, got []"),
        ({"status": "done"}, 'status: expected one of "completed", "failed", "interrupted", got "done"'),
        ({"memory": {"peak_host_rss_bytes": True}}, "memory.peak_host_rss_bytes: expected an integer, got true"),
        ({"memory": {"peak_host_rss_bytes": 1, "per_rank": [7]}}, "memory.per_rank[0]: expected an object, got 7"),
    ],
)  # fmt: skip
def test_load_names_each_field_of_the_wrong_type(tmp_path, change, problem):
    document = make_result().to_dict() | change
    (tmp_path / "typed.json").write_text(json.dumps(document))
    with pytest.raises(ResultFileError) as raised:
        load_result(tmp_path / "typed.json")
    assert str(raised.value).startswith(f"{tmp_path / 'typed.json'}: not a valid result: ")
    assert problem in result_problems(document)


def test_a_file_of_a_schema_version_alone_is_no_result(tmp_path):
    (tmp_path / "bare.json").write_text('{"schema_version": "2.0"}')
    with pytest.raises(ResultFileError, match=r"bare\.json: not a valid result: run_id: missing \(required\); kind: "
                                              r"missing \(required\); status: missing \(required\) \(and \d+ more\)"):
        load_result(tmp_path / "bare.json")
    (tmp_path / "old.json").write_text('{"schema_version": "1.0"}')
    with pytest.raises(ResultFileError, match=r"old\.json: schema version 1\.0 is not readable: this harness reads 2"):
        load_result(tmp_path / "old.json")


def test_newer_minor_versions_may_add_fields_and_older_ones_lack_defaulted_ones(tmp_path):
    document = make_result().to_dict() | {"schema_version": "2.9", "new_field": [1]}
    del document["predictions_file"], document["repeats"]
    assert result_problems(document) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_load_names_an_unreadable_file(tmp_path):
    path = save_result(tmp_path, make_result())
    path.chmod(0)
    with pytest.raises(ResultFileError, match=f"^{re.escape(str(path))}: cannot be read \\(Permission denied\\)"):
        load_result(path)


def test_load_names_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "latin.json").write_bytes(b'{"schema_version": "2.0", "run_id": "caf\xe9"}')
    with pytest.raises(ResultFileError, match=r"latin\.json: not UTF-8 text \(byte 40 is 0xe9\)"):
        load_result(tmp_path / "latin.json")


def test_scan_ignores_other_json_in_folders_but_keeps_broken_and_named_files(tmp_path):
    result = save_result(tmp_path, make_result())
    checkpoint = tmp_path / "checkpoints" / "r1" / "best"
    checkpoint.mkdir(parents=True)
    for name, content in [("config.json", '{"model_type": "bert"}'), ("tokenizer.json", "[]"), ("harness.json", "{}")]:
        (checkpoint / name).write_text(content)
    (tmp_path / "demo" / "cut.json").write_text('{"schema_version": "2.0", "run_')
    found = scan_result_files([tmp_path, checkpoint / "config.json"])
    assert found.files == [tmp_path / "demo" / "cut.json", result, checkpoint / "config.json"]
    assert sorted(path.name for path in found.ignored) == ["config.json", "harness.json", "tokenizer.json"]
    assert find_result_files([tmp_path]) == [tmp_path / "demo" / "cut.json", result]
