"""The tiny world: real handwritten digits in five colours, with captions.

The images are scikit-learn's `load_digits` (1,797 real 8x8 handwritten digits, 17 grey levels) upscaled to
32x32 and drawn in a colour on black. Every image has two known concepts, its digit and its colour, so an
erasure on a model trained here can be judged exactly. A fixed, seeded split holds out digits that no tiny
model (base, judges) ever trains on; the judges are scored on it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from erasecli.errors import RecipeError

IMAGE_SIZE = 32
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = {  # name -> RGB in [0, 1]
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
}
COLOUR_NAMES = tuple(COLOURS)
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 1797  # fixed forever: changing it leaks held-out digits into training

# Caption templates by what they name. {c} colour, {w} digit word, {d} numeral.
TEMPLATES_BOTH = (
    "a {c} handwritten digit {w}",
    "the number {d} in {c}",
    "a {c} digit {d}",
    "a handwritten {w} in {c}",
    "a {c} number {w}",
    "the digit {d} drawn in {c}",
)
TEMPLATES_DIGIT = ("a digit {w}", "the number {d}", "a handwritten digit {w}", "a handwritten {d}")
TEMPLATES_COLOUR = ("a {c} digit", "a {c} handwritten digit", "a {c} number")
TEMPLATES_NEITHER = ("a handwritten digit", "a digit", "a number")
# Share of captions of each kind; about 10% empty for classifier-free guidance.
CAPTION_MIX = (("both", 0.55), ("digit", 0.15), ("colour", 0.12), ("neither", 0.08), ("empty", 0.10))


def quality_prompt(colour: str, digit: int) -> str:
    """The prompt the base's quality bar is measured on."""
    return f"a {colour} handwritten digit {DIGIT_WORDS[digit]}"


def caption(digit: int, colour: str, rng: random.Random) -> str:
    """One caption for an image of `digit` in `colour`, drawn from CAPTION_MIX."""
    kind = rng.choices([k for k, _ in CAPTION_MIX], weights=[p for _, p in CAPTION_MIX])[0]
    fill = {"c": colour, "w": DIGIT_WORDS[digit], "d": str(digit)}
    if kind == "both":
        return rng.choice(TEMPLATES_BOTH).format(**fill)
    if kind == "digit":
        return rng.choice(TEMPLATES_DIGIT).format(**fill)
    if kind == "colour":
        return rng.choice(TEMPLATES_COLOUR).format(**fill)
    if kind == "neither":
        return rng.choice(TEMPLATES_NEITHER)
    if kind == "empty":
        return ""
    raise ValueError(f"unknown caption kind {kind!r}")


@dataclass(frozen=True)
class Digits:
    """Grey 8x8 digits in [0, 1] and their labels."""

    images: np.ndarray  # (N, 8, 8) float32
    labels: np.ndarray  # (N,) int64


def load_split(split: str) -> Digits:
    """`train` or `heldout`: a fixed, stratified split of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    idx = np.arange(len(data.target))
    train_idx, held_idx = train_test_split(
        idx, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )
    if split == "train":
        pick = train_idx
    elif split == "heldout":
        pick = held_idx
    else:
        raise ValueError(f"unknown split {split!r}; valid: train, heldout")
    images = (data.images[pick] / 16.0).astype(np.float32)
    return Digits(images=images, labels=data.target[pick].astype(np.int64))


def render(grey8, colour_idx, shift=None, brightness=None):
    """Draw grey 8x8 digits as coloured 32x32 images in [-1, 1].

    grey8: (B, 8, 8) tensor in [0, 1]; colour_idx: (B,) long; shift: (B, 2) integer pixel shifts at 32x32
    (pixels rolled in from the edge are black, since digits have a black border); brightness: (B,) scale.
    Returns (B, 3, 32, 32).
    """
    import torch
    import torch.nn.functional as F

    x = F.interpolate(grey8[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1)  # (B, 1, 32, 32)
    if shift is not None:
        x = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), dims=(1, 2)) for xi, s in zip(x, shift)])
    rgb = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=x.dtype)[colour_idx]  # (B, 3)
    if brightness is not None:
        rgb = rgb * brightness[:, None]
    img = x * rgb[:, :, None, None]  # (B, 3, 32, 32)
    return img * 2 - 1


def render_split(split: str, seed: int, copies: int = 1, max_shift: int = 2):
    """Every digit of a split in every colour, `copies` times with random shifts and brightness.

    Returns images (N, 3, 32, 32) in [-1, 1], digit labels (N,), colour labels (N,).
    """
    import torch

    d = load_split(split)
    g = torch.Generator().manual_seed(seed)
    n, k = len(d.labels), len(COLOUR_NAMES)
    grey = torch.from_numpy(d.images).repeat(k * copies, 1, 1)  # (n*k*copies, 8, 8)
    digits = torch.from_numpy(d.labels).repeat(k * copies)
    colours = torch.arange(k).repeat_interleave(n).repeat(copies)
    shift = torch.randint(-max_shift, max_shift + 1, (len(digits), 2), generator=g)
    bright = 0.75 + 0.25 * torch.rand(len(digits), generator=g)
    return render(grey, colours, shift, bright), digits, colours


def parse_tiny_concept(name: str, kind: str = "") -> tuple[str, int]:
    """'digit 3', 'the digit three', '3', 'three', 'red', 'colour red' -> (kind, index)."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    digits = [i for i, w in enumerate(DIGIT_WORDS) if w in words] + [int(w) for w in words if w.isdigit() and len(w) == 1]
    colours = [i for i, c in enumerate(COLOUR_NAMES) if c in words]
    found = []
    if len(set(digits)) == 1 and kind in ("", "digit"):
        found.append(("digit", digits[0]))
    if len(set(colours)) == 1 and kind in ("", "colour", "color"):
        found.append(("colour", colours[0]))
    if len(found) != 1:
        raise RecipeError(
            f"concept {name!r} is not one digit or one colour of the tiny world",
            hint="use e.g. 'digit 3', 'seven' or 'red' (colours: " + ", ".join(COLOUR_NAMES) + ")",
        )
    return found[0]


# The face every bundled world shows the trainer and the judges (models/worlds.py): its label kinds, labelled
# renders, captions from labels, and which labels a caption names.
KINDS = ("digit", "colour")
LABEL_NAMES = {"digit": DIGIT_WORDS, "colour": COLOUR_NAMES}


def render_labelled(split: str, seed: int, copies: int = 1):
    """`render_split` as (images, labels): labels a tuple of (N,) tensors in the order of KINDS."""
    x, d, c = render_split(split, seed, copies)
    return x, (d, c)


def caption_for(labels, rng: random.Random) -> str:
    """One caption for an image with these labels (digit, colour indices)."""
    return caption(int(labels[0]), COLOUR_NAMES[int(labels[1])], rng)


def named(text: str) -> tuple[int, int]:
    """(digit, colour) a caption names, -1 for each it does not name."""
    words = text.split()
    d = next((i for i, w in enumerate(DIGIT_WORDS) if w in words or str(i) in words), -1)
    c = next((i for i, n in enumerate(COLOUR_NAMES) if n in words), -1)
    return d, c


def quality_prompts() -> list[tuple[str, tuple[int, ...]]]:
    """The base's quality-bar prompts and the labels their images should carry."""
    return [(quality_prompt(c, d), (d, ci)) for ci, c in enumerate(COLOUR_NAMES) for d in range(10)]
