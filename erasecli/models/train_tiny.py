"""Train the whole tiny world from scratch: `python -m erasecli.models.train_tiny --seed 0 --out DIR`.

Stages, each seeded, in order: tokenizer files (SD's real CLIP BPE vocabulary), VAE (32x32x3 <-> 8x8x4),
judge classifier, text encoder + UNet (jointly, with EMA and cosine decay), tiny CLIP. The result is a
folder with `tiny/` (a diffusers Stable Diffusion pipeline), `judges/` and `train_report.json` (seed,
steps, seconds and held-out figures per stage). The shipped assets in `erasecli/models/assets/` were made
by this script; `--pilot` runs every stage for a few steps to check the plumbing; `--resume` continues an
interrupted run (finished stages are kept in OUT.partial, the UNet stage checkpoints every 250 steps).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from erasecli.models import tiny_world as W
from erasecli.models.worlds import world as get_world
from erasecli.models.judges import (TinyClassifier, classifier_accuracy_on, clip_config, clip_image_embeds,
                                    clip_text_embeds, write_clip_preprocessor)
from erasecli.models.training import (MAX_TOKENS, Captioner, cosine_lr, encode_moments, latent_batch,
                                      load_checkpoint, log, save_checkpoint, set_lr, update)

STAGES = ("vae", "classifier", "unet", "clip")
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _find_bpe() -> Path:
    """OpenAI's BPE file, from an installed clip-anytorch/open_clip wheel or `pip download clip-anytorch`."""
    import importlib.util
    import subprocess
    import sys
    import tempfile
    import zipfile

    for mod in ("clip", "open_clip"):
        spec = importlib.util.find_spec(mod)
        if spec and spec.origin:
            p = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
            if p.exists():
                return p
    tmp = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), "clip-anytorch"],
                   check=True)
    wheel = next(tmp.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract("clip/bpe_simple_vocab_16e6.txt.gz", tmp)
    return tmp / "clip" / "bpe_simple_vocab_16e6.txt.gz"


def vae_model():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
        block_out_channels=(16, 32, 64), norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )


def unet_model(cross_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=32, cross_attention_dim=cross_dim,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


def unet_xl_model(cross_dim: int, pooled_dim: int, time_dim: int = 8):
    """SDXL's UNet at tiny size: the same blocks, linear projections, and `text_time` added conditioning
    (pooled text embedding + six time ids, each embedded in `time_dim` sinusoids)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=32, cross_attention_dim=cross_dim,
        attention_head_dim=4, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,
    )


def _clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, projection_dim=64, eos_token_id=49407, bos_token_id=49406,
        pad_token_id=49407,
    )


def text_encoder_model():
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_text_config())


def text_encoder_2_model():
    """SDXL's second text encoder: CLIP with the projection whose output is the pooled embedding."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(_clip_text_config())


XL_SIZE = 32  # pixels: the time ids are (original size, crop top-left, target size) = (32, 32, 0, 0, 32, 32)


def xl_time_ids(n: int) -> torch.Tensor:
    return torch.tensor([[XL_SIZE, XL_SIZE, 0, 0, XL_SIZE, XL_SIZE]], dtype=torch.float32).repeat(n, 1)


def train_vae(steps: int, seed: int, batch: int = 64, world: str = "digits"):
    torch.manual_seed(seed)
    vae = vae_model()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    x_all, _ = get_world(world).render_labelled("train", seed, copies=2)
    for step in range(steps):
        set_lr(opt, cosine_lr(step, steps, 1e-3, 50))
        x = x_all[torch.randint(len(x_all), (batch,))]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / (4 * 8 * 8)  # per latent element
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"vae {step}/{steps} loss {loss.item():.4f} kl {kl.item():.1f}")
    vae.eval()
    with torch.no_grad():
        xh, _ = get_world(world).render_labelled("heldout", seed + 1)
        mean = vae.encode(xh[:512]).latent_dist.mean
        rec_mse = F.mse_loss(vae.decode(mean).sample, xh[:512]).item()
        lat = vae.encode(x_all[:2048]).latent_dist.mean
    scaling = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling)
    return vae, {"steps": steps, "heldout_recon_mse": rec_mse, "scaling_factor": scaling}


