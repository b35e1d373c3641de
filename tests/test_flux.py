"""The tiny Flux base's parts (erasecli.models.train_flux): its T5 tokenizer and the FluxPipeline folder the
trainer writes, which plain diffusers loads and samples at the tiny world's size."""

import filecmp
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from erasecli.models.registry import TINY_DIR
from erasecli.models.train_flux import MAX_T5, flux_transformer_model, save_flux_pipeline, t5_model, write_t5_tokenizer


def test_the_t5_tokenizer_keeps_caption_words_whole_and_spells_unseen_ones(tmp_path):
    from transformers import T5TokenizerFast

    write_t5_tokenizer(tmp_path / "t5", seed=0)
    tok = T5TokenizerFast.from_pretrained(str(tmp_path / "t5"))
    assert tok.tokenize("a red handwritten digit three") == ["\u2581a", "\u2581red", "\u2581handwritten", "\u2581digit",
                                                              "\u2581three"]
    ids = tok("a stippled three").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and tok.unk_token_id not in ids
    assert len(tok.tokenize("stippled")) > 1  # not a caption word: spelled in pieces


def test_the_trainer_writes_a_flux_pipeline_plain_diffusers_loads_and_samples(tmp_path):
    """Untrained weights, the trainer's own saving: every component loads in fp32, the VAE weights, CLIP text
    encoder and tokenizer are byte copies of the tiny base's, and a 32x32 image comes out."""
    from diffusers import FluxPipeline
    from transformers import T5TokenizerFast

    write_t5_tokenizer(tmp_path / "t5", seed=0)
    torch.manual_seed(0)
    t5 = t5_model(len(T5TokenizerFast.from_pretrained(str(tmp_path / "t5"))))
    tr = flux_transformer_model(t5.config.d_model, 64)
    save_flux_pipeline(TINY_DIR, tmp_path / "t5", t5, tr, tmp_path / "tiny-flux")
    out = tmp_path / "tiny-flux"
    for sub in ("text_encoder", "tokenizer"):
        assert not filecmp.dircmp(TINY_DIR / sub, out / sub).diff_files
    assert filecmp.cmp(TINY_DIR / "vae" / "diffusion_pytorch_model.safetensors",
                       out / "vae" / "diffusion_pytorch_model.safetensors", shallow=False)
    pipe = FluxPipeline.from_pretrained(str(out))
    assert pipe.vae.config.shift_factor == 0.0 and pipe.transformer.config.in_channels == 16
    assert {m.dtype for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae)} == {torch.float32}
    g = [torch.Generator().manual_seed(0)]
    img = pipe(["a red handwritten digit three"], height=32, width=32, num_inference_steps=2,
               max_sequence_length=MAX_T5, negative_prompt="", true_cfg_scale=5.0, generator=g,
               output_type="pt").images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


# --- the bundled tiny-flux base -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_flux():
    from erasecli.models.registry import load_base

    return load_base("tiny-flux", device="cpu")


def test_tiny_flux_is_a_flux_base_of_the_tiny_world(tiny_flux):
    from erasecli.data import base_latent_shape
    from erasecli.models.registry import resolve_base

    assert tiny_flux.kind.name == "flux" and tiny_flux.kind.denoiser == "transformer"
    assert tiny_flux.resolution == 32 and base_latent_shape(tiny_flux) == (4, 8, 8)
    assert resolve_base("tiny-flux").tiny_world


