"""The importable library face: one function per command, each with its up-front `check_*`.

The CLI parses, calls one of these, prints. The work happens below: images in `sampling`, what a concept
means in `concepts`, training in `methods`, measuring in `eval`, critics in `critic`. Nothing below imports
this module (the import-linter contract in pyproject.toml says so).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

from erasecli.errors import UsageError
from erasecli.recipes.presets import load_with_defaults as load_recipe  # noqa: F401 - the library's recipe loader


def _check_kinds(deltas, guards) -> list:
    """Each --delta a LoRA delta, each --guard a guard (the error names the flag that fits). Returns the infos."""
    from erasecli.delta import check_kind

    return [check_kind(d, "lora") for d in deltas] + [check_kind(g, "guard") for g in guards]


def _check_model_request(recipe, deltas, out, overwrite: bool, force: bool, verb: str, guards=()):
    """What `evaluate` and `attack` share: a concept, a free --out, a known base, deltas and guards made for it.
    Returns the base's reference."""
    from erasecli.errors import DeltaError
    from erasecli.models.registry import resolve_base
    from erasecli.outputs import check_out

    if not recipe.concept.name:
        raise UsageError(f"no concept to {verb}", hint='pass --concept, e.g. --concept "digit 3"')
    check_out(out, overwrite)
    ref = resolve_base(recipe.base)
    for info in _check_kinds(deltas, guards):
        if not force and info.base and info.base != ref.name:
            raise DeltaError(f"{info.kind if info.kind == 'guard' else 'delta'} {info.path} was made for base "
                             f"{info.base!r}, not {ref.name!r}",
                             hint=f"use --base {info.base}, or --force to {verb} it anyway")
    return ref


def _judged_concept(recipe, ref):
    """The concept as the judge sees it: derived from the tiny world when the shipped classifier judges, read
    from the recipe's concept lists when CLIP does (on any base)."""
    from erasecli.concepts import concept_for
    from erasecli.judges import judge_kind

    return concept_for(recipe, ref.world if judge_kind(recipe, ref) == "classifier" else None)


def check_sample(recipe, *, prompts: Sequence[str], n: int, deltas: Sequence[str] = (), out: Path | None = None,
                 overwrite: bool = False, guards: Sequence[str] = ()) -> None:
    """Everything about a sample request that can be wrong, checked before any model loads."""
    from erasecli.models.registry import resolve_base
    from erasecli.outputs import check_out

    if not prompts:
        raise UsageError("no prompts given", hint="pass --prompt TEXT (repeatable) or --prompts-file FILE")
    if n < 1:
        raise UsageError(f"-n must be >= 1, got {n}")
    check_out(out, overwrite)
    resolve_base(recipe.base)
    _check_kinds(deltas, guards)
    if len(guards) > 1:
        raise UsageError(f"{len(guards)} guards given; a sample applies one",
                         hint="sample each guard on its own, or compare them with erase evaluate --guard A --guard B")


def sample(recipe, *, prompts: Sequence[str], n: int, deltas: Sequence[str] = (), out: Path | None = None,
           overwrite: bool = False, force: bool = False, device: str | None = None, dtype: str = "auto",
           progress: Callable[[int, int], None] | None = None, base=None, guards: Sequence[str] = ()) -> list:
    """`erase sample`: n images per prompt from the base (plus deltas and a guard), seeds recipe.sample.seed + i.

    With `out`, writes PNGs (one folder per prompt), a grid per prompt, `manifest.jsonl` and the resolved
    `recipe.yaml`, all into a temp folder that replaces `out` only when complete.
    """
    from erasecli.delta import apply_deltas, merged, remove_deltas
    from erasecli.models.registry import load_base

    check_sample(recipe, prompts=prompts, n=n, deltas=deltas, out=out, overwrite=overwrite, guards=guards)
    out = Path(out) if out is not None else None
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    infos = apply_deltas(base, [*deltas, *guards], force=force)
    cfg = recipe.sample
    jobs = [(p, cfg.seed + i) for p in prompts for i in range(n)]
    done = 0

    def tick(k):
        nonlocal done
        done += k
        if progress:
            progress(done, len(jobs))

    from erasecli.sampling import SampleRecord, generate_with, slug, write_samples

    try:
        with merged(base.denoiser):  # the deltas' LoRA folded into the weights while sampling (no gradient here)
            images = generate_with(base, [j[0] for j in jobs], [j[1] for j in jobs], cfg, on_batch=tick)
    finally:
        if infos:
            remove_deltas(base)
    records = []
    for pi, p in enumerate(prompts):
        folder = f"{pi:03d}-{slug(p)}"
        for i in range(n):
            seed = cfg.seed + i
            records.append(SampleRecord(p, seed, f"{folder}/{seed:06d}.png", images[pi * n + i]))
    from erasecli.dist import world

    if out is not None and world().is_main:
        write_samples(out, records, prompts, n, recipe, base.name, [d.to_dict() for d in infos], overwrite)
    return records