def train_classifier(steps: int, seed: int, batch: int = 128, world: str = "digits"):
    w = get_world(world)
    torch.manual_seed(seed)
    clf = TinyClassifier(n_styles=len(w.LABEL_NAMES["style"]) if "style" in w.KINDS else 0)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    x_all, labels = w.render_labelled("train", seed + 10, copies=4)
    clf.train()
    for step in range(steps):
        set_lr(opt, cosine_lr(step, steps, 2e-3, 50))
        i = torch.randint(len(x_all), (batch,))
        x = x_all[i] + 0.05 * torch.randn_like(x_all[i])  # a little noise: generated images are not exact
        logits = clf(x.clamp(-1, 1))
        loss = F.cross_entropy(logits[0], labels[0][i], label_smoothing=0.05)  # the digit head
        for lg, y in zip(logits[1:], labels[1:]):
            loss = loss + F.cross_entropy(lg, y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"classifier {step}/{steps} loss {loss.item():.4f}")
    if world == "digits":
        acc_d, acc_c = classifier_accuracy_on("heldout", clf.eval(), seed + 11)
        acc = {"digit": acc_d, "colour": acc_c}
    else:
        acc = classifier_accuracy_on("heldout", clf.eval(), seed + 11, world)
    log("classifier held-out " + " ".join(f"{k} acc {v:.4f}" for k, v in acc.items()))
    return clf.eval(), {"steps": steps, **{f"heldout_{k}_acc": v for k, v in acc.items()}}


