"""What is erased and what is kept: one `Concept` per (recipe, base), read by training, evaluation and attacks.

A concept has two sets of prompts (docs/methods.md, "Shared pieces" and "Evaluation protocol"):

- training: `forget` prompts that name it, `anchor[j]` what `forget[j]` should produce instead, `retain`
  prompts whose behaviour must not change;
- evaluation: `prompts`, each a `PromptSpec` in a group (`forget`, `retain`, `cross`) with the labels the
  judge should see on its images (kind -> label index) and, for forget prompts, its anchor.

On a base that knows the tiny world (coloured handwritten digits), a concept is a digit ("digit 3", "three",
"3") or a colour ("red"): every prompt names a digit and a colour, so every image carries a label of each kind,
and the sets are derived. On the canvas world (the same digits in drawing styles, `tiny-canvas`) a style
("style dotted") is a concept too, and every evaluation prompt names a digit, a colour and a style. On other bases they come from the recipe's `concept` and `eval` sections, and the
judge is CLIP zero-shot over `judge_texts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from erasecli.errors import RecipeError
from erasecli.models import canvas_world as CW
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
    world: str = ""  # the bundled world the concept was derived from ("digits", "canvas"); "" from a recipe
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


def concept_for(recipe, world: str | None) -> Concept:
    """The recipe's concept on a base: derived from a bundled world (`world`: "digits", "canvas") there, read
    from the recipe elsewhere (`world` None)."""
    c = recipe.concept
    if not c.name:
        raise RecipeError("no concept given", hint='pass --concept, e.g. --concept "digit 3"')
    names = concept_names(recipe)
    if world:
        return tiny_concept(names, c.kind, world)
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


def parse_concept(name: str, kind: str = "", world: str = "digits") -> tuple[str, int]:
    """A concept name on a bundled world -> (kind, label index)."""
    return CW.parse_canvas_concept(name, kind) if world == "canvas" else parse_tiny_concept(name, kind)


def label_phrase(kind: str, i: int) -> str:
    """How the bundled worlds' captions name one label on its own (a CLIP text for it)."""
    if kind == "digit":
        return f"a handwritten digit {W.DIGIT_WORDS[i]}"
    if kind == "colour":
        return f"a {W.COLOUR_NAMES[i]} digit"
    if kind == "style":
        return f"a digit in {CW.STYLE_NAMES[i]} style"
    raise ValueError(f"unknown label kind {kind!r}")


def label_words(kind: str, i: int) -> list[str]:
    """The words that name one label in a prompt: a digit's word and numeral, a colour's or a style's name."""
    if kind == "digit":
        return [W.DIGIT_WORDS[i], str(i)]
    if kind == "colour":
        return [W.COLOUR_NAMES[i]]
    if kind == "style":
        return [CW.STYLE_NAMES[i]]
    raise ValueError(f"unknown label kind {kind!r}")


def _parse_all(names, kind: str, world: str) -> tuple[str, tuple[int, ...]]:
    """(kind, targets) of concepts erased together, which must be of one kind and each named once."""
    parsed = [parse_concept(n, kind, world) for n in names]
    k = parsed[0][0]
    if any(p[0] != k for p in parsed):
        raise RecipeError(f"concepts erased together must be of one kind on the tiny base, got "
                          f"{', '.join(f'{n!r} ({p[0]})' for n, p in zip(names, parsed))}",
                          hint="erase each kind into its own delta (apply both with --delta A --delta B)")
    targets = tuple(dict.fromkeys(p[1] for p in parsed))
    if len(targets) < len(parsed):
        raise RecipeError(f"concepts {', '.join(map(repr, names))} name the same {k} twice", hint="list each once")
    return k, targets


def tiny_concept(name, kind: str = "", world: str = "digits") -> Concept:
    """Erasing digit d forgets it in every colour and in its numeral forms, anchors each prompt to the same
    prompt without the digit, and retains the other digits in every colour; a colour likewise. The evaluation
    asks for every (colour, digit) once, and the erased ones in their numeral form too.

    `name` may be a sequence of names of one kind erased together: the union of their forget prompts, the
    retain prompts that name none of them."""
    names = (name,) if isinstance(name, str) else tuple(name)
    if world == "canvas":
        return canvas_concept(names, kind)
    if world != "digits":
        raise ValueError(f"unknown world {world!r}")
    k, targets = _parse_all(names, kind, world)
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
                   world="digits", names=names, targets=targets)


# ---------------------------------------------------------------------------------------------------
# The canvas world: digits (objects) x colours x drawing styles, the UnlearnCanvas protocol.