def test_the_condition_and_velocity_are_the_pipelines_own(tiny_flux):
    """encode_prompts holds FluxPipeline's T5 states and pooled CLIP embedding; unet_eps is the transformer as
    FluxPipeline calls it (its packing, position ids, timestep = noise level) on the unpacked latent."""
    from diffusers import FluxPipeline

    from erasecli.diffusion.cond import encode_prompts, unet_eps

    pipe = tiny_flux.pipe
    c = encode_prompts(pipe, ["a red handwritten digit three", ""], "cpu")
    states, pooled, _ = pipe.encode_prompt(["a red handwritten digit three", ""], prompt_2=None, device="cpu",
                                           max_sequence_length=MAX_T5)
    assert torch.equal(c[:, :-1], states) and torch.equal(c[:, -1, : pooled.shape[1]], pooled)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    with torch.no_grad():
        ours = unet_eps(pipe.transformer, x, t, c)
        theirs = pipe.transformer(hidden_states=FluxPipeline._pack_latents(x, 2, 4, 8, 8), timestep=(t + 1) / 1000,
                                  pooled_projections=pooled, encoder_hidden_states=states,
                                  txt_ids=torch.zeros(MAX_T5, 3),
                                  img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)).sample
    torch.testing.assert_close(ours, FluxPipeline._unpack_latents(theirs, 32, 32, pipe.vae_scale_factor))
    # the attacks' token-level encoding: CLIP ids for the pooled embedding, T5 ids for the states, as the pipeline
    from erasecli.diffusion.cond import encode_ids, prompt_ids

    with torch.no_grad():
        torch.testing.assert_close(encode_ids(pipe, prompt_ids(pipe, ["a red handwritten digit three", ""])), c)
    with pytest.raises(ValueError, match="one id tensor per tokenizer"):
        encode_ids(pipe, prompt_ids(pipe, [""])[0])
    # a soft token put in T5's input embeddings reaches the states (T5 embeds through encoder.embed_tokens)
    from erasecli.attacks.prompt import prefix_embeddings

    with torch.no_grad(), prefix_embeddings(pipe.text_encoder_2, 2, start=0) as slot:
        slot[0] = torch.zeros(2, pipe.text_encoder_2.config.d_model)
        moved = encode_ids(pipe, prompt_ids(pipe, ["a red handwritten digit three"]))
    assert (moved[0, :-1] - c[0, :-1]).abs().max() > 0.1 and torch.allclose(moved[0, -1], c[0, -1])


def test_an_esd_delta_on_tiny_flux_loads_in_plain_diffusers_as_itself_its_kohya_and_merged_exports(tmp_path):
    """`erase unlearn` on tiny-flux writes transformer LoRA keys that FluxPipeline.load_lora_weights reads; the
    image `erase sample --delta` draws is the plain pipeline's, and not the base's. The kohya export (text-stream
    q / k / v stacked into BFL's fused txt_attn_qkv) read back by diffusers' own Flux kohya converter, and the merged
    export loaded with from_pretrained, draw that image too."""
    import json

    import numpy as np
    from diffusers import FluxPipeline
    from PIL import Image
    from typer.testing import CliRunner

    from erasecli.cli import app
    from erasecli.models.registry import TINY_FLUX_DIR

    run = CliRunner().invoke
    delta, samples = tmp_path / "delta", tmp_path / "samples"
    r = run(app, ["unlearn", "--method", "esd", "--base", "tiny-flux", "--concept", "digit 3", "--out", str(delta),
                  "--set", "train.steps=20", "--set", "train.lr=3e-3", "--set", "data.images_per_prompt=2",
                  "--set", "data.retain_images_per_prompt=1"])
    assert r.exit_code == 0, r.output
    prompt = "a red handwritten digit three"
    r = run(app, ["sample", "--base", "tiny-flux", "--delta", str(delta), "--prompt", prompt, "-n", "1", "--seed", "0",
                  "--out", str(samples)])
    assert r.exit_code == 0, r.output
    ours = np.asarray(Image.open(samples / json.loads((samples / "manifest.jsonl").read_text())["file"]))
    pipe = FluxPipeline.from_pretrained(str(TINY_FLUX_DIR), dtype=torch.float32)

    def draw():
        return np.asarray(pipe(prompt, height=32, width=32, num_inference_steps=25, max_sequence_length=MAX_T5,
                               negative_prompt="", true_cfg_scale=5.0, guidance_scale=1.0,
                               generator=[torch.Generator().manual_seed(0)]).images[0])

    before = draw()
    pipe.load_lora_weights(str(delta))
    after = draw()
    assert np.array_equal(after, ours)
    assert np.abs(after.astype(int) - before.astype(int)).max() > 10
    pipe.unload_lora_weights()
    for fmt in ("kohya", "merged"):
        r = run(app, ["export", "--delta", str(delta), "--format", fmt, "--out", str(tmp_path / fmt)])
        assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    kohya = load_file(str(tmp_path / "kohya" / "pytorch_lora_weights_kohya.safetensors"))
    assert "lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight" in kohya
    pipe.load_lora_weights(str(tmp_path / "kohya" / "pytorch_lora_weights_kohya.safetensors"))
    assert np.abs(draw().astype(int) - after.astype(int)).max() <= 1
    pipe = FluxPipeline.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    assert np.abs(draw().astype(int) - after.astype(int)).max() <= 2


