"""The importable library layer: one function per command. The CLI parses, calls one of these, prints."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from erasecli.errors import UsageError


@dataclass(frozen=True)
class SampleRecord:
    prompt: str
    seed: int
    file: str  # relative to the output folder
    image: object  # PIL.Image


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return s or "empty"


def make_scheduler(pipe, name: str):
    """A fresh scheduler of the recipe's kind, from the base's own config (so the beta schedule is the base's)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(pipe.scheduler.config)
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
    pipe = base.pipe
    pipe.scheduler = make_scheduler(pipe, scheduler)
    images = []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i : i + batch_size]), list(seeds[i : i + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(x)) for x in s]
        extra = {"eta": eta} if scheduler == "ddim" else {}
        with torch.inference_mode():
            out = pipe(prompt=p, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       output_type="pil", **extra)
        images.extend(out.images)
        if on_batch:
            on_batch(len(p))
    return images


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


def check_sample(recipe, *, prompts: Sequence[str], n: int, deltas: Sequence[str] = (), out: Path | None = None,
                 overwrite: bool = False) -> None:
    """Everything about a sample request that can be wrong, checked before any model loads."""
    from erasecli.delta import read_delta_info
    from erasecli.models.registry import resolve_base
    from erasecli.outputs import check_out

    if not prompts:
        raise UsageError("no prompts given", hint="pass --prompt TEXT (repeatable) or --prompts-file FILE")
    if n < 1:
        raise UsageError(f"-n must be >= 1, got {n}")
    check_out(out, overwrite)
    resolve_base(recipe.base)
    for d in deltas:
        read_delta_info(d)


def sample(recipe, *, prompts: Sequence[str], n: int, deltas: Sequence[str] = (), out: Path | None = None,
           overwrite: bool = False, force: bool = False, device: str | None = None, dtype: str = "auto",
           progress: Callable[[int, int], None] | None = None, base=None) -> list[SampleRecord]:
    """`erase sample`: n images per prompt from the base (plus deltas), seeds recipe.sample.seed + i.

    With `out`, writes PNGs (one folder per prompt), a grid per prompt, `manifest.jsonl` and the resolved
    `recipe.yaml`, all into a temp folder that replaces `out` only when complete.
    """
    from erasecli.delta import apply_deltas
    from erasecli.models.registry import load_base
    from erasecli.outputs import replace_dir, staging_dir
    from erasecli.recipes import recipe_to_dict, write_recipe

    check_sample(recipe, prompts=prompts, n=n, deltas=deltas, out=out, overwrite=overwrite)
    out = Path(out) if out is not None else None
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    infos = apply_deltas(base, deltas, force=force)
    cfg = recipe.sample
    jobs = [(p, cfg.seed + i) for p in prompts for i in range(n)]
    done = 0

    def tick(k):
        nonlocal done
        done += k
        if progress:
            progress(done, len(jobs))

    try:
        images = generate(base, [j[0] for j in jobs], [j[1] for j in jobs], steps=cfg.steps, guidance=cfg.guidance,
                          eta=cfg.eta, scheduler=cfg.scheduler, batch_size=cfg.batch_size, on_batch=tick)
    finally:
        if deltas:
            base.pipe.unload_lora_weights()
    records = []
    for pi, p in enumerate(prompts):
        folder = f"{pi:03d}-{_slug(p)}"
        for i in range(n):
            seed = cfg.seed + i
            records.append(SampleRecord(p, seed, f"{folder}/{seed:06d}.png", images[pi * n + i]))
    from erasecli.dist import world

    if out is None or not world().is_main:
        return records
    tmp = staging_dir(out)
    try:
        delta_meta = [d.to_dict() for d in infos]
        with open(tmp / "manifest.jsonl", "w") as f:
            for r in records:
                (tmp / r.file).parent.mkdir(exist_ok=True)
                r.image.save(tmp / r.file)
                f.write(json.dumps({"prompt": r.prompt, "seed": r.seed, "file": r.file, "base": base.name,
                                    "deltas": [d["path"] for d in delta_meta]}) + "\n")
        for pi, p in enumerate(prompts):
            grid = image_grid([r.image for r in records[pi * n : (pi + 1) * n]], cols=min(n, 8))
            grid.save(tmp / f"grid-{pi:03d}-{_slug(p)}.png")
        write_recipe(recipe, tmp / "recipe.yaml")
        (tmp / "run.json").write_text(json.dumps({"command": "sample", "base": base.name, "deltas": delta_meta,
                                                  "recipe": recipe_to_dict(recipe), "n": n}, indent=2))
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return records


