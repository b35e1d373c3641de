"""The unlearning loop every method shares: adapter, data, steps, logs, checkpoints, resume, the delta.

Checkpoints live in `<out>.ckpt/` (`state.pt`, written to a temp file and renamed, plus the resolved
`recipe.yaml`): every `train.checkpoint_every` steps and when the run is interrupted (Ctrl-C finishes the
current step, saves, and exits; a second Ctrl-C stops at once; SIGTERM, as schedulers send before preempting
a job, is treated as Ctrl-C). `--resume <out>.ckpt` restores the adapter,
the method's optimisers and networks, the random generator and the log, and continues to the same delta as
an uninterrupted run. A NaN or inf in a step's losses stops the run and keeps the last good checkpoint.
The checkpoint folder is removed once the delta is written.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from erasecli.errors import EraseError
from erasecli.outputs import atomic_write

STATE_FILE = "state.pt"


class TrainingDiverged(EraseError):
    """A step produced a NaN or inf."""


class Interrupted(EraseError):
    """The user stopped the run; a checkpoint was saved. Exit code 130, as for Ctrl-C."""

    exit_code = 130


def checkpoint_dir_for(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers send before preempting a job


@contextmanager
def _deferred_sigint():
    """The first Ctrl-C or SIGTERM sets a flag the loop reads between steps; a second one interrupts at once."""
    flag = {"hit": False}
    try:
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def handler(signum, frame):
            if flag["hit"]:
                raise KeyboardInterrupt
            flag["hit"] = signal.Signals(signum).name

        for s in STOP_SIGNALS:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: no deferral
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def save_checkpoint(folder: Path, *, step: int, ctx, method, rows: list, train_seconds: float, out: Path,
                    adversary=None) -> None:
    from erasecli import __version__
    from erasecli.recipes import recipe_to_dict, write_recipe

    if not ctx.world.is_main:  # every process holds the same state; one writes it
        return
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "version": __version__,
        "step": step,
        "out": str(out),
        "recipe": recipe_to_dict(ctx.recipe),
        **ctx.adapter.state_dict(),  # adapter, adapter_<text encoder> (erasecli.methods.adapter)
        "method": method.state_dict(),
        "gen": ctx.gen.get_state(),
        "robust": adversary.state_dict() if adversary is not None else None,
        "rows": rows,
        "train_seconds": train_seconds,
    }
    atomic_write(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))
    write_recipe(ctx.recipe, folder / "recipe.yaml")


def read_checkpoint(folder: Path) -> dict:
    f = Path(folder) / STATE_FILE
    if not f.exists():
        raise EraseError(f"no checkpoint in {folder} (expected {STATE_FILE})",
                         hint="pass the <out>.ckpt folder an interrupted `erase unlearn` printed")
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as err:
        raise EraseError(f"checkpoint {f} cannot be read: {err}".splitlines()[0]) from err


def _finite(row: dict) -> bool:
    import math

    # the losses decide; diagnostics such as a separated gradient norm may be NaN by design
    return all(math.isfinite(v) for k, v in row.items() if isinstance(v, float) and (k == "loss" or k.startswith("L_")))


def _text_encoder(base, prompts: list):
    """train.cache_text_embeds false: prompt indices -> fresh text-encoder states, every call."""

    def encode(c):
        from erasecli.diffusion.cond import encode_prompts

        with torch.no_grad():
            return encode_prompts(base.pipe, [prompts[int(i)] for i in c], base.device)

    return encode


def half_dtype(base):
    """The base's weight dtype if it is fp16 / bf16 (--dtype, or fp16 by default on CUDA), else None."""
    dt = getattr(base, "dtype", None)
    return dt if dt in (torch.float16, torch.bfloat16) else None


def autocast_for(base, dtype=None):
    """Autocast to `dtype` (or to the base's half dtype) on the base's device; a no-op for fp32."""
    import contextlib

    dtype = dtype or half_dtype(base)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=base.device.type, dtype=dtype)


def compute_knobs(recipe, base, ctx) -> tuple:
    """Apply the recipe's cost knobs to the context; returns (autocast context factory, undo)."""
    import contextlib

    cfg = recipe.train
    unet = ctx.adapter.denoiser
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if not cfg.cache_text_embeds:
        ctx.encode = _text_encoder(base, ctx.data.prompts)
    if cfg.compile:
        ctx.unet = torch.compile(unet)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    if dtype is None:
        dtype = half_dtype(base)  # half weights with the fp32 adapter run only under autocast

    def autocast():
        return autocast_for(base, dtype) if dtype is not None else contextlib.nullcontext()

    def undo():
        if cfg.gradient_checkpointing:
            unet.disable_gradient_checkpointing()

    return autocast, undo


def run(recipe, base, data, cls, adapter, *, out: Path, resume_state: dict | None = None, progress=None,
        checkpoint_dir: Path | None = None) -> dict:
    """Train method class `cls` (recipe.method's, resolved once by the request check) on `data`, updating the
    attached `adapter` (erasecli.methods.adapter.attached); returns {"rows", "train_seconds", "method", "params"}
    with the adapter trained. Raises TrainingDiverged / Interrupted after saving what can be resumed."""
    from erasecli.diffusion.noise import schedule_of
    from erasecli.dist import world
    from erasecli.methods import Context

    gen = torch.Generator("cpu").manual_seed(recipe.train.seed)
    ctx = Context(recipe=recipe, base=base, unet=adapter.denoiser, adapter=adapter, data=data, gen=gen,
                  noise=schedule_of(base.pipe.scheduler, base.device), device=base.device, world=world())
    autocast, undo = compute_knobs(recipe, base, ctx)
    cond = adversary = None
    if recipe.lora.text_encoder or recipe.robust.enabled:
        from erasecli.methods.robust import Adversary, Conditions

        cond = Conditions(base, data.prompts)
        if recipe.lora.text_encoder or ctx.encode is not None:  # states through the (trained) text encoder
            ctx.encode = cond.encode
        if recipe.robust.enabled:
            adversary = Adversary(ctx, cond)
        ctx.cond, ctx.adversary = cond, adversary  # critic-rl conditions its rollouts through them
    try:
        return _run(recipe, base, ctx, cls, autocast, out=out, resume_state=resume_state, progress=progress,
                    checkpoint_dir=checkpoint_dir, adversary=adversary)
    finally:
        undo()
        if cond is not None:
            cond.close()