def test_the_kohya_flux_layout_stacks_separate_lora_parts_into_the_fused_projection_exactly():
    """q and k of a double block's image stream carry LoRAs, v none: BFL's fused img_attn.qkv gets one LoRA of rank
    2r whose weight change is each part's on its rows and zero on v's."""
    from erasecli.export import flux_kohya

    cfg = {"num_attention_heads": 2, "attention_head_dim": 4, "num_layers": 1, "num_single_layers": 1}
    g, r, alpha = torch.Generator().manual_seed(0), 2, 3.0
    state = {}
    for x in "qk":
        state[f"transformer.transformer_blocks.0.attn.to_{x}.lora_A.weight"] = torch.randn(r, 8, generator=g)
        state[f"transformer.transformer_blocks.0.attn.to_{x}.lora_B.weight"] = torch.randn(8, r, generator=g)
    out = flux_kohya(state, alpha, cfg)
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    assert set(out) == {f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha"}
    down, up, a = out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"], float(out[f"{key}.alpha"])
    fused = a / down.shape[0] * up @ down  # (24, 8): q, k, v rows
    for j, x in enumerate("qk"):
        want = alpha / r * state[f"transformer.transformer_blocks.0.attn.to_{x}.lora_B.weight"] \
            @ state[f"transformer.transformer_blocks.0.attn.to_{x}.lora_A.weight"]
        torch.testing.assert_close(fused[8 * j : 8 * (j + 1)], want)
    assert not fused[16:].any()


def test_recipe_words_name_the_flux_transformers_modules():
    from erasecli.methods.adapter import expand_targets

    assert expand_targets(["xattn"], flow=True) == ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    assert "to_q" in expand_targets(["noxattn"], flow=True) and "add_k_proj" in expand_targets(["attn"], flow=True)


@pytest.mark.parametrize("args, needle", [
    (["unlearn", "--method", "mace", "--concept", "digit 3", "--out", "{tmp}/d"], "mace is not restated for flux"),
    (["unlearn", "--method", "uce", "--concept", "digit 3", "--out", "{tmp}/d", "--set", "uce.robust=prefix"],
     "not restated for Flux"),
    (["unlearn", "--method", "esd", "--concept", "digit 3", "--out", "{tmp}/d", "--set", "lora.text_encoder=true"],
     "transformer only"),
    (["unlearn", "--method", "safree", "--concept", "digit 3", "--out", "{tmp}/d"], "safree is not restated for flux"),
])
def test_what_is_not_restated_for_flux_is_refused_before_any_model_loads(args, needle, tmp_path):
    """A usage error (the CLI prints those as one line, exit code 2: tests/test_sample_cli.py) naming what is not
    restated, raised by the request checks, so nothing is written."""
    from typer.testing import CliRunner

    from erasecli.cli import app
    from erasecli.errors import UsageError

    r = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args] + ["--base", "tiny-flux"])
    assert isinstance(r.exception, UsageError) and needle in str(r.exception), r.exception
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