def train_unet(vae, tokenizer, steps: int, seed: int, batch: int = 128, lr: float = 1e-3,
               ckpt: Path | None = None, ckpt_every: int = 250, exclude_digit: int | None = None,
               frozen_te1=None, world: str = "digits", exclude_style: int | None = None,
               init_from: Path | None = None):
    """Text encoder + UNet jointly. With `ckpt`, saves a checkpoint every `ckpt_every` steps (weights, EMA,
    optimiser, RNG states) and resumes from it, reaching the same weights as an uninterrupted run.
    `exclude_digit` drops every image of that digit (so no caption names it either): exact unlearning, the
    reference a concept erasure is measured against; `exclude_style` likewise drops every image of that style
    (canvas world).
    `frozen_te1` (a CLIPTextModel) makes it SDXL: the UNet attends to both encoders' penultimate states side by
    side (te1's frozen, te2's trained), and takes te2's pooled projection plus the time ids as added
    conditioning, exactly as StableDiffusionXLPipeline calls it; `te` is then text_encoder_2.
    `init_from` (a Stable Diffusion pipeline folder this trainer wrote) starts the text encoder and UNet from
    its weights instead of from scratch: a further run of `steps` with its own warm-up and decay."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    if frozen_te1 is None:
        te, unet = text_encoder_model(), unet_model(64)
        if init_from is not None:
            from diffusers import UNet2DConditionModel
            from transformers import CLIPTextModel

            te.load_state_dict(CLIPTextModel.from_pretrained(str(init_from / "text_encoder"),
                                                             dtype=torch.float32).state_dict())
            unet.load_state_dict(UNet2DConditionModel.from_pretrained(str(init_from / "unet"),
                                                                      torch_dtype=torch.float32).state_dict())
            log(f"unet: text encoder and UNet start from {init_from}")
    else:
        frozen_te1.requires_grad_(False).eval()
        te = text_encoder_2_model()
        unet = unet_xl_model(frozen_te1.config.hidden_size + te.config.hidden_size, te.config.projection_dim)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=0.75)
    noise_sched = DDPMScheduler(**SD_BETAS)
    w = get_world(world)
    x_all, labels = w.render_labelled("train", seed + 20, copies=3)
    for kind, left_out in (("digit", exclude_digit), ("style", exclude_style)):
        if left_out is not None:
            keep = labels[w.KINDS.index(kind)] != left_out
            x_all, labels = x_all[keep], tuple(y[keep] for y in labels)
            log(f"unet: {int((~keep).sum())} images of {kind} {left_out} left out, {len(x_all)} kept")
    moments = encode_moments(vae, x_all)  # (N, 8, 8, 8): mean, logvar
    scale = vae.config.scaling_factor
    cap = Captioner(tokenizer, seed, world)
    start = load_checkpoint(ckpt, {"unet": unet, "te": te}, opt, ema, cap)
    if start:
        log(f"unet: resumed at step {start}")
    t0 = time.time()
    for step in range(start, steps):
        set_lr(opt, cosine_lr(step, steps, lr, 200))
        i, z = latent_batch(moments, batch, scale)
        _, ids = cap(*(y[i] for y in labels))
        noise = torch.randn_like(z)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,))
        x_t = noise_sched.add_noise(z, noise, t)
        if frozen_te1 is None:
            pred = unet(x_t, t, te(ids)[0]).sample
        else:
            with torch.no_grad():
                h1 = frozen_te1(ids, output_hidden_states=True).hidden_states[-2]
            out2 = te(ids, output_hidden_states=True)
            cond = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
            added = {"text_embeds": out2.text_embeds, "time_ids": xl_time_ids(batch)}
            pred = unet(x_t, t, cond, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred, noise)
        update(loss, params, opt, ema)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet {step}/{steps} loss {loss.item():.4f} ({(step + 1 - start) / (time.time() - t0):.2f} it/s)")
        if ckpt is not None and ((step + 1) % ckpt_every == 0 or step == steps - 1):
            save_checkpoint(ckpt, step + 1, {"unet": unet, "te": te}, opt, ema, cap)
    ema.copy_to(params)
    return te.eval(), unet.eval(), {"steps": steps, "batch": batch, "lr": lr, "final_loss": loss.item()}


def train_clip(tokenizer, steps: int, seed: int, batch: int = 256, world: str = "digits"):
    """Contrastive training with multi-positive targets: a caption matches every image it describes."""
    from transformers import CLIPModel

    w = get_world(world)
    torch.manual_seed(seed)
    model = CLIPModel(clip_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    x_all, labels = w.render_labelled("train", seed + 30, copies=2)
    rng = random.Random(seed)
    cache: dict[str, torch.Tensor] = {}
    model.train()
    for step in range(steps):
        set_lr(opt, cosine_lr(step, steps, 1e-3, 100))
        i = torch.randint(len(x_all), (batch,))
        lab = [y[i] for y in labels]  # per kind, (B,)
        texts, names = [], []
        for one in zip(*(y.tolist() for y in lab)):
            text = ""
            while not text:  # empty captions carry no contrastive signal
                text = w.caption_for(one, rng)
            texts.append(text)
            names.append(w.named(text))
        for t in texts:
            if t not in cache:
                cache[t] = tokenizer(t, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                     return_tensors="pt").input_ids[0]
        ids = torch.stack([cache[t] for t in texts])  # (B, MAX_TOKENS)
        nm = torch.tensor(names)  # (B, kinds): the label each caption names, -1 for none
        # match[j, k]: caption j describes image k (every attribute it names agrees). (B, B)
        match = torch.ones(len(texts), len(texts), dtype=torch.bool)
        for a, y in enumerate(lab):
            match &= (nm[:, a, None] == -1) | (nm[:, a, None] == y[None])
        out = model(input_ids=ids, pixel_values=x_all[i])
        logits_img = out.logits_per_image  # (B images, B texts)
        tgt_img = match.T.float() / match.T.float().sum(1, keepdim=True)
        tgt_txt = match.float() / match.float().sum(1, keepdim=True)
        loss = 0.5 * (-(tgt_img * logits_img.log_softmax(1)).sum(1).mean()
                      - (tgt_txt * logits_img.T.log_softmax(1)).sum(1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"clip {step}/{steps} loss {loss.item():.4f}")
    model.eval()
    # Held-out zero-shot accuracy: does the prompt naming every label of the image ("a {colour} handwritten
    # digit {word}", "... in {style} style") score highest among the prompts for every label combination?
    xh, lh = w.render_labelled("heldout", seed + 31)
    combos = torch.cartesian_prod(*(torch.arange(len(w.LABEL_NAMES[k])) for k in w.KINDS))  # (P, kinds)
    if world == "digits":
        prompts = [W.quality_prompt(W.COLOUR_NAMES[c], d) for d, c in combos.tolist()]
    else:
        prompts = [w.quality_prompt(w.COLOUR_NAMES[c], d, w.STYLE_NAMES[st]) for d, c, st in combos.tolist()]
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        tf = clip_text_embeds(model, ids)
        imf = clip_image_embeds(model, xh)
        pick = combos[(imf @ tf.T).argmax(1)]  # (N, kinds)
    acc = (pick == torch.stack(lh, dim=1)).all(1).float().mean().item()
    log(f"clip held-out zero-shot {tuple(w.KINDS)} acc {acc:.4f}")
    return model, {"steps": steps, "heldout_zero_shot_acc": acc}


def save_pipeline(vae, te, tokenizer_dir: Path, unet, out: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    sched = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          prediction_type="epsilon")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)), unet=unet,
        scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16)  # fp16 storage halves the shipped size; erasecli loads it back in fp32 on CPU
    pipe.save_pretrained(str(out), safe_serialization=True)
    # Weights stay fp16 on disk, but a plain `from_pretrained(folder)` must load one dtype throughout: diffusers
    # loads the UNet and VAE in fp32, while transformers 5 loads the text encoder in its config's dtype.
    te_cfg = out / "text_encoder" / "config.json"
    te_cfg.write_text(json.dumps({**json.loads(te_cfg.read_text()), "dtype": "float32"}, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(tokenizer_dir, out / "tokenizer")  # without tokenizer.json: vocab+merges suffice


def save_xl_pipeline(vae_dir: Path, te1_dir: Path, tokenizer_dir: Path, te2, unet, out: Path) -> None:
    """A StableDiffusionXLPipeline folder. The VAE, first text encoder and tokenizer (twice) are byte copies of
    the tiny base's, so git stores them once. Unconditional embeddings are the encoded empty prompt, as the
    trainer's caption dropout made them (force_zeros_for_empty_prompt false)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    sched = EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, timestep_spacing="leading",
                                   prediction_type="epsilon", interpolation_type="linear")  # SDXL's config
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(str(vae_dir)), text_encoder=CLIPTextModel.from_pretrained(str(te1_dir)),
        text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched,
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    pipe.to(torch.float16)
    pipe.save_pretrained(str(out), safe_serialization=True)
    te_cfg = out / "text_encoder_2" / "config.json"
    te_cfg.write_text(json.dumps({**json.loads(te_cfg.read_text()), "dtype": "float32"}, indent=2, sort_keys=True) + "\n")
    # stabilityai's SDXL scheduler config carries these too (from SD's): a DDIM scheduler built from it (as
    # erasecli samples) must not clip x0 to [-1, 1], which would wreck every image
    sched_cfg = out / "scheduler" / "scheduler_config.json"
    sched_cfg.write_text(json.dumps({**json.loads(sched_cfg.read_text()), "clip_sample": False,
                                     "set_alpha_to_one": False, "sample_max_value": 1.0, "skip_prk_steps": True},
                                    indent=2, sort_keys=True) + "\n")
    for sub, src in (("vae", vae_dir), ("text_encoder", te1_dir), ("tokenizer", tokenizer_dir),
                     ("tokenizer_2", tokenizer_dir)):
        shutil.rmtree(out / sub)
        shutil.copytree(src, out / sub)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=1000)
    ap.add_argument("--classifier-steps", type=int, default=1500)
    ap.add_argument("--unet-steps", type=int, default=4500)
    ap.add_argument("--clip-steps", type=int, default=1000)
    ap.add_argument("--pilot", action="store_true", help="a few steps of every stage")
    ap.add_argument("--checkpoint-every", type=int, default=250, help="UNet-stage steps between checkpoints")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from OUT.partial: finished stages are kept, the UNet "
                    "stage continues from its last checkpoint")
    ap.add_argument("--exclude-digit", type=int, choices=range(10), default=None,
                    help="train the text encoder and UNet without any image of this digit (the retrained "
                    "'oracle' of exact unlearning)")
    ap.add_argument("--world", choices=("digits", "canvas"), default="digits",
                    help="canvas: the digits in colours and eight drawing styles (OUT/tiny-canvas, with judges that "
                    "read the style too)")
    ap.add_argument("--exclude-style", choices=get_world("canvas").STYLE_NAMES, default=None,
                    help="with --world canvas: train the text encoder and UNet without any image of this style")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start the text encoder and UNet from this pipeline folder (one this script wrote, e.g. "
                    "OUT/tiny-canvas of an earlier run) and train them --unet-steps more; with --vae FOLDER/vae and "
                    "--unet-only it retrains nothing else")
    ap.add_argument("--unet-lr", type=float, default=1e-3, help="peak learning rate of the text encoder + UNet stage")
    ap.add_argument("--vae", type=Path, default=None,
                    help="use this VAE folder (e.g. erasecli/models/assets/tiny/vae) instead of training one")
    ap.add_argument("--unet-only", action="store_true",
                    help="train only the text encoder and UNet (needs --vae); judges are not retrained")
    ap.add_argument("--arch", choices=("sd", "sdxl", "flux"), default="sd",
                    help="sdxl: a StableDiffusionXLPipeline (OUT/tiny-xl) whose VAE, first text encoder and "
                    "tokenizer are the tiny base's (--from), frozen; a second text encoder and the UNet are trained. "
                    "flux: a FluxPipeline (OUT/tiny-flux) with the same frozen parts, a T5 encoder and tokenizer and "
                    "a Flux transformer trained (erasecli.models.train_flux)")
    ap.add_argument("--from", dest="from_base", type=Path,
                    default=Path(__file__).resolve().parent / "assets" / "tiny",
                    help="with --arch sdxl / flux: the Stable Diffusion folder whose VAE, text encoder and tokenizer "
                    "are reused")
    args = ap.parse_args(argv)
    if args.arch in ("sdxl", "flux"):
        args.vae, args.unet_only = args.from_base / "vae", True
    if args.exclude_style is not None and args.world != "canvas":
        ap.error("--exclude-style needs --world canvas")
    if args.world != "digits" and args.arch != "sd":
        ap.error("--world canvas trains a Stable Diffusion pipeline (--arch sd)")
    if args.unet_only and args.vae is None:
        ap.error("--unet-only needs --vae FOLDER")
    if args.pilot:
        args.vae_steps = args.classifier_steps = args.clip_steps = 20
        args.unet_steps = min(args.unet_steps, 30)
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from erasecli.models.tokenizer import write_tokenizer_files

    out = args.out
    tmp = out.with_name(out.name + ".partial")
    settings = {k: getattr(args, k) for k in ("seed", "vae_steps", "classifier_steps", "unet_steps", "clip_steps")}
    if args.exclude_digit is not None or args.vae is not None or args.unet_only:  # older runs' settings unchanged
        settings.update(exclude_digit=args.exclude_digit, vae=str(args.vae), unet_only=args.unet_only)
    if args.arch != "sd":
        settings.update(arch=args.arch, from_base=str(args.from_base))
    if args.world != "digits":
        settings.update(world=args.world, exclude_style=args.exclude_style)
    if args.init_from is not None or args.unet_lr != 1e-3:
        settings.update(init_from=str(args.init_from), unet_lr=args.unet_lr)
    if args.init_from is not None and args.arch != "sd":
        ap.error("--init-from continues a Stable Diffusion pipeline (--arch sd)")
    state_file = tmp / "stages.json"
    if args.resume and state_file.exists():
        state = json.loads(state_file.read_text())
        if state["settings"] != settings:
            sys.exit(f"--resume: {tmp} was started with {state['settings']}, not {settings}")
        log(f"resuming {tmp}: done {[k for k in state['report'] if k in STAGES]}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {"settings": settings, "report": {"seed": args.seed, "torch": torch.__version__}}
    report = state["report"]
    (tmp / "stages").mkdir(exist_ok=True)

    def finish(stage: str, info: dict, t: float) -> None:
        report[stage] = {**info, "seconds": round(time.time() - t, 1)}
        state_file.write_text(json.dumps(state, indent=2))

    tok_dir = tmp / "tokenizer_files"
    if args.arch in ("sdxl", "flux"):
        tokenizer = CLIPTokenizer.from_pretrained(str(args.from_base / "tokenizer"))
    elif not (tok_dir / "vocab.json").exists():
        write_tokenizer_files(_find_bpe(), tok_dir, MAX_TOKENS)
        (tok_dir / "tokenizer.json").unlink(missing_ok=True)
    if args.arch == "sd":
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))

    if args.vae is not None:
        vae = AutoencoderKL.from_pretrained(str(args.vae), torch_dtype=torch.float32)
        report["vae"] = {"from": str(args.vae), "seconds": 0.0}
    elif "vae" in report:
        vae = AutoencoderKL.from_pretrained(str(tmp / "stages" / "vae"))
    else:
        t = time.time()
        vae, info = train_vae(args.vae_steps, args.seed, world=args.world)
        vae.save_pretrained(str(tmp / "stages" / "vae"))
        finish("vae", info, t)
    if args.unet_only:
        report.setdefault("classifier", {"skipped": "--unet-only", "seconds": 0.0})
        report.setdefault("clip", {"skipped": "--unet-only", "seconds": 0.0})
    if "classifier" not in report:
        t = time.time()
        clf, info = train_classifier(args.classifier_steps, args.seed, world=args.world)
        clf.save(tmp / "judges" / "classifier")
        finish("classifier", info, t)
    if "unet" not in report and args.arch == "flux":
        from transformers import CLIPTextModel, T5TokenizerFast

        from erasecli.models.train_flux import save_flux_pipeline, train_flux, write_t5_tokenizer

        t = time.time()
        t5_dir = tmp / "t5_tokenizer"
        if not (t5_dir / "tokenizer.json").exists():
            write_t5_tokenizer(t5_dir, args.seed)
        clip_te = CLIPTextModel.from_pretrained(str(args.from_base / "text_encoder"), dtype=torch.float32)
        t5, transformer, info = train_flux(vae, clip_te, tokenizer, T5TokenizerFast.from_pretrained(str(t5_dir)),
                                           args.unet_steps, args.seed, lr=args.unet_lr,
                                           ckpt=tmp / "stages" / "unet.ckpt", ckpt_every=args.checkpoint_every,
                                           exclude_digit=args.exclude_digit)
        save_flux_pipeline(args.from_base, t5_dir, t5, transformer, tmp / "tiny-flux")
        shutil.rmtree(t5_dir)
        finish("unet", info, t)
    if "unet" not in report:
        t = time.time()
        te1 = None
        if args.arch == "sdxl":
            from transformers import CLIPTextModel

            te1 = CLIPTextModel.from_pretrained(str(args.from_base / "text_encoder"), dtype=torch.float32)
        te, unet, info = train_unet(vae, tokenizer, args.unet_steps, args.seed, ckpt=tmp / "stages" / "unet.ckpt",
                                     ckpt_every=args.checkpoint_every, exclude_digit=args.exclude_digit,
                                     frozen_te1=te1, world=args.world, init_from=args.init_from, lr=args.unet_lr,
                                     exclude_style=(None if args.exclude_style is None
                                                    else get_world("canvas").STYLE_NAMES.index(args.exclude_style)))
        if args.exclude_digit is not None:
            info["excluded_digit"] = args.exclude_digit
        if args.exclude_style is not None:
            info["excluded_style"] = args.exclude_style
        if args.world != "digits":
            info["world"] = args.world
        if args.init_from is not None:
            info["init_from"] = str(args.init_from)
        if args.arch == "sdxl":
            info["arch"] = "sdxl"
            save_xl_pipeline(args.vae, args.from_base / "text_encoder", args.from_base / "tokenizer", te, unet,
                             tmp / "tiny-xl")
        else:
            save_pipeline(vae, te, tok_dir, unet, tmp / ("tiny" if args.world == "digits" else "tiny-" + args.world))
        finish("unet", info, t)
    if "clip" not in report:
        t = time.time()
        clip, info = train_clip(tokenizer, args.clip_steps, args.seed, world=args.world)
        clip.to(torch.float16).save_pretrained(str(tmp / "judges" / "clip"))
        shutil.copytree(tok_dir, tmp / "judges" / "clip", dirs_exist_ok=True)
        write_clip_preprocessor(tmp / "judges" / "clip")
        finish("clip", info, t)
    report["total_seconds"] = round(sum(report[k]["seconds"] for k in STAGES), 1)
    (tmp / "train_report.json").write_text(json.dumps(report, indent=2))
    for scratch in (tok_dir, tmp / "stages", state_file):
        shutil.rmtree(scratch, ignore_errors=True) if scratch.is_dir() else scratch.unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log(f"done: {report['total_seconds']:.0f} s of training -> {out}")


if __name__ == "__main__":
    main()
