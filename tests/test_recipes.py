"""Recipes: precedence, unknown keys, types, ranges, one-line errors, round trips, atomic writes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from erasecli.errors import RecipeError
from erasecli.recipes import (
    ConceptConfig,
    LoraConfig,
    Recipe,
    SampleConfig,
    TrainConfig,
    field_help,
    load_recipe,
    recipe_from_dict,
    recipe_hash,
    recipe_keys,
    recipe_to_dict,
    recipe_to_yaml,
    validate,
    write_recipe,
)


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error(call, *args, **kwargs) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        call(*args, **kwargs)
    err = info.value
    assert "\n" not in str(err), f"message is not one line: {str(err)!r}"
    assert err.hint, "every recipe error carries a hint"
    return err


# --- precedence -------------------------------------------------------------------------------------


def test_defaults_load():
    r = load_recipe()
    assert r == Recipe()
    assert r.base == "tiny" and r.method == ""
    assert r.sample.steps == 25 and r.sample.guidance == 5.0 and r.sample.scheduler == "ddim"
    assert r.lora.target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    assert r.concept.forget_templates == ("{concept}",)
    assert r.train.lr == 1e-3


def test_yaml_overrides_defaults_and_keeps_the_rest(tmp_path):
    path = write(tmp_path, """
        base: sd-1.4
        method: siss
        concept:
          name: van gogh
          forget_templates: ["a painting by {concept}", "{concept} style"]
        sample:
          steps: 50
          guidance: 7          # an int is fine for a float field
        train:
          lr: 1e-5             # YAML 1.1 reads this as a string
    """)
    r = load_recipe(path)
    assert r.base == "sd-1.4" and r.method == "siss"
    assert r.concept.name == "van gogh"
    assert r.concept.forget_templates == ("a painting by {concept}", "{concept} style")
    assert r.sample.steps == 50
    assert r.sample.guidance == 7.0 and isinstance(r.sample.guidance, float)
    assert r.train.lr == 1e-5
    assert r.sample.eta == 0.0 and r.train.steps == 200  # untouched fields keep defaults
    assert load_recipe(str(path)) == r


def test_set_overrides_yaml_and_cli_values_sit_between(tmp_path):
    path = write(tmp_path, "base: sd-1.4\nsample: {steps: 50, seed: 3}\n")
    assert load_recipe(path, base="sd-2.1").base == "sd-2.1"  # cli beats file
    r = load_recipe(path, ["sample.steps=10"], sample={"steps": 30, "seed": None}, base=None)
    assert r.sample.steps == 10  # --set beats cli beats file
    assert r.sample.seed == 3  # None cli values do not override the file
    assert r.base == "sd-1.4"
    assert load_recipe(path, sample={"steps": 30}).sample.steps == 30
    assert load_recipe(path, ["sample.steps=10", "sample.steps=12"]).sample.steps == 12  # later --set wins


def test_set_parses_values_as_yaml():
    r = load_recipe(overrides=[
        "lora.target_modules=[to_q,to_v]",
        "sample.eta=0.5",
        "lora.rank=8",
        "concept.name=van gogh",
        "concept.retain_prompts=a cat",
    ])
    assert r.lora.target_modules == ("to_q", "to_v")
    assert r.sample.eta == 0.5 and r.lora.rank == 8
    assert r.concept.name == "van gogh"
    assert r.concept.retain_prompts == ("a cat",)  # a single string is a one-element list


def test_set_on_a_text_field_keeps_the_text():
    r = load_recipe(overrides=["concept.name=3", "concept.kind=yes", "concept.anchor="])
    assert r.concept.name == "3" and r.concept.kind == "yes" and r.concept.anchor == ""
    assert load_recipe(overrides=["concept.retain_prompts="]).concept.retain_prompts == ()


# --- unknown keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "nearest"),
    [
        ("bsae: tiny\n", "bsae", "base"),
        ("sample:\n  step: 3\n", "sample.step", "sample.steps"),
        ("lora:\n  target_module: [to_q]\n", "lora.target_module", "lora.target_modules"),
        ("steps: 3\n", "steps", "sample.steps"),  # right name, wrong section
    ],
)
def test_unknown_yaml_key_names_nearest(tmp_path, text, key, nearest):
    path = write(tmp_path, text)
    err = error(load_recipe, path)
    assert f"'{key}'" in str(err) and str(path) in str(err)
    assert f"'{nearest}'" in err.hint


@pytest.mark.parametrize(
    ("override", "key", "nearest"),
    [("bsae=x", "bsae", "base"), ("sample.step=3", "sample.step", "sample.steps"), ("trian.lr=1", "trian", "train")],
)
def test_unknown_set_key_names_nearest(override, key, nearest):
    err = error(load_recipe, overrides=[override])
    assert f"'{key}'" in str(err) and "--set" in str(err)
    assert f"'{nearest}'" in err.hint


def test_unknown_key_with_nothing_close_lists_the_section():
    err = error(load_recipe, overrides=["sample.zzzzzz=1"])
    assert "'sample.zzzzzz'" in str(err)
    assert "steps" in err.hint and "scheduler" in err.hint


def test_unknown_key_in_dict_and_cli_values():
    assert "'sample.steps'" in error(recipe_from_dict, {"sample": {"stepz": 3}}).hint
    assert "'base'" in error(load_recipe, bsae="x").hint


def test_set_below_a_value_is_an_error():
    err = error(load_recipe, overrides=["sample.steps.x=1"])
    assert "'sample.steps'" in str(err)


@pytest.mark.parametrize("override", ["sample.steps", "=3", "sample..steps=3", " =1"])
def test_malformed_set_shows_the_expected_form(override):
    err = error(load_recipe, overrides=[override])
    assert "--set key.sub=value" in str(err)


# --- types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "shown", "expected"),
    [
        ({"sample": {"steps": "abc"}}, "sample.steps", "'abc'", "integer"),
        ({"sample": {"steps": 2.5}}, "sample.steps", "2.5", "integer"),
        ({"lora": {"rank": True}}, "lora.rank", "true", "integer"),  # bool is not an int
        ({"sample": {"guidance": "high"}}, "sample.guidance", "'high'", "number"),
        ({"sample": {"guidance": True}}, "sample.guidance", "true", "number"),
        ({"base": ["tiny"]}, "base", "['tiny']", "string"),
        ({"concept": {"name": 3}}, "concept.name", "3", "string"),
        ({"concept": {"anchor": {"a": 1}}}, "concept.anchor", "{'a': 1}", "string"),
        ({"lora": {"target_modules": ["to_q", 3]}}, "lora.target_modules[1]", "3", "string"),
        ({"lora": {"target_modules": 3}}, "lora.target_modules", "3", "list of strings"),
        ({"sample": {"steps": None}}, "sample.steps", "null", "integer"),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(data, key, shown, expected):
    err = error(recipe_from_dict, data)
    assert f"'{key}'" in str(err)
    assert expected in str(err)
    assert str(err).endswith(f"got {shown}")


def test_wrong_type_in_set_and_yaml_names_the_source(tmp_path):
    err = error(load_recipe, overrides=["sample.steps=abc"])
    assert "'sample.steps'" in str(err) and "'abc'" in str(err) and "--set sample.steps=abc" in str(err)
    path = write(tmp_path, "train:\n  seed: 1.5\n")
    err = error(load_recipe, path)
    assert "'train.seed'" in str(err) and "1.5" in str(err) and str(path) in str(err)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_floats_are_rejected(value):
    err = error(load_recipe, overrides=[f"train.lr={value}"])
    assert "train.lr" in str(err) and "finite" in str(err)


@pytest.mark.parametrize(
    ("data", "what"),
    [([1, 2], "the recipe"), ({"sample": [1, 2]}, "'sample'"), ({"concept": "van gogh"}, "'concept'")],
)
def test_non_mapping_recipe_or_section(data, what):
    err = error(recipe_from_dict, data)
    assert what in str(err) and "mapping" in str(err)


def test_top_level_list_file(tmp_path):
    path = write(tmp_path, "- base: tiny\n")
    err = error(load_recipe, path)
    assert str(path) in str(err) and "mapping" in str(err)


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_recipe(write(tmp_path, "")) == Recipe()
    assert load_recipe(write(tmp_path, "sample:\n  # steps: 3\n", "b.yaml")) == Recipe()


# --- ranges -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sample.steps=0", "sample.steps must be >= 1, got 0"),
        ("sample.steps=1001", "sample.steps must be <= 1000, got 1001"),
        ("sample.guidance=-1", "sample.guidance must be >= 0, got -1.0"),
        ("sample.eta=1.5", "sample.eta must be in [0, 1], got 1.5"),
        ("sample.batch_size=0", "sample.batch_size must be >= 1, got 0"),
        ("sample.seed=-1", "sample.seed must be >= 0, got -1"),
        ("lora.rank=0", "lora.rank must be >= 1, got 0"),
        ("lora.alpha=0", "lora.alpha must be > 0, got 0.0"),
        ("lora.target_modules=[]", "lora.target_modules must be a non-empty list, got ()"),
        ("train.steps=0", "train.steps must be >= 1, got 0"),
        ("train.lr=0", "train.lr must be > 0, got 0.0"),
        ("train.lr_schedule=step", "train.lr_schedule must be one of 'constant', 'linear', 'cosine', got 'step'"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.seed=-3", "train.seed must be >= 0, got -3"),
        ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1, got 0"),
        ("base=", "base must be non-empty, got ''"),
        ("concept.forget_templates=[]", "concept.forget_templates must be a non-empty list"),
    ],
)
def test_out_of_range_names_key_and_value(override, message):
    err = error(load_recipe, overrides=[override])
    assert message in str(err)
    assert f"--set {override}" in str(err)  # says where the bad value came from


def test_scheduler_error_lists_valid_names():
    err = error(load_recipe, overrides=["sample.scheduler=euler"])
    assert "'euler'" in str(err) and "'ddim'" in str(err) and "'ddpm'" in str(err)


@pytest.mark.parametrize("template", ["a photo", "a {style} by {concept}", "{concept"])
def test_forget_template_must_contain_concept(template):
    err = error(recipe_from_dict, {"concept": {"forget_templates": ["{concept}", template]}})
    assert "concept.forget_templates[1]" in str(err) and repr(template) in str(err)


def test_range_error_from_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "sample:\n  eta: 2\n")
    err = error(load_recipe, path)
    assert "sample.eta must be in [0, 1], got 2.0" in str(err) and str(path) in str(err)


def test_validate_catches_recipes_built_in_python():
    validate(Recipe())
    assert "sample.steps must be >= 1" in str(error(validate, Recipe(sample=SampleConfig(steps=0))))
    assert "'lora.rank'" in str(error(validate, Recipe(lora=LoraConfig(rank="4"))))


# --- files ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    err = error(load_recipe, path)
    assert str(path) in str(err) and "not found" in str(err)
    assert "recipes/" in err.hint


def test_folder_instead_of_file(tmp_path):
    assert str(tmp_path) in str(error(load_recipe, tmp_path))


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "base: tiny\nsample:\n  steps: 3\n   guidance: [1, 2\n")
    err = error(load_recipe, path)
    assert str(path) in str(err)
    assert "line 4" in str(err)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = write(tmp_path, "sample:\n  steps: 3\n  steps: 4\n")
    err = error(load_recipe, path)
    assert "duplicate key 'steps'" in str(err) and "line 3" in str(err)


def test_yaml_merge_keys_may_override(tmp_path):
    path = write(tmp_path, "sample:\n  <<: {steps: 5, seed: 1}\n  steps: 6\n")
    r = load_recipe(path)
    assert (r.sample.steps, r.sample.seed) == (6, 1)


# --- round trips, hash, writing ---------------------------------------------------------------------


CUSTOM = Recipe(
    base="sd-1.4",
    method="siss",
    concept=ConceptConfig(name="van gogh", kind="style", forget_templates=("{concept}", "art by {concept}"),
                          anchor="a painting", retain_prompts=("a cat", "a dog")),
    sample=SampleConfig(steps=50, guidance=7.5, eta=1.0, scheduler="ddpm", batch_size=4, seed=7),
    lora=LoraConfig(rank=8, alpha=16.0, target_modules=("to_q", "to_v")),
    train=TrainConfig(steps=1000, lr=3e-5, batch_size=2, seed=1, checkpoint_every=100),
)


@pytest.mark.parametrize("r", [Recipe(), CUSTOM])
def test_dict_round_trip(r):
    d = recipe_to_dict(r)
    assert recipe_from_dict(d) == r
    assert isinstance(d["lora"]["target_modules"], list)
    assert yaml.safe_load(recipe_to_yaml(r)) == d  # plain YAML-safe types


def test_yaml_keeps_declaration_order():
    lines = [line for line in recipe_to_yaml(Recipe()).splitlines() if not line.startswith(" ")]
    assert [line.split(":")[0] for line in lines] == [f.name for f in dataclasses.fields(Recipe)]
    assert [line.split(":")[0] for line in lines][:6] == ["base", "method", "concept", "sample", "lora", "train"]


def test_hash_is_stable_and_tracks_every_field():
    h = recipe_hash(Recipe())
    assert len(h) == 12 and int(h, 16) >= 0
    assert recipe_hash(Recipe()) == h == recipe_hash(load_recipe())
    assert recipe_hash(Recipe(sample=SampleConfig(guidance=5))) == h  # equal recipes hash equal
    changed = {
        recipe_hash(load_recipe(overrides=[o]))
        for o in ["sample.steps=26", "train.lr=2e-4", "concept.name=red", "lora.target_modules=[to_q]", "base=x"]
    }
    assert h not in changed and len(changed) == 5


def test_hash_is_the_same_in_a_fresh_process():
    code = "from erasecli.recipes import Recipe, recipe_hash; print(recipe_hash(Recipe()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == recipe_hash(Recipe())


@pytest.mark.parametrize("r", [Recipe(), CUSTOM])
def test_write_recipe_reads_back_equal_and_leaves_no_temp_files(tmp_path, r):
    path = tmp_path / "recipe.yaml"
    path.write_text("old content")
    write_recipe(r, path)
    assert load_recipe(path) == r
    assert recipe_hash(load_recipe(path)) == recipe_hash(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_write_recipe_renames_a_temp_file_from_the_same_folder(tmp_path, monkeypatch):
    path = tmp_path / "recipe.yaml"
    path.write_text("old content")
    calls = []

    def spy(src, dst):
        assert path.read_text() == "old content"  # the target is untouched until the rename
        calls.append((Path(src), Path(dst)))
        real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", spy)
    write_recipe(CUSTOM, path)
    assert len(calls) == 1 and calls[0][1] == path and calls[0][0].parent == tmp_path
    assert load_recipe(path) == CUSTOM


def test_failed_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "recipe.yaml"
    target.mkdir()
    (target / "keep").write_text("x")  # a non-empty folder cannot be replaced by a file
    assert str(target) in str(error(write_recipe, Recipe(), target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    assert (target / "keep").read_text() == "x"


def test_write_recipe_into_missing_folder_is_a_recipe_error(tmp_path):
    path = tmp_path / "missing" / "recipe.yaml"
    assert str(path) in str(error(write_recipe, Recipe(), path))
    assert list(tmp_path.iterdir()) == []


def test_write_recipe_refuses_an_invalid_recipe_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("old content")
    error(write_recipe, Recipe(train=TrainConfig(steps=0)), path)
    assert path.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


# --- help and structure -----------------------------------------------------------------------------


def test_every_field_has_help_and_every_check_names_a_field():
    for key in recipe_keys():
        assert field_help(key).strip(), key
    sections = [Recipe, ConceptConfig, SampleConfig, LoraConfig, TrainConfig]
    for cls in sections:
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(getattr(cls, "CHECKS", {})) <= names, cls


def test_field_help_includes_default_and_suggests_keys():
    assert "DDIM" in field_help("sample.steps") and "Default: 25" in field_help("sample.steps")
    assert field_help("sample")  # sections have help too
    assert "'sample.steps'" in error(field_help, "sample.step").hint


def test_recipes_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().sample.steps = 3  # type: ignore[misc]


def test_import_does_not_pull_in_heavy_libraries():
    code = "import sys, erasecli.recipes; print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"