def check_evaluate(recipe, *, deltas: Sequence[str] = (), out: Path | None = None, overwrite: bool = False,
                   force: bool = False, guards: Sequence[str] = ()):
    """Everything about an evaluate request that can be wrong, before any model loads. Returns the concept."""
    from erasecli.eval.metrics import check_metrics

    check_metrics(recipe.eval.metrics)
    ref = _check_model_request(recipe, deltas, out, overwrite, force, "evaluate", guards)
    concept = _judged_concept(recipe, ref)
    concept.check_evaluable()
    from erasecli.eval.metrics import attacks_for

    needed = attacks_for(recipe.eval.metrics)
    if needed:
        from erasecli.attacks.run import check_attacks

        check_attacks(recipe, concept, needed)
    return concept


def evaluate(recipe, *, deltas: Sequence[str] = (), out: Path | None = None, overwrite: bool = False,
             force: bool = False, device: str | None = None, dtype: str = "auto",
             progress: Callable[[str, int, int], None] | None = None, base=None, guards: Sequence[str] = ()) -> dict:
    """`erase evaluate`: UA/IRA/CRA, cra_forget, CLIP score, FID/KID, fid_forget of the base and each delta and
    guard (one column each), as one report dict (erasecli.eval.run). With `out`, also writes images, grids,
    report.json and report.html (atomically)."""
    from erasecli.dist import world
    from erasecli.eval.run import evaluate_models
    from erasecli.models.registry import load_base

    concept = check_evaluate(recipe, deltas=deltas, out=out, overwrite=overwrite, force=force, guards=guards)
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    report, models, robust = evaluate_models(recipe, base, concept, [*deltas, *guards], force=force,
                                             progress=progress)
    if out is not None and world().is_main:
        from erasecli.eval.report import write_report_dir

        write_report_dir(Path(out), report, concept, recipe.eval.samples_per_prompt, models, recipe,
                         overwrite=overwrite, robust=robust)
    return report


def check_attack(recipe, *, deltas: Sequence[str] = (), out: Path | None = None, overwrite: bool = False,
                 force: bool = False, guards: Sequence[str] = ()):
    """Everything about an attack request that can be wrong, before any model loads. Returns the concept."""
    from erasecli.attacks.run import check_attacks

    ref = _check_model_request(recipe, deltas, out, overwrite, force, "attack", guards)
    concept = _judged_concept(recipe, ref)
    kind = known_kind(ref)
    if kind is not None:
        from erasecli.attacks import get_attack

        cannot = [a for a in recipe.attack.attacks if kind.name not in get_attack(a).kinds]
        if cannot:
            can = [a for a in recipe.attack.attacks if a not in cannot]
            raise UsageError(f"the {', '.join(cannot)} attack{'s are' if len(cannot) > 1 else ' is'} not restated "
                             f"for {kind.name} bases yet (docs/methods.md, 'Flux')",
                             hint=f"run --attacks {','.join(can) or 'paraphrase'}")
    check_attacks(recipe, concept, recipe.attack.attacks)
    return concept


