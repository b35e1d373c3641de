"""How siss training time grows with optimiser steps and with batch size, on the bundled tiny base.

Every point is one `erasecli.api.unlearn` run of `recipes/tiny-digit-siss.yaml` (with `--set`-style overrides
`train.steps=S`, `train.batch_size=B`) on one loaded base, in this process. The training data are sampled once
into a temporary $ERASECLI_CACHE by a warm-up run (reported apart: `data_sampling_seconds`), so the timed runs
read them from the cache. To keep that sampling short the data sets are smaller than the shipped recipe's
(`--data-images` forget and anchor images per forget prompt, 1 per retain prompt, `--data-steps` DDIM steps):
the cost of a training step does not depend on how many examples it draws from.

Reported per point: seconds per step (`summary["train_seconds"]`, which excludes data sampling, / steps) and
training examples per second (steps x batch / train seconds; a siss step draws `batch` forget-anchor pairs and
as many retain examples, so its UNet pass sees 2 x batch inputs). Then least-squares fits
train_seconds = a + b * steps and wall_seconds = a + b * steps (wall: the whole `unlearn` call, so its
intercept is the fixed cost of a run: adapter, cached data, writing the delta and plot), and
seconds_per_step = a + b * batch. Last, the cost knobs (`train.mixed_precision`, `train.gradient_checkpointing`,
`train.cache_text_embeds`, `lora.rank`; `train.compile` with `--compile`), one at a time against the baseline
(measured before and after the knobs, averaged), as `knob_effect` lines with the peak RSS of each run.

    python -m bench.scaling [--steps 10,20,40] [--batch-sizes 4,8,16,32] [--fixed-steps 20] [--no-knobs]
                            [--compile] [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench.common import emit

BENCH = "scaling"
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-digit-siss.yaml"
# (recipe key, value to try): each changes cost, not the method; the baseline is the recipe's own value
KNOBS = (("train.mixed_precision", "bf16"), ("train.gradient_checkpointing", "true"),
         ("train.cache_text_embeds", "false"), ("lora.rank", "16"))
COMPILE_KNOB = ("train.compile", "true")


def linear_fit(xs, ys) -> dict:
    """Least squares y = a + b x; returns a, b and R^2 (R^2 is None when y does not vary)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        raise ValueError("a line needs at least two distinct x values")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    return {"a": a, "b": b, "r2": None if ss_tot == 0 else 1 - ss_res / ss_tot}


