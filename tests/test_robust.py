"""Robust erasure (`robust` section) and the text-encoder LoRA (`lora.text_encoder`): the inner attack finds
what brings the concept back, the forget term trains on it, the delta loads in plain diffusers and exports,
an interrupted robust run resumes to the same delta, and what cannot be done says so."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from erasecli import api
from erasecli.methods.loop import checkpoint_dir_for
from test_sample_cli import erase, one_line_error

SHORT = ("train.steps=12", "robust.enabled=true", "robust.warmup=2", "robust.every=4", "robust.attack_steps=3")


def recipe(method="siss", *sets):
    return api.load_recipe(None, list(sets), method=method, concept={"name": "digit 3"})


def _image(pipe, prompt="a red handwritten digit three"):
    g = torch.Generator("cpu").manual_seed(7)
    return pipe(prompt, num_inference_steps=5, generator=g, output_type="np").images[0]


def _tensors(folder):
    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


@pytest.fixture(scope="module")
def te_delta(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("robust") / "te"
    api.unlearn(recipe("siss", *SHORT, "lora.text_encoder=true"), out=out, base=tiny)
    return out


def test_robust_text_encoder_delta_loads_in_plain_diffusers_and_exports(te_delta, tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    from erasecli.models.registry import TINY_DIR

    sd = _tensors(te_delta)
    assert any(k.startswith("unet.") for k in sd) and any(k.startswith("text_encoder.") for k in sd)
    summary = json.loads((te_delta / "train_summary.json").read_text())
    assert summary["robust"]["refreshes"] == 3 and summary["robust"]["text_encoder_lora"]  # steps 3, 7, 11
    assert not any("lora_" in n for n, _ in tiny.pipe.text_encoder.named_parameters())  # the base went back clean

    pipe = StableDiffusionPipeline.from_pretrained(TINY_DIR, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    base_img = _image(pipe)
    pipe.load_lora_weights(str(te_delta))  # no erasecli code
    want = _image(pipe)
    assert np.abs(want - base_img).max() > 0.01
    pipe.unload_lora_weights()

    from erasecli.delta import apply_deltas  # erase sample's path gives the same image
    from erasecli.models.registry import load_base

    mine = load_base("tiny", device="cpu")
    apply_deltas(mine, [te_delta])
    mine.pipe.set_progress_bar_config(disable=True)
    assert np.abs(_image(mine.pipe) - want).max() < 1e-5

    p = erase("export", "--delta", str(te_delta), "--format", "kohya", "--out", str(tmp_path / "k"), "--json")
    assert p.returncode == 0, p.stderr
    kohya = load_file(json.loads(p.stdout)["file"])
    te_keys = [k for k in kohya if k.startswith("lora_te_")]
    assert te_keys and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te_keys)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in kohya
    pipe.load_lora_weights(json.loads(p.stdout)["file"])  # diffusers' own kohya conversion reads it back
    assert np.abs(_image(pipe) - want).max() < 1e-5


def test_inner_attack_finds_a_token_that_brings_the_concept_back(tiny):
    """On the base, the inversion-style soft token learned by the inner attack must fit the base's threes better
    (lower denoising loss on the same fixed draws) than the word it starts from."""
    from erasecli.attacks import denoising_loss
    from erasecli.data import build_train_data
    from erasecli.diffusion.noise import schedule_of
    from erasecli.methods import Context
    from erasecli.methods.adapter import Adapter
    from erasecli.methods.robust import Adversary, Conditions

    r = recipe("siss", "robust.enabled=true", "robust.warmup=0", "robust.attack_steps=40", "robust.attack_lr=0.02")
    data = build_train_data(r, tiny)
    ctx = Context(recipe=r, base=tiny, unet=tiny.pipe.unet, adapter=Adapter(tiny, {"unet": tiny.pipe.unet}, []), data=data,
                  gen=torch.Generator("cpu").manual_seed(0), noise=schedule_of(tiny.pipe.scheduler), device=tiny.device)
    cond = Conditions(tiny, data.prompts)
    try:
        adv = Adversary(ctx, cond)
        plain_c = data.forget_c.clone()

        def fixed_loss():
            g = torch.Generator("cpu").manual_seed(123)
            rows = torch.arange(len(plain_c))
            c = adv.rows_adv[adv.row_prompt[rows]]
            with torch.no_grad():
                emb = cond.encode_ids(cond.ids[c], cond.S[c], cond.P)
                return sum(denoising_loss(ctx.unet, ctx.noise, data.forget[rows], emb, g).item()
                           for _ in range(4))

        before = fixed_loss()
        assert torch.equal(cond.encode(plain_c[:5]), data.embeds[plain_c[:5]])  # plain rows: the cached states
        row = adv.before_step(0)
        after = fixed_loss()
        assert after < before, (before, after)
        assert set(row) == {"adv_loss_start", "adv_loss_end"}
        on_adv = data.forget_c >= len(data.prompts)
        assert 0.3 < on_adv.float().mean() < 0.7  # robust.mix 0.5 of the forget images now use it
        assert torch.equal(data.forget_c[~on_adv], plain_c[~on_adv])
        assert torch.allclose(data.embeds[data.forget_c[on_adv][:3]],
                              cond.encode_ids(cond.ids[data.forget_c[on_adv][:3]],
                                              cond.S[data.forget_c[on_adv][:3]], cond.P), atol=1e-6)
    finally:
        cond.close()


@pytest.mark.slow
@pytest.mark.parametrize("method,sets", [("esd", ("sample.steps=10",)),  # esd samples its x_t in 10 steps
                                         ("siss", ("robust.attack=prefix", "robust.tokens=2", "lora.text_encoder=true"))])
def test_interrupted_robust_run_resumes_to_the_same_delta(method, sets, tiny, tmp_path):
    r = recipe(method, *SHORT, "train.checkpoint_every=3", *sets)
    api.unlearn(r, out=tmp_path / "straight", base=tiny)

    def interrupt_at_5(k, total, row):
        if k == 5:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "interrupted"
    with pytest.raises(Exception) as err:
        api.unlearn(r, out=out, base=tiny, progress=interrupt_at_5)
    assert type(err.value).__name__ == "Interrupted"
    api.unlearn(None, out=None, resume=checkpoint_dir_for(out), base=tiny)
    a, b = _tensors(tmp_path / "straight"), _tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args,needle", [
    (["--method", "mace", "--set", "robust.enabled=true"], "robust.enabled is not supported by mace"),
    (["--method", "uce", "--set", "lora.text_encoder=true"], "lora.text_encoder is not supported by uce"),
    (["--method", "siss", "--set", "robust.attack=pgd"], "robust.attack"),
    (["--method", "siss", "--set", "robust.mix=0"], "robust.mix"),
])
def test_what_robust_training_cannot_do_fails_in_one_line(args, needle, tmp_path):
    p = erase("unlearn", "--concept", "digit 3", *args, "--out", str(tmp_path / "x"))
    assert needle in one_line_error(p, 1)  # a recipe error
    assert not (tmp_path / "x").exists()
