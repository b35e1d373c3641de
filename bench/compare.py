"""The comparison study as one command: every method erasing the same concept on one base, one row each.

Per seed S, each method runs `erase unlearn` with its shipped recipe for the base (`recipes/<base>-digit-<M>.yaml`,
else the plain command) and `--seed S`, in its own process (so peak RSS is that method's), and one `erase
evaluate` then judges every delta and guard beside the base on the same prompts and seeds: UA, IRA, CRA,
cra_forget, FID, CLIP score, pre-ASR and ASR under the prompt and inversion attacks, and ImageReward when its
package and weights are here (else the column says why not: never a made-up number). The evaluation images
(eval.seed = 1000 + 100 S) and the attacks' draws (attack.seed = 2000 + 100 S) move with the seed too, so the
methods with no randomness of their own (uce, sld, safree) are measured on two sets of images as well.

    python -m bench.compare [--base tiny|tiny-xl] [--seeds 0,1] [--methods siss,sld] [--keep DIR]
                            [--samples-per-prompt 16] [--budget 1.0]

JSON lines to stdout (one per method, seed and figure), a Markdown table to stderr (each cell "seed 0 / seed 1 /
..."). Train seconds are the unlearn command's training (critic-rl: with the critic it trains first); a
guard's is the seconds it took to encode its safety concept (it costs at sampling time instead). Delta bytes are
the LoRA file's (a guard's tensors file for a guard).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.common import emit, method_args, model_args, output_file
from bench.unlearn_compare import ROOT, erase

METRICS = ("ua", "ira", "cra", "cra_forget", "fid", "clip_score", "pre_asr", "asr_prompt", "asr_inversion")
COLUMNS = (*METRICS, "imagereward", "train_seconds", "peak_rss_mb", "delta_bytes")
STUDY_IMAGEREWARD = {"unedited SD-1.4": 0.172, "uce": 0.190, "safree": 0.253, "esd": -0.284, "mace": -1.403}


def imagereward_status() -> str | None:
    """None when the imagereward metric can run here, else the one-line reason it cannot."""
    from erasecli.errors import EraseError
    from erasecli.eval.imagereward import check_available

    try:
        check_available()
    except EraseError as err:
        return "not installed: " + str(err).split(":")[0]
    return None


def run_seed(a, seed: int, methods: list, work: Path, ir_missing: str | None) -> dict:
    """{model name: {column: value}} for one seed (the base as "base")."""
    common = ["--concept", a.concept, "--seed", str(seed), "--overwrite"]
    summaries = {}
    for m in methods:
        d = work / f"seed{seed}" / m
        res = erase("unlearn", *method_args(m, ROOT, a.base), *common, "--out", str(d))
        s = res["summary"]
        summaries[m] = {"train_seconds": round(s["train_seconds"] + s.get("critic_seconds", 0.0), 2),
                        "peak_rss_mb": s.get("peak_rss_mb"), "delta_bytes": output_file(m, d).stat().st_size}
    metrics = list(METRICS) + ([] if ir_missing else ["imagereward"])
    args = ["evaluate", "--concept", a.concept, "--base", a.base, "--metrics", ",".join(metrics),
            "--samples-per-prompt", str(a.samples_per_prompt), "--set", f"eval.seed={1000 + 100 * seed}",
            "--set", f"attack.seed={2000 + 100 * seed}", "--set", f"attack.budget={a.budget}"]
    for m in methods:
        args += model_args(m, work / f"seed{seed}" / m)
    report = erase(*args)
    rows = {}
    for row in report["models"]:
        vals = {k: row["metrics"].get(k) for k in metrics}
        vals["imagereward"] = ir_missing if ir_missing else vals.get("imagereward")
        rows[row["name"]] = {**vals, **summaries.get(row["name"], {})}
    return rows


def cell(values: list) -> str:
    def one(v):
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        if isinstance(v, int) or abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    if all(isinstance(v, str) for v in values) and len(set(values)) == 1:
        return "n/a"
    return " / ".join(one(v) for v in values)


def main(argv=None) -> None:
    from erasecli.recipes import METHOD_NAMES

    ap = argparse.ArgumentParser(prog="python -m bench.compare")
    ap.add_argument("--concept", default="digit 3")
    ap.add_argument("--base", default="tiny", help="a bundled tiny-world base: tiny or tiny-xl")
    ap.add_argument("--seeds", default="0,1", help="Seeds, comma-separated (training, evaluation and attack draws).")
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--keep", default=None, help="Folder for the deltas and guards (default: a temp folder).")
    ap.add_argument("--samples-per-prompt", type=int, default=16, help="Evaluation images per prompt and model.")
    ap.add_argument("--budget", type=float, default=1.0, help="attack.budget of the prompt and inversion attacks.")
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHOD_NAMES)}")
    seeds = [int(s) for s in a.seeds.split(",") if s]
    work = Path(a.keep or tempfile.mkdtemp(prefix="erasecli-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ERASECLI_CACHE", str(work / "cache"))
    ir_missing = imagereward_status()
    by_seed = {}
    for seed in seeds:
        by_seed[seed] = run_seed(a, seed, methods, work, ir_missing)
        for name, vals in by_seed[seed].items():
            for key in COLUMNS:
                if key not in vals:
                    continue
                v = vals[key]
                unit = {"train_seconds": "s", "peak_rss_mb": "MiB", "delta_bytes": "bytes"}.get(key, "")
                extra = {"note": v} if isinstance(v, str) else {}
                emit("compare", key, None if isinstance(v, str) else v, unit, model=name, base=a.base, seed=seed,
                     concept=a.concept, samples_per_prompt=a.samples_per_prompt, budget=a.budget, **extra)
    head = "| model | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for name in ["base", *methods]:
        cells = [cell([by_seed[s].get(name, {}).get(k) for s in seeds]) for k in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines), file=sys.stderr)
    print(f"concept {a.concept!r} on {a.base}, seeds {seeds}, {a.samples_per_prompt} images per prompt, attack "
          f"budget {a.budget}; imagereward: {ir_missing or 'measured'}; outputs in {work}", file=sys.stderr)
    print("the study's SD-1.4 ImageReward (theirs, not comparable): " + json.dumps(STUDY_IMAGEREWARD), file=sys.stderr)


if __name__ == "__main__":
    main()