def check_evaluate(recipe, *, deltas: Sequence[str] = (), out: Path | None = None, overwrite: bool = False,
                   force: bool = False):
    """Everything about an evaluate request that can be wrong, before any model loads. Returns the plan."""
    from erasecli.delta import read_delta_info
    from erasecli.errors import DeltaError
    from erasecli.eval.metrics import check_metrics
    from erasecli.outputs import check_out
    from erasecli.eval.plan import clip_plan, tiny_plan
    from erasecli.models.registry import resolve_base

    check_metrics(recipe.eval.metrics)
    if not recipe.concept.name:
        raise UsageError("no concept to evaluate", hint='pass --concept, e.g. --concept "digit 3"')
    check_out(out, overwrite)
    ref = resolve_base(recipe.base)
    for d in deltas:
        info = read_delta_info(d)
        if not force and info.base and info.base != ref.name:
            raise DeltaError(f"delta {d} was made for base {info.base!r}, not {ref.name!r}",
                             hint=f"use --base {info.base}, or --force to evaluate it anyway")
    if _judge_kind(recipe, ref) == "classifier":
        return tiny_plan(recipe.concept.name, recipe.concept.kind)
    e = recipe.eval
    return clip_plan(recipe.concept.name, recipe.concept.forget_templates, e.in_domain, e.cross_domain,
                     e.cross_template)


def _judge_kind(recipe, ref) -> str:
    j = recipe.eval.judge
    if j == "auto":
        return "classifier" if ref.kind == "bundled" else "clip"
    if j == "classifier" and ref.kind != "bundled":
        raise UsageError("the shipped classifier judges only the tiny base", hint="use --set eval.judge=clip")
    return j


