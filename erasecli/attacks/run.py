"""Running the attacks on one model (the base, or the base with deltas): the shared set-up (forget prompts,
pre-attack successes, the base's target images, the base's paraphrase images), each attack, and the cache of
finished attacks, so re-evaluating a delta skips work already done."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence


def check_attacks(recipe, concept, names: Sequence[str]) -> None:
    """Everything about the attacks that can be wrong before any model loads."""
    from erasecli.attacks import get_attack
    from erasecli.errors import UsageError

    if not concept.group("forget"):
        raise UsageError("the concept has no forget prompts to attack", hint="check concept.forget_templates")
    if concept.together and names:
        first = concept.names[0]
        raise UsageError(f"the attacks take one concept at a time, and {len(concept.names)} were given",
                         hint=f"attack each on its own, e.g. erase attack --concept {first!r} --delta DELTA "
                              "(a delta that erased several works)")
    for n in names:
        get_attack(n).check(recipe, concept)


def _forget_prompts(concept) -> list[str]:
    return [concept.prompts[i].prompt for i in concept.group("forget")]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _cache_key(recipe, base, concept, deltas, name: str) -> str:
    from dataclasses import asdict

    from erasecli import __version__
    from erasecli.delta import read_delta_info
    from erasecli.models.registry import weights_fingerprint

    parts = [__version__, weights_fingerprint(base), base.device.type, str(base.dtype), concept.name, concept.kind,
             [_file_digest(read_delta_info(d).file) for d in deltas], asdict(recipe.attack), asdict(recipe.sample),
             recipe.eval.judge, name]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _load_cached(file: Path):
    import torch

    try:
        return torch.load(file, weights_only=False)  # our own file, written below
    except Exception:  # a truncated file from an interrupted run: attack again
        return None


def attack_model(recipe, base, concept, deltas: Sequence[str] = (), names: Sequence[str] = (), *,
                 judge=None, force: bool = False, progress=None) -> dict:
    """Run `names` (default recipe.attack.attacks) on the base with `deltas` applied together.

    Returns {"forget": N prompts, "pre": per-prompt pre-attack successes, "pre_asr", "outcomes": {name:
    AttackOutcome}, "from_cache": [names], "seconds"}. The deltas are unloaded again before returning."""
    import torch

    from erasecli.attacks import AttackContext, get_attack
    from erasecli.attacks.paraphrase import paraphrases_of
    from erasecli.data import encode_images
    from erasecli.delta import apply_deltas, remove_deltas
    from erasecli.outputs import atomic_write
    from erasecli.sampling import cache_root, cached_generate

    t0 = time.time()
    names = list(names or recipe.attack.attacks)
    a = recipe.attack
    if judge is None:
        from erasecli.judges import make_judges

        judge = make_judges(recipe, base, concept, need_clip=False)[0]
    forget = _forget_prompts(concept)
    say = progress or (lambda what, done, total: None)
    source = base  # whose images show the concept: a retrained base's own cannot, so its reference's
    if base.ref.reference:
        from erasecli.models.registry import load_base

        import torch

        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(base.dtype, "fp32")
        source = load_base(base.ref.reference, device=base.device.type, dtype=dtype)
    folder = cache_root() / "attacks"
    keys = {n: _cache_key(recipe, base, concept, deltas, n) for n in names}
    cached = {n: _load_cached(folder / f"{keys[n]}.pt") for n in names if (folder / f"{keys[n]}.pt").exists()}
    cached = {n: o for n, o in cached.items() if o is not None}
    todo = [n for n in names if n not in cached]
    seeds = [a.seed + i for i in range(a.samples)]
    ctx = AttackContext(recipe, base, concept, judge, forget, pre=[], pre_images=[], targets=None,
                        device=base.device, budget=a.budget)
    # everything the base itself provides, drawn with no delta (and cached on disk)
    if any(n in ("prompt", "inversion") for n in todo):
        say("target images", 0, 1)
        t_seeds = [a.seed + 10_000 + i for i in range(a.targets)]
        imgs, _ = cached_generate(source, [p for p in forget for _ in t_seeds], t_seeds * len(forget),
                                  recipe.sample)
        z = encode_images(base, imgs)  # (N * targets, C, h, w); the attacked base's VAE (the same on the oracle)
        ctx.targets = z.view(len(forget), len(t_seeds), *z.shape[1:])
    if "paraphrase" in todo:
        texts = paraphrases_of(recipe, concept)
        flat, _ = cached_generate(source, [p for p in texts for _ in seeds], seeds * len(texts), recipe.sample)
        ctx.base_paraphrase_images = [flat[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(texts))]
    if deltas:
        apply_deltas(base, deltas, force=force)
    try:
        if deltas:
            ctx.pre_images = ctx.draw(forget)
        else:
            flat, _ = cached_generate(base, [p for p in forget for _ in seeds], seeds * len(forget), recipe.sample)
            ctx.pre_images = [flat[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(forget))]
        ctx.pre = [ctx.succeeds(imgs) for imgs in ctx.pre_images]
        outcomes = {}
        for i, n in enumerate(names):
            if n in cached:
                outcomes[n] = cached[n]
                continue
            say(f"attack {n}", i, len(names))
            with torch.enable_grad():
                outcomes[n] = get_attack(n)().run(ctx)
            from erasecli.dist import world

            if world().is_main:
                out = outcomes[n]
                atomic_write(folder / f"{keys[n]}.pt", lambda tmp, o=out: torch.save(o, tmp))
    finally:
        if deltas:
            remove_deltas(base)
    pre = ctx.pre
    return {"forget": forget, "pre": pre, "pre_asr": sum(pre) / len(pre), "pre_images": ctx.pre_images,
            "outcomes": outcomes,
            "from_cache": sorted(cached), "seconds": round(time.time() - t0, 2)}


def protocol(recipe, judge) -> dict:
    """What the robustness numbers mean, stored beside them."""
    a = recipe.attack
    return {"judge": judge.name, "judge_version": judge.version, "threshold": a.threshold, "samples": a.samples,
            "seeds": [a.seed + i for i in range(a.samples)], "budget": a.budget,
            "counting": "pre_asr: share of the N forget prompts judged as the concept with no attack; asr: share "
                        "judged as it before or after the attack (pre-attack successes count, as UnlearnDiffAtk); "
                        "paraphrase: N = paraphrases the base draws the concept for",
            "prompt": {"tokens": a.prompt_tokens, "steps": max(1, round(a.prompt_steps * a.budget)),
                       "restarts": max(1, round(a.prompt_restarts * a.budget)), "lr": a.prompt_lr,
                       "targets": a.targets},
            "inversion": {"steps": max(1, round(a.inversion_steps * a.budget)), "lr": a.inversion_lr,
                          "num_vectors": a.num_vectors, "init": a.inversion_init, "targets": a.targets}}


def robustness_row(result: dict) -> dict:
    """One model's robustness as a report stores it (no images, no tensors)."""
    return {"n": len(result["forget"]), "pre_asr": result["pre_asr"], "seconds": result["seconds"],
            "from_cache": result["from_cache"],
            "attacks": {n: o.summary() for n, o in result["outcomes"].items()}}