def lr_factor(schedule: str, k: int, total: int) -> float:
    """train.lr_schedule: the share of train.lr that step k (0-based) of `total` trains with."""
    if schedule == "constant":
        return 1.0
    done = k / total
    return 1.0 - done if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))


def _set_lr(opt, schedule: str, k: int, total: int) -> None:
    """A function of the step alone, so a resumed run trains with the same rates as an unbroken one."""
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])  # torch's own key for a group's starting rate
        group["lr"] = group["initial_lr"] * lr_factor(schedule, k, total)


def _run(recipe, base, ctx, cls, autocast, *, out, resume_state, progress, checkpoint_dir, adversary) -> dict:
    gen = ctx.gen
    with autocast():  # a method may sample (critic-rl trains its critic here)
        method = cls(ctx)
    total = cls.total_steps(recipe)
    rows: list[dict] = []
    start, train_seconds = 0, 0.0
    if resume_state is not None:
        ctx.adapter.load_state_dict(resume_state)
        if adversary is not None and resume_state.get("robust"):
            adversary.load_state_dict(resume_state["robust"])
        method.load_state_dict(resume_state["method"])
        gen.set_state(resume_state["gen"])
        rows = list(resume_state["rows"])
        start, train_seconds = resume_state["step"], resume_state["train_seconds"]
    ckpt = checkpoint_dir or checkpoint_dir_for(out)
    every = recipe.train.checkpoint_every
    last_saved = start if resume_state is not None else None
    ctx.adapter.denoiser.train()
    with _deferred_sigint() as sigint:
        for k in range(start, total):
            _set_lr(method.opt, recipe.train.lr_schedule, *method.run_position(k))
            t0 = time.perf_counter()
            with autocast():
                adv = adversary.before_step(k) if adversary is not None else {}
                row = {**method.step(k), **adv}
            dt = time.perf_counter() - t0
            train_seconds += dt
            row = {"step": k + 1, **row, "lr": method.opt.param_groups[0]["lr"], "seconds": round(dt, 4)}
            if not _finite(row):
                where = f"; the last good checkpoint is {ckpt} (step {last_saved})" if last_saved else ""
                raise TrainingDiverged(
                    f"step {k + 1} of {recipe.method} produced a non-finite loss "
                    f"({', '.join(f'{a}={b}' for a, b in row.items() if isinstance(b, float))}){where}",
                    hint="lower train.lr or siss.scaling_norm, then rerun or --resume the checkpoint")
            rows.append(row)
            if progress:
                progress(k + 1, total, row)
            if method.finished(rows):
                break
            if (k + 1) % every == 0 and k + 1 < total:
                save_checkpoint(ckpt, step=k + 1, ctx=ctx, method=method, rows=rows, train_seconds=train_seconds,
                                out=out, adversary=adversary)
                last_saved = k + 1
            stop = bool(ctx.world.total(torch.tensor(float(bool(sigint["hit"])))) > 0)  # all processes stop together
            if stop and k + 1 < total:
                save_checkpoint(ckpt, step=k + 1, ctx=ctx, method=method, rows=rows, train_seconds=train_seconds,
                                out=out, adversary=adversary)
                by = " by SIGTERM" if sigint["hit"] == "SIGTERM" else ""
                raise Interrupted(f"interrupted{by} after step {k + 1} of {total}; checkpoint saved to {ckpt}",
                                  hint=f"continue with `erase unlearn --resume {ckpt}`")
    ctx.adapter.denoiser.eval()
    return {"rows": rows, "train_seconds": train_seconds, "method": method, "checkpoint": ckpt,
            "extra": {**method.extra_summary(), **(adversary.summary() if adversary is not None else {})},
            "params": ctx.adapter.numel(), "processes": ctx.world.size}


def write_log(rows: list, path: Path) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (2**20 if sys.platform == "darwin" else 2**10), 1)


def reward_trend(rows: list[dict], key: str, n: int = 10) -> dict:
    """Means of rows[key] over the first and the last n steps (fewer when the run is shorter): one step's reward
    is a mean over a handful of rollouts, too noisy to tell a finished run from one still erasing."""
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not vals:
        return {}
    head, tail = vals[:n], vals[-n:]
    return {"first_steps": len(head), "first_mean": round(sum(head) / len(head), 4),
            "last_steps": len(tail), "last_mean": round(sum(tail) / len(tail), 4)}


def summarise(result: dict, data, base, peak0: float) -> dict:
    """`train_summary.json` of a finished run: seconds, steps, data, last row, memory, the method's extras."""
    rows = result["rows"]
    summary = {"train_seconds": round(result["train_seconds"], 2), "steps": len(rows),
               "trainable_params": result["params"], "data": data.info,
               "final": {k: v for k, v in rows[-1].items() if isinstance(v, (int, float))} if rows else {},
               "peak_rss_mb": max(peak0, peak_rss_mb()), "processes": result["processes"], **result["extra"]}
    if rows and "reward_forget" in rows[0]:  # RL methods: did the forget reward come down, and how far
        summary["reward_forget"] = reward_trend(rows, "reward_forget")
    if base.device.type == "cuda":
        summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return summary
