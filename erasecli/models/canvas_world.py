"""The canvas world: the tiny world's digits (objects) in five colours and eight drawing styles.

A style here is how the strokes are drawn (texture and outline), never their colour: `solid` strokes,
an `outline`, `dotted` and `striped` fills, a `checkered` fill, a `glowing` halo, `pixel` blocks and a
`negative` (the colour around a dark digit). Every image has three known labels (digit, colour, style), so a
style erasure can be judged as exactly as a digit erasure: the UnlearnCanvas protocol (styles x objects) at
32x32.

Captions name any subset of the three. A non-solid style is always named when the caption names a style at
all, and only a solid digit gets captions that name no style, as "a painting of a village" means no one
painter's style on a real model: so "the prompt without the style" is a well-defined anchor.
The split of the handwritten digits is the tiny world's (tiny_world.load_split), so held-out digits stay
held out for every model of both worlds.
"""

from __future__ import annotations

import random
import re

from erasecli.errors import RecipeError
from erasecli.models import tiny_world as W

IMAGE_SIZE = W.IMAGE_SIZE
DIGIT_WORDS = W.DIGIT_WORDS
COLOURS = W.COLOURS
COLOUR_NAMES = W.COLOUR_NAMES
STYLE_NAMES = ("solid", "outline", "dotted", "striped", "checkered", "glowing", "pixel", "negative")
SOLID = 0

# Caption templates by what they name: {c} colour, {w} digit word, {d} numeral, {s} style.
TEMPLATES = {
    "dcs": ("a {c} {w} in {s} style", "a {c} handwritten digit {w} in {s} style", "the number {d} in {c}, {s} style",
            "a {s} style {c} digit {d}"),
    "ds": ("a {w}, {s}", "a {w} in {s} style", "a handwritten digit {w} in {s} style", "the number {d}, {s}"),
    "cs": ("a {c} digit in {s} style", "a {c} number, {s}"),
    "s": ("{s} style", "a digit in {s} style", "a handwritten digit, {s}"),
    "dc": ("a {c} handwritten digit {w}", "the number {d} in {c}", "a {c} digit {d}", "a handwritten {w} in {c}"),
    "d": ("a digit {w}", "the number {d}", "a handwritten digit {w}"),
    "c": ("a {c} digit", "a {c} handwritten digit"),
    "": ("a handwritten digit", "a digit"),
}
# Share of captions of each kind (what they name); about 10% empty for classifier-free guidance.
CAPTION_MIX = (("dcs", 0.40), ("ds", 0.12), ("cs", 0.10), ("s", 0.08), ("dc", 0.10), ("d", 0.05), ("c", 0.03),
               ("", 0.02), ("empty", 0.10))


def quality_prompt(colour: str, digit: int, style: str) -> str:
    """The prompt the canvas base's quality bar is measured on."""
    return f"a {colour} handwritten digit {DIGIT_WORDS[digit]} in {style} style"


def caption(digit: int, colour: int, style: int, rng: random.Random) -> str:
    """One caption for an image of `digit` in colour `colour` and style `style` (indices), from CAPTION_MIX.
    Only a solid image may get a caption that names no style (see the module docstring)."""
    kinds = [k for k, _ in CAPTION_MIX]
    weights = [p for _, p in CAPTION_MIX]
    if style != SOLID:
        weights = [p if "s" in k or k == "empty" else 0.0 for k, p in zip(kinds, weights)]
    kind = rng.choices(kinds, weights=weights)[0]
    if kind == "empty":
        return ""
    fill = {"c": COLOUR_NAMES[colour], "w": DIGIT_WORDS[digit], "d": str(digit), "s": STYLE_NAMES[style]}
    return rng.choice(TEMPLATES[kind]).format(**fill)