def evaluate(recipe, *, deltas: Sequence[str] = (), out: Path | None = None, overwrite: bool = False,
             force: bool = False, device: str | None = None, dtype: str = "auto",
             progress: Callable[[str, int, int], None] | None = None, base=None) -> dict:
    """`erase evaluate`: UA/IRA/CRA, CLIP score, FID/KID of the base and each delta, as one report dict.

    Images are generated once per model and shared by every metric; the base's come from an on-disk cache
    when they were made before with the same settings. With `out`, also writes images, grids, report.json
    and report.html (atomically).
    """
    import time

    from erasecli import __version__
    from erasecli.delta import apply_deltas
    from erasecli.eval.cache import cached_generate
    from erasecli.eval.judges import Clip, ClipZeroShotJudge, TinyClassifierJudge
    from erasecli.eval.metrics import METRICS, Context, ModelImages
    from erasecli.models.registry import load_base
    from erasecli.recipes import recipe_to_dict

    t0 = time.time()
    plan = check_evaluate(recipe, deltas=deltas, out=out, overwrite=overwrite, force=force)
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    cfg, e = recipe.sample, recipe.eval
    if _judge_kind(recipe, base.ref) == "classifier":
        judge = TinyClassifierJudge()
        clip = Clip.tiny() if "clip_score" in e.metrics else None
    else:
        clip = Clip.tiny() if base.ref.kind == "bundled" else Clip.load(e.clip_model)
        templ = {"concept": recipe.concept.forget_templates[0], "cross": e.cross_template}
        judge = ClipZeroShotJudge(clip, {k: [templ[k].format(concept=n) for n in names]
                                         for k, names in plan.label_names.items()})
    spp = e.samples_per_prompt
    prompts = [p.prompt for p in plan.prompts for _ in range(spp)]
    seeds = [e.seed + s for _ in plan.prompts for s in range(spp)]
    total = len(prompts) * (1 + len(deltas))
    done = 0

    def tick(k):
        nonlocal done
        done += k
        if progress:
            progress("sampling", done, total)

    models = []
    base_images, hits = cached_generate(base, prompts, seeds, cfg, generate, on_batch=tick)
    models.append(("base", None, base_images))
    for d in deltas:
        info = apply_deltas(base, [d], force=force)[0]
        try:
            imgs = generate(base, prompts, seeds, steps=cfg.steps, guidance=cfg.guidance, eta=cfg.eta,
                            scheduler=cfg.scheduler, batch_size=cfg.batch_size, on_batch=tick)
        finally:
            base.pipe.unload_lora_weights()
        name = Path(d).name or str(d)
        if name in [m[0] for m in models]:  # a/delta and b/delta: keep the columns apart
            name = f"{name}#{len(models)}"
        models.append((name, info, imgs))
    judged = [ModelImages(name, imgs, judge.predict(imgs)) for name, _, imgs in models]
    rows = []
    shared_ir = None
    for (name, info, _), mi in zip(models, judged):
        ctx = Context(plan, spp, mi, judged[0], judge, clip, is_base=info is None, device=base.device,
                      imagereward=shared_ir)
        values = {m: METRICS[m].fn(ctx) for m in e.metrics}
        shared_ir = ctx.imagereward
        rows.append({"name": name, "delta": info.to_dict() if info else None, "metrics": values})
    per_prompt = []
    for i, p in enumerate(plan.prompts):
        idx = list(range(i * spp, (i + 1) * spp))
        entry = {"prompt": p.prompt, "group": p.group, "labels": p.labels, "models": {}}
        for mi in judged:
            entry["models"][mi.name] = {
                kind: sum(int(mi.preds[kind][j]) == label for j in idx) / spp for kind, label in p.labels.items()
            }
        per_prompt.append(entry)
    report = {
        "command": "evaluate",
        "erasecli_version": __version__,
        "concept": plan.concept,
        "kind": plan.kind,
        "base": {"name": base.name, "arch": base.arch, "device": base.device.type, "dtype": str(base.dtype)},
        "judge": {"name": judge.name, "version": judge.version, "features": judge.feature_name},
        "clip": {"name": clip.name, "version": clip.version} if clip else None,
        "protocol": {
            "samples_per_prompt": spp, "seeds": sorted(set(seeds)), "steps": cfg.steps, "guidance": cfg.guidance,
            "eta": cfg.eta, "scheduler": cfg.scheduler,
            "prompts": {g: len(plan.group(g)) for g in ("forget", "retain", "cross")},
            "images_per_model": len(prompts), "base_images_from_cache": hits,
            "definitions": {m: METRICS[m].doc for m in e.metrics},
        },
        "models": rows,
        "prompts": per_prompt,
        "recipe": recipe_to_dict(recipe),
        "wall_seconds": round(time.time() - t0, 2),
    }
    from erasecli.dist import world

    if out is not None and world().is_main:
        from erasecli.eval.report import write_report_dir

        write_report_dir(Path(out), report, plan, spp, [(name, imgs) for name, _, imgs in models], recipe,
                         overwrite=overwrite)
    return report


