"""Every image erasecli makes is made here: schedulers, `generate` (one CPU generator per image, the split
over several processes), the on-disk cache of the base's images, grids and the slugs of file names.

Cache key: base weights fingerprint, device type, dtype, prompt, seed, steps, guidance, eta, scheduler.
Images are stored as PNG, which is lossless for the pipeline's uint8 output, so a cached image is the image.
Location: $ERASECLI_CACHE, else ~/.cache/erasecli.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from erasecli.errors import UsageError
from erasecli.outputs import atomic_write


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of a prompt or a concept: 'A red digit 3!' -> 'a-red-digit-3'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return s or "empty"


def make_scheduler(pipe, name: str):
    """A fresh scheduler of the recipe's kind, from the base's own config (so the beta schedule is the base's).
    A Flux base samples with its own flow-matching Euler scheduler, deterministic as DDIM is: `ddim` names it."""
    from diffusers import DDPMScheduler

    from erasecli.diffusion.ddim import ddim_from
    from erasecli.diffusion.kinds import kind_of

    if kind_of(pipe).flow:
        if name != "ddim":
            raise UsageError(f"a Flux base samples with its flow-matching Euler sampler, not {name!r}",
                             hint="use sample.scheduler ddim (the deterministic sampler) on Flux bases")
        return type(pipe.scheduler).from_config(pipe.scheduler.config)
    if name == "ddim":
        return ddim_from(pipe.scheduler.config)
    if name == "ddpm":
        return DDPMScheduler.from_config(pipe.scheduler.config)
    raise UsageError(f"unknown scheduler {name!r}", hint="use ddim or ddpm")


def generate(base, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance: float, eta: float = 0.0,
             scheduler: str = "ddim", batch_size: int = 16, on_batch: Callable[[int], None] | None = None,
             _local: bool = False):
    """Images for (prompt, seed) pairs, batched. Each image has its own CPU generator seeded with its seed,
    so an image depends on its prompt and seed only, not on the batch it falls in or the device.
    Under several processes (erasecli.dist) each makes every size-th image and all get the whole list."""
    import torch

    from erasecli.dist import world

    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    w = world()
    if w.size > 1 and not _local:
        mine = w.rows(len(prompts))
        local = generate(base, [prompts[i] for i in mine], [seeds[i] for i in mine], steps=steps,
                         guidance=guidance, eta=eta, scheduler=scheduler, batch_size=batch_size,
                         on_batch=(lambda k: on_batch(k * w.size)) if on_batch else None, _local=True)
        return w.gather(local, len(prompts))
    from erasecli.diffusion.guard import trajectory

    pipe = base.pipe
    pipe.scheduler = make_scheduler(pipe, scheduler)
    images = []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i : i + batch_size]), list(seeds[i : i + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(x)) for x in s]
        extra = {"eta": eta} if scheduler == "ddim" else {}
        if base.kind.flow:
            extra = flux_call(base, len(p), guidance)
        with torch.inference_mode(), trajectory(base.denoiser, cfg=guidance > 1, steps=steps):  # a guard's run
            out = pipe(prompt=p, num_inference_steps=steps, generator=gens, output_type="pil",
                       **({"guidance_scale": guidance} | extra))
        images.extend(out.images)
        if on_batch:
            on_batch(len(p))
    return images


def flux_call(base, n: int, guidance: float) -> dict:
    """FluxPipeline's arguments besides prompt, steps and generators. A guidance-distilled transformer (FLUX.1-dev)
    takes `guidance` as its embedded guidance; one that is not (schnell, tiny-flux) gets true classifier-free
    guidance against the empty prompt, the guidance every other base uses (schnell's model card samples at 0)."""
    from erasecli.diffusion.cond import max_sequence_length

    kw = {"height": base.resolution, "width": base.resolution, "max_sequence_length": max_sequence_length(base.pipe)}
    if base.denoiser.config.get("guidance_embeds"):
        return kw | {"guidance_scale": guidance}
    if guidance > 1:
        kw |= {"negative_prompt": [""] * n, "true_cfg_scale": guidance}
    return kw | {"guidance_scale": 1.0}


def generate_with(base, prompts, seeds, cfg, on_batch=None):
    """`generate` with the settings of a recipe's `sample` section."""
    return generate(base, prompts, seeds, steps=cfg.steps, guidance=cfg.guidance, eta=cfg.eta,
                    scheduler=cfg.scheduler, batch_size=cfg.batch_size, on_batch=on_batch)


def image_grid(images, cols: int, min_tile: int = 128):
    """Images in a grid; tiles smaller than `min_tile` are enlarged with nearest-neighbour so people see them."""
    from PIL import Image

    w, h = images[0].size
    k = max(1, -(-min_tile // max(w, h)))
    tw, th = w * k, h * k
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * tw, rows * th))
    for i, im in enumerate(images):
        grid.paste(im.resize((tw, th), Image.NEAREST), ((i % cols) * tw, (i // cols) * th))
    return grid


# ---------------------------------------------------------------------------------------------------
# The cache of the base's images: evaluating ten deltas samples the base once.


def cache_root() -> Path:
    return Path(os.environ.get("ERASECLI_CACHE") or Path.home() / ".cache" / "erasecli")


def image_key(fingerprint: str, device: str, dtype: str, prompt: str, seed: int, cfg) -> str:
    raw = json.dumps([fingerprint, device, dtype, prompt, seed, cfg.steps, cfg.guidance, cfg.eta, cfg.scheduler])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def cached_generate(base, prompts, seeds, cfg, on_batch=None):
    """Images for (prompt, seed) pairs from the base (no delta), reading and filling the cache.
    Returns (images, hits)."""
    from PIL import Image

    from erasecli.dist import world
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
        new = generate_with(base, [prompts[i] for i in missing], [seeds[i] for i in missing], cfg, on_batch)
        write = world().is_main  # one writer under several processes
        for i, im in zip(missing, new):
            images[i] = im
            if write:
                atomic_write(folder / f"{keys[i]}.png", im.save, suffix=".png")
    return images, len(keys) - len(missing)


@dataclass(frozen=True)
class SampleRecord:
    """One image `erase sample` made."""

    prompt: str
    seed: int
    file: str  # relative to the output folder
    image: object  # PIL.Image


def write_samples(out: Path, records: list, prompts: Sequence[str], n: int, recipe, base_name: str,
                  delta_meta: list, overwrite: bool = False) -> None:
    """`erase sample --out`: PNGs (one folder per prompt), a grid per prompt, `manifest.jsonl`, the resolved
    `recipe.yaml` and `run.json`, all into a temp folder that replaces `out` only when complete."""
    from erasecli.outputs import replace_dir, staging_dir
    from erasecli.recipes import recipe_to_dict, write_recipe

    out = Path(out)
    tmp = staging_dir(out)
    try:
        with open(tmp / "manifest.jsonl", "w") as f:
            for r in records:
                (tmp / r.file).parent.mkdir(exist_ok=True)
                r.image.save(tmp / r.file)
                f.write(json.dumps({"prompt": r.prompt, "seed": r.seed, "file": r.file, "base": base_name,
                                    "deltas": [d["path"] for d in delta_meta]}) + "\n")
        for pi, p in enumerate(prompts):
            grid = image_grid([r.image for r in records[pi * n : (pi + 1) * n]], cols=min(n, 8))
            grid.save(tmp / f"grid-{pi:03d}-{slug(p)}.png")
        write_recipe(recipe, tmp / "recipe.yaml")
        (tmp / "run.json").write_text(json.dumps({"command": "sample", "base": base_name, "deltas": delta_meta,
                                                  "recipe": recipe_to_dict(recipe), "n": n}, indent=2))
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
