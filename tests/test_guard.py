"""Guards (sld, Safe Latent Diffusion): a sampling-time erasure that changes no weight. Checked against diffusers'
own StableDiffusionPipelineSafe (the paper's reference implementation), against the guarded prediction computed
here by hand, and through the commands a user runs (`erase unlearn --method sld`, `--guard` on sample,
evaluate and attack)."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from erasecli.diffusion import guard as G
from erasecli.diffusion.cond import encode_prompts

SAFETY = "a handwritten digit three"


def _settings(preset="medium", **over):
    p = {**G.PRESETS[preset], **over}
    return G.SldSettings(p["guidance_scale"], p["warmup_steps"] / G.PAPER_STEPS, p["threshold"],
                         p["momentum_scale"], p["mom_beta"])


@contextmanager
def guarded(base, settings, text=SAFETY):
    with torch.no_grad():
        c = encode_prompts(base.pipe, [text, ""], base.device)
    G.install(base.pipe.unet, G.SafetyGuard(c[:1], c[1:], settings))
    try:
        yield
    finally:
        G.remove(base.pipe.unet)


def _pixels(images):
    return np.stack([np.asarray(im, dtype=np.float32) for im in images])


@pytest.mark.filterwarnings("ignore:The decode_latents method is deprecated:FutureWarning")
def test_guarded_sampling_is_diffusers_safe_pipeline(tiny):
    """The guard on the plain pipeline reproduces StableDiffusionPipelineSafe (momentum, warm-up, threshold) to
    one uint8 level, and it changes the images."""
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    from erasecli.sampling import generate

    prompts, seeds, steps = ["a red handwritten digit three", "a blue digit 7"], [0, 1], 10
    st = _settings("medium")
    plain = generate(tiny, prompts, seeds, steps=steps, guidance=5.0)
    with guarded(tiny, st):
        ours = generate(tiny, prompts, seeds, steps=steps, guidance=5.0)
    assert G.guard_of(tiny.pipe.unet) is None and "forward" not in tiny.pipe.unet.__dict__
    p = tiny.pipe
    safe = StableDiffusionPipelineSafe(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                       scheduler=p.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = SAFETY
    ref = safe(prompt=prompts, num_inference_steps=steps, guidance_scale=5.0, output_type="np",
               generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
               sld_warmup_steps=st.warmup_steps(steps), sld_guidance_scale=st.guidance_scale,
               sld_threshold=st.threshold, sld_momentum_scale=st.momentum_scale, sld_mom_beta=st.mom_beta).images
    assert np.abs(_pixels(ours) - (ref * 255).round()).max() <= 1.0
    assert np.abs(_pixels(ours) - _pixels(plain)).mean() > 1.0


def test_point_mode_is_the_guarded_conditional_prediction_by_hand(tiny):
    """Outside a sampling run (the attacks' loss) the UNet returns p - mu (S - u) where the timestep is past the
    warm-up share and p before it, with gradients to the condition."""
    unet = tiny.pipe.unet
    st = _settings("strong", warmup_steps=10)  # warm-up share 0.2: t >= 800 is left alone
    g = torch.Generator("cpu").manual_seed(3)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([900, 300])
    with torch.no_grad():
        c_all = encode_prompts(tiny.pipe, ["a red handwritten digit three", SAFETY, ""], tiny.device)
        c, s_c, u_c = c_all[:1].repeat(2, 1, 1), c_all[1:2].repeat(2, 1, 1), c_all[2:].repeat(2, 1, 1)
        p, s, u = (unet(x, t, encoder_hidden_states=e).sample for e in (c, s_c, u_c))
    diff = p - s
    mu = torch.clamp(diff.abs() * st.guidance_scale, max=1.0) * (diff < st.threshold)
    want = p.clone()
    want[1] = p[1] - mu[1] * (s[1] - u[1])
    c = c.clone().requires_grad_(True)
    with guarded(tiny, st):
        got = unet(x, t, encoder_hidden_states=c).sample
        got.pow(2).sum().backward()
    assert torch.allclose(got.detach(), want, atol=1e-5)
    assert not torch.allclose(want[1], p[1], atol=1e-3)  # the guard did something on the guided row
    assert c.grad is not None and c.grad.abs().sum() > 0


def test_unlearn_sld_writes_a_guard_that_sample_applies_and_delta_flags_refuse(tiny, tmp_path):
    from erasecli import api
    from erasecli.delta import LORA_FILE, read_delta_info
    from erasecli.errors import DeltaError, UsageError
    from erasecli.export import check_export

    r = api.load_recipe(None, [], method="sld", concept={"name": "digit 3"})
    assert r.defaults == "tiny-digit-sld" and r.sld.preset == "strong"
    out = tmp_path / "g"
    result = api.unlearn(r, out=out, base=tiny)
    assert (out / "guard.safetensors").exists() and not (out / LORA_FILE).exists()
    info = read_delta_info(out)
    assert info.kind == "guard" and info.method == "sld" and info.base == "tiny"
    assert info.guard["concept_text"] == SAFETY and info.guard["warmup"] == 0.2
    assert result["delta"]["kind"] == "guard"
    rs = api.load_recipe(None, [])
    prompts = ["a green handwritten digit three"]
    with_guard = api.sample(rs, prompts=prompts, n=2, guards=[str(out)], base=tiny)
    assert G.guard_of(tiny.pipe.unet) is None  # taken off again
    with guarded(tiny, _settings("strong", warmup_steps=10)):
        from erasecli.sampling import generate_with

        by_hand = generate_with(tiny, prompts * 2, [0, 1], rs.sample)
    plain = api.sample(rs, prompts=prompts, n=2, base=tiny)
    assert np.array_equal(_pixels([x.image for x in with_guard]), _pixels(by_hand))
    assert not np.array_equal(_pixels([x.image for x in with_guard]), _pixels([x.image for x in plain]))
    with pytest.raises(DeltaError, match="guard") as e:
        api.check_sample(rs, prompts=prompts, n=1, deltas=[str(out)])
    assert "--guard" in e.value.one_line()
    with pytest.raises(UsageError, match="nothing to export"):
        check_export(str(out), "kohya", tmp_path / "k", False)
    with pytest.raises(UsageError, match="one"):
        api.check_sample(rs, prompts=prompts, n=1, guards=[str(out), str(out)])
