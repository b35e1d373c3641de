"""The UnlearnCanvas table on tiny-canvas: style unlearning averaged over several styles, object (digit)
unlearning over several digits, per method.

For every method and every concept ("style dotted", ..., "digit 3", ...) `erase unlearn --method M --base
tiny-canvas --concept C --seed S` writes one delta (the method's canvas preset, else its tiny preset; a delta
already in --keep is reused); one `erase evaluate` per concept judges the base and every method's delta on the
same images (UA, IRA, CRA with UnlearnCanvas's definitions: docs/methods.md, "The canvas world"). For one
style (--attack-style) a second evaluation adds the attacks' ASR. A method that fails or refuses a concept is
reported (a `failed` line with its one-line error) and left out of that concept's averages; the others go on.
JSON lines to stdout (per method, concept and figure, and the averages), a Markdown table to stderr.

    python -m bench.canvas [--methods uce,esd] [--styles dotted,striped,checkered,glowing] [--digits 3,5,7,8]
                           [--seed 0] [--samples-per-prompt 16] [--attack-style dotted] [--keep DIR]
                           [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import emit, model_args, output_file
from bench.unlearn_compare import erase

BASE = "tiny-canvas"
ATTACK_METRICS = "pre_asr,asr_paraphrase,asr_prompt,asr_inversion"


def main(argv=None) -> None:
    from erasecli.recipes import METHOD_NAMES

    ap = argparse.ArgumentParser(prog="python -m bench.canvas")
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--styles", default="dotted,striped,checkered,glowing")
    ap.add_argument("--digits", default="3,5,7,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-per-prompt", type=int, default=16, help="Evaluation images per prompt and model.")
    ap.add_argument("--attack-style", default="dotted", help="The style each method's delta is attacked on ('' for "
                    "none).")
    ap.add_argument("--keep", default=None, help="Folder for the deltas (default: a temp folder).")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Recipe overrides for every run.")
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    concepts = ([("style", f"style {s}") for s in a.styles.split(",") if s]
                + [("object", f"digit {d}") for d in a.digits.split(",") if d])
    work = Path(a.keep or tempfile.mkdtemp(prefix="erasecli-canvas-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ERASECLI_CACHE", str(work / "cache"))
    sets = [x for kv in a.sets for x in ("--set", kv)]
    figures: dict = {}  # (model, concept) -> metrics
    train: dict = {}  # (method, concept) -> summary
    failed: dict = {}  # (method, concept) -> the error's last line
    for _, concept in concepts:
        folders = []
        for m in methods:
            d = work / f"seed{a.seed}" / concept.replace(" ", "-") / m  # evaluate names a model by its folder
            if not output_file(m, d).exists():
                try:
                    erase("unlearn", "--method", m, "--base", BASE, "--concept", concept, "--seed", str(a.seed),
                          *sets, "--out", str(d), "--overwrite")
                except SystemExit as e:
                    failed[m, concept] = " ".join(str(e).strip().splitlines()[-2:])[:400]
                    emit("canvas", "failed", failed[m, concept], "text", model=m, concept=concept, seed=a.seed)
                    continue
            s = json.loads((d / "train_summary.json").read_text())
            train[m, concept] = {"train_seconds": s["train_seconds"] + s.get("critic_seconds", 0.0),
                                 "peak_rss_mb": s.get("peak_rss_mb"), "delta_bytes": output_file(m, d).stat().st_size}
            folders.append((m, d))
        metrics = "ua,ira,cra,cra_forget"
        if concept == f"style {a.attack_style}":
            metrics += "," + ATTACK_METRICS
        rep = erase("evaluate", "--base", BASE, "--concept", concept, "--metrics", metrics, "--samples-per-prompt",
                    str(a.samples_per_prompt), *sum([model_args(m, d) for m, d in folders], []))
        by_name = {r["name"]: r["metrics"] for r in rep["models"]}
        figures["base", concept] = by_name["base"]
        for m, d in folders:
            figures[m, concept] = by_name[d.name]
    keys = ("ua", "ira", "cra", "cra_forget")
    rows = []
    for model in ["base", *methods]:
        row = {"model": model}
        for kind in ("style", "object"):
            named = [c for k, c in concepts if k == kind]
            for key in keys:
                done = [c for c in named if (model, c) in figures]
                vals = [figures[model, c][key] for c in done if figures[model, c].get(key) is not None]
                row[f"{kind}_{key}"] = statistics.fmean(vals) if vals else None
                for c in done:
                    emit("canvas", key, figures[model, c].get(key), "fraction", model=model, concept=c, kind=kind,
                         seed=a.seed, samples_per_prompt=a.samples_per_prompt)
        if model != "base":
            runs = [train[model, c] for _, c in concepts if (model, c) in train]
            row["train_seconds"] = statistics.fmean(r["train_seconds"] for r in runs) if runs else None
            row["peak_rss_mb"] = max((r["peak_rss_mb"] or 0) for r in runs) if runs else None
            row["delta_bytes"] = max(r["delta_bytes"] for r in runs) if runs else None
        if a.attack_style:
            for key in ATTACK_METRICS.split(","):
                row[key] = figures.get((model, f"style {a.attack_style}"), {}).get(key)
        for key, value in row.items():
            if key != "model":
                unit = {"train_seconds": "s", "peak_rss_mb": "MiB", "delta_bytes": "bytes"}.get(key, "fraction")
                emit("canvas", key, value, unit, model=model, seed=a.seed, styles=a.styles, digits=a.digits,
                     attack_style=a.attack_style, samples_per_prompt=a.samples_per_prompt, sets=a.sets)
        rows.append(row)
    cols = [f"{k}_{m}" for k in ("style", "object") for m in ("ua", "ira", "cra")] + (
        ATTACK_METRICS.split(",")[1:] if a.attack_style else [])
    cols += ["train_seconds", "peak_rss_mb", "delta_bytes"]
    lines = ["| model | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None else f"{v:.0f}" if c in ("peak_rss_mb", "delta_bytes") else
                         f"{v:.1f}" if c == "train_seconds" else f"{v:.3f}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    print("\n".join(lines), file=sys.stderr)
    for (m, c), err in failed.items():
        print(f"{m} on {c!r} failed: {err}", file=sys.stderr)
    print(f"seed {a.seed}, {a.samples_per_prompt} images per prompt; styles {a.styles}, digits {a.digits}; "
          f"deltas in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
