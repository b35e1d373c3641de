"""Does the erased concept come back? Every method's shipped tiny recipe, the base and the retrained oracle
(`--base tiny-oracle-digit-3`: the tiny base's text encoder and UNet retrained without any image of a 3) on
"digit 3", under every attack, in one table.

Per training seed, each method runs `erase unlearn --recipe recipes/tiny-digit-<method>.yaml --seed S` (a delta
already in --keep is reused), then one `erase evaluate` gives UA, IRA, CRA and the robustness metrics for the
base and every delta, and a second one the same for the oracle. JSON lines to stdout, a Markdown table to
stderr; attack seconds are each model's attack wall time (the first run of a model; a rerun reads the cache).

    python -m bench.robustness [--seeds 0,1] [--methods siss,esd] [--keep DIR] [--budget 1.0]
                               [--samples-per-prompt 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.common import emit, method_args
from bench.unlearn_compare import ROOT, erase

METRICS = "ua,ira,cra,pre_asr,asr_paraphrase,ua_paraphrase,asr_prompt,asr_inversion"
COLUMNS = ("ua", "ua_paraphrase", "pre_asr", "asr_paraphrase", "asr_prompt", "asr_inversion", "ira", "cra")
ORACLE = "tiny-oracle-digit-3"


def evaluate(base: str, deltas: list[Path], a) -> dict:
    args = ["evaluate", "--base", base, "--concept", "digit 3", "--metrics", METRICS,
            "--samples-per-prompt", str(a.samples_per_prompt), "--set", f"attack.budget={a.budget}"]
    for d in deltas:
        args += ["--delta", str(d)]
    if base != "tiny":
        args.append("--force")
    rep = erase(*args)
    seconds = {m["name"]: m["seconds"] for m in rep["robustness"]["models"]}
    return {m["name"]: {**m["metrics"], "attack_seconds": seconds[m["name"]]} for m in rep["models"]}


def main(argv=None) -> None:
    from erasecli.recipes import METHOD_NAMES

    ap = argparse.ArgumentParser(prog="python -m bench.robustness")
    ap.add_argument("--seeds", default="0,1", help="Training seeds, comma-separated.")
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--keep", default=None, help="Folder for the deltas (default: a temp folder).")
    ap.add_argument("--budget", type=float, default=1.0, help="attack.budget of every attack.")
    ap.add_argument("--samples-per-prompt", type=int, default=4, help="Evaluation images per prompt and model.")
    a = ap.parse_args(argv)
    work = Path(a.keep or tempfile.mkdtemp(prefix="erasecli-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ERASECLI_CACHE", str(work / "cache"))
    methods = [m for m in a.methods.split(",") if m]
    rows = []
    oracle = evaluate(ORACLE, [], a)["base"]
    for seed in [int(s) for s in a.seeds.split(",") if s]:
        deltas = []
        for m in methods:
            d = work / f"seed{seed}" / m
            if not (d / "pytorch_lora_weights.safetensors").exists():
                erase("unlearn", *method_args(m, ROOT), "--seed", str(seed),
                      "--out", str(d), "--overwrite")
            deltas.append(d)
        figures = evaluate("tiny", deltas, a)
        if not rows:
            rows.append(("base", "-", figures["base"]))
            rows.append(("oracle (retrained without 3s)", "-", oracle))
        rows += [(m, seed, figures[d.name]) for m, d in zip(methods, deltas)]
    for name, seed, f in rows:
        for key in (*COLUMNS, "attack_seconds"):
            emit("robustness", key, f.get(key), "s" if key == "attack_seconds" else "fraction", model=name,
                 seed=seed, concept="digit 3", budget=a.budget, samples_per_prompt=a.samples_per_prompt)
    head = "| model | seed | " + " | ".join(COLUMNS) + " | attack s |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)]
    for name, seed, f in rows:
        cells = ["-" if f.get(k) is None else f"{f[k]:.3f}" for k in COLUMNS]
        lines.append(f"| {name} | {seed} | " + " | ".join(cells) + f" | {f['attack_seconds']:.0f} |")
    print("\n".join(lines), file=sys.stderr)
    print(f"deltas in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