def attack(recipe, *, deltas: Sequence[str] = (), out: Path | None = None, overwrite: bool = False,
           force: bool = False, device: str | None = None, dtype: str = "auto",
           progress: Callable[[str, int, int], None] | None = None, base=None, guards: Sequence[str] = ()) -> dict:
    """`erase attack`: does the erased concept come back? Runs recipe.attack.attacks on each delta and guard
    (or on the base alone when none is given) and returns the report: pre-ASR and ASR per attack, with N, the judge, its
    threshold, the seeds and the budget. With `out`, also writes the adversarial prompts (files that `erase
    sample --prompts-file` reads), the learned embeddings, the images and report.html (atomically)."""
    import time

    from erasecli import __version__
    from erasecli.attacks.run import attack_model, protocol, robustness_row
    from erasecli.dist import world
    from erasecli.judges import make_judges
    from erasecli.models.registry import load_base
    from erasecli.recipes import recipe_to_dict

    t0 = time.time()
    concept = check_attack(recipe, deltas=deltas, out=out, overwrite=overwrite, force=force, guards=guards)
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    judge = make_judges(recipe, base, concept, need_clip=False)[0]
    models, results = [], []
    for d in [*deltas, *guards] or [None]:
        from erasecli.delta import read_delta_info

        info = read_delta_info(d) if d else None
        res = attack_model(recipe, base, concept, [d] if d else [], judge=judge, force=force, progress=progress)
        name = (Path(d).name or str(d)) if d else "base"
        if name in [m["name"] for m in models]:
            name = f"{name}#{len(models)}"
        models.append({"name": name, "delta": info.to_dict() if info else None, **robustness_row(res)})
        results.append(res)
    report = {"command": "attack", "erasecli_version": __version__, "concept": concept.name, "kind": concept.kind,
              "base": {"name": base.name, "device": base.device.type, "dtype": str(base.dtype)},
              "protocol": protocol(recipe, judge), "models": models, "recipe": recipe_to_dict(recipe),
              "wall_seconds": round(time.time() - t0, 2)}
    if out is not None and world().is_main:
        from erasecli.eval.report import write_attack_dir

        write_attack_dir(Path(out), report, results, recipe, overwrite=overwrite)
    return report


def known_kind(ref):
    """The base kind of a resolved base when it is known without the network (bundled, a folder, a registry
    name), else None."""
    from erasecli.diffusion.kinds import kind_for_pipeline
    from erasecli.models.registry import BASES, pipeline_class_name

    if ref.kind == "hub" and not any(s.repo == ref.location for s in BASES.values()):
        return None
    return kind_for_pipeline(pipeline_class_name(ref))


def check_kind(recipe, cls, ref) -> None:
    """A method runs on the base kinds it is restated for (Method.kinds); on Flux, adapters sit on the transformer
    only for now. Decided before the base loads, for bases whose kind is known without the network."""
    from erasecli.methods import METHODS

    kind = known_kind(ref)
    if kind is None:
        return
    if kind.name not in cls.kinds:
        can = ", ".join(n for n, m in METHODS.items() if kind.name in m.kinds)
        raise UsageError(f"{recipe.method} is not restated for {kind.name} bases yet (docs/methods.md, 'Flux')",
                         hint=f"on {recipe.base} use {can}")
    if kind.flow and recipe.lora.text_encoder:
        raise UsageError("on a Flux base the adapter sits on the transformer only (FluxPipeline loads CLIP LoRAs, "
                         "and the text states come from T5)", hint="drop --set lora.text_encoder")
    if kind.flow and cls.closed_form and recipe.uce.robust != "none":
        raise UsageError(f"uce.robust {recipe.uce.robust}'s inner attack searches one vocabulary, not restated "
                         "for Flux yet",
                         hint="drop --set uce.robust")