@contextmanager
def temp_cache(folder: Path):
    """$ERASECLI_CACHE pointed at `folder` for the block, then restored (benchmarks share one process)."""
    old = os.environ.get("ERASECLI_CACHE")
    os.environ["ERASECLI_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("ERASECLI_CACHE", None)
        else:
            os.environ["ERASECLI_CACHE"] = old


def known_keys() -> set[str]:
    from erasecli.recipes import recipe_keys

    return set(recipe_keys())


class Runner:
    """One base, one work folder; `point(steps, batch, extra)` is one timed `api.unlearn` run."""

    def __init__(self, work: Path, data_overrides: list[str]):
        from erasecli.models.registry import load_base

        self.work = work
        self.base = load_base("tiny", device="cpu")
        self.data_overrides = data_overrides

    def point(self, steps: int, batch: int, extra: tuple = ()) -> dict:
        from bench.sd_size import peak_rss_mb, reset_peak_rss
        from erasecli import api
        from erasecli.recipes import load_recipe

        recipe = load_recipe(RECIPE, [*self.data_overrides, f"train.steps={steps}", f"train.batch_size={batch}",
                                      f"train.checkpoint_every={steps}", *extra])
        reset = reset_peak_rss()
        t0 = time.perf_counter()
        res = api.unlearn(recipe, out=self.work / "delta", overwrite=True, base=self.base)
        wall = time.perf_counter() - t0
        s = res["summary"]
        return {"steps": s["steps"], "batch": batch, "train_seconds": s["train_seconds"], "wall_seconds": wall,
                "sampling_seconds": s["data"]["sampling_seconds"], "data": s["data"],
                "peak_rss_mb": peak_rss_mb(), "peak_rss_reset": reset}


def emit_point(p: dict, sweep: str, common: dict) -> None:
    sps = p["train_seconds"] / p["steps"]
    extra = dict(sweep=sweep, steps=p["steps"], batch_size=p["batch"], train_seconds=p["train_seconds"],
                 wall_seconds=round(p["wall_seconds"], 3), **common)
    emit(BENCH, "seconds_per_step", round(sps, 5), "s/step", **extra)
    emit(BENCH, "samples_per_second", round(p["steps"] * p["batch"] / p["train_seconds"], 2),
         "training examples/s (forget-anchor pairs; the UNet also sees as many retain examples)", **extra)


def run(steps_list, batch_list, fixed_steps: int, sweep_batch: int, knobs: bool, compile_: bool,
        data_images: int, data_steps: int, warmup_steps: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="erasecli-scaling-"))
    data_overrides = [f"data.images_per_prompt={data_images}", "data.retain_images_per_prompt=1",
                      f"sample.steps={data_steps}"]
    common = dict(method="siss", base="tiny", device="cpu", recipe="recipes/tiny-digit-siss.yaml",
                  data_overrides=data_overrides)
    out: dict = {}
    try:
        with temp_cache(work / "cache"):
            r = Runner(work, data_overrides)
            warm = r.point(warmup_steps, sweep_batch)  # samples the data into the cache, warms the kernels
            emit(BENCH, "data_sampling_seconds", warm["sampling_seconds"], "s",
                 note="sampled once by the warm-up run, then read from the cache by every timed run",
                 images=warm["data"].get("forget_images", 0) + warm["data"].get("anchor_images", 0)
                 + warm["data"].get("retain_images", 0), **common)
            points: dict[tuple, dict] = {}

            def get(steps, batch):
                if (steps, batch) not in points:
                    points[(steps, batch)] = r.point(steps, batch)
                return points[(steps, batch)]

            for s in steps_list:
                emit_point(get(s, sweep_batch), "steps", common)
            xs = [float(s) for s in steps_list]
            fit = linear_fit(xs, [get(s, sweep_batch)["train_seconds"] for s in steps_list])
            fit_wall = linear_fit(xs, [get(s, sweep_batch)["wall_seconds"] for s in steps_list])
            emit(BENCH, "fit_train_seconds_vs_steps", round(fit["b"], 5), "s/step (slope b)", intercept_s=round(
                fit["a"], 4), r2=fit["r2"], model="train_seconds = a + b * steps", batch_size=sweep_batch,
                points=list(steps_list), **common)
            emit(BENCH, "fit_wall_seconds_vs_steps", round(fit_wall["b"], 5), "s/step (slope b)",
                 intercept_s=round(fit_wall["a"], 4), r2=fit_wall["r2"],
                 model="wall_seconds of api.unlearn = a + b * steps (a: fixed cost of a run, data from the cache)",
                 batch_size=sweep_batch, points=list(steps_list), **common)
            for b in batch_list:
                emit_point(get(fixed_steps, b), "batch_size", common)
            if len(set(batch_list)) >= 2:
                fb = linear_fit([float(b) for b in batch_list],
                                [get(fixed_steps, b)["train_seconds"] / fixed_steps for b in batch_list])
                emit(BENCH, "fit_seconds_per_step_vs_batch", round(fb["b"], 6), "s/step per example (slope b)",
                     intercept_s=round(fb["a"], 5), r2=fb["r2"], model="seconds_per_step = a + b * batch_size",
                     steps=fixed_steps, points=list(batch_list), **common)
            out = {"points": points, "fit": fit, "fit_wall": fit_wall}
            if knobs:
                out["knobs"] = knob_effects(r, fixed_steps, sweep_batch, get(fixed_steps, sweep_batch), compile_,
                                            common)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def knob_effects(r: Runner, steps: int, batch: int, first_baseline: dict, compile_: bool, common: dict) -> list:
    """Each knob alone against the baseline; the baseline is run again after the knobs and the two averaged,
    so a machine that changed speed in between moves the baseline too."""
    keys = known_keys()
    todo = list(KNOBS) + ([COMPILE_KNOB] if compile_ else [])
    results = []
    runs = []
    for key, value in todo:
        if key not in keys:
            emit(BENCH, "knob_effect", None, "x speedup", knob=key, knob_value=value, skipped=True,
                 why=f"this erasecli's recipes have no field {key}", **common)
            continue
        runs.append((key, value, r.point(steps, batch, (f"{key}={value}",))))
    if not runs:
        return results
    second = r.point(steps, batch)
    base_sps = sum(p["train_seconds"] / p["steps"] for p in (first_baseline, second)) / 2
    base_peak = max(first_baseline["peak_rss_mb"] or 0, second["peak_rss_mb"] or 0) or None
    if not compile_:
        emit(BENCH, "knob_effect", None, "x speedup", knob=COMPILE_KNOB[0], knob_value=COMPILE_KNOB[1], skipped=True,
             why="torch.compile is off by default here (its first steps compile for minutes on a CPU); "
             "pass --compile", **common)
    for key, value, p in runs:
        sps = p["train_seconds"] / p["steps"]
        results.append({"knob": key, "value": value, "seconds_per_step": sps, "speedup": base_sps / sps})
        emit(BENCH, "knob_effect", round(base_sps / sps, 4), "x speedup (baseline s/step / knob s/step)",
             knob=key, knob_value=value, seconds_per_step=round(sps, 5), peak_mb=p["peak_rss_mb"],
             speedup=round(base_sps / sps, 4), baseline_seconds_per_step=round(base_sps, 5),
             baseline_peak_mb=base_peak, peak_kind="peak RSS of the run (high-water mark reset before it)"
             if p["peak_rss_reset"] else "process peak RSS so far (could not reset the high-water mark)",
             steps=steps, batch_size=batch, **common)
    return results


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="10,20,40", help="step counts at --sweep-batch (default 10,20,40)")
    ap.add_argument("--batch-sizes", default="4,8,16,32", help="batch sizes at --fixed-steps (default 4,8,16,32)")
    ap.add_argument("--fixed-steps", type=int, default=20, help="steps of the batch sweep and knobs (default 20)")
    ap.add_argument("--sweep-batch", type=int, default=16, help="batch size of the steps sweep (default 16)")
    ap.add_argument("--no-knobs", action="store_true", help="skip the cost-knob comparison")
    ap.add_argument("--compile", action="store_true", help="also time train.compile (slow to compile on a CPU)")
    ap.add_argument("--data-images", type=int, default=2, help="forget images per forget prompt (default 2)")
    ap.add_argument("--data-steps", type=int, default=10, help="DDIM steps when sampling the data (default 10)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: untouched)")
    ap.add_argument("--quick", action="store_true", help="seconds: steps 2,4 at batch 4; batches 2,4; 2-step knobs")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    steps, batches, fixed, sweep_batch, data_images, data_steps, warm = (
        parse_ints(a.steps), parse_ints(a.batch_sizes), a.fixed_steps, a.sweep_batch, a.data_images, a.data_steps, 5)
    if a.quick:
        steps, batches, fixed, sweep_batch, data_images, data_steps, warm = [2, 4], [2, 4], 2, 4, 1, 2, 1
    run(steps, batches, fixed, sweep_batch, not a.no_knobs, a.compile, data_images, data_steps, warm)


if __name__ == "__main__":
    main()
