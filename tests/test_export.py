"""`erase export`: the kohya file's layout and round trip, and the merged pipeline giving the same image."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_sample_cli import erase, one_line_error


def _image(pipe, prompt="a red handwritten digit three", seed=7):
    with torch.inference_mode():
        out = pipe(prompt=prompt, num_inference_steps=10, guidance_scale=5.0,
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


@pytest.fixture(scope="module")
def plain():
    from diffusers import StableDiffusionPipeline

    from erasecli.models.registry import TINY_DIR

    pipe = StableDiffusionPipeline.from_pretrained(TINY_DIR, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_kohya_export_has_the_webui_layout_and_loads_back_to_the_same_delta(remover_delta, plain, tmp_path):
    p = erase("export", "--delta", str(remover_delta), "--format", "kohya", "--out", str(tmp_path / "k"), "--json")
    assert p.returncode == 0, p.stderr
    file = json.loads(p.stdout)["file"]
    sd = load_file(file)
    assert sd and all(k.startswith("lora_unet_") for k in sd)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in sd)
    modules = {k.split(".")[0] for k in sd}
    assert all(f"{m}.alpha" in sd and f"{m}.lora_down.weight" in sd and f"{m}.lora_up.weight" in sd for m in modules)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    assert float(sd[next(iter(sorted(k for k in sd if k.endswith(".alpha"))))]) == 4.0  # the delta's alpha

    plain.load_lora_weights(str(remover_delta))
    want = _image(plain)
    plain.unload_lora_weights()
    plain.load_lora_weights(file)  # diffusers converts kohya keys back
    got = _image(plain)
    plain.unload_lora_weights()
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.slow
def test_merged_export_loads_with_from_pretrained_and_draws_base_plus_delta(remover_delta, plain, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "merged"
    p = erase("export", "--delta", str(remover_delta), "--format", "merged", "--out", str(out))
    assert p.returncode == 0, p.stderr
    merged = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    merged.set_progress_bar_config(disable=True)
    assert not any("lora" in k for k in merged.unet.state_dict())
    plain.load_lora_weights(str(remover_delta))
    want = _image(plain)
    plain.unload_lora_weights()
    got = _image(merged)
    assert np.abs(got - want).max() < 2e-3  # fused weights differ from W + BA only by float rounding
    assert np.abs(got - _image(plain)).max() > 0.05  # and the delta did change the image


@pytest.mark.parametrize("args,needle,code", [
    (["--format", "ckpt"], "unknown export format 'ckpt' (valid formats: kohya, merged)", 2),
    ([], "no delta to export", 2),
])
def test_bad_export_input_is_one_line(args, needle, code, tmp_path, remover_delta):
    full = ["export", "--out", str(tmp_path / "x"), *args]
    if args:
        full += ["--delta", str(remover_delta)]
    assert needle in one_line_error(erase(*full), code)
    assert not (tmp_path / "x").exists()
