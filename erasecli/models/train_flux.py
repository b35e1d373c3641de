"""The tiny Flux base: a genuine `FluxPipeline` trained on the tiny world (`train_tiny --arch flux`).

What it reuses from the tiny Stable Diffusion base (byte copies, so git stores them once): the VAE (its config
gains `shift_factor: 0`, which FluxPipeline reads), the CLIP text encoder (frozen: FluxPipeline reads its
pooled output) and the CLIP tokenizer. What it trains: a T5 encoder (`text_encoder_2`, the sequence the
transformer attends to) with a Unigram tokenizer learnt from the world's captions by the `tokenizers` library
(no sentencepiece needed; any word is still spelled, in single letters at worst), and a
`FluxTransformer2DModel` with double- and single-stream blocks, jointly, with the rectified-flow objective:
x_t = (1 - s) x_0 + s e, the transformer predicts the velocity e - x_0 at `timestep = s`, s drawn
logit-normal (SD3's choice). Latents are packed in 2x2 patches as FluxPipeline packs them (an 8x8x4 latent
is 16 tokens of 16 channels), the positions are FluxPipeline's own image ids.

Sampling settings a plain pipeline needs: `height=32, width=32, max_sequence_length=16` (the T5 sequence the
transformer was trained on) and, for classifier-free guidance (the model is not guidance-distilled),
`negative_prompt="", true_cfg_scale=5.0`.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from erasecli.models import tiny_world as W
from erasecli.models.training import (Captioner, cosine_lr, encode_moments, latent_batch, load_checkpoint, log,
                                      save_checkpoint, set_lr, update)

MAX_T5 = 16  # the T5 sequence length the transformer is trained on (= the CLIP tokenizer's)
LATENT = 8  # the tiny VAE's latent side for 32x32 images


def caption_corpus(seed: int, n: int = 20000) -> list[str]:
    """Captions of the world as the trainer draws them, plus the quality prompts."""
    rng = random.Random(seed)
    texts = [W.caption(rng.randrange(10), rng.choice(W.COLOUR_NAMES), rng) for _ in range(n)]
    return [t for t in texts if t] + [p for p, _ in W.quality_prompts()]


def write_t5_tokenizer(out: Path, seed: int) -> None:
    """A T5 tokenizer folder (tokenizer.json + config): a Unigram model over Metaspace pieces, as T5's own
    sentencepiece model is. Its pieces: every word of the world's captions (scored by its log frequency, so a
    known word is one piece) and every letter, digit and punctuation mark with and without the word-start mark
    (scored low), so an unseen word is spelled in pieces, never <unk>. Ids: <pad> 0, </s> 1, <unk> 2 (T5's).
    (The `tokenizers` Unigram trainer, tried first, collapses a corpus this repetitive to single letters.)"""
    import math
    from collections import Counter

    from transformers import T5TokenizerFast

    words = Counter(w for t in caption_corpus(seed) for w in t.replace(",", " ,").split())
    total = sum(words.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    vocab += [("\u2581" + w, math.log(n / total)) for w, n in sorted(words.items(), key=lambda kv: -kv[1])]
    chars = string.ascii_letters + string.digits + string.punctuation
    known = {piece for piece, _ in vocab}
    vocab += [(p + c, -12.0) for c in chars for p in ("\u2581", "") if p + c not in known]
    t5 = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=MAX_T5)
    t5.save_pretrained(str(out))


def t5_model(vocab_size: int):
    """T5 v1.1's encoder (gated-GELU feed-forward, relative position buckets) at tiny size."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def flux_transformer_model(joint_dim: int, pooled_dim: int):
    """FLUX.1's transformer at tiny size: 2 double-stream and 4 single-stream blocks, 4 heads of 24 (RoPE axes
    8 + 8 + 8 = the head dim), input 16 channels (2x2 patches of the 4-channel latent), no guidance embedding."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=24,
        num_attention_heads=4, joint_attention_dim=joint_dim, pooled_projection_dim=pooled_dim,
        guidance_embeds=False, axes_dims_rope=(8, 8, 8),
    )


def pack(z: torch.Tensor) -> torch.Tensor:
    from diffusers import FluxPipeline

    b, c, h, w = z.shape
    return FluxPipeline._pack_latents(z, b, c, h, w)


def image_ids() -> torch.Tensor:
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, LATENT // 2, LATENT // 2, "cpu", torch.float32)


def train_flux(vae, clip_te, clip_tok, t5_tok, steps: int, seed: int, batch: int = 128, lr: float = 1e-3,
               ckpt: Path | None = None, ckpt_every: int = 250, exclude_digit: int | None = None):
    """T5 encoder + Flux transformer jointly, with EMA and cosine decay; checkpoints and resumes as the UNet
    stage does (erasecli.models.train_tiny.train_unet)."""
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    clip_te.requires_grad_(False).eval()
    t5 = t5_model(len(t5_tok))
    tr = flux_transformer_model(t5.config.d_model, clip_te.config.hidden_size)
    params = list(tr.parameters()) + list(t5.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=0.75)
    x_all, labels = W.render_labelled("train", seed + 20, copies=3)
    if exclude_digit is not None:
        keep = labels[0] != exclude_digit
        x_all, labels = x_all[keep], tuple(y[keep] for y in labels)
    moments = encode_moments(vae, x_all)
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    cap = Captioner(clip_tok, seed)
    t5_cache: dict[str, torch.Tensor] = {}

    def t5_ids(text: str) -> torch.Tensor:
        if text not in t5_cache:
            t5_cache[text] = t5_tok(text, padding="max_length", max_length=MAX_T5, truncation=True,
                                    return_tensors="pt").input_ids[0]
        return t5_cache[text]

    img_ids, txt_ids = image_ids(), torch.zeros(MAX_T5, 3)
    modules = {"transformer": tr, "t5": t5}
    start = load_checkpoint(ckpt, modules, opt, ema, cap)
    if start:
        log(f"flux: resumed at step {start}")
    t0 = time.time()
    for step in range(start, steps):
        set_lr(opt, cosine_lr(step, steps, lr, 200))
        i, z = latent_batch(moments, batch, scale, shift)  # FluxPipeline decodes z / scale + shift
        texts, clip_ids = cap(*(y[i] for y in labels))
        with torch.no_grad():
            pooled = clip_te(clip_ids).pooler_output  # (B, 64): FluxPipeline's pooled projection input
        states = t5(torch.stack([t5_ids(t) for t in texts])).last_hidden_state  # (B, MAX_T5, 64)
        s = torch.sigmoid(torch.randn(batch))  # logit-normal noise levels
        noise = torch.randn_like(z)
        x_t = (1 - s[:, None, None, None]) * z + s[:, None, None, None] * noise
        pred = tr(hidden_states=pack(x_t), encoder_hidden_states=states, pooled_projections=pooled, timestep=s,
                  img_ids=img_ids, txt_ids=txt_ids).sample
        loss = F.mse_loss(pred, pack(noise - z))
        update(loss, params, opt, ema)
        if step % 100 == 0 or step == steps - 1:
            log(f"flux {step}/{steps} loss {loss.item():.4f} ({(step + 1 - start) / (time.time() - t0):.2f} it/s)")
        if ckpt is not None and ((step + 1) % ckpt_every == 0 or step == steps - 1):
            save_checkpoint(ckpt, step + 1, modules, opt, ema, cap)
    ema.copy_to(params)
    return t5.eval(), tr.eval(), {"steps": steps, "batch": batch, "lr": lr, "final_loss": loss.item(),
                                  "arch": "flux"}


def save_flux_pipeline(from_base: Path, t5_tok_dir: Path, t5, transformer, out: Path) -> None:
    """A FluxPipeline folder. VAE weights, CLIP text encoder and tokenizer are byte copies of the tiny base's;
    the VAE's config gains shift_factor 0 (FluxPipeline decodes latents / scaling_factor + shift_factor)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer, T5TokenizerFast

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=sched, vae=AutoencoderKL.from_pretrained(str(from_base / "vae")),
        text_encoder=CLIPTextModel.from_pretrained(str(from_base / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(str(from_base / "tokenizer")), text_encoder_2=t5,
        tokenizer_2=T5TokenizerFast.from_pretrained(str(t5_tok_dir)), transformer=transformer,
    )
    pipe.to(torch.float16)  # fp16 storage, as the other tiny bases
    pipe.save_pretrained(str(out), safe_serialization=True)
    te_cfg = out / "text_encoder_2" / "config.json"  # transformers 5 loads a text encoder in its config's dtype
    te_cfg.write_text(json.dumps({**json.loads(te_cfg.read_text()), "dtype": "float32"}, indent=2, sort_keys=True) + "\n")
    for sub in ("vae", "text_encoder", "tokenizer"):
        shutil.rmtree(out / sub)
        shutil.copytree(from_base / sub, out / sub)
    vae_cfg = out / "vae" / "config.json"
    vae_cfg.write_text(json.dumps({**json.loads(vae_cfg.read_text()), "shift_factor": 0.0}, indent=2, sort_keys=True)
                       + "\n")
