"""Does the erased concept come back? Every method's shipped tiny recipe, the base and the retrained oracle
(`--base tiny-oracle-digit-3`: the tiny base's text encoder and UNet retrained without any image of a 3) on
"digit 3", under every attack, in one table.

Per training seed, each method runs `erase unlearn --recipe recipes/tiny-digit-<method>.yaml --seed S` (a delta
already in --keep is reused) and, in the `robust` variant, the same with `--set robust.enabled=true` (the
methods whose class supports it); `robust-te` adds `--set lora.text_encoder=true`.
Then one `erase evaluate` gives UA, IRA, CRA and the robustness metrics for the base and every delta, and a
second one the same for the oracle. JSON lines to stdout, a Markdown table to stderr; attack seconds are each
model's attack wall time (the first run of a model; a rerun reads the cache), train seconds the delta's own.

    python -m bench.robustness [--seeds 0,1] [--methods siss,esd] [--variants plain,robust] [--keep DIR]
                               [--budget 1.0] [--samples-per-prompt 4] [--set KEY=VALUE ...] [--base tiny-xl]
                               [--attack-seeds 2000,2100,2200] [--metrics ua,ira,cra,pre_asr,asr_inversion]
                               [--concept "digit 3"]

uce and rece take the closed form's own variants: `robust` (`uce.robust=inversion`), `project`
(`uce.robust_project=2`) and `robust-project` (both).

`--base tiny-xl` runs the same on the SDXL tiny base with its recipes (`recipes/tiny-xl-digit-<method>.yaml`);
there is no retrained oracle for it, so its row is left out. `--concept` erases another concept (e.g. `--base
tiny-canvas --concept "style dotted"`); the oracle row appears where ORACLES holds one for the base and concept.
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

METRICS = "ua,ira,cra,pre_asr,asr_paraphrase,ua_paraphrase,asr_prompt,asr_inversion"
COLUMNS = ("ua", "ua_paraphrase", "pre_asr", "asr_paraphrase", "asr_prompt", "asr_inversion", "ira", "cra")
# The retrained oracle of a (base, concept): the base retrained without any image of the concept.
ORACLES = {("tiny", "digit 3"): "tiny-oracle-digit-3",
           ("tiny-canvas", "style dotted"): "tiny-canvas-oracle-style-dotted"}
VARIANTS = {"plain": [], "robust": ["--set", "robust.enabled=true"],
            "robust-te": ["--set", "robust.enabled=true", "--set", "lora.text_encoder=true"]}
CLOSED_METHODS = ("uce", "rece")  # their robust variants are the closed form's own (uce.robust, uce.robust_project)
CLOSED_VARIANTS = {"plain": [], "robust": ["--set", "uce.robust=inversion"],
                   "project": ["--set", "uce.robust_project=2"],
                   "robust-project": ["--set", "uce.robust=inversion", "--set", "uce.robust_project=2"]}


def variant_args(method: str, variant: str):
    """The unlearn options of `variant` for `method`, or None where the variant does not apply to it."""
    from erasecli.methods import METHODS

    table = CLOSED_VARIANTS if method in CLOSED_METHODS else VARIANTS
    if variant not in table or (variant != "plain" and method not in CLOSED_METHODS
                                and not METHODS[method].supports_robust):
        return None
    return table[variant]


def evaluate(base: str, deltas: list[tuple], a, attack_seed: int = 2000) -> dict:
    """Every (method, folder) beside the base in one `erase evaluate`; {column name: metrics}."""
    args = ["evaluate", "--base", base, "--concept", a.concept, "--metrics", a.metrics,
            "--samples-per-prompt", str(a.samples_per_prompt), "--set", f"attack.budget={a.budget}",
            "--set", f"attack.seed={attack_seed}"]
    for m, d in deltas:
        args += model_args(m, d)
    if base in ORACLES.values():  # the deltas were made for the base it was retrained from
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
    ap.add_argument("--variants", default="plain,robust", help="Comma-separated: " + ", ".join(VARIANTS) + "; uce "
                    "and rece: " + ", ".join(CLOSED_VARIANTS) + " (robust: uce.robust=inversion; project: "
                    "uce.robust_project=2).")
    ap.add_argument("--metrics", default=METRICS, help="erase evaluate --metrics (columns not measured show -).")
    ap.add_argument("--attack-seeds", default="2000", help="attack.seed of each evaluation, comma-separated: "
                    "every model is attacked once per seed (a row per seed).")
    ap.add_argument("--base", default="tiny", help="a bundled base: tiny, tiny-xl or tiny-canvas (an oracle row "
                    "where one is shipped for the concept)")
    ap.add_argument("--concept", default="digit 3", help='The erased concept (e.g. "style dotted" on tiny-canvas).')
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="Extra recipe overrides for the robust variants (e.g. robust.attack=prefix).")
    a = ap.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS and v not in CLOSED_VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; valid: {', '.join(dict.fromkeys([*VARIANTS, *CLOSED_VARIANTS]))}")
    attack_seeds = [int(x) for x in a.attack_seeds.split(",") if x]
    work = Path(a.keep or tempfile.mkdtemp(prefix="erasecli-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ERASECLI_CACHE", str(work / "cache"))
    methods = [m for m in a.methods.split(",") if m]
    rows = []
    for aseed in attack_seeds:
        oracle_base = ORACLES.get((a.base, a.concept))
        oracle = evaluate(oracle_base, [], a, aseed)["base"] if oracle_base else None
        first = True
        for seed in [int(s) for s in a.seeds.split(",") if s]:
            deltas, names = [], []
            for v in variants:
                for m in methods:
                    extra = variant_args(m, v)
                    if extra is None:
                        continue
                    name = m if v == "plain" else f"{m} {v}"
                    d = work / f"seed{seed}" / name.replace(" ", "-")
                    if not output_file(m, d).exists():
                        extra = extra + ([x for kv in a.sets for x in ("--set", kv)] if v != "plain" else [])
                        erase("unlearn", *method_args(m, ROOT, a.base), "--concept", a.concept, "--seed", str(seed),
                              *extra,
                              "--out", str(d), "--overwrite")
                    deltas.append((m, d))
                    names.append(name)
            figures = evaluate(a.base, deltas, a, aseed)
            if first:
                rows.append(("base", "-", aseed, figures["base"]))
                if oracle is not None:
                    rows.append((f"oracle ({oracle_base})", "-", aseed, oracle))
                first = False
            for name, (_, d) in zip(names, deltas):
                train = json.loads((d / "train_summary.json").read_text())["train_seconds"]
                rows.append((name, seed, aseed, {**figures[d.name], "train_seconds": train}))
    for name, seed, aseed, f in rows:
        for key in (*COLUMNS, "attack_seconds", "train_seconds"):
            if key == "train_seconds" and key not in f:
                continue
            emit("robustness", key, f.get(key), "s" if key.endswith("seconds") else "fraction", model=name, base=a.base,
                 seed=seed, attack_seed=aseed, concept=a.concept, budget=a.budget,
                 samples_per_prompt=a.samples_per_prompt, robust_sets=a.sets)
    head = "| model | seed | attack seed | " + " | ".join(COLUMNS) + " | attack s | train s |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 5)]
    for name, seed, aseed, f in rows:
        cells = ["-" if f.get(k) is None else f"{f[k]:.3f}" for k in COLUMNS]
        train = f"{f['train_seconds']:.1f}" if "train_seconds" in f else "-"
        lines.append(f"| {name} | {seed} | {aseed} | " + " | ".join(cells) + f" | {f['attack_seconds']:.0f} | {train} |")
    print("\n".join(lines), file=sys.stderr)
    print(f"deltas in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