def check_unlearn(recipe, *, out: Path | None, overwrite: bool = False, resume: Path | None = None):
    """Everything about an unlearn request that can be wrong, before any model loads. Returns the method class."""
    from erasecli.data import check_folder, prompt_sets
    from erasecli.methods import get_method
    from erasecli.models.registry import resolve_base
    from erasecli.outputs import check_out

    cls = get_method(recipe.method)
    cls.check(recipe)
    from erasecli.dist import launched

    if launched() and not cls.data_parallel:
        raise UsageError(f"{recipe.method} runs in one process; several processes train siss, adaptive-siss, "
                         "ppo-alpha and esd", hint="launch this method without accelerate launch / torchrun")
    if out is None:
        raise UsageError("nowhere to put the delta", hint="pass --out DIR")
    if resume is None:
        check_out(out, overwrite)
    ref = resolve_base(recipe.base)
    if not recipe.concept.name:
        raise UsageError("no concept to erase", hint='pass --concept, e.g. --concept "digit 3"')
    sets = prompt_sets(recipe, ref.kind)  # a concept the tiny world lacks fails here
    for key in ("forget_dir", "anchor_dir", "retain_dir"):
        check_folder(getattr(recipe.data, key), f"data.{key}")
    if not sets.forget:
        raise UsageError("no forget prompts", hint="give concept.forget_templates in the recipe")
    check_reward(recipe, ref)
    if recipe.critic.path:
        read_critic_meta(recipe, ref)
    return cls


def check_reward(recipe, ref) -> None:
    from erasecli.errors import RecipeError

    if recipe.critic.reward == "classifier" and ref.kind != "bundled":
        raise RecipeError("critic.reward 'classifier' uses the tiny base's classifier",
                          hint="use --reward clip on this base")


def read_critic_meta(recipe, ref) -> dict:
    """A --critic folder's metadata, checked against the run (base, concept, reward, input) before loading."""
    from safetensors import safe_open

    from erasecli.critic.model import CONFIG_FILE, WEIGHTS_FILE, _decode_meta
    from erasecli.critic.train import check_critic
    from erasecli.errors import EraseError

    folder = Path(recipe.critic.path)
    for f in (folder / WEIGHTS_FILE, folder / CONFIG_FILE):
        if not f.is_file():
            raise EraseError(f"critic folder {folder} has no {f.name}",
                             hint="pass the folder `erase train-critic --out` wrote")
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
        meta = _decode_meta(fh.metadata() or {})
    check_critic(meta, recipe, ref.name, folder)
    return meta


def check_train_critic(recipe, *, out: Path | None, overwrite: bool = False) -> None:
    from erasecli.data import prompt_sets
    from erasecli.models.registry import resolve_base
    from erasecli.outputs import check_out

    if out is None:
        raise UsageError("nowhere to put the critic", hint="pass --out DIR")
    from erasecli.dist import launched

    if launched():
        raise UsageError("train-critic runs in one process", hint="run it without accelerate launch / torchrun")
    check_out(out, overwrite)
    if not recipe.concept.name:
        raise UsageError("no concept", hint='pass --concept, e.g. --concept "digit 3"')
    ref = resolve_base(recipe.base)
    prompt_sets(recipe, ref.kind)
    check_reward(recipe, ref)


