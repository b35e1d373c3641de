"""Deltas: a plain diffusers pipeline loads them and draws what `erase sample --delta` draws."""

import json

import numpy as np
import pytest
import torch

from erasecli import api
from erasecli.delta import LORA_FILE, add_lora, apply_deltas, check_fits, read_delta_info, save_lora_delta
from erasecli.errors import DeltaError, OutputExistsError
from erasecli.models.registry import TINY_DIR, load_base
from erasecli.recipes import Recipe, recipe_to_dict

PROMPT = "a red handwritten digit three"


@pytest.fixture(scope="module")
def delta_dir(tmp_path_factory):
    """A LoRA delta with lora_B perturbed (peft starts it at zero) and alpha != rank, saved by erasecli."""
    base = load_base("tiny", device="cpu")
    add_lora(base.pipe.unet, rank=4, alpha=8.0, target_modules=("to_q", "to_k", "to_v", "to_out.0"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in base.pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("deltas") / "d"
    save_lora_delta(base.pipe.unet, out, base=base, method="test", concept="digit 3",
                    recipe=recipe_to_dict(Recipe()), metrics={"note": 1.0})
    return out


def _arr(img):
    return np.asarray(img, dtype=np.int16)


def test_plain_diffusers_pipeline_reproduces_erase_sample(delta_dir):
    from diffusers import StableDiffusionPipeline

    r = Recipe()
    ours = api.sample(r, prompts=[PROMPT], n=2, deltas=[str(delta_dir)])
    without = api.sample(r, prompts=[PROMPT], n=2)

    pipe = StableDiffusionPipeline.from_pretrained(str(TINY_DIR), dtype=torch.float32, safety_checker=None)
    pipe.load_lora_weights(str(delta_dir))
    for i, rec in enumerate(ours):
        plain = pipe(PROMPT, num_inference_steps=r.sample.steps, guidance_scale=r.sample.guidance,
                     generator=torch.Generator().manual_seed(r.sample.seed + i)).images[0]
        assert np.abs(_arr(plain) - _arr(rec.image)).max() <= 1, "plain diffusers + load_lora_weights differs"
        # ...and the delta really changes what the base draws
        assert np.abs(_arr(without[i].image) - _arr(rec.image)).mean() > 2.0


def test_delta_header_carries_metadata(delta_dir):
    from safetensors import safe_open

    info = read_delta_info(delta_dir)
    assert (info.base, info.method, info.concept) == ("tiny", "test", "digit 3")
    assert info.recipe["base"] == "tiny" and info.metrics == {"note": 1.0}
    assert info.version and info.created and info.base_arch
    with safe_open(str(delta_dir / LORA_FILE), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == 8.0
    assert keys and all(k.startswith("unet.") and "lora" in k for k in keys)
    assert (delta_dir / "recipe.yaml").exists() and (delta_dir / "delta.json").exists()


def test_delta_for_another_base_is_refused_unless_forced(delta_dir, tiny):
    info = read_delta_info(delta_dir)
    other = type(info)(**{**info.__dict__, "base": "sd-1.4"})
    with pytest.raises(DeltaError) as e:
        check_fits(other, tiny)
    assert "made for base 'sd-1.4'" in e.value.one_line() and "--force" in e.value.one_line()
    check_fits(other, tiny, force=True)
    wrong_shape = type(info)(**{**info.__dict__, "base_arch": "000000000000"})
    with pytest.raises(DeltaError, match="architecture"):
        check_fits(wrong_shape, tiny)


def test_existing_output_is_not_overwritten(delta_dir, tmp_path):
    base = load_base("tiny", device="cpu")
    apply_deltas(base, [delta_dir])  # gives the UNet a peft adapter to save
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        save_lora_delta(base.pipe.unet, out, base=base, method="m", concept="c", recipe={})
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["exists"], "a temp folder was left behind"


def test_missing_and_corrupt_deltas_give_clear_errors(tmp_path):
    with pytest.raises(DeltaError, match="does not exist"):
        read_delta_info(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeltaError, match="has no pytorch_lora_weights"):
        read_delta_info(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / LORA_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(DeltaError, match="not a readable safetensors"):
        read_delta_info(bad)
