"""tiny-xl, the bundled SDXL base: a plain StableDiffusionXLPipeline loads it; erasecli's SDXL conditioning
(pooled embedding + time ids) is what the pipeline passes; a delta trained on it is one SDXL tools load and
that draws the same image in a plain pipeline, through the kohya export and fused into a merged folder."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_sample_cli import erase, one_line_error

PROMPT = "a red handwritten digit three"


def _plain():
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from erasecli.models.registry import TINY_XL_DIR

    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_XL_DIR)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # erasecli samples with DDIM by default
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, seed=7):
    with torch.inference_mode():
        out = pipe(prompt=PROMPT, num_inference_steps=10, guidance_scale=5.0,
                   generator=[torch.Generator("cpu").manual_seed(seed)], output_type="np")
    return out.images[0]


def test_tiny_xl_is_a_plain_sdxl_pipeline_sharing_the_tiny_base_files():
    from erasecli.models.registry import TINY_DIR, TINY_XL_DIR, load_base

    index = json.loads((TINY_XL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for shared in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                   "tokenizer/vocab.json"):  # byte copies: git stores them once
        assert (TINY_XL_DIR / shared).read_bytes() == (TINY_DIR / shared).read_bytes()
    base = load_base("tiny-xl", device="cpu")
    assert base.kind.name == "sdxl" and base.kind.added_conditioning and base.resolution == 32
    assert base.pipe.unet.config.addition_embed_type == "text_time"


def test_conditioning_is_what_the_sdxl_pipeline_passes_its_unet():
    """encode_prompts + unet_eps give the UNet exactly the pipeline's prompt_embeds, pooled embeds, time ids."""
    from erasecli.diffusion.cond import encode_prompts, unet_eps
    from erasecli.models.registry import load_base

    pipe = load_base("tiny-xl", device="cpu").pipe
    c = encode_prompts(pipe, ["", PROMPT], "cpu")  # (2, L + 1, D)
    states, _, pooled, _ = pipe.encode_prompt(prompt=["", PROMPT], device="cpu", do_classifier_free_guidance=False)
    ids = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=torch.float32,
                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 20])
    with torch.no_grad():
        want = pipe.unet(x, t, encoder_hidden_states=states,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ids.repeat(2, 1)}).sample
        got = unet_eps(pipe.unet, x, t, c)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.fixture(scope="module")
def xl_delta(tmp_path_factory):
    out = tmp_path_factory.mktemp("xl") / "siss"
    p = erase("unlearn", "--base", "tiny-xl", "--concept", "digit 3", "--out", str(out), "--set", "train.steps=8",
              "--set", "lora.text_encoder=true",  # an adapter on each of SDXL's two text encoders too
              "--set", "robust.enabled=true", "--set", "robust.warmup=2", "--set", "robust.every=4",
              "--set", "robust.attack_steps=2",  # robust training's inner attack through both encoders
              "--set", "data.images_per_prompt=1", "--set", "data.retain_images_per_prompt=1")
    assert p.returncode == 0, p.stderr
    return out


