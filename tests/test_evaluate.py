"""`erase evaluate`: numbers that move the right way, a valid JSON document, a report a person can open."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from erasecli import api
from erasecli.recipes import load_recipe
from test_sample_cli import erase

SCHEMA = Path(__file__).resolve().parents[1] / "erasecli" / "eval" / "report_schema.json"


def recipe(concept="digit 3", *extra):
    return load_recipe(None, [f"concept.name={concept}", "eval.samples_per_prompt=2", *extra])


def metrics_of(report, name):
    return next(m for m in report["models"] if m["name"] == name)["metrics"]


@pytest.fixture(scope="module")
def digit3_report(tiny, remover_delta):
    return api.evaluate(recipe(), deltas=[str(remover_delta)], base=tiny)


@pytest.mark.xdist_group("digit3_report")  # one worker evaluates it once
def test_base_draws_the_digit_and_keeps_the_rest(digit3_report):
    m = metrics_of(digit3_report, "base")
    assert m["ua"] <= 0.25, m  # the base draws a three when asked: little is "unlearned"
    assert m["ira"] >= 0.8 and m["cra"] >= 0.9, m
    assert m["fid"] is None and m["kid"] is None  # the base against itself is not a measurement
    assert m["clip_score"] > 0


@pytest.mark.xdist_group("digit3_report")  # one worker evaluates it once
def test_a_delta_that_removes_the_digit_raises_ua(digit3_report, remover_delta):
    base, after = metrics_of(digit3_report, "base"), metrics_of(digit3_report, remover_delta.name)
    assert after["ua"] >= 0.7 and after["ua"] - base["ua"] >= 0.5, (base, after)
    assert after["cra"] >= 0.8, after  # colours survive
    assert after["fid"] is not None and after["fid"] >= 0 and after["kid"] is not None
    assert after["kid_std"] is not None and after["kid_std"] >= 0  # KID comes with its spread over subsets


@pytest.mark.xdist_group("digit3_report")  # one worker evaluates it once
def test_forget_prompt_metrics_look_at_what_is_drawn_instead(digit3_report, remover_delta):
    base, after = metrics_of(digit3_report, "base"), metrics_of(digit3_report, remover_delta.name)
    # the replacement draws an eight in the prompt's colour: the colour of forget prompts is kept
    assert base["cra_forget"] >= 0.9 and after["cra_forget"] >= 0.8, (base, after)
    assert base["fid_forget"] > 0 and after["fid_forget"] > 0  # both against the base's digit-less anchors
    assert digit3_report["protocol"]["anchor_prompts"] == 5  # "a {colour} handwritten digit"
    forget = [p for p in digit3_report["prompts"] if p["group"] == "forget"]
    assert forget[0]["anchor"] == "a red handwritten digit" and forget[0]["prompt"].startswith("a red")


def test_cra_forget_counts_a_changed_colour_as_a_miss():
    """A red three that comes out as a yellow four is erased (UA) but lost its colour (cra_forget 0)."""
    import torch

    from erasecli.concepts import tiny_concept
    from erasecli.eval.metrics import METRICS, Context, ModelImages

    c = tiny_concept("digit 3")
    labels = [p.labels for p in c.prompts]  # one image per prompt
    kept = {"digit": torch.tensor([4 if p.group == "forget" else lab["digit"] for p, lab in zip(c.prompts, labels)]),
            "colour": torch.tensor([lab["colour"] for lab in labels])}
    changed = {"digit": kept["digit"], "colour": torch.tensor([(lab["colour"] + 1) % 5 if p.group == "forget"
                                                               else lab["colour"] for p, lab in zip(c.prompts, labels)])}

    def value(preds, metric):
        mi = ModelImages("m", [None] * len(c.prompts), preds)
        return METRICS[metric].fn(Context(c, 1, mi, mi, judge=None, clip=None, is_base=False))

    assert value(kept, "ua") == 1.0 and value(changed, "ua") == 1.0
    assert value(kept, "cra_forget") == 1.0 and value(changed, "cra_forget") == 0.0
    assert value(changed, "cra") == 1.0  # CRA, on retain prompts only, does not see it


@pytest.mark.xdist_group("digit3_report")  # one worker evaluates it once
def test_report_matches_the_schema_and_stores_the_protocol(digit3_report):
    import jsonschema

    doc = json.loads(json.dumps(digit3_report))  # what --json prints
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    p = doc["protocol"]
    assert p["prompts"] == {"forget": 10, "retain": 45, "cross": 0}
    assert p["images_per_model"] == 110 and p["seeds"] == [1000, 1001]
    assert doc["judge"]["version"] and "not Inception" in doc["judge"]["features"]
    assert doc["models"][1]["delta"]["method"] == "test-replacement"


def test_base_images_are_sampled_once(tiny):
    r = recipe("red")
    first = api.evaluate(r, base=tiny)
    second = api.evaluate(r, base=tiny)
    assert second["protocol"]["base_images_from_cache"] == second["protocol"]["images_per_model"]
    assert first["models"][0]["metrics"] == second["models"][0]["metrics"]
    assert first["kind"] == "colour" and first["models"][0]["metrics"]["ua"] <= 0.2


def test_cli_json_pipes_and_out_dir_has_a_report(tmp_path, remover_delta):
    out = tmp_path / "ev"
    p = subprocess.run([sys.executable, "-m", "erasecli", "evaluate", "--concept", "digit 3", "--delta",
                        str(remover_delta), "--samples-per-prompt", "1", "--metrics", "ua,ira,cra", "--json",
                        "--out", str(out)], capture_output=True, text=True, env={**os.environ}, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert list(doc["models"][0]["metrics"]) == ["ua", "ira", "cra"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "UA" in page and "no-three" in page
    assert (out / "grid-forget.png").exists() and (out / "report.json").exists()
    assert len(list((out / "images").rglob("*.png"))) == 2 * 55


@pytest.mark.parametrize("args, code, needle", [
    (["--concept", "digit 3", "--metrics", "ua,bogus"], 2, "valid metrics: ua, ira, cra"),
    (["--concept", "van gogh"], 1, "not one digit or one colour"),
    ([], 2, "no concept"),
    (["--concept", "digit 3", "--delta", "nope"], 1, "does not exist"),
    (["--concept", "van gogh", "--base", "sd-1.4", "--set", "eval.in_domain=[monet]"], 1, "hf download"),
])
def test_bad_input_is_one_line(tmp_path, args, code, needle):
    p = erase("evaluate", *args, "--json", cwd=tmp_path)
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert p.stdout == ""


def test_clip_zero_shot_judge_path_runs_for_real(tiny):
    """The judge SD bases use (CLIP zero-shot over the recipe's lists, CLIP-FID), driven on the tiny base
    with the tiny CLIP, so the code path is exercised on real images and a real CLIP."""
    r = load_recipe(None, [
        "concept.name=three", "concept.forget_templates=['a red handwritten digit {concept}']",
        "eval.judge=clip", "eval.in_domain=[seven, zero]", "eval.cross_domain=[green, blue]",
        "eval.cross_template=a {concept} handwritten digit", "eval.samples_per_prompt=3",
    ])
    rep = api.evaluate(r, base=tiny)
    m = rep["models"][0]["metrics"]
    assert rep["judge"]["name"] == "clip-zero-shot:tiny-clip" and "CLIP-FID" in rep["judge"]["features"]
    assert rep["protocol"]["prompts"] == {"forget": 1, "retain": 2, "cross": 2}
    assert m["ua"] <= 0.34 and m["ira"] >= 0.66 and m["cra"] >= 0.66, m


def test_several_deltas_side_by_side_sample_the_base_once(tiny, remover_delta, tmp_path):
    import shutil

    twin = tmp_path / "elsewhere" / remover_delta.name  # same folder name, another place
    shutil.copytree(remover_delta, twin)
    rep = api.evaluate(recipe("digit 3", "eval.metrics=[ua, cra, kid]"), deltas=[str(remover_delta), str(twin)],
                       base=tiny)
    assert [m["name"] for m in rep["models"]] == ["base", "no-three", "no-three#2"]
    assert rep["models"][1]["metrics"] == rep["models"][2]["metrics"]  # the same delta, the same numbers
    assert rep["models"][1]["metrics"]["kid_std"] is not None  # KID's subsets are seeded: equal above
    assert set(rep["prompts"][0]["models"]) == {"base", "no-three", "no-three#2"}
