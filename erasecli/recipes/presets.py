"""Shipped presets: recipes tuned for a base and a method, the defaults a run starts from when no recipe file
is given (recipe field `defaults`). A preset is an ordinary recipe file; its `base`, `method`, `concept` and
`defaults` are left out when it is used as defaults, so it sets how a method runs, never what it erases.
The repository's `recipes/tiny-*.yaml` are these same files."""

from __future__ import annotations

from pathlib import Path

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


def tiny_preset(method: str, kind: str) -> str | None:
    """The shipped preset for a method on the tiny world: the one tuned for the concept's kind (digit or
    colour), else the digit one (tuned on 'digit 3'); None when the method has none."""
    for name in (f"tiny-{kind}-{method}", f"tiny-digit-{method}"):
        if (PRESETS_DIR / f"{name}.yaml").is_file():
            return name
    return None
