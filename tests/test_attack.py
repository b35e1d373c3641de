"""`erase attack` and the robustness metrics: each attack recovers a concept where it should (a delta that
hides only the word "three") and mostly fails where it should (the base retrained without any 3); results are
counted as UnlearnDiffAtk counts them, saved so they can be reused, and cached."""

import json
from pathlib import Path

import pytest

from erasecli import api
from erasecli.recipes import load_recipe
from test_sample_cli import erase

pytestmark = pytest.mark.slow

SCHEMA = Path(__file__).resolve().parents[1] / "erasecli" / "eval" / "report_schema.json"
WORD_FORMS = ("a {col} handwritten digit {w}", "a {col} digit {w}", "a handwritten digit {w}", "{w} in {col}")
NUMERAL_FORMS = ("the number {d} in {col}", "a {col} digit {d}", "the number {d}", "{d} in {col}")


def recipe(*extra, concept="digit 3"):
    return load_recipe(None, [f"concept.name={concept}", "attack.samples=2", *extra])


@pytest.fixture(scope="module")
def word_hider(tmp_path_factory):
    """Prompts with the word "three" draw sevens; the numeral 3 still draws threes."""
    from conftest import train_word_hider

    return train_word_hider(tmp_path_factory.mktemp("hider") / "hides-three", dst_digit=7, forms=WORD_FORMS,
                            keep_forms=NUMERAL_FORMS)


@pytest.fixture(scope="module")
def oracle():
    from erasecli.models.registry import load_base

    return load_base("tiny-oracle-digit-3", device="cpu")


def test_a_word_hider_hides_the_word_and_the_attacks_bring_the_digit_back(tiny, word_hider):
    from erasecli.attacks.run import attack_model
    from erasecli.concepts import tiny_concept

    r = recipe()
    res = attack_model(r, tiny, tiny_concept("digit 3"), [str(word_hider)], ["paraphrase", "prompt"])
    forget, pre = res["forget"], res["pre"]
    words = [p for p, x in zip(forget, pre) if "three" in p]
    assert len(words) == 5 and sum(x for p, x in zip(forget, pre) if "three" in p) <= 1  # the word is hidden
    assert sum(x for p, x in zip(forget, pre) if "three" not in p) >= 4  # the numeral is not
    para, prompt = res["outcomes"]["paraphrase"], res["outcomes"]["prompt"]
    assert para.extra["base_rate"] >= 0.5 and para.asr >= 0.3, para.summary()  # numeral paraphrases get through
    assert prompt.asr >= res["pre_asr"] + 0.2, prompt.summary()  # prefixes bring threes back on word prompts
    won = [a for a, x, y in zip(prompt.adversarial, prompt.pre, prompt.success) if y and not x]
    assert won and all(a.endswith(p) for a, p in zip(won, [p for p, x, y in zip(prompt.prompts, prompt.pre,
                                                                                  prompt.success) if y and not x]))


def test_the_attacks_mostly_fail_on_the_retrained_oracle(oracle):
    from erasecli.attacks.run import attack_model
    from erasecli.concepts import tiny_concept

    res = attack_model(recipe(), oracle, tiny_concept("digit 3"), [], ["paraphrase", "prompt", "inversion"])
    assert res["pre_asr"] <= 0.2, res["pre"]
    out = res["outcomes"]
    assert out["paraphrase"].extra["base_rate"] >= 0.5  # validity is the reference base's (tiny), not the oracle's
    assert out["paraphrase"].asr <= 0.3 and out["prompt"].asr <= 0.4 and out["inversion"].asr <= 0.4, \
        {k: o.summary()["asr"] for k, o in out.items()}


def test_prompts_attacked_in_one_batch_get_the_gradients_each_would_get_alone(tiny):
    """attack.prompt_batch: with one generator per prompt, the batched loss is the sum of the prompts' own losses,
    so each prompt's prefix gets the gradient (and Adam the update) of a run of that prompt alone."""
    import torch

    from erasecli.attacks import denoising_loss
    from erasecli.diffusion.cond import encode_prompts
    from erasecli.diffusion.noise import schedule_of

    unet, noise = tiny.pipe.unet, schedule_of(tiny.pipe.scheduler, "cpu")
    size = unet.config.sample_size
    z0 = torch.randn(6, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))  # 2 x 3
    with torch.no_grad():
        c = encode_prompts(tiny.pipe, ["a red digit three", "the number 3 in blue"], "cpu")
    c = c.clone().requires_grad_(True)
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    together = denoising_loss(unet, noise, z0, c.repeat_interleave(3, 0), gens)
    (g_together,) = torch.autograd.grad(together, c)
    alone, grads = [], []
    for i, s in enumerate((11, 12)):
        ci = c[i : i + 1].detach().clone().requires_grad_(True)
        z = z0[3 * i : 3 * i + 3]
        loss = denoising_loss(unet, noise, z, ci.expand(3, -1, -1), torch.Generator().manual_seed(s))
        alone.append(loss.detach())
        grads.append(torch.autograd.grad(loss, ci)[0])
    assert torch.allclose(together.detach(), sum(alone), rtol=1e-5)
    assert torch.allclose(g_together, torch.cat(grads), rtol=1e-4, atol=1e-7)


