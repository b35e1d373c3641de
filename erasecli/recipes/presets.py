"""Shipped presets: recipes tuned for a base and a method, the defaults a run starts from when no recipe file
is given (recipe field `defaults`). A preset is an ordinary recipe file; its `base`, `method`, `concept` and
`defaults` are left out when it is used as defaults, so it sets how a method runs, never what it erases.
The repository's `recipes/tiny-*.yaml` are these same files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from erasecli.errors import RecipeError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of a preset name; an unknown name is an error listing the shipped ones."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"unknown preset {name!r} in recipe key 'defaults'",
                          hint="use auto, paper or one of: " + ", ".join(preset_names()))
    return path


def tiny_preset(method: str, kind: str, base: str = "tiny") -> str | None:
    """The shipped preset for a method on a tiny-world base: the one for the concept's kind (digit or colour),
    else the digit one (tuned on 'digit 3'); for each, that base's own (tiny-xl-...) before the tiny base's.
    A style (tiny-canvas) without a style preset takes the tiny base's digit preset, not the canvas one: that is
    tuned for a digit drawn in every style, an object. None when the method has none."""
    bases = dict.fromkeys([base, "tiny"]) if base.startswith("tiny") else ["tiny"]
    for name in (f"{b}-{k}-{method}" for k in dict.fromkeys([kind, "digit"]) for b in bases
                 if not (kind == "style" and k == "digit" and b != "tiny")):
        if (PRESETS_DIR / f"{name}.yaml").is_file():
            return name
    return None


def load_with_defaults(path=None, overrides: Sequence[str] = (), **values):
    """The recipe of a command: defaults < its `defaults` preset < file < options < --set (erasecli.recipes).

    `defaults: auto` resolves to the shipped tiny preset of the method (`tiny_preset`) when no file is given and
    the base draws the tiny world, else to 'paper' (the recipe's own defaults, the methods' published settings).
    The returned recipe names what it resolved to, so the recipe written beside a delta says where its values
    came from."""
    from dataclasses import replace

    from erasecli.recipes.loader import load_recipe

    r = load_recipe(path, overrides, **values)
    name = r.defaults
    if name == "auto":
        name = "paper"
        if path is None and r.method:
            from erasecli.models.registry import resolve_base

            ref = resolve_base(r.base)
            if ref.tiny_world:
                kind = "digit"
                if r.concept.name:
                    from erasecli.models.canvas_world import parse_canvas_concept
                    from erasecli.models.tiny_world import parse_tiny_concept

                    parse = parse_canvas_concept if ref.world == "canvas" else parse_tiny_concept
                    kind = parse(r.concept.name, r.concept.kind)[0]
                name = tiny_preset(r.method, kind, r.base) or "paper"
    if name == "paper":
        return replace(r, defaults="paper")
    return replace(load_recipe(path, overrides, preset=preset_path(name), **values), defaults=name)
