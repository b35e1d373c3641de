"""Rewards for critic-guided RL: REWARDS = {name: factory}; a reward is (images, prompts) -> Tensor[B].

Both rewards "penalise the concept on forget prompts, keep utility on retain prompts" (docs/methods.md,
"Reward"; the retain and keep terms are ours, weighted by critic.retain_weight and critic.keep_weight):

    forget prompt:  r = -score(image, erased concepts) + keep_weight * keep(image, prompt)
    retain prompt:  r = retain_weight * utility(image, prompt)

With several concepts erased together, score sums over all of them (a forget prompt of one concept must not
turn into another erased one).

- `clip`: score = cosine similarity between the image and the concept text (or, with critic.zero_shot,
  CLIP's zero-shot probability of the concept against critic.contrast, at CLIP's logit scale divided by
  critic.temperature), utility = cosine similarity to the prompt itself. keep: on the tiny base the zero-shot
  probability of the attribute the prompt names besides the concept (the colour of "a red three") among
  that attribute's labels; elsewhere the cosine similarity to the prompt's anchor (the prompt without the
  concept). The tiny base uses its tiny CLIP (not the evaluation judge); other bases a transformers CLIP id
  (critic.clip_model).
- `classifier`: score = the tiny classifier's probability of the concept, utility = its probability of the
  prompt's own digit and colour, keep = its probability of the other attribute the prompt names. Tiny base
  only. It is the same network `erase evaluate` judges with, so UA measured after training on it is
  optimistic: prefer `clip` for numbers you report.

Images are decoded pixels, (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

from typing import Callable

import torch

from erasecli.concepts import label_phrase, parse_concept
from erasecli.errors import RecipeError
from erasecli.recipes.schema import REWARD_NAMES

Reward = Callable[[torch.Tensor, list], torch.Tensor]


def _concept_texts(recipe, sets) -> list:
    """The texts a CLIP reward compares images with, one per erased concept: on the tiny base each concept in
    its training captions' form, elsewhere the first forget template."""
    if sets.tiny_world:
        return [label_phrase(sets.kind, i) for i in sets.targets]
    return [recipe.concept.forget_templates[0].format(concept=n) for n in sets.names]


def _contrast_texts(recipe, sets) -> list:
    """The texts the concepts compete with in the zero-shot score: the other digits (or colours) on the tiny
    base, critic.contrast elsewhere, in the same template as the concept."""
    if sets.tiny_world:
        return [label_phrase(sets.kind, j) for j in range(len(sets.label_names[sets.kind])) if j not in sets.targets]
    if not recipe.critic.contrast:
        raise RecipeError("critic.zero_shot needs critic.contrast on this base",
                          hint="e.g. --set 'critic.contrast=[claude monet, pablo picasso]'")
    return [recipe.concept.forget_templates[0].format(concept=c) for c in recipe.critic.contrast]


def kept_labels(sets) -> dict:
    """Tiny worlds: forget prompt -> the label of the attribute it names besides the concept (a digit concept's
    prompt -> its colour index; on the canvas world a style's prompt -> its digit), for the prompts that name
    one."""
    out = {}
    for p in sets.forget:
        try:
            out[p] = parse_concept(p, sets.other_kind, sets.world)[1]
        except RecipeError:  # "a handwritten digit three" names no colour: nothing to keep
            pass
    return out


def clip_reward(recipe, base, sets) -> Reward:
    from erasecli.judges import Clip

    clip = Clip.tiny(base.ref.world) if base.ref.tiny_world else Clip.load(recipe.critic.clip_model)
    clip.model.to(base.device)  # on the GPU with the base: the reward runs every rollout
    forget = set(sets.forget)
    texts = _concept_texts(recipe, sets)
    n_erased = len(texts)
    if recipe.critic.zero_shot:
        texts += _contrast_texts(recipe, sets)
    concepts = clip.embed_text(texts)  # (K, D); the first n_erased rows are the erased concepts
    scale = clip.zero_shot_scale(recipe.critic.temperature)
    w, w_keep = recipe.critic.retain_weight, recipe.critic.keep_weight
    keep_texts = keep_of = anchor_of = None
    if w_keep > 0 and sets.tiny_world:
        other = sets.other_kind
        keep_texts = clip.embed_text([label_phrase(other, j) for j in range(len(sets.label_names[other]))])
        keep_of = kept_labels(sets)
    elif w_keep > 0:
        anchor_of = dict(zip(sets.forget, sets.anchor))

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: list) -> torch.Tensor:
        img = clip.embed_pixels(images.float())  # (B, D), unit norm, on the CLIP's device
        own = clip.embed_text(list(prompts))  # (B, D)
        is_forget = torch.tensor([p in forget for p in prompts], device=img.device)
        sim = img @ concepts.T  # (B, K)
        if recipe.critic.zero_shot:
            score = (scale * sim).softmax(-1)[:, :n_erased].sum(-1)
        else:
            score = sim[:, :n_erased].max(-1).values
        r_forget = -score
        if keep_of is not None:
            p_keep = (scale * img @ keep_texts.T).softmax(-1)  # (B, labels of the kept kind)
            lab = torch.tensor([keep_of.get(p, -1) for p in prompts], device=img.device)
            r_forget = r_forget + w_keep * torch.where(lab >= 0, p_keep.gather(1, lab.clamp(min=0)[:, None])[:, 0],
                                                       torch.zeros_like(score))
        elif anchor_of is not None:
            anchors = clip.embed_text([anchor_of.get(p, p) for p in prompts])
            r_forget = r_forget + w_keep * (img * anchors).sum(-1)
        return torch.where(is_forget, r_forget, w * (img * own).sum(-1))

    return reward


def classifier_reward(recipe, base, sets) -> Reward:
    """The world's classifier: on forget prompts minus the probability of the erased labels (plus, with
    critic.keep_weight, that of the other attribute the prompt names); elsewhere the product of the
    probabilities of every label the prompt names."""
    from erasecli.models.judges import load_classifier
    from erasecli.models.registry import judges_dir

    if not base.ref.tiny_world:
        raise RecipeError("critic.reward 'classifier' uses the tiny base's classifier",
                          hint="use --reward clip on this base")
    clf = load_classifier(judges_dir(base.ref.world) / "classifier").eval()
    kind, targets = sets.kind, list(sets.targets)
    forget = set(sets.forget)
    keep_of = kept_labels(sets)
    w, w_keep = recipe.critic.retain_weight, recipe.critic.keep_weight
    named: dict[str, list] = {}  # prompt -> [(kind, label)] it names

    def labels(prompt: str) -> list:
        if prompt not in named:
            named[prompt] = []
            for k in clf.kinds:
                try:
                    named[prompt].append((k, parse_concept(prompt, k, sets.world)[1]))
                except RecipeError:  # the prompt does not name this kind
                    pass
        return named[prompt]

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: list) -> torch.Tensor:
        probs = {k: lg.softmax(-1) for k, lg in zip(clf.kinds, clf(images.float().cpu()))}  # kind -> (B, labels)
        p_concept, p_other = probs[kind], probs.get(sets.other_kind)
        out = []
        for i, p in enumerate(prompts):
            if p in forget:
                r = -p_concept[i, targets].sum()
                if w_keep > 0 and p in keep_of:
                    r = r + w_keep * p_other[i, keep_of[p]]
                out.append(r)
            else:
                r = torch.ones(())
                for k, j in labels(p):
                    r = r * probs[k][i, j]
                out.append(w * r)
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
