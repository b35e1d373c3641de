"""Bases: names resolve without loading; missing weights give one line that says how to get them."""

import pytest
import torch

from erasecli.errors import BaseNotFoundError
from erasecli.models.registry import BASES, TINY_DIR, load_base, pick_device, pick_dtype, resolve_base


def test_registry_names_resolve():
    assert resolve_base("tiny").kind == "bundled"
    assert resolve_base("sd-1.4").location == "CompVis/stable-diffusion-v1-4"
    assert {"tiny", "sd-1.4", "sd-1.5", "sd-2.1-base"} <= set(BASES)
    assert resolve_base("someorg/some-model").kind == "hub"
    local = resolve_base(str(TINY_DIR))
    assert local.kind == "local" and local.location == str(TINY_DIR)


def test_unknown_base_lists_valid_names(tmp_path):
    with pytest.raises(BaseNotFoundError) as e:
        resolve_base("sd-9")
    assert "tiny, sd-1.4" in e.value.one_line()
    with pytest.raises(BaseNotFoundError, match="model_index.json"):
        resolve_base(str(tmp_path))


def test_missing_hub_weights_say_which_model_and_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseNotFoundError) as e:
        load_base("sd-1.4", device="cpu")
    line = e.value.one_line()
    assert "CompVis/stable-diffusion-v1-4" in line and "hf download" in line and "\n" not in line


def test_device_and_dtype_selection_on_a_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    dev = pick_device(None)
    assert dev.type in ("cpu", "mps")
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(torch.device("cuda"), "bf16") == torch.bfloat16


def test_tiny_base_loads_in_a_plain_diffusers_pipeline():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(TINY_DIR))  # no dtype: what a user types first
    assert {pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.float32}
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    # SD's own tokenizer ids (the real CLIP BPE vocabulary), with a short context
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 16
    img = pipe("a blue digit", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (32, 32)
