"""A training plot drawn with PIL (no plotting library needed): losses on a log scale, lambda on its own panel."""

from __future__ import annotations

import math
from pathlib import Path

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
LOSS_KEYS = ("loss", "L_x", "L_a", "L_r", "L_esd", "reward")


def _panel(draw, box, series: dict, log: bool, title: str, font) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0), font=font)
    pts = [(i, v) for s in series.values() for i, v in s if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not pts:
        return
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = min(f(v) for _, v in pts), max(f(v) for _, v in pts)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(i for i, _ in pts) or 1
    draw.text((x0 + 4, y0 + 2), f"{10 ** hi if log else hi:.3g}", fill=(90, 90, 90), font=font)
    draw.text((x0 + 4, y1 - 12), f"{10 ** lo if log else lo:.3g}", fill=(90, 90, 90), font=font)
    for k, (name, s) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        xy = [(x0 + (x1 - x0) * i / n, y1 - (y1 - y0) * (f(v) - lo) / (hi - lo))
              for i, v in s if v is not None and math.isfinite(v) and (v > 0 or not log)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=1)
        draw.text((x1 - 90, y0 + 4 + 14 * k), name, fill=colour, font=font)


def smooth(series: list, window: int) -> list:
    """Trailing moving average over `window` points: per-step losses of a stochastic objective are noise."""
    out, acc = [], []
    for i, v in series:
        if v is None or not math.isfinite(v):
            continue
        acc.append(v)
        acc = acc[-window:]
        out.append((i, sum(acc) / len(acc)))
    return out


def plot_training(rows: list, path: Path, title: str = "") -> None:
    """Write a PNG: the step's losses (log scale; negative ones such as the reward on a linear panel) and,
    when the method has one, lambda per step."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    steps = [r["step"] for r in rows]
    keys = [k for k in LOSS_KEYS if any(k in r for r in rows)]
    positive = {k: [(s, r.get(k)) for s, r in zip(steps, rows)] for k in keys
                if all((r.get(k) or 0) >= 0 for r in rows)}
    signed = {k: [(s, r.get(k)) for s, r in zip(steps, rows)] for k in keys if k not in positive}
    panels = [("losses (log scale)", positive, True)]
    if signed:
        panels.append(("signed values", signed, False))
    if any("lambda" in r for r in rows):
        panels.append(("lambda", {"lambda": [(s, r.get("lambda")) for s, r in zip(steps, rows)]}, False))
    window = max(1, len(rows) // 40)
    panels = [(f"{name}, moving average of {window} steps" if window > 1 else name,
               {k: smooth(v, window) for k, v in series.items()}, log) for name, series, log in panels]
    w, ph = 640, 200
    img = Image.new("RGB", (w, 30 + len(panels) * (ph + 30)), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 6), f"{title}  ({len(rows)} steps)", fill=(0, 0, 0), font=font)
    for i, (name, series, log) in enumerate(panels):
        top = 40 + i * (ph + 30)
        _panel(d, (40, top, w - 10, top + ph), series, log, name, font)
    img.save(path)
