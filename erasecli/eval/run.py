"""One evaluation: the concept's prompts sampled from the base and each delta, judged once, every metric
computed on the shared images, and the report document (schema: report_schema.json)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence


def evaluate_models(recipe, base, concept, deltas: Sequence[str] = (), *, force: bool = False,
                    progress: Callable[[str, int, int], None] | None = None):
    """Returns (report, models, robust): the report dict, [(name, images)] per model (base first) and, when a
    robustness metric was asked for, {name: attacks.run.attack_model result}.

    Images are generated once per model and shared by every metric; the base's come from the on-disk cache
    when they were made before with the same settings."""
    from erasecli import __version__
    from erasecli.delta import apply_deltas, merged, remove_deltas
    from erasecli.eval.metrics import METRICS, Context, ModelImages, attacks_for
    from erasecli.judges import make_judges
    from erasecli.recipes import recipe_to_dict
    from erasecli.sampling import cached_generate, generate_with

    t0 = time.time()
    cfg, e = recipe.sample, recipe.eval
    judge, clip = make_judges(recipe, base, concept, need_clip="clip_score" in e.metrics)
    spp = e.samples_per_prompt
    prompts = [p.prompt for p in concept.prompts for _ in range(spp)]
    seeds = [e.seed + s for _ in concept.prompts for s in range(spp)]
    anchors = sorted({concept.prompts[i].anchor for i in concept.group("forget")} - {""})
    want_anchors = "fid_forget" in e.metrics and anchors
    total = len(prompts) * (1 + len(deltas)) + (len(anchors) * spp if want_anchors else 0)
    done = 0

    def tick(k):
        nonlocal done
        done += k
        if progress:
            progress("sampling", done, total)

    models = []
    base_images, hits = cached_generate(base, prompts, seeds, cfg, on_batch=tick)
    models.append(("base", None, base_images))
    anchor_images = None
    if want_anchors:  # the base's images of what the forget prompts should show instead, same seeds
        anchor_images, _ = cached_generate(base, [a for a in anchors for _ in range(spp)],
                                           [e.seed + s for _ in anchors for s in range(spp)], cfg, on_batch=tick)
    for d in deltas:
        info = apply_deltas(base, [d], force=force)[0]
        try:
            with merged(base.denoiser):  # the LoRA folded in while sampling (docs/results.md: ~15% on tiny)
                imgs = generate_with(base, prompts, seeds, cfg, on_batch=tick)
        finally:
            remove_deltas(base)
        name = Path(d).name or str(d)
        if name in [m[0] for m in models]:  # a/delta and b/delta: keep the columns apart
            name = f"{name}#{len(models)}"
        models.append((name, info, imgs))
    judged = [ModelImages(name, imgs, judge.predict(imgs)) for name, _, imgs in models]
    robust = {}
    attack_names = attacks_for(e.metrics)
    if attack_names is not None:  # each model attacked with its delta applied; finished attacks are cached
        from erasecli.attacks.run import attack_model

        for (name, info, _), d in zip(models, [None, *deltas]):
            if progress:
                progress(f"attacking {name}", 0, 1)
            robust[name] = attack_model(recipe, base, concept, [d] if d else [], attack_names, judge=judge,
                                        force=force)
    rows = []
    shared_ir = None
    for (name, info, _), mi in zip(models, judged):
        ctx = Context(concept, spp, mi, judged[0], judge, clip, is_base=info is None, device=base.device,
                      imagereward=shared_ir, anchor_images=anchor_images, robustness=robust.get(name))
        values = {}
        for m in e.metrics:
            values[m] = METRICS[m].fn(ctx)
            values.update(ctx.extra)
            ctx.extra.clear()
        shared_ir = ctx.imagereward
        rows.append({"name": name, "delta": info.to_dict() if info else None, "metrics": values})
        if concept.together and "ua" in e.metrics:
            from erasecli.eval.metrics import ua_by_concept

            rows[-1]["ua_by_concept"] = ua_by_concept(ctx)
    per_prompt = []
    for i, p in enumerate(concept.prompts):
        idx = list(range(i * spp, (i + 1) * spp))
        entry = {"prompt": p.prompt, "group": p.group, "labels": p.labels, "models": {}}
        if p.anchor:
            entry["anchor"] = p.anchor
        for mi in judged:
            entry["models"][mi.name] = {
                kind: sum(int(mi.preds[kind][j]) == label for j in idx) / spp for kind, label in p.labels.items()
            }
        per_prompt.append(entry)
    report = {
        "command": "evaluate",
        "erasecli_version": __version__,
        "concept": concept.name,
        "concepts": list(concept.names),
        "kind": concept.kind,
        "base": {"name": base.name, "arch": base.arch, "device": base.device.type, "dtype": str(base.dtype)},
        "judge": {"name": judge.name, "version": judge.version, "features": judge.feature_name},
        "clip": {"name": clip.name, "version": clip.version} if clip else None,
        "protocol": {
            "samples_per_prompt": spp, "seeds": sorted(set(seeds)), "steps": cfg.steps, "guidance": cfg.guidance,
            "eta": cfg.eta, "scheduler": cfg.scheduler,
            "prompts": {g: len(concept.group(g)) for g in ("forget", "retain", "cross")},
            "anchor_prompts": len(anchors) if want_anchors else 0,
            "images_per_model": len(prompts), "base_images_from_cache": hits,
            "definitions": {m: METRICS[m].doc for m in e.metrics},
        },
        "models": rows,
        "prompts": per_prompt,
        "recipe": recipe_to_dict(recipe),
        "wall_seconds": round(time.time() - t0, 2),
    }
    if robust:
        from erasecli.attacks.run import protocol, robustness_row

        report["robustness"] = {"protocol": protocol(recipe, judge),
                                "models": [{"name": n, **robustness_row(r)} for n, r in robust.items()]}
    return report, [(name, imgs) for name, _, imgs in models], robust
