"""How well each shipped tiny CLIP reads the digit zero-shot: the signal critic-rl's `clip` reward is built on.

Every held-out digit of a world in every colour (on tiny-canvas each in a seeded random style), scored against
"a handwritten digit N" for N = 0-9 at the critic-rl presets' temperature (CLIP's logit scale / 2.5). Per world:
the zero-shot digit accuracy and the probability of "three" on threes and on other digits (the concept the
tiny presets erase); on tiny-canvas also per style. A few seconds.

    python -m bench.clip_zero_shot [--temperature 2.5]
"""

from __future__ import annotations

import argparse

from bench.common import emit

WORLDS = ("digits", "canvas")


def read_digits(world: str, temperature: float):
    """(P (N, 10) of the digit names, digit labels (N,), style labels (N,) or None) on the world's held-out
    renders."""
    import torch

    from erasecli.concepts import label_phrase
    from erasecli.judges import Clip
    from erasecli.models import canvas_world, tiny_world

    clip = Clip.tiny(world)
    out = (canvas_world if world == "canvas" else tiny_world).render_split("heldout", seed=123)
    x, digits = out[0], out[1]
    styles = out[3] if world == "canvas" else None
    texts = clip.embed_text([label_phrase("digit", j) for j in range(10)])
    img = torch.cat([clip.embed_pixels(x[i : i + 512]) for i in range(0, len(x), 512)])
    return (clip.zero_shot_scale(temperature) * img @ texts.T).softmax(-1), digits, styles  # as critic-rl's reward


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.clip_zero_shot")
    ap.add_argument("--temperature", type=float, default=2.5, help="CLIP's logit scale is divided by it.")
    args = ap.parse_args(argv)
    import torch

    from erasecli.models.canvas_world import STYLE_NAMES

    for world in WORLDS:
        p, d, s = read_digits(world, args.temperature)
        groups = [("all", torch.ones_like(d, dtype=torch.bool))]
        groups += [(name, s == k) for k, name in enumerate(STYLE_NAMES)] if s is not None else []
        for style, m in groups:
            right = (p.argmax(-1) == d)[m].float().mean().item()
            three, other = p[m & (d == 3), 3].mean().item(), p[m & (d != 3), 3].mean().item()
            extra = {"world": world, "style": style, "images": int(m.sum()), "temperature": args.temperature}
            emit("clip_zero_shot", "digit_accuracy", round(right, 4), "fraction", **extra)
            emit("clip_zero_shot", "p_three_on_threes", round(three, 4), "probability", **extra)
            emit("clip_zero_shot", "p_three_on_other_digits", round(other, 4), "probability", **extra)


if __name__ == "__main__":
    main()
