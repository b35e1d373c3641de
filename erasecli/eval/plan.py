"""What to generate and what the judge should see: the evaluation plan of one concept.

UnlearnCanvas definitions (METHODS.md, "Evaluation protocol"):
- UA, over images from `forget` prompts (they name the erased concept): share NOT judged as that concept.
- IRA, over `retain` prompts (other concepts of the same kind): share judged as their own concept.
- CRA, over prompts with a label of the *other* kind: share judged correctly on that kind.

On the tiny base a concept is a digit ("digit 3", "three", "3") or a colour ("red"); every prompt names a
digit and a colour, so one image carries a label of each kind: retain images serve IRA and CRA at once. On
other bases the kinds are the recipe's concept list (`eval.in_domain`) and its cross list (`eval.cross_domain`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from erasecli.errors import RecipeError
from erasecli.models import tiny_world as W


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    group: str  # "forget", "retain" or "cross"
    labels: dict = field(default_factory=dict)  # kind -> label index the base should show


@dataclass(frozen=True)
class EvalPlan:
    concept: str
    kind: str  # the erased concept's kind
    target: int  # its label index within `kind`
    other_kind: str | None  # the kind CRA is judged on
    label_names: dict  # kind -> tuple of label names
    prompts: tuple[PromptSpec, ...]

    def group(self, name: str) -> list[int]:
        return [i for i, p in enumerate(self.prompts) if p.group == name]


def parse_tiny_concept(name: str, kind: str = "") -> tuple[str, int]:
    """'digit 3', 'the digit three', '3', 'three', 'red', 'colour red' -> (kind, index)."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    digits = [i for i, w in enumerate(W.DIGIT_WORDS) if w in words] + [int(w) for w in words if w.isdigit() and len(w) == 1]
    colours = [i for i, c in enumerate(W.COLOUR_NAMES) if c in words]
    found = []
    if len(set(digits)) == 1 and kind in ("", "digit"):
        found.append(("digit", digits[0]))
    if len(set(colours)) == 1 and kind in ("", "colour", "color"):
        found.append(("colour", colours[0]))
    if len(found) != 1:
        raise RecipeError(
            f"concept {name!r} is not one digit or one colour of the tiny world",
            hint="use e.g. 'digit 3', 'seven' or 'red' (colours: " + ", ".join(W.COLOUR_NAMES) + ")",
        )
    return found[0]


def tiny_plan(concept: str, kind: str = "") -> EvalPlan:
    k, target = parse_tiny_concept(concept, kind)
    names = {"digit": W.DIGIT_WORDS, "colour": W.COLOUR_NAMES}
    prompts = []
    for c, colour in enumerate(W.COLOUR_NAMES):
        for d in range(10):
            erased = (k == "digit" and d == target) or (k == "colour" and c == target)
            labels = {"digit": d, "colour": c}
            prompts.append(PromptSpec(W.quality_prompt(colour, d), "forget" if erased else "retain", labels))
            if erased:  # the numeral form too: an erasure must not hold only for the word
                prompts.append(PromptSpec(f"the number {d} in {colour}", "forget", labels))
    other = "colour" if k == "digit" else "digit"
    return EvalPlan(concept, k, target, other, names, tuple(prompts))


def clip_plan(concept: str, templates, in_domain, cross_domain, cross_template: str) -> EvalPlan:
    """A plan from the recipe's concept lists, for bases judged by CLIP zero-shot."""
    if not in_domain:
        raise RecipeError(
            "evaluating on this base needs other concepts of the same kind (eval.in_domain) for IRA",
            hint="add e.g. --set 'eval.in_domain=[monet, picasso]' or put the list in the recipe",
        )
    kinds = {"concept": (concept, *in_domain)}
    prompts = [PromptSpec(t.format(concept=concept), "forget", {"concept": 0}) for t in templates]
    for i, other in enumerate(in_domain, start=1):
        prompts += [PromptSpec(t.format(concept=other), "retain", {"concept": i}) for t in templates]
    other_kind = None
    if cross_domain:
        kinds["cross"] = tuple(cross_domain)
        other_kind = "cross"
        prompts += [PromptSpec(cross_template.format(concept=x), "cross", {"cross": j}) for j, x in enumerate(cross_domain)]
    return EvalPlan(concept, "concept", 0, other_kind, kinds, tuple(prompts))
