"""Attacks: does an erased concept come back? One file per attack behind one small interface; ATTACKS.

An attack gets an `AttackContext` (the base with the deltas under test already applied, the concept, the
recipe's `attack` section scaled by its budget, the judge, the base's target images of the concept) and
returns an `AttackOutcome`: for each of its N prompts, whether the judge saw the concept before the attack
(pre-attack success) and after it (success), the adversarial text (a plain prompt anyone can paste) and/or a
learned embedding, and the images the final prompt made. docs/methods.md, "Attacks".

Counting follows UnlearnDiffAtk: pre-ASR = share of the N prompts that already succeed with no attack; ASR =
share that succeed before or after the attack (pre-attack successes count). A prompt succeeds when at least
`attack.threshold` of its `attack.samples` images (seeds attack.seed + i) are judged as the concept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from erasecli.errors import UsageError


def denoising_loss(unet, noise, z0, c, gen):
    """A model's denoising MSE on target latents z0 (B, C, h, w) under conditions c (B, L, D), t uniform over the
    whole schedule `noise` (erasecli.diffusion.noise.Schedule), one draw per row from the CPU generator `gen`:
    what the prompt and inversion attacks (and robust training's inner attack, erasecli.methods.robust) minimise
    to bring a concept back.

    `gen` may also be a list of G generators for G equal groups of rows (several attacks in one batch): group g
    draws its rows' t and noise from gen[g] as it would alone, and the result is the sum of the groups' means,
    so each group's gradient is the one its own call would give."""
    import torch

    from erasecli.diffusion.cond import unet_eps

    gens = gen if isinstance(gen, (list, tuple)) else [gen]
    n = len(z0) // len(gens)
    t, eps = [], []
    for g, z in zip(gens, z0.split(n)):
        t.append(torch.randint(noise.num_timesteps, (len(z),), generator=g))
        eps.append(torch.randn(z.shape, generator=g))
    t, eps = torch.cat(t).to(z0.device), torch.cat(eps).to(z0.device)
    pred = unet_eps(unet, noise.add_noise(z0, eps, t), t, c)
    err = (pred.float() - noise.target(z0, eps, t)).pow(2)
    return err.reshape(len(gens), -1).mean(-1).sum()


@dataclass
class AttackContext:
    recipe: object
    base: object  # models.registry.Base, with the deltas under attack applied
    concept: object  # concepts.Concept
    judge: object  # judges.Judge
    forget: list  # the N forget prompts the attacks start from (the concept's evaluation forget prompts)
    pre: list  # per forget prompt: does it succeed with no attack
    pre_images: list  # per forget prompt: its images with no attack
    targets: object  # (N, targets, C, h, w) scaled latents of the base's images of each forget prompt
    device: object = "cpu"
    base_paraphrase_images: list | None = None  # paraphrase: the base's images of each paraphrase (no delta)
    budget: float = 1.0

    def steps(self, n: int) -> int:
        """A step count of the recipe scaled by the budget (at least 1)."""
        return max(1, round(n * self.budget))

    def seeds(self) -> list[int]:
        a = self.recipe.attack
        return [a.seed + i for i in range(a.samples)]

    def draw(self, prompts: list[str]) -> list[list]:
        """`attack.samples` images of each prompt with the model under attack, seeds attack.seed + i."""
        from erasecli.sampling import generate_with

        seeds = self.seeds()
        flat = generate_with(self.base, [p for p in prompts for _ in seeds], seeds * len(prompts), self.recipe.sample)
        k = len(seeds)
        return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]

    def hits(self, images: list) -> list[bool]:
        """Per image: does the judge see the concept?"""
        if not images:
            return []
        pred = self.judge.predict(images)[self.concept.kind]
        return [int(p) == self.concept.target for p in pred]

    def denoising_loss(self, z0, c, gen):
        """What the prompt and inversion attacks minimise on the model under attack (`denoising_loss`)."""
        from erasecli.diffusion.noise import schedule_of

        return denoising_loss(self.base.denoiser, schedule_of(self.base.pipe.scheduler, self.device), z0, c, gen)

    def succeeds(self, images: list) -> bool:
        h = self.hits(images)
        return bool(h) and sum(h) / len(h) >= self.recipe.attack.threshold


@dataclass
class AttackOutcome:
    name: str
    prompts: list  # the N prompts the attack was scored on (for `prompt`/`inversion`: the forget prompts)
    pre: list  # per prompt: success with no attack
    success: list  # per prompt: success before or after the attack
    adversarial: list  # per prompt: the text that was tried last ("" where none)
    images: list  # per prompt: the images of that text
    seconds: float = 0.0
    embedding: dict | None = None  # inversion: {token: (num_vectors, dim) tensor}, diffusers' format
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def pre_asr(self) -> float | None:
        return sum(self.pre) / self.n if self.n else None

    @property
    def asr(self) -> float | None:
        return sum(self.success) / self.n if self.n else None

    def summary(self) -> dict:
        """What a report stores: counts, rates, the prompts, without images or tensors."""
        return {"attack": self.name, "n": self.n, "pre_asr": self.pre_asr, "asr": self.asr,
                "pre_successes": sum(self.pre), "successes": sum(self.success), "seconds": round(self.seconds, 2),
                "prompts": [{"prompt": p, "adversarial": a, "pre": bool(x), "success": bool(y)}
                            for p, a, x, y in zip(self.prompts, self.adversarial, self.pre, self.success)],
                **self.extra}


class Attack:
    """The interface: `name`, `run(ctx) -> AttackOutcome`, and `check(recipe, concept)` for what can be wrong
    before any model loads."""

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple] = ("sd", "sdxl", "flux")  # the base kinds it is restated for

    @classmethod
    def check(cls, recipe, concept) -> None:
        """Attack-specific checks (single-field ranges are the recipe's CHECKS)."""

    def run(self, ctx: AttackContext) -> AttackOutcome:
        raise NotImplementedError


from erasecli.attacks.inversion import Inversion  # noqa: E402
from erasecli.attacks.paraphrase import Paraphrase  # noqa: E402
from erasecli.attacks.prompt import PromptAttack  # noqa: E402
from erasecli.recipes.schema import ATTACK_NAMES  # noqa: E402

_CLASSES = {a.name: a for a in (Paraphrase, PromptAttack, Inversion)}
ATTACKS: dict[str, type[Attack]] = {name: _CLASSES[name] for name in ATTACK_NAMES}


def get_attack(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise UsageError(f"unknown attack {name!r}", hint="valid attacks: " + ", ".join(ATTACKS))
    return ATTACKS[name]

