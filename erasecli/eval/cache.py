"""On-disk cache of the base model's images, so evaluating ten deltas samples the base once.

Key: base weights fingerprint, device type, dtype, prompt, seed, steps, guidance, eta, scheduler. Images are
stored as PNG, which is lossless for the pipeline's uint8 output, so a cached image is the image.
Location: $ERASECLI_CACHE, else ~/.cache/erasecli.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("ERASECLI_CACHE") or Path.home() / ".cache" / "erasecli")


def image_key(fingerprint: str, device: str, dtype: str, prompt: str, seed: int, cfg) -> str:
    raw = json.dumps([fingerprint, device, dtype, prompt, seed, cfg.steps, cfg.guidance, cfg.eta, cfg.scheduler])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def cached_generate(base, prompts, seeds, cfg, generate, on_batch=None):
    """Images for (prompt, seed) pairs from the base, reading and filling the cache. Returns (images, hits)."""
    from PIL import Image

    from erasecli.models.registry import weights_fingerprint

    fp = weights_fingerprint(base)
    folder = cache_root() / "samples"
    keys = [image_key(fp, base.device.type, str(base.dtype), p, s, cfg) for p, s in zip(prompts, seeds)]
    images: list = [None] * len(keys)
    for i, k in enumerate(keys):
        f = folder / f"{k}.png"
        if f.exists():
            try:
                images[i] = Image.open(f).convert("RGB")
            except OSError:  # a truncated file from an interrupted run: regenerate it
                images[i] = None
    missing = [i for i, im in enumerate(images) if im is None]
    if on_batch and len(missing) < len(keys):
        on_batch(len(keys) - len(missing))
    if missing:
        new = generate(base, [prompts[i] for i in missing], [seeds[i] for i in missing], steps=cfg.steps,
                       guidance=cfg.guidance, eta=cfg.eta, scheduler=cfg.scheduler, batch_size=cfg.batch_size,
                       on_batch=on_batch)
        from erasecli.dist import world

        write = world().is_main  # one writer under several processes
        if write:
            folder.mkdir(parents=True, exist_ok=True)
        for i, im in zip(missing, new):
            images[i] = im
            if not write:
                continue
            tmp = folder / f".{keys[i]}.{os.getpid()}.png"
            im.save(tmp)
            os.replace(tmp, folder / f"{keys[i]}.png")
    return images, len(keys) - len(missing)