def test_uce_on_tiny_flux_edits_the_context_embedder_and_the_threes_are_gone(tiny_flux, tmp_path):
    """The shipped tiny-flux uce preset: a closed-form LoRA on the context embedder and the pooled path only; the
    base draws threes for the forget prompt, the edited base none (judged by the tiny world's classifier)."""
    from safetensors import safe_open
    from typer.testing import CliRunner

    from erasecli.cli import app
    from erasecli.delta import apply_deltas, remove_deltas
    from erasecli.judges import TinyClassifierJudge
    from erasecli.sampling import generate

    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-flux-digit-uce.yaml"
    r = CliRunner().invoke(app, ["unlearn", "--recipe", str(recipe), "--out", str(tmp_path / "u")])
    assert r.exit_code == 0, r.output
    with safe_open(str(tmp_path / "u" / "pytorch_lora_weights.safetensors"), "pt") as f:
        modules = {k.rsplit(".lora_", 1)[0] for k in f.keys()}
    assert modules == {"transformer.context_embedder", "transformer.time_text_embed.text_embedder.linear_1"}
    judge, prompts, seeds = TinyClassifierJudge("digits"), ["a red handwritten digit three"] * 6, list(range(6))

    def threes():
        images = generate(tiny_flux, prompts, seeds, steps=25, guidance=5.0)
        return int((judge.predict(images)["digit"] == 3).sum())

    assert threes() >= 5
    apply_deltas(tiny_flux, [str(tmp_path / "u")])
    try:
        assert threes() == 0
    finally:
        remove_deltas(tiny_flux)