def train_critic(recipe, *, out: Path, overwrite: bool = False, device: str | None = None, dtype: str = "auto",
                 base=None, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """`erase train-critic`: sample base trajectories, fit V_phi(x_t, t, c) to their terminal rewards, save it.

    The folder holds `critic.safetensors` (metadata: base, concept, reward, input, report), `config.json`,
    `critic_report.json` (explained variance and RMSE per timestep on held-out trajectories),
    `critic_plot.png` and the resolved `recipe.yaml`, written atomically."""
    import time

    from erasecli.critic.model import save_critic
    from erasecli.critic.train import critic_metadata, plot_critic
    from erasecli.critic.train import train_critic as fit
    from erasecli.data import prompt_sets
    from erasecli.models.registry import load_base
    from erasecli.recipes import write_recipe

    out = Path(out) if out is not None else None
    check_train_critic(recipe, out=out, overwrite=overwrite)
    t0 = time.time()
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    from erasecli.methods.loop import autocast_for

    with autocast_for(base):  # a half-precision base runs under autocast (the critic stays fp32)
        critic, report = fit(recipe, base, prompt_sets(recipe, base.ref.kind), progress=progress)

    def extra(folder: Path):
        (folder / "critic_report.json").write_text(json.dumps(report, indent=2))
        plot_critic(report, folder / "critic_plot.png")
        write_recipe(recipe, folder / "recipe.yaml")

    if out.exists() and not overwrite:
        from erasecli.outputs import check_out

        check_out(out, overwrite)
    save_critic(critic, out, critic_metadata(recipe, base, report), extra=extra)
    report["wall_seconds"] = round(time.time() - t0, 2)
    return {"out": str(out), "report": report}


def unlearn(recipe, *, out: Path, overwrite: bool = False, resume: Path | None = None, device: str | None = None,
            dtype: str = "auto", base=None, data_progress: Callable[[int, int], None] | None = None,
            progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """`erase unlearn`: train recipe.method on the base and write the delta folder.

    The folder holds the diffusers LoRA (`pytorch_lora_weights.safetensors`, with metadata), `delta.json`,
    the resolved `recipe.yaml`, `train_log.jsonl` (one row per step) and `train_plot.png`, written atomically.
    With `resume` (a `<out>.ckpt` folder), the recipe and step come from the checkpoint.
    """
    import time

    import torch

    from erasecli.data import build_train_data
    from erasecli.delta import save_lora_delta
    from erasecli.methods.loop import read_checkpoint, run, write_log
    from erasecli.models.registry import load_base
    from erasecli.plot import plot_training
    from erasecli.recipes import recipe_to_dict

    state = None
    if resume is not None:
        state = read_checkpoint(Path(resume))
        from erasecli.recipes import recipe_from_dict

        recipe = recipe_from_dict(state["recipe"])
        out = out if out is not None else state["out"]
        overwrite = True  # the run that made the checkpoint already claimed `out`
    out = Path(out) if out is not None else None
    check_unlearn(recipe, out=out, overwrite=overwrite, resume=resume)
    t0 = time.time()
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    from erasecli.methods import get_method

    data = build_train_data(recipe, base, progress=data_progress, images=get_method(recipe.method).uses_images(recipe))
    peak0 = _peak_rss_mb()
    try:
        result = run(recipe, base, data, out=out, resume_state=state, progress=progress,
                     checkpoint_dir=Path(resume) if resume is not None else None)
        rows = result["rows"]
        summary = {"train_seconds": round(result["train_seconds"], 2), "steps": len(rows),
                   "trainable_params": result["params"], "data": data.info,
                   "final": {k: v for k, v in rows[-1].items() if isinstance(v, (int, float))} if rows else {},
                   "peak_rss_mb": max(peak0, _peak_rss_mb()), "processes": result["processes"], **result["extra"]}
        if rows and "reward_forget" in rows[0]:  # RL methods: did the forget reward come down, and how far
            summary["reward_forget"] = reward_trend(rows, "reward_forget")
        if base.device.type == "cuda":
            summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)

        def extra(folder: Path):
            write_log(rows, folder / "train_log.jsonl")
            plot_training(rows, folder / "train_plot.png", title=f"{recipe.method}: {recipe.concept.name}")
            (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))

        train_meta = {k: summary[k] for k in ("train_seconds", "steps", "trainable_params")}
        from erasecli.dist import world

        if not world().is_main:  # every process holds the same adapter; one writes it
            return {"out": str(out), "delta": None, "summary": summary}
        info = save_lora_delta(base.pipe.unet, out, base=base, method=recipe.method, concept=recipe.concept.name,
                               recipe=recipe_to_dict(recipe), metrics={"train": train_meta}, overwrite=overwrite,
                               extra=extra)
    finally:  # a base passed in by the caller goes back without our adapter
        base.pipe.unet.delete_adapters("default")
    shutil.rmtree(result["checkpoint"], ignore_errors=True)
    summary["wall_seconds"] = round(time.time() - t0, 2)
    return {"out": str(out), "delta": info.to_dict(), "summary": summary}


