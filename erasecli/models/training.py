"""What the tiny bases' trainers share (erasecli.models.train_tiny, erasecli.models.train_flux): the learning-rate
schedule, random captions, a batch of latents, one optimiser step, and stage checkpoints that resume to the
weights of an uninterrupted run."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from erasecli.models.worlds import world as get_world

MAX_TOKENS = 16  # the tiny bases' CLIP context length


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


class Captioner:
    """Random captions for labelled images (digit, colour[, style]), tokenized with a cache (the caption set
    is small)."""

    def __init__(self, tokenizer, seed: int, world: str = "digits"):
        self.tok = tokenizer
        self.world = get_world(world)
        self.rng = random.Random(seed)
        self.cache: dict[str, torch.Tensor] = {}

    def ids(self, text: str) -> torch.Tensor:
        if text not in self.cache:
            self.cache[text] = self.tok(text, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                        return_tensors="pt").input_ids[0]
        return self.cache[text]

    def __call__(self, *labels) -> tuple[list[str], torch.Tensor]:
        texts = [self.world.caption_for(lab, self.rng) for lab in zip(*labels)]
        return texts, torch.stack([self.ids(t) for t in texts])  # (B, MAX_TOKENS)


def load_checkpoint(ckpt: Path | None, modules: dict, opt, ema, cap) -> int:
    """Restore a stage's checkpoint (written by `save_checkpoint`): weights of `modules` by name, optimiser,
    EMA, torch's and the captioner's RNG states. The step to continue from; 0 when there is none."""
    if ckpt is None or not ckpt.exists():
        return 0
    st = torch.load(ckpt, weights_only=False)  # our own file
    for name, m in modules.items():
        m.load_state_dict(st[name])
    opt.load_state_dict(st["opt"])
    ema.load_state_dict(st["ema"])
    torch.set_rng_state(st["rng"])
    cap.rng.setstate(st["cap_rng"])
    return st["step"]


def save_checkpoint(ckpt: Path, step: int, modules: dict, opt, ema, cap) -> None:
    """What resuming at `step` needs to reach the weights of an uninterrupted run, written atomically."""
    from erasecli.outputs import atomic_write

    st = {"step": step, **{name: m.state_dict() for name, m in modules.items()}, "opt": opt.state_dict(),
          "ema": ema.state_dict(), "rng": torch.get_rng_state(), "cap_rng": cap.rng.getstate()}
    atomic_write(ckpt, lambda tmp: torch.save(st, tmp))


def update(loss, params, opt, ema) -> None:
    """One optimiser step on `loss`, gradients clipped at norm 1, then the EMA's step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema.step(params)


def encode_moments(vae, x: torch.Tensor) -> torch.Tensor:
    """The VAE posterior of every training image, encoded once (N, 2C, h, w: mean, logvar); a stage then draws
    a fresh posterior sample per step (`latent_batch`), as Stable Diffusion's training does."""
    with torch.no_grad():
        return torch.cat([vae.encode(x[i : i + 512]).latent_dist.parameters for i in range(0, len(x), 512)])


def latent_batch(moments, batch: int, scale: float, shift: float = 0.0):
    """Indices of a random batch of training images and their latents as the denoiser sees them: a sample of
    each image's VAE posterior (moments (N, 2C, h, w): mean, logvar), shifted and scaled ((z - shift) * scale,
    as the pipeline un-scales before decoding)."""
    i = torch.randint(len(moments), (batch,))
    mean, logvar = moments[i].chunk(2, dim=1)  # (B, C, h, w) each
    return i, ((mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)) - shift) * scale
