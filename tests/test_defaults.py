"""Good defaults per base and method: with no recipe file the tiny base starts each method from its shipped
preset, other bases from the paper's settings, and the resolved recipe says which."""

import pytest

from erasecli import api
from erasecli.errors import RecipeError
from erasecli.recipes import Recipe, load_recipe
from erasecli.recipes.presets import PRESETS_DIR, preset_names, tiny_preset


def plain(method, concept="digit 3", base=None, *sets):
    return api.load_recipe(None, list(sets), method=method, base=base, concept={"name": concept})


@pytest.mark.parametrize("method", ["siss", "adaptive-siss", "ppo-alpha", "esd", "critic-rl", "ac", "sa", "receler", "mace", "ant",
                                    "sld", "safree"])
def test_the_tiny_base_starts_every_method_from_its_shipped_preset(method):
    r = plain(method)
    assert r.defaults == f"tiny-digit-{method}"
    shipped = load_recipe(PRESETS_DIR / f"tiny-digit-{method}.yaml")
    for section in ("train", "lora", "data", "siss", "esd", "critic", "ppo", "adaptive", "ac", "sa", "receler", "mace",
                    "ant", "sld", "safree", "robust"):
        assert getattr(r, section) == getattr(shipped, section), section
    assert r.concept.name == "digit 3" and r.method == method


def test_the_preset_sets_how_not_what():
    r = plain("esd", "seven")
    assert r.concept.name == "seven" and r.esd.negative_guidance == 3.0 and r.esd.anchor == "prompt"
    assert plain("critic-rl", "red").defaults == "tiny-colour-critic-rl"  # a colour has its own critic-rl preset
    assert plain("esd", "red").defaults == "tiny-digit-esd"  # else the digit one
    assert tiny_preset("esd", "colour") == "tiny-digit-esd" and tiny_preset("uce", "digit") == "tiny-digit-uce"
    assert tiny_preset("no-such-method", "digit") is None


def test_tiny_xl_starts_from_its_own_presets_and_keeps_the_kinds_choice():
    assert plain("esd", "digit 3", "tiny-xl").defaults == "tiny-xl-digit-esd"
    sa = plain("sa", "digit 3", "tiny-xl")  # its own EWC weight: tiny-xl's Fisher is larger
    assert sa.defaults == "tiny-xl-digit-sa" and sa.sa.ewc_lambda == 1e5 and plain("sa", "digit 3").sa.ewc_lambda == 1e6
    assert plain("critic-rl", "red", "tiny-xl").defaults == "tiny-colour-critic-rl"  # the kind's preset first
    assert tiny_preset("siss", "colour", "tiny-oracle-digit-3") == "tiny-digit-siss"


def test_tiny_flux_takes_its_own_presets():
    receler = plain("receler", "digit 3", "tiny-flux")  # the retain weight of a velocity loss
    assert receler.defaults == "tiny-flux-digit-receler" and receler.receler.retain_weight == 0.1
    assert plain("receler", "digit 3").receler.retain_weight == 3.0
    rl = plain("critic-rl", "digit 3", "tiny-flux")
    assert rl.defaults == "tiny-flux-digit-critic-rl" and (rl.critic.retain_loss, rl.critic.anchor_loss) == (0.5, 0.2)
    ant = plain("ant", "digit 3", "tiny-flux")
    assert ant.defaults == "tiny-flux-digit-ant" and (ant.ant.early_share, ant.ant.retain_weight) == (0.1, 0.3)
    assert plain("esd", "digit 3", "tiny-flux").defaults == "tiny-digit-esd"  # none of its own: the tiny base's
    for method in ("siss", "ppo-alpha"):  # the text stream: on the image stream some seeds kept threes
        r = plain(method, "digit 3", "tiny-flux")
        assert r.defaults == f"tiny-flux-digit-{method}" and list(r.lora.target_modules) == ["xattn"]
        assert "xattn" not in plain(method, "digit 3").lora.target_modules
    sa = plain("sa", "digit 3", "tiny-flux")  # at the tiny base's EWC weight (1e6) it erased nothing
    assert sa.defaults == "tiny-flux-digit-sa" and sa.sa.ewc_lambda == 1e3 and sa.sa.surrogate == "noise"