def named(text: str) -> tuple[int, int, int]:
    """(digit, colour, style) a caption names, -1 for each it does not name."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    d = next((i for i, w in enumerate(DIGIT_WORDS) if w in words), -1)
    if d < 0:
        d = next((int(w) for w in words if w.isdigit() and len(w) == 1), -1)
    c = next((i for i, n in enumerate(COLOUR_NAMES) if n in words), -1)
    s = next((i for i, n in enumerate(STYLE_NAMES) if n in words), -1)
    return d, c, s


def style_masks(grey32):
    """Per-style stroke intensity in [0, 1] for upscaled grey digits (B, 1, 32, 32): (B, S, 32, 32).

    The texture grids (dots, stripes, checks) are fixed to the image, with a period of 4 pixels, so each
    4x4 latent cell of the VAE sees one phase of them."""
    import torch
    import torch.nn.functional as F

    x = grey32
    n = IMAGE_SIZE
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    hard = (x > 0.45).float()  # (B, 1, 32, 32)
    eroded = -F.max_pool2d(-hard, 3, stride=1, padding=1)
    dilated = F.max_pool2d(hard, 7, stride=1, padding=3)
    blur = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    blur = (blur[:, None] * blur[None, :] / 256.0)[None, None]  # (1, 1, 5, 5)
    halo = F.conv2d(F.pad(dilated, (2, 2, 2, 2), mode="replicate"), blur)
    dots = (((i % 4) < 2) & ((j % 4) < 2)).float()
    stripes = (((i + j) % 4) < 2).float()
    checks = ((((i // 2) + (j // 2)) % 2) == 0).float()
    blocks = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="nearest")
    out = [
        x,  # solid
        (hard - eroded).clamp(0, 1),  # outline: a one-pixel contour
        hard * dots,  # dotted: one dot per pixel of the 8x8 source digit
        x * stripes,  # striped (diagonal)
        hard * checks,  # checkered: 2x2 checks
        torch.maximum(x, 0.5 * halo),  # glowing: a soft halo around the strokes
        (blocks > 0.3).float(),  # pixel: 4x4 blocks
        1.0 - x,  # negative: the colour around a dark digit
    ]
    return torch.cat(out, dim=1)  # (B, S, 32, 32)


def render(grey8, colour_idx, style_idx, shift=None, brightness=None):
    """Draw grey 8x8 digits as coloured, styled 32x32 images in [-1, 1].

    grey8: (B, 8, 8) in [0, 1]; colour_idx, style_idx: (B,) long; shift: (B, 2) pixel shifts applied to the
    digit before the style (so textures stay on the image's grid); brightness: (B,) colour scale.
    Returns (B, 3, 32, 32)."""
    import torch
    import torch.nn.functional as F

    x = F.interpolate(grey8[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1)  # (B, 1, 32, 32)
    if shift is not None:
        x = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), dims=(1, 2)) for xi, s in zip(x, shift)])
    masks = style_masks(x)  # (B, S, 32, 32)
    m = masks.gather(1, style_idx[:, None, None, None].expand(-1, 1, IMAGE_SIZE, IMAGE_SIZE))  # (B, 1, 32, 32)
    rgb = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=x.dtype)[colour_idx]  # (B, 3)
    if brightness is not None:
        rgb = rgb * brightness[:, None]
    return m * rgb[:, :, None, None] * 2 - 1  # (B, 3, 32, 32)


def render_split(split: str, seed: int, copies: int = 1, max_shift: int = 2):
    """Every digit of a split in every colour, each copy in a seeded random style (uniform over the styles),
    with random shifts and brightness.

    Returns images (N, 3, 32, 32) in [-1, 1] and digit, colour and style labels, each (N,)."""
    import torch

    d = W.load_split(split)
    g = torch.Generator().manual_seed(seed)
    n, k = len(d.labels), len(COLOUR_NAMES)
    grey = torch.from_numpy(d.images).repeat(k * copies, 1, 1)  # (n*k*copies, 8, 8)
    digits = torch.from_numpy(d.labels).repeat(k * copies)
    colours = torch.arange(k).repeat_interleave(n).repeat(copies)
    styles = torch.randint(len(STYLE_NAMES), (len(digits),), generator=g)
    shift = torch.randint(-max_shift, max_shift + 1, (len(digits), 2), generator=g)
    bright = 0.75 + 0.25 * torch.rand(len(digits), generator=g)
    return render(grey, colours, styles, shift, bright), digits, colours, styles


def parse_canvas_concept(name: str, kind: str = "") -> tuple[str, int]:
    """'style dotted', 'dotted', 'digit 3', 'three', 'red' -> (kind, index): the name must name exactly one
    label (of `kind`, when given)."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    found = {("style", i) for i, s in enumerate(STYLE_NAMES) if s in words}
    found |= {("digit", i) for i, w in enumerate(DIGIT_WORDS) if w in words or str(i) in words}
    found |= {("colour", i) for i, c in enumerate(COLOUR_NAMES) if c in words}
    if kind:
        found = {f for f in found if f[0] == ("colour" if kind == "color" else kind)}
    if len(found) != 1:
        raise RecipeError(
            f"concept {name!r} is not one style, one digit or one colour of the canvas world",
            hint="use e.g. 'style dotted', 'digit 3' or 'red' (styles: " + ", ".join(STYLE_NAMES) + ")",
        )
    return found.pop()


# The face every bundled world shows the trainer and the judges (models/worlds.py).
KINDS = ("digit", "colour", "style")
LABEL_NAMES = {"digit": DIGIT_WORDS, "colour": COLOUR_NAMES, "style": STYLE_NAMES}


def render_labelled(split: str, seed: int, copies: int = 1):
    """`render_split` as (images, labels): labels a tuple of (N,) tensors in the order of KINDS."""
    x, d, c, s = render_split(split, seed, copies)
    return x, (d, c, s)


def caption_for(labels, rng: random.Random) -> str:
    """One caption for an image with these labels (digit, colour, style indices)."""
    return caption(int(labels[0]), int(labels[1]), int(labels[2]), rng)


def quality_prompts() -> list[tuple[str, tuple[int, ...]]]:
    """The base's quality-bar prompts (every digit in every style, the colour cycling) and their labels."""
    n = len(COLOUR_NAMES)
    return [(quality_prompt(COLOUR_NAMES[(d + s) % n], d, STYLE_NAMES[s]), (d, (d + s) % n, s))
            for s in range(len(STYLE_NAMES)) for d in range(10)]
