"""Throughput of `erase sample`'s code path against a plain diffusers pipeline call on the same tiny base.

Both sides draw the same images: the bundled tiny base (`load_base("tiny", device="cpu")`), the same prompts
and seeds (one CPU `torch.Generator` per image, seed `sample.seed + i` for image i of a prompt), the same DDIM
scheduler, steps, guidance, eta and batch size. "erase" is `erasecli.api.sample(recipe, prompts=..., n=...,
base=base)` (no output folder); "plain" is `base.pipe(prompt=..., generator=[...], ...)` batch by batch, as a
diffusers user would write it. After one warm-up call each, the two run interleaved (A B A B ...) in one
process, so a machine that speeds up or slows down affects both alike. Reported: images/s of each (total
images / total seconds over the repeats), the ratio erase/plain (target >= 0.95), and the largest absolute
pixel difference between the two sides' images (0 means the same images).

    python -m bench.sample_speed [--prompts 2] [-n 8] [--repeats 3] [--steps S] [--batch-size B] [--threads T]
                                 [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import emit

BENCH = "sample_speed"
TARGET = 0.95


def plain_generate(pipe, prompts, seeds, *, steps: int, guidance: float, eta: float, batch_size: int):
    """The same images with diffusers alone: a fresh DDIM scheduler from the pipeline's config, one CPU
    generator per image, `batch_size` prompts per pipeline call."""
    import torch
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        out = pipe(prompt=list(prompts[i : i + batch_size]), num_inference_steps=steps, guidance_scale=guidance,
                   eta=eta, generator=gens, output_type="pil")
        images.extend(out.images)
    return images


def max_pixel_diff(a, b) -> int:
    """Largest absolute difference (0-255) over every pixel and channel of two equally long image lists."""
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"{len(a)} images against {len(b)}")
    return max(int(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max()) for x, y in zip(a, b))


def bench_prompts(k: int) -> list[str]:
    """k distinct prompts of the tiny world (colour x digit), in a fixed order."""
    from erasecli.models import tiny_world as W

    pairs = [(c, d) for d in range(10) for c in W.COLOUR_NAMES]
    return [W.quality_prompt(c, d) for c, d in pairs[:k]]


def run(n_prompts: int, n: int, repeats: int, overrides: list[str]) -> dict:
    from erasecli import api
    from erasecli.models.registry import load_base
    from erasecli.recipes import load_recipe

    recipe = load_recipe(None, ["sample.scheduler=ddim", *overrides])
    cfg = recipe.sample
    prompts = bench_prompts(n_prompts)
    base = load_base("tiny", device="cpu")
    jobs = [(p, cfg.seed + i) for p in prompts for i in range(n)]  # api.sample's order: prompt-major
    job_prompts, job_seeds = [j[0] for j in jobs], [j[1] for j in jobs]

    def erase_side():
        return [r.image for r in api.sample(recipe, prompts=prompts, n=n, base=base)]

    def plain_side():
        return plain_generate(base.pipe, job_prompts, job_seeds, steps=cfg.steps, guidance=cfg.guidance,
                              eta=cfg.eta, batch_size=cfg.batch_size)

    sides = {"erase": erase_side, "plain": plain_side}
    images = {name: fn() for name, fn in sides.items()}  # warm-up, and the images compared below
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    rate = {name: len(jobs) * repeats / sum(s) for name, s in seconds.items()}
    common = dict(images=len(jobs), prompts=len(prompts), per_prompt=n, repeats=repeats, steps=cfg.steps,
                  guidance=cfg.guidance, eta=cfg.eta, scheduler=cfg.scheduler, batch_size=cfg.batch_size,
                  base="tiny", device="cpu", order="interleaved erase/plain after one warm-up each")
    for name in sides:
        emit(BENCH, f"{name}_images_per_second", round(rate[name], 3), "images/s",
             median_seconds=round(statistics.median(seconds[name]), 3),
             seconds=[round(s, 3) for s in seconds[name]], **common)
    ratio = rate["erase"] / rate["plain"]
    # the median pair is less moved by one slow call on a shared machine; reported beside, not instead
    median_ratio = statistics.median(seconds["plain"]) / statistics.median(seconds["erase"])
    emit(BENCH, "erase_over_plain", round(ratio, 4), "ratio", target=TARGET, meets_target=ratio >= TARGET,
         ratio_of_medians=round(median_ratio, 4), **common)
    diff = max_pixel_diff(images["erase"], images["plain"])
    emit(BENCH, "max_abs_pixel_diff", diff, "uint8 levels (0-255)", target=0, **common)
    return {"rate": rate, "ratio": ratio, "max_abs_pixel_diff": diff}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sample_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2, help="distinct prompts (default 2)")
    ap.add_argument("-n", type=int, default=8, help="images per prompt (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per side after the warm-up (default 3)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the recipe's sample.steps)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance (default: the recipe's)")
    ap.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the recipe's)")
    ap.add_argument("--batch-size", type=int, default=None, help="images per pipeline call (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: untouched)")
    ap.add_argument("--quick", action="store_true", help="a few seconds: 2 prompts x 2 images, 4 steps, 1 repeat")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.quick:
        a.prompts, a.n, a.repeats = 2, 2, 1
        a.steps = a.steps or 4
    overrides = [f"sample.{k}={v}" for k, v in (("steps", a.steps), ("guidance", a.guidance), ("eta", a.eta),
                                                 ("batch_size", a.batch_size)) if v is not None]
    run(a.prompts, a.n, a.repeats, overrides)


if __name__ == "__main__":
    main()
