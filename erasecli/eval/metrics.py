"""Metrics registry. Each metric takes the evaluation context of one model and returns a number (or None).

docs/methods.md, "Evaluation protocol". UA / IRA / CRA follow UnlearnCanvas:
- UA, over images from `forget` prompts (they name the erased concept): share NOT judged as that concept;
- IRA, over `retain` prompts (other concepts of the same kind): share judged as their own concept;
- CRA, over prompts with a label of the *other* kind: share judged correctly on that kind.
Two more look at what the erased model draws for the forget prompts instead:
- cra_forget: the judge's accuracy on the other kind of forget-prompt images (a "red three" should stay red);
- fid_forget: FID of forget-prompt images against the base's images of their anchor prompts (a clean
  "red digit", or noise?).
CLIP score is torchmetrics' definition on retain prompts. FID and KID (torchmetrics) compare a model's
retain-prompt images with the base's images for the same prompts and seeds; on the tiny base the features
are the shipped classifier's 128-d penultimate layer, not Inception's, and the report says so. KID's subsets
are drawn from a fixed seed, and its standard deviation over subsets is reported beside it (`kid_std`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    plan: object  # concepts.Concept: its evaluation prompts, kinds and labels
    spp: int  # samples per prompt
    model: ModelImages
    base: ModelImages
    judge: object
    clip: object | None
    is_base: bool
    device: object = "cpu"
    imagereward: object | None = None  # loaded on first use, shared across models
    anchor_images: list | None = None  # the base's images of the forget prompts' anchors (fid_forget)
    robustness: dict | None = None  # attacks.run.attack_model's result for this model (asr_*, ua_paraphrase)
    extra: dict = field(default_factory=dict)  # values a metric reports beside its own (kid_std)

    def rows(self, group: str) -> list[int]:
        """Image indices of a prompt group."""
        return [i * self.spp + s for i in self.plan.group(group) for s in range(self.spp)]

    def labels(self, rows, kind):
        return torch.tensor([self.plan.prompts[r // self.spp].labels[kind] for r in rows])


def ua(ctx: Context):
    """Each forget prompt's images are judged against the concept it names (its own label of the kind)."""
    rows = ctx.rows("forget")
    kind = ctx.plan.kind
    return (ctx.model.preds[kind][rows] != ctx.labels(rows, kind)).float().mean().item()


def ua_by_concept(ctx: Context) -> dict:
    """UA of each concept erased together (its forget prompts only); {} for a single concept."""
    if not ctx.plan.together:
        return {}
    kind, rows = ctx.plan.kind, ctx.rows("forget")
    labels, preds = ctx.labels(rows, kind), ctx.model.preds[kind][rows]
    return {n: (preds[labels == t] != t).float().mean().item() for n, t in zip(ctx.plan.names, ctx.plan.targets)}


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