def check_unlearn(recipe, *, out: Path | None, overwrite: bool = False, resume: Path | None = None):
    """Everything about an unlearn request that can be wrong, before any model loads. Returns the method class."""
    from erasecli.critic.train import read_critic_meta
    from erasecli.data import check_folder, concept_of
    from erasecli.methods import get_method
    from erasecli.models.registry import resolve_base
    from erasecli.outputs import check_out
    from erasecli.rewards import check_reward

    cls = get_method(recipe.method)
    cls.check(recipe)
    cls.resolve(recipe)
    from erasecli.methods.robust import check as check_robust

    check_robust(recipe, cls)
    from erasecli.dist import launched
    from erasecli.methods import METHODS

    if launched() and not cls.data_parallel:
        can = ", ".join(n for n, m in METHODS.items() if m.data_parallel)
        raise UsageError(f"{recipe.method} runs in one process; several processes train {can}",
                         hint="launch this method without accelerate launch / torchrun")
    if out is None:
        raise UsageError("nowhere to put the delta", hint="pass --out DIR")
    if resume is None:
        check_out(out, overwrite)
    ref = resolve_base(recipe.base)
    check_kind(recipe, cls, ref)
    if not recipe.concept.name:
        raise UsageError("no concept to erase", hint='pass --concept, e.g. --concept "digit 3"')
    sets = concept_of(recipe, ref)  # a concept the tiny world lacks fails here
    if sets.together and not cls.supports_together:
        can = ", ".join(n for n, m in METHODS.items() if m.supports_together)
        raise UsageError(f"{recipe.method} erases one concept per delta, and {len(sets.names)} were given",
                         hint=f"use {can} to erase several together, "
                              "or --concepts-file without --together for one delta each")
    for key in ("forget_dir", "anchor_dir", "retain_dir"):
        check_folder(getattr(recipe.data, key), f"data.{key}")
    if not sets.forget:
        raise UsageError("no forget prompts", hint="give concept.forget_templates in the recipe")
    check_reward(recipe.critic, ref)
    if recipe.critic.path:
        read_critic_meta(recipe, ref)
    return cls


