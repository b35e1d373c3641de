"""The canvas world (digits x colours x drawing styles): what it draws, how it captions, what a style concept
erases and keeps, and that the bundled tiny-canvas base and its judges meet their bars."""

import random

import pytest
import torch

from erasecli.concepts import canvas_concept, tiny_concept
from erasecli.errors import RecipeError
from erasecli.models import canvas_world as CW


def _one_digit_in_every_style(colour: int = 2):
    d = CW.W.load_split("heldout")
    grey = torch.from_numpy(d.images[:1]).repeat(len(CW.STYLE_NAMES), 1, 1)  # (S, 8, 8)
    styles = torch.arange(len(CW.STYLE_NAMES))
    return CW.render(grey, torch.full_like(styles, colour), styles)  # (S, 3, 32, 32)


def test_every_style_draws_the_digit_differently_in_the_same_colour():
    x = _one_digit_in_every_style(colour=2)  # blue
    flat = x.flatten(1)
    dist = torch.cdist(flat, flat)
    off = dist[~torch.eye(len(x), dtype=torch.bool)]
    assert off.min() > 5.0, dist  # no two styles draw the same picture
    lit = (x + 1) / 2  # [0, 1]
    assert lit[:, :2].max() == 0 and lit[:, 2].amax(dim=(1, 2)).min() > 0.5  # blue only, in every style
    dotted = lit[CW.STYLE_NAMES.index("dotted"), 2]
    i = torch.arange(32)
    off_grid = ((i[:, None] % 4) >= 2) | ((i[None, :] % 4) >= 2)
    assert dotted[off_grid].max() == 0 and dotted.max() > 0.5  # dots on the image's 4-pixel grid


def test_a_caption_names_every_non_solid_style_and_only_the_labels_drawn():
    rng = random.Random(0)
    unnamed = {s: 0 for s in range(len(CW.STYLE_NAMES))}
    for k in range(4000):
        d, c, s = k % 10, k % 5, k % len(CW.STYLE_NAMES)
        text = CW.caption(d, c, s, rng)
        if not text:
            continue
        nd, nc, ns = CW.named(text)
        assert nd in (d, -1) and nc in (c, -1) and ns in (s, -1), text
        unnamed[s] += ns == -1
    assert unnamed[CW.SOLID] > 50  # "a red three" is drawn solid ...
    assert all(n == 0 for s, n in unnamed.items() if s != CW.SOLID)  # ... and only solid


def test_concepts_of_three_kinds_parse_and_wrong_ones_say_what_exists():
    assert CW.parse_canvas_concept("style dotted") == ("style", CW.STYLE_NAMES.index("dotted"))
    assert CW.parse_canvas_concept("striped") == ("style", CW.STYLE_NAMES.index("striped"))
    assert CW.parse_canvas_concept("digit 3") == ("digit", 3)
    assert CW.parse_canvas_concept("red") == ("colour", 0)
    with pytest.raises(RecipeError, match="not one style") as err:
        CW.parse_canvas_concept("style van gogh")
    assert "styles: solid, outline, dotted" in err.value.hint
    with pytest.raises(RecipeError, match="not one style"):
        CW.parse_canvas_concept("a red three in dotted style")


def test_a_style_concept_forgets_the_style_keeps_the_others_and_judges_digits_for_cra():
    c = canvas_concept(["style dotted"])
    dotted = CW.STYLE_NAMES.index("dotted")
    assert (c.kind, c.target, c.other_kind, c.world) == ("style", dotted, "digit", "canvas")
    assert all(CW.named(p)[2] == dotted for p in c.forget)
    assert all(CW.named(a)[2] == -1 for a in c.anchor)  # the anchor names no style: the base draws it solid
    # the anchor keeps the digit and colour the forget prompt names
    assert all(CW.named(a)[:2] == CW.named(p)[:2] for p, a in zip(c.forget, c.anchor))
    assert all(CW.named(p)[2] != dotted for p in c.retain)
    forget = [c.prompts[i] for i in c.group("forget")]
    retain = [c.prompts[i] for i in c.group("retain")]
    assert len(forget) == 20 and len(retain) == 70  # every (style, digit) once, the erased in two forms
    assert {p.labels["digit"] for p in forget} == set(range(10))
    assert {p.labels["style"] for p in retain} == set(range(len(CW.STYLE_NAMES))) - {dotted}
    # a digit concept judges the styles for CRA: erasing a three must keep a dotted three dotted
    d = tiny_concept("digit 3", "", "canvas")
    assert (d.kind, d.other_kind, d.label_names["style"]) == ("digit", "style", CW.STYLE_NAMES)
    assert {d.prompts[i].labels["style"] for i in d.group("forget")} == set(range(len(CW.STYLE_NAMES)))


