"""The bundled worlds a tiny base is trained on, by name: each is a module with the same face (KINDS,
LABEL_NAMES, render_labelled, caption_for, named, quality_prompts).

- `digits`: coloured handwritten digits (tiny_world.py), the world of `tiny`, `tiny-xl` and the oracle;
- `canvas`: the same digits in colours and drawing styles (canvas_world.py), the world of `tiny-canvas`.
"""

from __future__ import annotations

from types import ModuleType

from erasecli.errors import UsageError


def world(name: str) -> ModuleType:
    """The world module called `name`."""
    if name == "digits":
        from erasecli.models import tiny_world

        return tiny_world
    if name == "canvas":
        from erasecli.models import canvas_world

        return canvas_world
    raise UsageError(f"unknown world {name!r}", hint="valid worlds: digits, canvas")