def check_train_critic(recipe, *, out: Path | None, overwrite: bool = False) -> None:
    from erasecli.data import concept_of
    from erasecli.models.registry import resolve_base
    from erasecli.outputs import check_out
    from erasecli.rewards import check_reward

    if out is None:
        raise UsageError("nowhere to put the critic", hint="pass --out DIR")
    from erasecli.dist import launched

    if launched():
        raise UsageError("train-critic runs in one process", hint="run it without accelerate launch / torchrun")
    check_out(out, overwrite)
    if not recipe.concept.name:
        raise UsageError("no concept", hint='pass --concept, e.g. --concept "digit 3"')
    ref = resolve_base(recipe.base)
    kind = known_kind(ref)
    from erasecli.methods import get_method

    if kind is not None and kind.name not in get_method("critic-rl").kinds:
        raise UsageError(f"the critic learns critic-rl's rollouts, which are not restated for {kind.name} bases yet "
                         "(docs/methods.md, 'Flux')", hint="train critics on Stable Diffusion or SDXL bases")
    concept_of(recipe, ref)
    check_reward(recipe.critic, ref)


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
    from erasecli.data import concept_of
    from erasecli.models.registry import load_base
    from erasecli.recipes import write_recipe

    out = Path(out) if out is not None else None
    check_train_critic(recipe, out=out, overwrite=overwrite)
    t0 = time.time()
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    from erasecli.methods.loop import autocast_for

    with autocast_for(base):  # a half-precision base runs under autocast (the critic stays fp32)
        critic, report = fit(recipe, base, concept_of(recipe, base.ref), progress=progress)

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
    With `resume` (a `<out>.ckpt` folder), the recipe and step come from the checkpoint. The method class is
    resolved once, by the request check, and the adapter lives inside `attached` (erasecli.methods.adapter): a
    base passed in by the caller goes back without it, whatever happens.
    """
    import time

    from erasecli.data import build_train_data
    from erasecli.dist import world
    from erasecli.methods.adapter import attached_for
    from erasecli.methods.loop import peak_rss_mb, read_checkpoint, run, summarise, write_log
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
    cls = check_unlearn(recipe, out=out, overwrite=overwrite, resume=resume)
    recipe = cls.resolve(recipe)
    t0 = time.time()
    if base is None:
        base = load_base(recipe.base, device=device, dtype=dtype)
    if cls.closed_form:
        return _unlearn_closed_form(recipe, cls, base, out, overwrite, t0)
    if cls.guard:
        return _unlearn_guard(recipe, cls, base, out, overwrite, t0)
    data = build_train_data(recipe, base, progress=data_progress, images=cls.uses_images(recipe))
    peak0 = peak_rss_mb()
    with attached_for(recipe.lora, base, recipe.train.seed) as adapter:
        result = run(recipe, base, data, cls, adapter, out=out, resume_state=state, progress=progress,
                     checkpoint_dir=Path(resume) if resume is not None else None)
        rows = result["rows"]
        summary = summarise(result, data, base, peak0)
        if not world().is_main:  # every process holds the same adapter; one writes it
            return {"out": str(out), "delta": None, "summary": summary}

        def extra(folder: Path):
            write_log(rows, folder / "train_log.jsonl")
            plot_training(rows, folder / "train_plot.png", title=f"{recipe.method}: {recipe.concept.name}")
            (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))

        train_meta = {k: summary[k] for k in ("train_seconds", "steps", "trainable_params")}
        info = adapter.save(out, method=recipe.method, concept=data.sets.name, concepts=data.sets.names,
                            recipe=recipe_to_dict(recipe), metrics={"train": train_meta}, overwrite=overwrite,
                            extra=extra)
    shutil.rmtree(result["checkpoint"], ignore_errors=True)
    summary["wall_seconds"] = round(time.time() - t0, 2)
    return {"out": str(out), "delta": info.to_dict(), "summary": summary}


def _unlearn_closed_form(recipe, cls, base, out: Path, overwrite: bool, t0: float) -> dict:
    """uce / rece: solve the edit (erasecli.methods.uce), write it as an exact LoRA delta; no loop, no images."""
    import time

    from erasecli.data import concept_of
    from erasecli.dist import world
    from erasecli.methods.adapter import attached
    from erasecli.methods.loop import peak_rss_mb
    from erasecli.methods.uce import write_factors
    from erasecli.recipes import recipe_to_dict

    concept = concept_of(recipe, base.ref)
    factors, rank, info = cls.edit(recipe, base, concept)
    summary = {"method": recipe.method, "concept": concept.name, "concepts": list(concept.names),
               "train_seconds": info["edit_seconds"], "steps": 0, **info,
               "data": {"sampling_seconds": 0.0, "forget_prompts": len(concept.forget),
                        "retain_prompts": len(concept.retain)}}
    with attached(base, rank=rank, alpha=float(rank), targets=sorted(factors)) as adapter:  # alpha = rank: scale 1
        write_factors(adapter.denoiser, factors)
        summary["trainable_params"] = adapter.numel()
        summary["peak_rss_mb"] = peak_rss_mb()
        if not world().is_main:
            return {"out": str(out), "delta": None, "summary": summary}

        def extra(folder: Path):
            (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))

        meta = {"train": {k: summary[k] for k in ("train_seconds", "steps", "trainable_params", "rank")}}
        if "truncation" in summary:
            meta["truncation"] = summary["truncation"]
        saved = adapter.save(out, method=recipe.method, concept=concept.name, concepts=concept.names,
                             recipe=recipe_to_dict(recipe), metrics=meta, overwrite=overwrite, extra=extra)
    summary["wall_seconds"] = round(time.time() - t0, 2)
    return {"out": str(out), "delta": saved.to_dict(), "summary": summary}


def _unlearn_guard(recipe, cls, base, out: Path, overwrite: bool, t0: float) -> dict:
    """sld, safree: encode the safety concept or the keywords and write the guard folder (erasecli.delta.save_guard); no weights change."""
    import time

    from erasecli.data import concept_of
    from erasecli.delta import save_guard
    from erasecli.methods.loop import peak_rss_mb
    from erasecli.recipes import recipe_to_dict

    concept = concept_of(recipe, base.ref)
    tensors, settings = cls.build(recipe, base, concept)
    summary = {"method": recipe.method, "concept": concept.name, "concepts": list(concept.names), "guard": settings,
               "steps": 0, "train_seconds": round(time.time() - t0, 3), "trainable_params": 0,
               "peak_rss_mb": peak_rss_mb(),
               "data": {"sampling_seconds": 0.0, "forget_prompts": len(concept.forget),
                        "retain_prompts": len(concept.retain)}}

    def extra(folder: Path):
        (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))

    info = save_guard(out, tensors, base=base, method=recipe.method, concept=concept.name, concepts=concept.names,
                      recipe=recipe_to_dict(recipe), settings=settings, overwrite=overwrite, extra=extra)
    summary["wall_seconds"] = round(time.time() - t0, 2)
    return {"out": str(out), "delta": info.to_dict(), "summary": summary}