def test_tiny_canvas_takes_its_style_preset_where_one_is_shipped_else_the_digit_one():
    uce = plain("uce", "style dotted", "tiny-canvas")
    assert uce.defaults == "tiny-canvas-style-uce" and uce.uce.erase_scale == 1.0 and uce.concept.name == "style dotted"
    assert plain("uce", "digit 3", "tiny-canvas").uce.erase_scale == 3.0  # an object: the digit preset
    rece = plain("rece", "style glowing", "tiny-canvas")  # one round, retain prompts kept 3x: the digits stay
    assert rece.defaults == "tiny-canvas-style-rece" and (rece.uce.rounds, rece.uce.preserve_scale) == (1, 3.0)
    assert plain("rece", "digit 3", "tiny-canvas").uce.rounds == 3
    esd = plain("esd", "style striped", "tiny-canvas")
    assert esd.defaults == "tiny-canvas-style-esd" and esd.esd.negative_guidance == 1.0
    assert plain("ac", "style striped", "tiny-canvas").defaults == "tiny-digit-ac"  # no canvas style preset: not
    # the canvas digit (object) one either
    siss = plain("siss", "digit 7", "tiny-canvas")  # an object: the canvas digit preset where one is shipped
    assert siss.defaults == "tiny-canvas-digit-siss" and siss.siss.retain_target == "base"
    assert siss.concept.name == "digit 7"
    ant = plain("ant", "digit 5", "tiny-canvas")  # eta 2: the other digits kept better than at the tiny eta 3
    assert ant.defaults == "tiny-canvas-digit-ant" and ant.ant.negative_guidance == 2.0
    ant = plain("ant", "style dotted", "tiny-canvas")  # a style: its own preset, reversed from the anchor
    assert ant.defaults == "tiny-canvas-style-ant"
    assert (ant.ant.guide_from, ant.ant.negative_guidance) == ("anchor", 1.0)
    receler = plain("receler", "digit 8", "tiny-canvas")
    assert receler.defaults == "tiny-canvas-digit-receler"
    assert (receler.receler.negative_guidance, receler.receler.retain_weight) == (3.0, 5.0)


def test_other_bases_a_recipe_file_or_defaults_paper_keep_the_paper_settings(tmp_path):
    paper = Recipe()
    r = plain("esd", "van gogh", "sd-1.4")
    assert r.defaults == "paper" and r.esd == paper.esd and r.train == paper.train
    f = tmp_path / "mine.yaml"
    f.write_text("method: esd\nconcept:\n  name: digit 3\n")
    r = api.load_recipe(f, [])
    assert r.defaults == "paper" and r.esd == paper.esd
    r = plain("esd", "digit 3", None, "defaults=paper")
    assert r.defaults == "paper" and r.esd == paper.esd


def test_a_named_preset_applies_under_a_file_and_overrides_win(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("method: esd\nconcept:\n  name: digit 3\ntrain:\n  steps: 7\n")
    r = api.load_recipe(f, ["defaults=tiny-digit-esd", "esd.negative_guidance=2.0"])
    assert r.defaults == "tiny-digit-esd" and r.train.steps == 7 and r.train.lr == 2e-3
    assert r.esd.negative_guidance == 2.0 and r.esd.anchor == "prompt"


def test_an_unknown_preset_names_the_shipped_ones():
    with pytest.raises(RecipeError) as e:
        plain("esd", "digit 3", None, "defaults=tiny-nope")
    assert "tiny-nope" in str(e.value) and "tiny-digit-esd" in e.value.one_line()
    assert set(preset_names()) >= {f"tiny-digit-{m}" for m in ("siss", "adaptive-siss", "ppo-alpha", "esd")}


def test_unlearn_help_says_where_defaults_come_from():
    from typer.testing import CliRunner

    from erasecli.cli import app

    out = CliRunner().invoke(app, ["unlearn", "--help"], env={"COLUMNS": "200"}).output
    assert "shipped tiny preset" in out and "paper settings" in out