def test_the_prompt_and_inversion_attacks_run_on_flux_and_the_token_loads_in_plain_diffusers(tmp_path):
    """`erase attack --base tiny-flux` on an erased delta: the prefix words are words of both vocabularies, pasted
    as text; the inverted token has a CLIP and a T5 vector ({"clip_l", "t5"}) that a plain FluxPipeline loads,
    half in each encoder, and then draws the image the attack judged."""
    import json

    import numpy as np
    from diffusers import FluxPipeline
    from PIL import Image
    from typer.testing import CliRunner

    from erasecli.cli import app
    from erasecli.models.registry import TINY_FLUX_DIR

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-flux-digit-uce.yaml"
    run = CliRunner().invoke
    r = run(app, ["unlearn", "--recipe", str(recipe), "--out", str(tmp_path / "u")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "atk"
    r = run(app, ["attack", "--base", "tiny-flux", "--concept", "digit 3", "--delta", str(tmp_path / "u"), "--attacks",
                  "prompt,inversion", "--budget", "0.05", "--set", "attack.samples=1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)["models"][0]
    assert m["attacks"]["prompt"]["n"] == m["attacks"]["inversion"]["n"] == 10
    pipe = FluxPipeline.from_pretrained(str(TINY_FLUX_DIR))
    for x in m["attacks"]["prompt"]["prompts"]:
        if x["adversarial"]:
            prefix = x["adversarial"][: -len(x["prompt"])].split()
            assert x["adversarial"].endswith(x["prompt"]) and prefix
            assert all(len(tk(w, add_special_tokens=False).input_ids) == 1 for w in prefix
                       for tk in (pipe.tokenizer, pipe.tokenizer_2))
    emb = load_file(str(out / "u" / "inversion" / "learned_embeds.safetensors"))
    assert set(emb) == {"clip_l", "t5"}
    text = (out / "u" / "inversion_prompts.txt").read_text().splitlines()[0]
    token = "<digit-3-inverted>"
    assert token in text
    pipe.load_lora_weights(str(tmp_path / "u"))
    pipe.load_textual_inversion(emb["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(emb["t5"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(text, height=32, width=32, num_inference_steps=25, max_sequence_length=MAX_T5, negative_prompt="",
               true_cfg_scale=5.0, guidance_scale=1.0, generator=[torch.Generator().manual_seed(2000)]).images[0]
    mine = next((out / "u" / "images" / "inversion").glob("000-*/002000.png"))
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(Image.open(mine).convert("RGB"), dtype=int)).max()
    assert diff <= 2, diff


@pytest.mark.parametrize("attack", ["prefix", "inversion"])
def test_robust_inner_attack_on_flux_puts_one_soft_token_in_clip_and_t5(tiny_flux, attack):
    """robust.enabled on Flux: a condition row holds CLIP's and T5's ids side by side; the inner attack's soft
    tokens sit at each piece's own positions (CLIP after BOS, T5 from 0; inversion where the concept's words
    were), are one row split across the two encoders, lower the denoising loss of the base's threes and move
    both shares, and the step's forget images then use them."""
    from conftest import check_inner_attack_drives_both_encoders

    from erasecli import api
    from erasecli.data import build_train_data
    from erasecli.diffusion.cond import encode_prompts
    from erasecli.diffusion.noise import schedule_of
    from erasecli.methods import Context
    from erasecli.methods.adapter import Adapter
    from erasecli.methods.robust import Adversary, Conditions

    fx, pipe = tiny_flux, tiny_flux.pipe
    r = api.load_recipe(None, ["robust.enabled=true", f"robust.attack={attack}", "robust.tokens=2", "robust.warmup=0",
                               "robust.attack_steps=40", "robust.attack_lr=0.05", "data.images_per_prompt=2",
                               "data.retain_images_per_prompt=1"], method="esd", concept={"name": "digit 3"},
                        base="tiny-flux")
    data = build_train_data(r, fx)
    ctx = Context(recipe=r, base=fx, unet=pipe.transformer, adapter=Adapter(fx, {"transformer": pipe.transformer}, []),
                  data=data, gen=torch.Generator("cpu").manual_seed(0), noise=schedule_of(pipe.scheduler),
                  device=fx.device)
    cond = Conditions(fx, data.prompts)
    try:
        with torch.no_grad():  # a plain row is the prompt as FluxPipeline encodes it
            torch.testing.assert_close(cond.encode_ids(cond.ids[:3], cond.S[:3], None),
                                       encode_prompts(pipe, data.prompts[:3], "cpu"))
        adv = Adversary(ctx, cond)
        L1 = pipe.tokenizer.model_max_length
        row = adv.rows_adv[0]
        S_clip, S_t5 = cond.S[row, :L1], cond.S[row, L1:]
        if attack == "prefix":
            assert S_clip[1:3].tolist() == S_t5[:2].tolist() == [0, 1] and int((cond.S[row] >= 0).sum()) == 4
        else:
            text = data.prompts[adv.plain_c[0]]
            assert "three" in text or "3" in text, text
            for piece, tk in ((S_clip, pipe.tokenizer), (S_t5, pipe.tokenizer_2)):
                ids = tk(text, padding="max_length", max_length=len(piece), truncation=True).input_ids
                words = [tk.convert_ids_to_tokens(i).strip("▁").replace("</w>", "") for i in ids]
                assert [w for w, m in zip(words, piece.tolist()) if m >= 0] in (["three"], ["3"]), (words, piece)
        check_inner_attack_drives_both_encoders(ctx, cond, adv, data, draws=16)
    finally:
        cond.close()


def test_flux_hub_bases_offline_name_the_download():
    from erasecli.errors import BaseNotFoundError
    from erasecli.models.registry import load_base

    for name, repo in (("flux-dev", "black-forest-labs/FLUX.1-dev"),
                       ("flux-schnell", "black-forest-labs/FLUX.1-schnell")):
        with pytest.raises(BaseNotFoundError, match=f"{repo}.*not in the local Hugging Face cache") as err:
            load_base(name, device="cpu")
        assert f"hf download {repo}" in err.value.hint


def test_sld_guards_tiny_flux_on_the_noise_its_velocity_implies(tiny_flux, tmp_path):
    """On Flux the guard works on the noise prediction the velocity implies (d eps = (1 - sigma) d v): the
    guarded velocity is p - mu (S - u) with mu taken on (1 - sigma)(p - S); rows in the warm-up and the empty
    prompt's rows (FluxPipeline's negative-prompt call) pass unchanged. `erase unlearn --method sld --base
    tiny-flux` writes a guard under which the pipeline draws no threes."""
    from typer.testing import CliRunner

    from erasecli.cli import app
    from erasecli.delta import apply_deltas, remove_deltas
    from erasecli.diffusion import guard as G
    from erasecli.diffusion.cond import encode_prompts, unet_eps
    from erasecli.diffusion.noise import flow_level
    from erasecli.judges import TinyClassifierJudge
    from erasecli.sampling import generate

    den = tiny_flux.denoiser
    p0 = G.PRESETS["strong"]
    st = G.SldSettings(p0["guidance_scale"], 0.2, p0["threshold"], p0["momentum_scale"], p0["mom_beta"])
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([899, 299, 299])  # noise levels 0.9 (in the warm-up share 0.2), 0.3, 0.3
    with torch.no_grad():
        c = encode_prompts(tiny_flux.pipe, ["a red handwritten digit three", "a handwritten digit three", ""], "cpu")
        prompt = torch.cat([c[:1], c[:1], c[2:]])  # the last row is the empty prompt
        p, s, u = (unet_eps(den, x, t, e) for e in (prompt, c[1:2].expand(3, -1, -1), c[2:].expand(3, -1, -1)))
        G.install(den, G.SafetyGuard(c[1:2], c[2:], st))
        try:
            got = unet_eps(den, x, t, prompt)
        finally:
            G.remove(den)
    k = (1 - flow_level(t)).view(-1, 1, 1, 1)
    diff = k * (p - s)
    mu = torch.clamp(diff.abs() * st.guidance_scale, max=1.0) * (diff < st.threshold)
    want = p - mu * (s - u)
    want[0], want[2] = p[0], p[2]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got[1] - p[1]).abs().max() > 1e-2  # the guard did something on the guided row

    r = CliRunner().invoke(app, ["unlearn", "--method", "sld", "--base", "tiny-flux", "--concept", "digit 3",
                                 "--out", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    judge, prompts, seeds = TinyClassifierJudge("digits"), ["a red handwritten digit three"] * 6, list(range(6))
    apply_deltas(tiny_flux, [str(tmp_path / "g")])
    guard, steps = G.guard_of(den), []
    counted = guard._step
    guard._step = lambda g: (steps.append(1), counted(g))[1]
    try:
        images = generate(tiny_flux, prompts, seeds, steps=25, guidance=5.0)
    finally:
        remove_deltas(tiny_flux)
    assert len(steps) == 25  # one guarded call per step: the empty prompt's call passed through
    assert int((judge.predict(images)["digit"] == 3).sum()) <= 1
    assert G.guard_of(den) is None


def test_critic_rl_rolls_out_on_flux_with_log_probs_ppo_can_recompute_and_the_command_runs(tiny_flux, tmp_path):
    """critic-rl's policy on Flux: the DDIM step on the flow path. Recomputing a stored chain's steps (PPO's
    ratio) gives back the log-probs it was sampled with; `erase unlearn --method critic-rl --base tiny-flux` trains
    its critic on such chains and writes a transformer LoRA."""
    from safetensors import safe_open
    from typer.testing import CliRunner

    from erasecli.cli import app
    from erasecli.data import base_latent_shape
    from erasecli.diffusion.cond import encode_prompts
    from erasecli.diffusion.rollout import Sampler

    den = tiny_flux.denoiser
    sampler = Sampler(tiny_flux, steps=4, eta=1.0, guidance=5.0)
    # from s = 1 - 1/T to s = 0.03 (FLOW_LAST_SIGMA), where SD's chains stop too
    assert sampler.timesteps.tolist() == [998, 756, 514, 271] and sampler.prevs.tolist()[-1] == 29
    with torch.no_grad():
        embeds = encode_prompts(tiny_flux.pipe, ["", "a red handwritten digit three"], "cpu")
        c = torch.tensor([1, 1])
        traj = sampler.sample(den, c, embeds, base_latent_shape(tiny_flux), torch.Generator().manual_seed(0))
        for k in range(4):
            out = sampler.step(den, traj.latents[:, k], k, embeds[c], embeds[torch.zeros_like(c)],
                               prev_sample=traj.latents[:, k + 1])
            torch.testing.assert_close(out.log_prob, traj.log_probs[:, k], atol=1e-4, rtol=1e-4)
            assert out.std.min() > 0.02  # no step's kernel so narrow that PPO's ratio explodes (std 1e-3 to s = 1/T)
    assert (traj.latents[:, 0] - traj.latents[:, 1]).abs().mean() > 0.1  # the steps move

    r = CliRunner().invoke(app, ["unlearn", "--method", "critic-rl", "--base", "tiny-flux", "--concept", "digit 3",
                                 "--set", "train.steps=2", "--set", "critic.train_trajectories=8",
                                 "--set", "critic.train_epochs=1", "--set", "critic.steps=4",
                                 "--set", "critic.prompts_per_step=2", "--set", "critic.retain_loss=0",
                                 "--set", "critic.anchor_loss=0", "--out", str(tmp_path / "rl")])
    assert r.exit_code == 0, r.output
    with safe_open(str(tmp_path / "rl" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert f.keys() and all(k.startswith("transformer.") for k in f.keys())


def test_receler_on_flux_reads_the_joint_attention_and_trains_an_eraser_on_the_image_output(tiny_flux, tmp_path):
    """receler on Flux: the recording processor is the transformer's own joint attention (the same velocity) and
    keeps what the image tokens give the text tokens in each double block; the concept's words are found in T5's
    tokenisation; `erase unlearn --method receler --base tiny-flux` puts its eraser on the double blocks' image
    output projections only."""
    from safetensors import safe_open
    from typer.testing import CliRunner

    from erasecli.cli import app
    from erasecli.concepts import tiny_concept
    from erasecli.diffusion.attention import recording
    from erasecli.diffusion.cond import encode_prompts, unet_eps
    from erasecli.methods.receler import states_tokens

    pipe = tiny_flux.pipe
    den = pipe.transformer
    prompts = ["a red handwritten digit three", "a blue digit 5"]
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([100, 700])
    with torch.no_grad():
        c = encode_prompts(pipe, prompts, "cpu")
        plain = unet_eps(den, x, t, c)
        with recording(den) as maps:
            rec = unet_eps(den, x, t, c)
        after = unet_eps(den, x, t, c)
    torch.testing.assert_close(rec, plain, atol=1e-5, rtol=1e-4)
    assert torch.equal(after, plain)  # the processors are back
    double = [f"transformer_blocks.{i}.attn" for i in range(len(den.transformer_blocks))]
    assert sorted(maps) == double
    L = c.shape[1] - 1  # the T5 positions (the last row packs the pooled embedding)
    for p in maps.values():
        assert p.shape == (2, den.config.num_attention_heads, 16, L)  # 8x8 latent -> 16 packed image tokens
        assert (p >= 0).all() and (p.sum(-1) > 0).all() and (p.sum(-1) < 1).all()  # the image keys take the rest
    tokens = states_tokens(pipe, prompts, tiny_concept("digit 3", "digit"))
    ids = pipe.tokenizer_2(prompts[0]).input_ids
    three = [i for i, w in enumerate(ids) if pipe.tokenizer_2.decode([w]).strip() == "three"]
    assert tokens.shape == (2, L) and tokens[0].nonzero().flatten().tolist() == three and not tokens[1].any()

    r = CliRunner().invoke(app, ["unlearn", "--method", "receler", "--base", "tiny-flux", "--concept", "digit 3",
                                 "--steps", "2", "--out", str(tmp_path / "rc")])
    assert r.exit_code == 0, r.output
    with safe_open(str(tmp_path / "rc" / "pytorch_lora_weights.safetensors"), "pt") as f:
        layers = {k.split(".lora_")[0] for k in f.keys()}
    assert layers == {f"transformer.{a}.to_out.0" for a in double}
