"""What is erased and what is kept: one `Concept` per (recipe, base), read by training, evaluation and attacks.

A concept has two sets of prompts (docs/methods.md, "Shared pieces" and "Evaluation protocol"):

- training: `forget` prompts that name it, `anchor[j]` what `forget[j]` should produce instead, `retain`
  prompts whose behaviour must not change;
- evaluation: `prompts`, each a `PromptSpec` in a group (`forget`, `retain`, `cross`) with the labels the
  judge should see on its images (kind -> label index) and, for forget prompts, its anchor.

On a base that knows the tiny world (coloured handwritten digits), a concept is a digit ("digit 3", "three",
"3") or a colour ("red"): every prompt names a digit and a colour, so every image carries a label of each kind,
and the sets are derived. On other bases they come from the recipe's `concept` and `eval` sections, and the
judge is CLIP zero-shot over `judge_texts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from erasecli.errors import RecipeError
from erasecli.models import tiny_world as W
from erasecli.models.tiny_world import parse_tiny_concept  # noqa: F401 - part of this module's face


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    group: str  # "forget", "retain" or "cross"
    labels: dict = field(default_factory=dict)  # kind -> label index the base should show
    anchor: str = ""  # forget prompts: what the erased model should draw instead


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str  # the judge's kind the concept belongs to: "digit" / "colour" on the tiny world, else "concept"
    target: int  # its label index within `kind`
    other_kind: str | None  # the kind CRA and cra_forget are judged on (None: no cross-domain list)
    label_names: dict  # kind -> tuple of label names
    forget: tuple[str, ...]  # training prompts that name the concept
    anchor: tuple[str, ...]  # anchor[j] is what forget[j] should produce instead
    retain: tuple[str, ...]  # training prompts to keep
    prompts: tuple[PromptSpec, ...]  # the evaluation plan
    judge_texts: dict | None = None  # CLIP zero-shot judge: kind -> one text per label; None on the tiny world
    tiny_world: bool = False
    names: tuple[str, ...] = ()  # every concept erased together (one: (name,)); `name` joins them with " + "
    targets: tuple[int, ...] = ()  # their label indices within `kind`, in the order of `names`

    @property
    def together(self) -> bool:
        """Several concepts erased into one delta."""
        return len(self.names) > 1

    def group(self, name: str) -> list[int]:
        """Indices into `prompts` of one group."""
        return [i for i, p in enumerate(self.prompts) if p.group == name]

    def check_evaluable(self) -> None:
        """IRA needs other concepts of the same kind; on the tiny world there always are."""
        if not self.group("retain"):
            raise RecipeError(
                "evaluating on this base needs other concepts of the same kind (eval.in_domain) for IRA",
                hint="add e.g. --set 'eval.in_domain=[monet, picasso]' or put the list in the recipe",
            )


def concept_for(recipe, tiny_world: bool) -> Concept:
    """The recipe's concept on a base: derived from the tiny world there, read from the recipe elsewhere."""
    c = recipe.concept
    if not c.name:
        raise RecipeError("no concept given", hint='pass --concept, e.g. --concept "digit 3"')
    names = concept_names(recipe)
    if tiny_world:
        return tiny_concept(names, c.kind)
    e = recipe.eval
    return recipe_concept(names, c.forget_templates, c.anchor, c.retain_prompts, e.in_domain, e.cross_domain,
                          e.cross_template)


def concept_names(recipe) -> tuple[str, ...]:
    """Every concept the recipe erases: `concept.name` and then `concept.also`, each once."""
    c = recipe.concept
    return tuple(dict.fromkeys(n for n in (c.name, *c.also) if n))


def joined_name(names) -> str:
    """How several concepts erased together are named in reports and delta metadata."""
    return " + ".join(names)


# ---------------------------------------------------------------------------------------------------
# The tiny world.

# The forms the base was trained on (tiny_world.TEMPLATES_*). {c} colour, {w} word, {d} numeral.
_DIGIT_FORGET = ("a {c} handwritten digit {w}", "the number {d} in {c}", "a {c} digit {d}")
_DIGIT_ONLY = ("a handwritten digit {w}", "the number {d}")
_COLOUR_FORGET = ("a {c} handwritten digit {w}", "the number {d} in {c}")
_COLOUR_ONLY = ("a {c} handwritten digit", "a {c} digit")


