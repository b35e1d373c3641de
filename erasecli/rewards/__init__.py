"""Rewards for critic-guided RL: REWARDS = {name: factory}; a reward is (images, prompts) -> Tensor[B].

Both rewards "penalise the concept on forget prompts, keep utility on retain prompts" (docs/methods.md,
"Reward"; the retain term is ours and weighted by critic.retain_weight):

    forget prompt:  r = -score(image, concept)
    retain prompt:  r = retain_weight * utility(image, prompt)

- `clip`: score = cosine similarity between the image and the concept text (or, with critic.zero_shot,
  CLIP's zero-shot probability of the concept against critic.contrast, at CLIP's logit scale divided by
  critic.temperature), utility = cosine similarity
  to the prompt itself. The tiny base uses its tiny CLIP (not the evaluation judge); other bases a
  transformers CLIP id (critic.clip_model).
- `classifier`: score = the tiny classifier's probability of the concept, utility = its probability of the
  prompt's own digit and colour. Tiny base only. It is the same network `erase evaluate` judges with, so UA
  measured after training on it is optimistic: prefer `clip` for numbers you report.

Images are decoded pixels, (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

from typing import Callable

import torch

from erasecli.errors import RecipeError
from erasecli.recipes.schema import REWARD_NAMES

Reward = Callable[[torch.Tensor, list], torch.Tensor]


def _concept_text(recipe, sets) -> str:
    """The text a CLIP reward compares images with: on the tiny base the concept in its training captions."""
    from erasecli.models import tiny_world as W

    from erasecli.models.registry import resolve_base

    if resolve_base(recipe.base).tiny_world:
        from erasecli.concepts import parse_tiny_concept

        kind, i = parse_tiny_concept(recipe.concept.name, recipe.concept.kind)
        return f"a handwritten digit {W.DIGIT_WORDS[i]}" if kind == "digit" else f"a {W.COLOUR_NAMES[i]} digit"
    return recipe.concept.forget_templates[0].format(concept=recipe.concept.name)


def _contrast_texts(recipe, base) -> list:
    """The texts the concept competes with in the zero-shot score: the other digits (or colours) on the tiny
    base, critic.contrast elsewhere, in the same template as the concept."""
    from erasecli.models import tiny_world as W

    if base.ref.tiny_world:
        from erasecli.concepts import parse_tiny_concept

        kind, i = parse_tiny_concept(recipe.concept.name, recipe.concept.kind)
        if kind == "digit":
            return [f"a handwritten digit {w}" for j, w in enumerate(W.DIGIT_WORDS) if j != i]
        return [f"a {c} digit" for j, c in enumerate(W.COLOUR_NAMES) if j != i]
    if not recipe.critic.contrast:
        raise RecipeError("critic.zero_shot needs critic.contrast on this base",
                          hint="e.g. --set 'critic.contrast=[claude monet, pablo picasso]'")
    return [recipe.concept.forget_templates[0].format(concept=c) for c in recipe.critic.contrast]


def clip_reward(recipe, base, sets) -> Reward:
    from erasecli.judges import Clip

    clip = Clip.tiny() if base.ref.tiny_world else Clip.load(recipe.critic.clip_model)
    clip.model.to(base.device)  # on the GPU with the base: the reward runs every rollout
    forget = set(sets.forget)
    texts = [_concept_text(recipe, sets)]
    if recipe.critic.zero_shot:
        texts += _contrast_texts(recipe, base)
    concepts = clip.embed_text(texts)  # (K, D); row 0 is the concept
    scale = float(clip.model.logit_scale.detach().exp()) if hasattr(clip.model, "logit_scale") else 100.0
    scale /= recipe.critic.temperature
    w = recipe.critic.retain_weight

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: list) -> torch.Tensor:
        img = clip.embed_pixels(images.float())  # (B, D), unit norm, on the CLIP's device
        own = clip.embed_text(list(prompts))  # (B, D)
        is_forget = torch.tensor([p in forget for p in prompts], device=img.device)
        sim = img @ concepts.T  # (B, K)
        score = (scale * sim).softmax(-1)[:, 0] if len(texts) > 1 else sim[:, 0]
        return torch.where(is_forget, -score, w * (img * own).sum(-1))

    return reward


def classifier_reward(recipe, base, sets) -> Reward:
    from erasecli.concepts import parse_tiny_concept
    from erasecli.models.judges import load_classifier

    if not base.ref.tiny_world:
        raise RecipeError("critic.reward 'classifier' uses the tiny base's classifier",
                          hint="use --reward clip on this base")
    clf = load_classifier().eval()
    kind, target = parse_tiny_concept(recipe.concept.name, recipe.concept.kind)
    forget = set(sets.forget)
    w = recipe.critic.retain_weight

    def labels(prompt: str) -> tuple[int, int]:
        return parse_tiny_concept(prompt, "digit")[1], parse_tiny_concept(prompt, "colour")[1]

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: list) -> torch.Tensor:
        digit_logits, colour_logits = clf(images.float().cpu())
        pd, pc = digit_logits.softmax(-1), colour_logits.softmax(-1)  # (B, 10), (B, 5)
        out = []
        for i, p in enumerate(prompts):
            if p in forget:
                out.append(-(pd[i, target] if kind == "digit" else pc[i, target]))
            else:
                d, c = labels(p)
                out.append(w * pd[i, d] * pc[i, c])
        return torch.stack(out)

    return reward


_FACTORIES = {"clip": clip_reward, "classifier": classifier_reward}
REWARDS: dict[str, Callable] = {name: _FACTORIES[name] for name in REWARD_NAMES}  # the names table of the schema


def make_reward(name: str, recipe, base, sets) -> Reward:
    if name not in REWARDS:
        raise RecipeError(f"unknown reward {name!r}", hint="valid rewards: " + ", ".join(REWARDS))
    return REWARDS[name](recipe, base, sets)


def check_reward(critic, ref) -> None:
    """critic.reward (critic: a recipe's critic section) must be one this base can compute, before any model
    loads."""
    if critic.reward == "classifier" and not ref.tiny_world:
        raise RecipeError("critic.reward 'classifier' uses the tiny base's classifier",
                          hint="use --reward clip on this base")