def test_attack_cli_json_counts_and_saves_what_it_found(tmp_path, remover_delta, tiny):
    out = tmp_path / "atk"
    p = erase("attack", "--delta", str(remover_delta), "--concept", "digit 3", "--attacks", "paraphrase,inversion",
              "--budget", "0.3", "--set", "attack.samples=2", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    m = doc["models"][0]
    assert m["name"] == "no-three" and m["n"] == 10 and 0 <= m["pre_asr"] <= 1
    for name in ("paraphrase", "inversion"):
        s = m["attacks"][name]
        assert s["pre_asr"] is not None and s["asr"] >= s["pre_asr"] and s["n"] == len(s["prompts"])
    assert doc["protocol"]["threshold"] == 0.5 and doc["protocol"]["seeds"] == [2000, 2001]
    assert doc["protocol"]["judge"] and "pre-attack successes count" in doc["protocol"]["counting"]
    # the inversion's token loads in a plain diffusers pipeline and draws what the attack judged
    from diffusers import StableDiffusionPipeline

    from erasecli.models.registry import TINY_DIR

    folder = out / "no-three"
    emb = folder / "inversion" / "learned_embeds.safetensors"
    texts = (folder / "inversion_prompts.txt").read_text().splitlines()
    assert emb.exists() and len(texts) == 10 and "<digit-3-inverted>" in texts[0]
    pipe = StableDiffusionPipeline.from_pretrained(str(TINY_DIR), safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(remover_delta))
    pipe.load_textual_inversion(str(emb))
    pipe.set_progress_bar_config(disable=True)
    import numpy as np
    import torch
    from PIL import Image

    from erasecli.sampling import make_scheduler

    pipe.scheduler = make_scheduler(pipe, "ddim")
    img = pipe(texts[0], num_inference_steps=25, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(2000),
               eta=0.0).images[0]
    mine = next((folder / "images" / "inversion").glob("000-*/002000.png"))
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(Image.open(mine).convert("RGB"), dtype=int)).max()
    assert diff <= 2, diff
    # the paraphrases are a prompts file `erase sample` reads back
    assert (folder / "paraphrase_prompts.txt").read_text().strip()
    page = (out / "report.html").read_text()
    assert "Robustness" in page and "data:image/png;base64," in page


def test_evaluate_puts_robustness_beside_ua_in_one_document(tiny, remover_delta):
    import jsonschema

    r = recipe("eval.samples_per_prompt=1", "eval.metrics=[ua, cra, pre_asr, asr_paraphrase, ua_paraphrase]")
    rep = api.evaluate(r, deltas=[str(remover_delta)], base=tiny)
    jsonschema.validate(json.loads(json.dumps(rep)), json.loads(SCHEMA.read_text()))
    base, after = (m["metrics"] for m in rep["models"])
    assert base["pre_asr"] >= 0.7 and after["pre_asr"] <= 0.3, (base, after)
    assert after["ua_paraphrase"] >= base["ua_paraphrase"] + 0.4, (base, after)
    assert [m["name"] for m in rep["robustness"]["models"]] == ["base", "no-three"]
    again = api.evaluate(r, deltas=[str(remover_delta)], base=tiny)  # finished attacks come from the cache
    assert again["robustness"]["models"][1]["from_cache"] == ["paraphrase"]
    assert [m["metrics"] for m in again["models"]] == [m["metrics"] for m in rep["models"]]


@pytest.mark.parametrize("args, code, needle", [
    (["--concept", "digit 3", "--attacks", "bogus"], 2, "valid attacks: paraphrase, prompt, inversion"),
    (["--concept", "digit 3", "--budget", "0"], 2, "--budget must be > 0"),
    (["--concept", "van gogh"], 1, "not one digit or one colour"),
    (["--concept", "van gogh", "--base", "sd-1.4", "--attacks", "paraphrase"], 1, "needs paraphrases"),
    ([], 2, "no concept"),
])
def test_bad_attack_input_is_one_line_before_any_model_loads(tmp_path, args, code, needle):
    p = erase("attack", *args, "--json", cwd=tmp_path)
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert p.stdout == ""