def test_styles_erased_together_must_be_of_one_kind():
    both = canvas_concept(["dotted", "striped"])
    assert both.together and len(both.group("forget")) == 40
    with pytest.raises(RecipeError, match="of one kind"):
        canvas_concept(["dotted", "digit 3"])


def test_canvas_judge_meets_its_bar_on_held_out_digits_in_every_style():
    from erasecli.models.judges import classifier_accuracy_on, load_classifier
    from erasecli.models.registry import judges_dir

    acc = classifier_accuracy_on("heldout", load_classifier(judges_dir("canvas") / "classifier"), world="canvas")
    assert acc["style"] >= 0.95 and acc["digit"] >= 0.95 and acc["colour"] >= 0.99, acc


@pytest.mark.slow
def test_a_plain_diffusers_pipeline_draws_a_blue_seven_in_striped_style():
    """tiny-canvas is a diffusers folder: StableDiffusionPipeline loads it with no erasecli code, and the canvas
    judge reads the prompted style, digit and colour on most images."""
    from diffusers import StableDiffusionPipeline

    from erasecli.judges import TinyClassifierJudge
    from erasecli.models.registry import CANVAS_DIR

    pipe = StableDiffusionPipeline.from_pretrained(str(CANVAS_DIR)).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    g = [torch.Generator().manual_seed(s) for s in range(12)]
    images = pipe(["a blue handwritten digit seven in striped style"] * 12, num_inference_steps=25, generator=g,
                  guidance_scale=5.0, height=32, width=32).images
    pred = TinyClassifierJudge("canvas").predict(images)
    assert (pred["style"] == CW.STYLE_NAMES.index("striped")).float().mean() >= 0.75, pred
    assert (pred["digit"] == 7).float().mean() >= 0.75, pred
    assert (pred["colour"] == CW.COLOUR_NAMES.index("blue")).float().mean() >= 0.9, pred


@pytest.mark.slow
def test_uce_erases_a_style_and_keeps_the_other_styles(tiny_canvas, tmp_path):
    """The plain command's path on tiny-canvas: `--concept "style dotted"` resolves to the style kind, the
    method's canvas style preset applies, and the canvas judge reads the result (docs/results.md: UA 1.000, IRA
    0.99 at 16 images per prompt; what it costs the digits, CRA, is measured there)."""
    from erasecli import api

    r = api.load_recipe(None, [], method="uce", base="tiny-canvas", concept={"name": "style dotted"})
    assert r.defaults == "tiny-canvas-style-uce"
    res = api.unlearn(r, out=tmp_path / "no-dotted", base=tiny_canvas)
    assert res["delta"]["concept"] == "style dotted"
    e = api.load_recipe(None, ["eval.samples_per_prompt=2", "eval.metrics=[ua,ira]"], base="tiny-canvas",
                        concept={"name": "style dotted"})
    rep = api.evaluate(e, deltas=[str(tmp_path / "no-dotted")], base=tiny_canvas)
    before, after = rep["models"][0]["metrics"], rep["models"][1]["metrics"]
    assert before["ua"] <= 0.1 and after["ua"] >= 0.9, (before, after)
    assert after["ira"] >= 0.9, after


@pytest.mark.slow
def test_the_style_oracle_draws_every_style_but_dotted():
    """tiny-canvas-oracle-style-dotted never saw a dotted image: asked for one it draws the digit undotted,
    while the other styles, digits and colours stay (docs/results.md: other styles 1.000, digits 0.89 as the
    base's). Attacks on it take their targets from tiny-canvas, its reference."""
    from erasecli import sampling
    from erasecli.judges import TinyClassifierJudge
    from erasecli.models.registry import load_base

    oracle = load_base("tiny-canvas-oracle-style-dotted", device="cpu")
    assert oracle.ref.reference == "tiny-canvas" and oracle.ref.world == "canvas"
    prompts = ["a red handwritten digit three in dotted style"] * 8 + ["a green handwritten digit seven in striped style"] * 8
    pred = TinyClassifierJudge("canvas").predict(sampling.generate(oracle, prompts, list(range(16)), steps=25,
                                                                   guidance=5.0, batch_size=16))
    style, digit = pred["style"].tolist(), pred["digit"].tolist()
    assert style[:8].count(CW.STYLE_NAMES.index("dotted")) <= 1, style
    assert digit[:8].count(3) >= 6 and digit[8:].count(7) >= 6, digit
    assert style[8:].count(CW.STYLE_NAMES.index("striped")) >= 7, style
