"""Training data of every unlearning method: the concept's forget, anchor and retain prompts, their images
and latents.

docs/methods.md, "Shared pieces". The prompts come from the concept (erasecli.concepts): a forget prompt names
it; its anchor prompt is what it should produce instead; retain prompts must keep their behaviour. Images are sampled from the *base* (or read from user
folders), VAE-encoded once and cached on disk, so a rerun with the same base, prompts and seeds skips both.

Pairing: forget image i of forget prompt j and anchor image i of the same prompt share a seed (the same
initial noise), so a SISS pair differs mostly in the concept. Seeds are `data.seed + j * n + i`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from erasecli.concepts import Concept, concept_for
from erasecli.errors import RecipeError
from erasecli.outputs import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def concept_of(recipe, base_ref):
    """The recipe's concept on this base (erasecli.concepts): its forget, anchor and retain prompts."""
    return concept_for(recipe, base_ref.world)


def check_folder(path: str, key: str) -> None:
    if not path:
        return
    p = Path(path)
    if not p.is_dir():
        raise RecipeError(f"{key} {path} is not a folder", hint="give a folder of images, or leave it empty to sample")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()):
        raise RecipeError(f"{key} {path} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                          hint="put images there, or leave it empty to sample")


@dataclass
class TrainData:
    """Everything a method's step draws from, on the training device. Prompt index 0 is the empty prompt."""

    prompts: list  # unique prompts; embeds[i] encodes prompts[i]
    embeds: object  # (P, L, D) text-encoder hidden states
    forget: object  # (N, C, h, w) scaled latents
    forget_c: object  # (N,) prompt index of each forget latent
    anchor: object  # (N, C, h, w), row i paired with forget row i
    anchor_c: object  # (N,) prompt index of the anchor prompt of forget row i
    retain: object  # (M, C, h, w); M may be 0
    retain_c: object  # (M,)
    sets: Concept = None  # the concept the prompts come from
    info: dict = field(default_factory=dict)


def _latent_key(fingerprint: str, device: str, dtype: str, parts) -> str:
    raw = json.dumps([fingerprint, device, dtype, parts])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def encode_images(base, images):
    """PIL images -> scaled VAE latents ((posterior mean - shift_factor) * scaling_factor: FLUX.1's VAE has a
    shift, SD's none), in batches, on the base's device."""
    import numpy as np
    import torch

    pipe = base.pipe
    res = base.resolution
    scale, shift = pipe.vae.config.scaling_factor, pipe.vae.config.get("shift_factor") or 0.0
    out = []
    for i in range(0, len(images), 32):
        arr = np.stack([np.asarray(im.convert("RGB").resize((res, res))) for im in images[i : i + 32]])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
        with torch.inference_mode():
            z = pipe.vae.encode(x.to(base.device, base.dtype)).latent_dist.mean
            z = z * scale if not shift else (z - shift) * scale
        out.append(z.float().cpu())
    # contiguous, as the latent cache stores them: the VAE hands back channels-last tensors, and training on
    # those took other kernels, so a run that had just sampled its data ended in a (slightly) different
    # delta from a rerun that read the same latents from the cache
    return torch.cat(out).contiguous()


def _folder_images(path: str, prompts):
    """Images of a user folder and their prompts: a same-named .txt beside an image, else prompts in turn."""
    from PIL import Image

    files = sorted(f for f in Path(path).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    images, texts = [], []
    for i, f in enumerate(files):
        images.append(Image.open(f).convert("RGB"))
        side = f.with_suffix(".txt")
        texts.append(side.read_text().strip() if side.exists() else prompts[i % len(prompts)])
    return images, texts


def _latents(base, prompts, seeds, cfg, on_batch):
    """Cached latents of base samples for (prompt, seed) pairs; returns (latents, seconds sampling, cache hit)."""
    from safetensors.torch import load_file, save_file

    from erasecli.models.registry import weights_fingerprint
    from erasecli.sampling import cache_root, cached_generate, image_key

    fp = weights_fingerprint(base)
    keys = [image_key(fp, base.device.type, str(base.dtype), p, s, cfg) for p, s in zip(prompts, seeds)]
    key = _latent_key(fp, base.device.type, str(base.dtype), keys)
    file = cache_root() / "latents" / f"{key}.safetensors"
    if file.exists():
        try:
            z = load_file(str(file))["latents"]
            if on_batch:
                on_batch(len(prompts))
            return z, 0.0, True
        except Exception:  # a truncated cache file: rebuild it
            pass
    t0 = time.time()
    images, _ = cached_generate(base, list(prompts), list(seeds), cfg, on_batch=on_batch)
    z = encode_images(base, images)
    from erasecli.dist import world

    if not world().is_main:  # one writer under several processes
        return z, time.time() - t0, False
    atomic_write(file, lambda tmp: save_file({"latents": z.contiguous()}, str(tmp)))
    return z, time.time() - t0, False


def build_train_data(recipe, base, progress=None, images: bool = True) -> TrainData:
    """Sample (or read) forget, anchor and retain images, VAE-encode them and embed every prompt.
    With images=False only the prompt sets (methods that sample their own rollouts)."""
    import torch

    sets = concept_of(recipe, base.ref)
    if not images:
        empty = torch.zeros(0, *base_latent_shape(base), device=base.device)
        none = torch.zeros(0, dtype=torch.long, device=base.device)
        return TrainData(prompts=[""], embeds=None, forget=empty, forget_c=none, anchor=empty, anchor_c=none,
                         retain=empty, retain_c=none, sets=sets,
                         info={"forget_prompts": len(sets.forget), "retain_prompts": len(sets.retain),
                               "sampling_seconds": 0.0})
    d, cfg = recipe.data, recipe.sample
    n, nr = d.images_per_prompt, d.retain_images_per_prompt
    total = 2 * n * len(sets.forget) + nr * len(sets.retain)
    done = 0

    def tick(k):
        nonlocal done
        done += k
        if progress:
            progress(min(done, total), total)

    seconds, hits = 0.0, 0
    # forget j, image i and its anchor share seed data.seed + j * n + i
    f_prompts = [p for p in sets.forget for _ in range(n)]
    a_prompts = [p for p in sets.anchor for _ in range(n)]
    f_seeds = [d.seed + j * n + i for j in range(len(sets.forget)) for i in range(n)]
    r_prompts = [p for p in sets.retain for _ in range(nr)]
    r_seeds = [d.seed + 100_000 + j * nr + i for j in range(len(sets.retain)) for i in range(nr)]

    def one(folder, prompts, seeds, prompt_pool):
        nonlocal seconds, hits
        if folder:
            images, texts = _folder_images(folder, prompt_pool)
            tick(len(prompts))
            return encode_images(base, images), texts
        if not prompts:
            return torch.zeros(0, *base_latent_shape(base)), []
        z, s, hit = _latents(base, prompts, seeds, cfg, tick)
        seconds += s
        hits += int(hit)
        return z, list(prompts)

    forget, f_texts = one(d.forget_dir, f_prompts, f_seeds, list(sets.forget))
    anchor, a_texts = one(d.anchor_dir, a_prompts, f_seeds, list(sets.anchor))
    retain, r_texts = one(d.retain_dir, r_prompts, r_seeds, list(sets.retain) or list(sets.anchor))
    if len(anchor) != len(forget):  # user folders of different sizes: pair by cycling the anchors
        idx = torch.arange(len(forget)) % len(anchor)
        anchor, a_texts = anchor[idx], [a_texts[i] for i in idx.tolist()]
    prompts = list(dict.fromkeys(["", *f_texts, *a_texts, *r_texts, *sets.anchor]))
    index = {p: i for i, p in enumerate(prompts)}
    from erasecli.diffusion.cond import encode_prompts

    with torch.inference_mode():
        embeds = encode_prompts(base.pipe, prompts, base.device)  # (P, L, D); SDXL: (P, L + 1, D)
    dev = base.device
    return TrainData(
        prompts=prompts, embeds=embeds.float().clone(),
        forget=forget.to(dev), forget_c=torch.tensor([index[p] for p in f_texts], device=dev),
        anchor=anchor.to(dev), anchor_c=torch.tensor([index[p] for p in a_texts], device=dev),
        retain=retain.to(dev), retain_c=torch.tensor([index[p] for p in r_texts], device=dev, dtype=torch.long),
        sets=sets,
        info={"forget_prompts": len(sets.forget), "retain_prompts": len(sets.retain), "forget_images": len(forget),
              "anchor_images": len(anchor), "retain_images": len(retain), "sampling_seconds": round(seconds, 2),
              "latent_sets_from_cache": hits},
    )


def base_latent_shape(base) -> tuple:
    """(C, h, w) of the base's latents at its own resolution (a Flux transformer's inputs are these, packed)."""
    side = base.resolution // base.pipe.vae_scale_factor
    return (base.pipe.vae.config.latent_channels, side, side)
