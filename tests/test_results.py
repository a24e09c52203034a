"""Result files: atomic, never overwritten, versioned."""

import json

import pytest

from harness.results import (
    SCHEMA_VERSION, RunResult, find_result_files, load_result, new_run_id, save_result, write_new_json,
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