@pytest.mark.slow
def test_sdxl_delta_round_trips_through_plain_diffusers_kohya_and_merged(xl_delta, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    assert json.loads((xl_delta / "train_summary.json").read_text())["robust"]["refreshes"] == 2  # steps 3, 7
    sd = load_file(str(xl_delta / "pytorch_lora_weights.safetensors"))
    assert {k.split(".")[0] for k in sd} == {"unet", "text_encoder", "text_encoder_2"}  # SDXL's diffusers keys
    p = erase("sample", "--base", "tiny-xl", "--delta", str(xl_delta), "--prompt", PROMPT, "-n", "1", "--seed", "7",
              "--steps", "10", "--guidance", "5", "--out", str(tmp_path / "s"))
    assert p.returncode == 0, p.stderr
    from PIL import Image

    ours = np.asarray(Image.open(next((tmp_path / "s").glob("000-*/*.png"))))

    pipe = _plain()
    base_img = _image(pipe)
    pipe.load_lora_weights(str(xl_delta))
    want = _image(pipe)
    assert np.abs(np.round(want * 255) - ours).max() <= 1  # erase sample --delta == plain SDXL + load_lora_weights
    assert np.abs(want - base_img).max() > 0.01  # and the delta changes the image
    pipe.unload_lora_weights()

    k = erase("export", "--delta", str(xl_delta), "--format", "kohya", "--out", str(tmp_path / "k"), "--json")
    assert k.returncode == 0, k.stderr
    file = json.loads(k.stdout)["file"]
    keys = load_file(file)
    assert {key.split("_")[1] for key in keys} == {"unet", "te1", "te2"}  # lora_unet_, lora_te1_, lora_te2_
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    # kohya's SDXL layout: the original (SGM) block names
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert "lora_unet_output_blocks_3_1_transformer_blocks_0_attn1_to_q.alpha" in keys
    assert not any("down_blocks" in key or "up_blocks" in key for key in keys)
    alpha = json.loads((xl_delta / "delta.json").read_text())["recipe"]["lora"]["alpha"]
    assert float(keys["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha"]) == alpha  # the delta's scale
    pipe.load_lora_weights(file)  # diffusers' own kohya conversion reads it back
    assert np.abs(_image(pipe) - want).max() < 1e-5
    pipe.unload_lora_weights()

    m = erase("export", "--delta", str(xl_delta), "--format", "merged", "--out", str(tmp_path / "m"))
    assert m.returncode == 0, m.stderr
    merged = StableDiffusionXLPipeline.from_pretrained(tmp_path / "m")
    from diffusers import DDIMScheduler

    merged.scheduler = DDIMScheduler.from_config(merged.scheduler.config)
    merged.set_progress_bar_config(disable=True)
    assert np.abs(_image(merged) - want).max() < 2 / 255  # fused weights: float rounding only


def test_sgm_names_match_diffusers_own_mapping_back():
    """Every attention projection of tiny-xl's layout (1 layer per block) and of SDXL's (2) maps to the SGM name
    whose block prefix diffusers' kohya loader turns back into the same module."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    from erasecli.export import sgm_name
    from erasecli.models.registry import TINY_XL_DIR

    for lpb in (1, 2):
        cfg = dict(UNet2DConditionModel.load_config(TINY_XL_DIR, subfolder="unet")) | {"layers_per_block": lpb}
        unet = UNet2DConditionModel.from_config(cfg)
        att = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and ".attn" in n]
        assert any(n.startswith("mid_block") for n in att) and any(n.startswith("up_blocks") for n in att)
        kohya = [("lora_unet_" + sgm_name(n, lpb)).replace(".", "_") + ".lora_down.weight" for n in att]
        assert not any("down_blocks" in k or "up_blocks" in k for k in kohya)
        back = _maybe_map_sgm_blocks_to_diffusers({k: 0 for k in kohya}, unet.config)
        renames = {"input_blocks": "down_blocks", "middle_block": "mid_block", "output_blocks": "up_blocks"}
        back = [next((k.replace(a, b) for a, b in renames.items() if a in k), k) for k in back]  # as its loader does
        assert sorted(back) == sorted(("lora_unet_" + n).replace(".", "_") + ".lora_down.weight" for n in att)


def test_uce_on_sdxl_edits_the_pooled_path_and_plain_diffusers_and_kohya_load_it(tmp_path):
    """uce.pooled: the layer that reads SDXL's pooled embedding (add_embedding.linear_1) gets the same closed form on
    pooled embeddings, in its pooled columns only; plain diffusers fuses exactly that, the kohya export names it
    label_emb.0.0 and diffusers reads it back; uce.pooled=false leaves the layer out of the delta."""
    from diffusers import StableDiffusionXLPipeline

    from erasecli import api
    from erasecli.concepts import concept_for
    from erasecli.methods.uce import _pooled, edited_modules, guides_of, shared_map
    from erasecli.models.registry import TINY_XL_DIR, load_base

    xl = load_base("tiny-xl", device="cpu")
    r = api.load_recipe(None, ["uce.lam=0.7"], method="uce", concept={"name": "digit 3"}, base="tiny-xl")
    res = api.unlearn(r, out=tmp_path / "on", base=xl)
    pooled = res["summary"]["pooled"]
    assert pooled["module"] == "add_embedding.linear_1" and pooled["erased"] == 17  # every forget prompt
    assert pooled["residual"] < 0.3  # the concept's pooled output now mostly its guide's
    concept = concept_for(r, "digits")
    C, G = _pooled(xl, concept.forget), _pooled(xl, guides_of(r.uce, concept))
    C_p = _pooled(xl, [p for p in concept.retain if p not in set(concept.forget)])
    P = shared_map(C, G, C_p, 0.7, r.uce.erase_scale, r.uce.preserve_scale)
    W0 = xl.pipe.unet.add_embedding.linear_1.weight.detach().double()
    dp = C.shape[1]
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_XL_DIR)
    pipe.load_lora_weights(str(tmp_path / "on"))
    pipe.fuse_lora()
    W = pipe.unet.add_embedding.linear_1.weight.detach().double()
    want = W0[:, :dp] + W0[:, :dp] @ P
    assert (W[:, :dp] - want).abs().max() <= 1e-5 * want.abs().max()
    assert torch.equal(W[:, dp:], W0[:, dp:])  # the time ids' columns are untouched
    fused = dict(pipe.unet.named_modules())
    for n, m in edited_modules(xl.pipe.unet, ("to_k", "to_v")).items():  # and the projections' edit loaded too
        assert not torch.equal(fused[n].weight, m.weight), n

    k = erase("export", "--delta", str(tmp_path / "on"), "--format", "kohya", "--out", str(tmp_path / "k"), "--json")
    assert k.returncode == 0, k.stderr
    file = json.loads(k.stdout)["file"]
    assert "lora_unet_label_emb_0_0.lora_up.weight" in load_file(file)  # SGM's name of add_embedding.linear_1
    again = StableDiffusionXLPipeline.from_pretrained(TINY_XL_DIR)
    again.load_lora_weights(file)
    again.fuse_lora()
    assert (again.unet.add_embedding.linear_1.weight.detach().double() - W).abs().max() <= 1e-5 * W.abs().max()

    off = api.load_recipe(None, ["uce.pooled=false"], method="uce", concept={"name": "digit 3"}, base="tiny-xl")
    res = api.unlearn(off, out=tmp_path / "off", base=xl)
    assert "pooled" not in res["summary"]
    assert not any("add_embedding" in key for key in load_file(str(tmp_path / "off" / "pytorch_lora_weights.safetensors")))


def test_robust_inner_attack_on_sdxl_drives_both_text_encoders():
    """The inner attack's soft tokens are one row per token split across SDXL's two encoders; its steps lower the
    denoising loss of the base's threes on both encoders' shares, and the step's forget images then use them."""
    from conftest import check_inner_attack_drives_both_encoders

    from erasecli import api
    from erasecli.data import build_train_data
    from erasecli.diffusion.noise import schedule_of
    from erasecli.methods import Context
    from erasecli.methods.adapter import Adapter
    from erasecli.methods.robust import Adversary, Conditions
    from erasecli.models.registry import load_base

    xl = load_base("tiny-xl", device="cpu")
    r = api.load_recipe(None, ["robust.enabled=true", "robust.attack=prefix", "robust.tokens=2", "robust.warmup=0",
                               "robust.attack_steps=30", "robust.attack_lr=0.02", "data.images_per_prompt=2",
                               "data.retain_images_per_prompt=1"], method="siss", concept={"name": "digit 3"},
                        base="tiny-xl")
    data = build_train_data(r, xl)
    ctx = Context(recipe=r, base=xl, unet=xl.pipe.unet, adapter=Adapter(xl, {"unet": xl.pipe.unet}, []), data=data,
                  gen=torch.Generator("cpu").manual_seed(0), noise=schedule_of(xl.pipe.scheduler), device=xl.device)
    cond = Conditions(xl, data.prompts)
    try:
        adv = Adversary(ctx, cond)
        assert cond.widths == [xl.pipe.text_encoder.config.hidden_size, xl.pipe.text_encoder_2.config.hidden_size]
        check_inner_attack_drives_both_encoders(ctx, cond, adv, data)
    finally:
        cond.close()


def test_sdxl_hub_base_offline_and_an_unknown_pipeline_class_are_one_line_errors(tmp_path):
    line = one_line_error(erase("sample", "--base", "sdxl-1.0", "--prompt", "x", "--out", str(tmp_path / "s")), 1)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in line and "hf download" in line
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    line = one_line_error(erase("sample", "--base", str(folder), "--prompt", "x", "--out", str(tmp_path / "f")), 1)
    assert "StableDiffusion3Pipeline" in line and "FLUX.1" in line