def tiny_concept(name, kind: str = "") -> Concept:
    """Erasing digit d forgets it in every colour and in its numeral forms, anchors each prompt to the same
    prompt without the digit, and retains the other digits in every colour; a colour likewise. The evaluation
    asks for every (colour, digit) once, and the erased ones in their numeral form too.

    `name` may be a sequence of names of one kind erased together: the union of their forget prompts, the
    retain prompts that name none of them."""
    names = (name,) if isinstance(name, str) else tuple(name)
    parsed = [parse_tiny_concept(n, kind) for n in names]
    k = parsed[0][0]
    if any(p[0] != k for p in parsed):
        raise RecipeError(f"concepts erased together must be of one kind on the tiny base, got "
                          f"{', '.join(f'{n!r} ({p[0]})' for n, p in zip(names, parsed))}",
                          hint="erase digits and colours into separate deltas (apply both with --delta A --delta B)")
    targets = tuple(dict.fromkeys(p[1] for p in parsed))
    if len(targets) < len(parsed):
        raise RecipeError(f"concepts {', '.join(map(repr, names))} name the same {k} twice", hint="list each once")
    forget, anchor, retain = [], [], []
    for target in targets:
        if k == "digit":
            fill = {"w": W.DIGIT_WORDS[target], "d": target}
            for c in W.COLOUR_NAMES:
                for t in _DIGIT_FORGET:
                    forget.append(t.format(c=c, **fill))
                    anchor.append(f"a {c} handwritten digit")
            for t in _DIGIT_ONLY:
                forget.append(t.format(**fill))
                anchor.append("a handwritten digit")
        else:
            c = W.COLOUR_NAMES[target]
            for d in range(10):
                for t in _COLOUR_FORGET:
                    forget.append(t.format(c=c, w=W.DIGIT_WORDS[d], d=d))
                    anchor.append(f"a handwritten digit {W.DIGIT_WORDS[d]}")
            for t in _COLOUR_ONLY:
                forget.append(t.format(c=c))
                anchor.append("a handwritten digit")
    if k == "digit":
        retain = [W.quality_prompt(c, d) for c in W.COLOUR_NAMES for d in range(10) if d not in targets]
    else:
        retain = [W.quality_prompt(o, d) for ci, o in enumerate(W.COLOUR_NAMES) if ci not in targets
                  for d in range(10)]
    prompts = []
    for ci, colour in enumerate(W.COLOUR_NAMES):
        for d in range(10):
            erased = (k == "digit" and d in targets) or (k == "colour" and ci in targets)
            labels = {"digit": d, "colour": ci}
            if not erased:
                prompts.append(PromptSpec(W.quality_prompt(colour, d), "retain", labels))
                continue
            instead = f"a {colour} handwritten digit" if k == "digit" else f"a handwritten digit {W.DIGIT_WORDS[d]}"
            prompts.append(PromptSpec(W.quality_prompt(colour, d), "forget", labels, instead))
            # the numeral form too: an erasure must not hold only for the word
            prompts.append(PromptSpec(f"the number {d} in {colour}", "forget", labels, instead))
    return Concept(name=joined_name(names), kind=k, target=targets[0],
                   other_kind="colour" if k == "digit" else "digit",
                   label_names={"digit": W.DIGIT_WORDS, "colour": W.COLOUR_NAMES}, forget=tuple(forget),
                   anchor=tuple(anchor), retain=tuple(retain), prompts=tuple(prompts), tiny_world=True,
                   names=names, targets=targets)


# ---------------------------------------------------------------------------------------------------
# Concepts a recipe defines (Stable Diffusion and other bases).

_DANGLING = re.compile(r"(\s+(in the style of|in the manner of|by|of|like|in|with|featuring))+\s*$", re.I)


def strip_concept(template: str) -> str:
    """'a painting in the style of {concept}' -> 'a painting': the template with the concept removed."""
    text = " ".join(template.replace("{concept}", " ").split())
    return _DANGLING.sub("", text).strip(" ,;:-")


def recipe_concept(name, templates, anchor: str, retain_prompts, in_domain, cross_domain,
                   cross_template: str) -> Concept:
    """Forget prompts from the templates, anchors from `anchor` or each template without the concept, retain
    prompts from `retain_prompts` plus the templates over `in_domain`. The evaluation judges the concept
    against `in_domain` (IRA) and, when given, `cross_domain` through `cross_template` (CRA); a forget prompt
    that names a cross-domain concept also carries that label (cra_forget). `name` may be a sequence of
    concepts erased together: label i of the concept kind is names[i], the in-domain ones follow."""
    names = (name,) if isinstance(name, str) else tuple(name)
    in_domain = [x for x in in_domain if x not in names]
    forget, anchors, owner = [], [], []
    for i, n in enumerate(names):
        forget += [t.format(concept=n) for t in templates]
        anchors += [anchor or strip_concept(t) for t in templates]
        owner += [i] * len(templates)
    retain = [r for r in retain_prompts  # a retain prompt that names an erased concept is not kept
              if not any(re.search(rf"\b{re.escape(n.lower())}\b", r.lower()) for n in names)]
    for other in in_domain:
        retain += [t.format(concept=other) for t in templates]
    kinds = {"concept": (*names, *in_domain)}
    other_kind = "cross" if cross_domain else None
    prompts = []
    for p, a, i in zip(forget, anchors, owner):
        labels = {"concept": i}
        named = [j for j, x in enumerate(cross_domain) if re.search(rf"\b{re.escape(x.lower())}\b", p.lower())]
        if len(named) == 1:
            labels["cross"] = named[0]
        prompts.append(PromptSpec(p, "forget", labels, a))
    for i, other in enumerate(in_domain, start=len(names)):
        prompts += [PromptSpec(t.format(concept=other), "retain", {"concept": i}) for t in templates]
    if cross_domain:
        kinds["cross"] = tuple(cross_domain)
        prompts += [PromptSpec(cross_template.format(concept=x), "cross", {"cross": j})
                    for j, x in enumerate(cross_domain)]
    texts = {"concept": [templates[0].format(concept=n) for n in kinds["concept"]]}
    if cross_domain:
        texts["cross"] = [cross_template.format(concept=x) for x in cross_domain]
    return Concept(name=joined_name(names), kind="concept", target=0, other_kind=other_kind, label_names=kinds,
                   forget=tuple(forget), anchor=tuple(anchors), retain=tuple(dict.fromkeys(retain)),
                   prompts=tuple(prompts), judge_texts=texts, names=names, targets=tuple(range(len(names))))
