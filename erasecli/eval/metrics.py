"""Metrics registry. Each metric takes the evaluation context of one model and returns a number (or None).

UA / IRA / CRA follow UnlearnCanvas (see plan.py). CLIP score is torchmetrics' definition on retain prompts.
FID and KID (torchmetrics) compare a model's retain-prompt images with the base's images for the same
prompts and seeds; on the tiny base the features are the shipped classifier's 128-d penultimate layer, not
Inception's, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from erasecli.errors import UsageError


@dataclass
class ModelImages:
    """Images of one model (base or delta) for every (prompt, seed) of the plan, and their judgements."""

    name: str
    images: list  # PIL, in plan order: prompt-major, samples_per_prompt each
    preds: dict  # kind -> (N,) tensor


@dataclass
class Context:
    plan: object  # EvalPlan
    spp: int  # samples per prompt
    model: ModelImages
    base: ModelImages
    judge: object
    clip: object | None
    is_base: bool
    device: object = "cpu"
    imagereward: object | None = None  # loaded on first use, shared across models

    def rows(self, group: str) -> list[int]:
        """Image indices of a prompt group."""
        return [i * self.spp + s for i in self.plan.group(group) for s in range(self.spp)]

    def labels(self, rows, kind):
        return torch.tensor([self.plan.prompts[r // self.spp].labels[kind] for r in rows])


def ua(ctx: Context):
    rows = ctx.rows("forget")
    return (ctx.model.preds[ctx.plan.kind][rows] != ctx.plan.target).float().mean().item()


def ira(ctx: Context):
    rows = ctx.rows("retain")
    if not rows:
        return None
    kind = ctx.plan.kind
    return (ctx.model.preds[kind][rows] == ctx.labels(rows, kind)).float().mean().item()


def cra(ctx: Context):
    kind = ctx.plan.other_kind
    if kind is None:
        return None
    rows = ctx.rows("cross") or ctx.rows("retain")
    return (ctx.model.preds[kind][rows] == ctx.labels(rows, kind)).float().mean().item()


def clip_score(ctx: Context):
    rows = ctx.rows("retain")
    prompts = [ctx.plan.prompts[r // ctx.spp].prompt for r in rows]
    return ctx.clip.score([ctx.model.images[r] for r in rows], prompts).mean().item()


def _feature_metric(ctx: Context, metric_cls, **kw):
    if ctx.is_base:
        return None  # the base against itself is 0 by construction
    feats = ctx.judge.features_module()
    if feats is None:
        return None
    from erasecli.models.judges import images_to_tensor

    import warnings

    rows = ctx.rows("retain")
    with warnings.catch_warnings():  # KID warns that it buffers features: a few hundred 128-d vectors here
        warnings.simplefilter("ignore", UserWarning)
        m = metric_cls(feature=feats, **kw)
    real = images_to_tensor([ctx.base.images[r] for r in rows])
    fake = images_to_tensor([ctx.model.images[r] for r in rows])
    m.update(real, real=True)
    m.update(fake, real=False)
    return m.compute()


def fid(ctx: Context):
    from torchmetrics.image.fid import FrechetInceptionDistance

    out = _feature_metric(ctx, FrechetInceptionDistance, reset_real_features=True)
    return None if out is None else float(out)


def kid(ctx: Context):
    from torchmetrics.image.kid import KernelInceptionDistance

    n = len(ctx.rows("retain"))
    out = _feature_metric(ctx, KernelInceptionDistance, subset_size=min(50, n), subsets=50)
    return None if out is None else float(out[0])


def imagereward(ctx: Context):
    from erasecli.eval import imagereward as ir

    if ctx.imagereward is None:
        ctx.imagereward = ir.load(device=ctx.device)
    rows = ctx.rows("retain")
    prompts = [ctx.plan.prompts[r // ctx.spp].prompt for r in rows]
    return ir.scores(ctx.imagereward, [ctx.model.images[r] for r in rows], prompts).mean().item()


@dataclass(frozen=True)
class Metric:
    fn: Callable[[Context], float | None]
    higher_is_better: bool
    unit: str
    needs_clip: bool = False
    doc: str = ""


METRICS: dict[str, Metric] = {
    "ua": Metric(ua, True, "fraction", doc="forget-prompt images not judged as the erased concept"),
    "ira": Metric(ira, True, "fraction", doc="judge accuracy on other concepts of the same kind"),
    "cra": Metric(cra, True, "fraction", doc="judge accuracy on the other kind"),
    "clip_score": Metric(clip_score, True, "score", needs_clip=True, doc="100*max(cos,0) on retain prompts"),
    "fid": Metric(fid, False, "fid", doc="retain images vs the base's, same prompts and seeds"),
    "kid": Metric(kid, False, "kid", doc="retain images vs the base's (mean over subsets)"),
    "imagereward": Metric(imagereward, True, "reward", doc="ImageReward on retain prompts (optional extra)"),
}


def check_metrics(names) -> list[str]:
    """Unknown names are a usage error listing the valid ones; optional metrics must be installable here."""
    bad = [n for n in names if n not in METRICS]
    if bad:
        raise UsageError(f"unknown metric {bad[0]!r}", hint=f"valid metrics: {', '.join(METRICS)}")
    if "imagereward" in names:
        from erasecli.eval import imagereward

        imagereward.check_available()
    return list(dict.fromkeys(names))