def reward_trend(rows: list[dict], key: str, n: int = 10) -> dict:
    """Means of rows[key] over the first and the last n steps (fewer when the run is shorter): one step's reward
    is a mean over a handful of rollouts, too noisy to tell a finished run from one still erasing."""
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not vals:
        return {}
    head, tail = vals[:n], vals[-n:]
    return {"first_steps": len(head), "first_mean": round(sum(head) / len(head), 4),
            "last_steps": len(tail), "last_mean": round(sum(tail) / len(tail), 4)}


def read_concepts_file(path: Path) -> list[str]:
    """A batch job's concepts: one per line; blank lines and `#` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"concepts file {path} does not exist", hint="pass a text file with one concept per line")
    concepts = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    concepts = [c for c in concepts if c]
    if not concepts:
        raise UsageError(f"concepts file {path} lists no concepts", hint="write one concept per line")
    folders: dict[str, str] = {}
    for c in concepts:
        slug = _slug(c, 60)
        if slug in folders:
            raise UsageError(f"concepts {folders[slug]!r} and {c!r} in {path} would share the folder {slug}",
                             hint="list each concept once")
        folders[slug] = c
    return concepts


def batch_folder(out: Path, concept: str) -> Path:
    """Where `erase unlearn --concepts-file` puts one concept's delta."""
    return Path(out) / _slug(concept, 60)


def _done(folder: Path, concept: str) -> bool:
    from erasecli.delta import LORA_FILE

    try:
        info = json.loads((folder / "delta.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / LORA_FILE).is_file() and info.get("concept") == concept


def unlearn_batch(recipe, concepts: Sequence[str], *, out: Path, overwrite: bool = False, base=None,
                  device: str | None = None, dtype: str = "auto",
                  on_event: Callable[[str, str, dict], None] | None = None, **unlearn_kw) -> list[dict]:
    """`erase unlearn --concepts-file`: erase each concept into `out/<slug>/` with one recipe and one loaded base.

    A concept whose folder already holds its delta is skipped (unless `overwrite`); one with a `<slug>.ckpt`
    checkpoint (a run that was stopped) resumes from it; one that fails is recorded and the batch goes on.
    Ctrl-C stops the batch after checkpointing the running concept. Returns one result per concept:
    {"concept", "out", "status": done|skipped|resumed|failed, "error"?, "summary"?}; also written to
    `out/batch.json`."""
    from dataclasses import replace

    from erasecli.errors import EraseError
    from erasecli.methods.loop import Interrupted, checkpoint_dir_for
    from erasecli.models.registry import load_base

    out = Path(out)
    results: list[dict] = []
    say = on_event or (lambda concept, status, info: None)
    for concept in concepts:
        folder = batch_folder(out, concept)
        res: dict = {"concept": concept, "out": str(folder)}
        ckpt = checkpoint_dir_for(folder)
        try:
            if _done(folder, concept) and not overwrite:
                res["status"] = "skipped"
                say(concept, "skipped", res)
                results.append(res)
                continue
            resume = ckpt if (ckpt / "state.pt").is_file() and not overwrite else None
            r = replace(recipe, concept=replace(recipe.concept, name=concept))
            if resume is None:
                check_unlearn(r, out=folder, overwrite=True)  # a bad concept fails before the base loads
            say(concept, "resuming" if resume else "starting", res)
            if base is None:
                base = load_base(recipe.base, device=device, dtype=dtype)
            done = unlearn(None if resume else r, out=folder, overwrite=True, resume=resume, base=base, **unlearn_kw)
            res.update(status="resumed" if resume else "done", summary=done["summary"])
        except Interrupted:
            raise
        except Exception as err:  # noqa: BLE001 - one concept's failure must not stop the others
            msg = err.one_line() if isinstance(err, EraseError) else f"{type(err).__name__}: {err}"
            res.update(status="failed", error=" ".join(msg.split())[:500])
        say(concept, res["status"], res)
        results.append(res)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".batch.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "batch.json")
    return results


def _peak_rss_mb() -> float:
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (2**20 if sys.platform == "darwin" else 2**10), 1)