_CANVAS_OTHER = {"style": "digit", "digit": "style", "colour": "digit"}  # what CRA and cra_forget read


def canvas_concept(names, kind: str = "") -> Concept:
    """A style, a digit or a colour of the canvas world, as UnlearnCanvas defines the sets: a style's IRA is
    the other styles' accuracy and its CRA the digits' (objects'); a digit's IRA the other digits' and its CRA
    the styles'. Forget prompts name the concept in the caption forms the base was trained on, over every
    digit (or style) with the colours cycling; each anchor is the same caption without the concept. For a
    style that is the caption that names no style, which the canvas base draws solid (only solid images had
    such captions): it does not name another style, so no other style's prompts are pulled towards the
    erased one. Retain prompts name the other labels of the kind. The evaluation asks for every (style,
    digit) once, its colour cycling, and the erased ones in a second form too."""
    k, targets = _parse_all(names, kind, "canvas")
    C, D, S = CW.COLOUR_NAMES, CW.DIGIT_WORDS, CW.STYLE_NAMES
    nc, ns = len(C), len(S)
    forget, anchor = [], []

    def add(prompt: str, instead: str) -> None:
        forget.append(prompt)
        anchor.append(instead)

    for t in targets:
        if k == "style":
            st = S[t]
            for d in range(10):
                c0, c1 = C[d % nc], C[(d + 1) % nc]
                add(f"a {c0} {D[d]} in {st} style", f"a {c0} handwritten digit {D[d]}")
                add(f"a {c1} handwritten digit {D[d]} in {st} style", f"a {c1} handwritten digit {D[d]}")
                add(f"a {D[d]}, {st}", f"a handwritten digit {D[d]}")
            add(f"{st} style", "a handwritten digit")
            add(f"a digit in {st} style", "a digit")
            for c in C:
                add(f"a {c} digit in {st} style", f"a {c} digit")
        elif k == "digit":
            w = D[t]
            for si, st in enumerate(S):
                c0, c1 = C[(t + si) % nc], C[(t + si + 1) % nc]
                add(f"a {c0} {w} in {st} style", f"a {c0} digit in {st} style")
                add(f"the number {t} in {c1}, {st} style", f"a {c1} digit in {st} style")
                add(f"a {w}, {st}", f"a digit in {st} style")
            for c in C:
                add(f"a {c} handwritten digit {w}", f"a {c} handwritten digit")
            add(f"a handwritten digit {w}", "a handwritten digit")
        else:
            c = C[t]
            for d in range(10):
                s0, s1 = S[d % ns], S[(d + 3) % ns]
                add(f"a {c} handwritten digit {D[d]} in {s0} style", f"a handwritten digit {D[d]} in {s0} style")
                add(f"a {c} {D[d]} in {s1} style", f"a {D[d]} in {s1} style")
                add(f"a {c} handwritten digit {D[d]}", f"a handwritten digit {D[d]}")
            add(f"a {c} digit", "a digit")
    kinds = CW.KINDS
    plan = [(prompt, dict(zip(kinds, labels))) for prompt, labels in CW.quality_prompts()]

    def erased(labels: dict) -> bool:
        return labels[k] in targets

    retain = [prompt for prompt, labels in plan if not erased(labels)]
    retain += [W.quality_prompt(C[(d + 2) % nc], d) for d in range(10)  # captions that name no style
               if not erased({"digit": d, "colour": (d + 2) % nc, "style": CW.SOLID})]
    prompts = []
    for prompt, labels in plan:
        if not erased(labels):
            prompts.append(PromptSpec(prompt, "retain", labels))
            continue
        d, c, st = D[labels["digit"]], C[labels["colour"]], S[labels["style"]]
        instead = {"style": W.quality_prompt(c, labels["digit"]), "digit": f"a {c} digit in {st} style",
                   "colour": f"a handwritten digit {d} in {st} style"}[k]
        prompts.append(PromptSpec(prompt, "forget", labels, instead))
        # a second caption form: an erasure must not hold only for the trained wording
        prompts.append(PromptSpec(f"the number {labels['digit']} in {c}, {st} style", "forget", labels, instead))
    return Concept(name=joined_name(names), kind=k, target=targets[0], other_kind=_CANVAS_OTHER[k],
                   label_names=dict(CW.LABEL_NAMES), forget=tuple(forget), anchor=tuple(anchor),
                   retain=tuple(dict.fromkeys(retain)), prompts=tuple(prompts), tiny_world=True, world="canvas",
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