def cra_forget(ctx: Context):
    """The other kind's accuracy on forget-prompt images: erasing a digit must keep its colour."""
    kind = ctx.plan.other_kind
    rows = [r for r in ctx.rows("forget") if kind in ctx.plan.prompts[r // ctx.spp].labels]
    if kind is None or not rows:
        return None
    return (ctx.model.preds[kind][rows] == ctx.labels(rows, kind)).float().mean().item()


def clip_score(ctx: Context):
    rows = ctx.rows("retain")
    prompts = [ctx.plan.prompts[r // ctx.spp].prompt for r in rows]
    return ctx.clip.score([ctx.model.images[r] for r in rows], prompts).mean().item()


KID_SEED = 0  # KID draws its subsets from torch's global generator: seeded, so a report is reproducible


def _feature_metric(ctx: Context, metric_cls, real_images, fake_images, **kw):
    feats = ctx.judge.features_module()
    if feats is None or not real_images or not fake_images:
        return None
    from erasecli.models.judges import images_to_tensor

    import warnings

    with warnings.catch_warnings():  # KID warns that it buffers features: a few hundred 128-d vectors here
        warnings.simplefilter("ignore", UserWarning)
        m = metric_cls(feature=feats, **kw)
    m.update(images_to_tensor(real_images), real=True)
    m.update(images_to_tensor(fake_images), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(KID_SEED)
        return m.compute()


def _retain_pair(ctx: Context):
    rows = ctx.rows("retain")
    return [ctx.base.images[r] for r in rows], [ctx.model.images[r] for r in rows]


def fid(ctx: Context):
    from torchmetrics.image.fid import FrechetInceptionDistance

    if ctx.is_base:
        return None  # the base against itself is 0 by construction
    out = _feature_metric(ctx, FrechetInceptionDistance, *_retain_pair(ctx), reset_real_features=True)
    return None if out is None else float(out)


def kid(ctx: Context):
    from torchmetrics.image.kid import KernelInceptionDistance

    if ctx.is_base:
        return None
    n = len(ctx.rows("retain"))
    out = _feature_metric(ctx, KernelInceptionDistance, *_retain_pair(ctx), subset_size=min(50, n), subsets=50)
    if out is None:
        return None
    ctx.extra["kid_std"] = float(out[1])
    return float(out[0])


def fid_forget(ctx: Context):
    """Forget-prompt images against the base's images of their anchors (for the base too: its threes against
    digit-less anchors, the scale a delta's figure reads against)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    rows = ctx.rows("forget")
    out = _feature_metric(ctx, FrechetInceptionDistance, ctx.anchor_images or [],
                          [ctx.model.images[r] for r in rows], reset_real_features=True)
    return None if out is None else float(out)


def imagereward(ctx: Context):
    from erasecli.eval import imagereward as ir

    if ctx.imagereward is None:
        ctx.imagereward = ir.load(device=ctx.device)
    rows = ctx.rows("retain")
    prompts = [ctx.plan.prompts[r // ctx.spp].prompt for r in rows]
    return ir.scores(ctx.imagereward, [ctx.model.images[r] for r in rows], prompts).mean().item()


def _attack(name: str) -> Callable[[Context], float | None]:
    def asr(ctx: Context):
        return ctx.robustness["outcomes"][name].asr

    return asr


def pre_asr(ctx: Context):
    return ctx.robustness["pre_asr"]


def ua_paraphrase(ctx: Context):
    return ctx.robustness["outcomes"]["paraphrase"].extra["ua_paraphrase"]


@dataclass(frozen=True)
class Metric:
    fn: Callable[[Context], float | None]
    higher_is_better: bool
    unit: str
    needs_clip: bool = False
    doc: str = ""
    attack: str | None = None  # the attack (erasecli.attacks) whose outcome it reads; "" for the pre-attack count


METRICS: dict[str, Metric] = {
    "ua": Metric(ua, True, "fraction", doc="forget-prompt images not judged as the erased concept"),
    "ira": Metric(ira, True, "fraction", doc="judge accuracy on other concepts of the same kind"),
    "cra": Metric(cra, True, "fraction", doc="judge accuracy on the other kind"),
    "cra_forget": Metric(cra_forget, True, "fraction",
                         doc="judge accuracy on the other kind of forget-prompt images (their colour or digit)"),
    "clip_score": Metric(clip_score, True, "score", needs_clip=True, doc="100*max(cos,0) on retain prompts"),
    "fid": Metric(fid, False, "fid", doc="retain images vs the base's, same prompts and seeds"),
    "kid": Metric(kid, False, "kid", doc="retain images vs the base's (mean over 50 seeded subsets; kid_std: "
                  "their standard deviation)"),
    "fid_forget": Metric(fid_forget, False, "fid",
                         doc="forget-prompt images vs the base's images of their anchor prompts, same seeds"),
    "imagereward": Metric(imagereward, True, "reward", doc="ImageReward on retain prompts (optional extra)"),
    "pre_asr": Metric(pre_asr, False, "fraction", attack="",
                      doc="share of the forget prompts judged as the concept with no attack (erase attack)"),
    "asr_prompt": Metric(_attack("prompt"), False, "fraction", attack="prompt",
                         doc="forget prompts judged as the concept before or after the UnlearnDiffAtk prompt attack"),
    "asr_inversion": Metric(_attack("inversion"), False, "fraction", attack="inversion",
                            doc="forget prompts judged as the concept before or after concept inversion"),
    "asr_paraphrase": Metric(_attack("paraphrase"), False, "fraction", attack="paraphrase",
                             doc="paraphrases the base draws the concept for that the model still draws"),
    "ua_paraphrase": Metric(ua_paraphrase, True, "fraction", attack="paraphrase",
                            doc="UA on those paraphrases: share of their images not judged as the concept"),
}


def attacks_for(names) -> list[str] | None:
    """The attacks the metrics `names` need (None: no robustness metric asked for)."""
    need = [METRICS[n].attack for n in names if METRICS[n].attack is not None]
    if not need:
        return None
    return list(dict.fromkeys(a for a in need if a))


def check_metrics(names) -> list[str]:
    """Unknown names are a usage error listing the valid ones; optional metrics must be installable here."""
    bad = [n for n in names if n not in METRICS]
    if bad:
        raise UsageError(f"unknown metric {bad[0]!r}", hint=f"valid metrics: {', '.join(METRICS)}")
    if "imagereward" in names:
        from erasecli.eval import imagereward

        imagereward.check_available()
    return list(dict.fromkeys(names))
