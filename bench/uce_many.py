"""Several concepts in one closed-form delta: erasing 1, 2, 3 and 5 digits (or colours) into one uce / rece
delta on the tiny base, each count's UA per erased concept and IRA / CRA on what is left.

For count k the concepts are the first k of `--digits` (default 3,7,5,1,8) or `--colours`; one `erase unlearn
--method M --concept C1 --also C2 ...` (in process, `erasecli.api.unlearn`), then `erase evaluate` of the same
concepts together (`api.evaluate`, `--samples-per-prompt` images per prompt, default 16): UA per concept
(`ua_by_concept`), IRA (the digits / colours not erased), CRA. JSON lines, a Markdown table on stderr.

    python -m bench.uce_many [--method uce] [--counts 1,2,3,5] [--kind digit|colour] [--samples-per-prompt 16]
                             [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import emit

DIGITS = (3, 7, 5, 1, 8)
COLOURS = ("red", "green", "blue", "yellow", "white")


def main(argv=None) -> None:
    from erasecli import api
    from erasecli.models.registry import load_base

    ap = argparse.ArgumentParser(prog="python -m bench.uce_many")
    ap.add_argument("--method", default="uce")
    ap.add_argument("--counts", default="1,2,3,5")
    ap.add_argument("--kind", default="digit", choices=("digit", "colour"))
    ap.add_argument("--samples-per-prompt", type=int, default=16)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Recipe overrides of the unlearn run.")
    a = ap.parse_args(argv)
    names = [f"digit {d}" for d in DIGITS] if a.kind == "digit" else list(COLOURS)
    base = load_base("tiny", device="cpu")
    work = Path(tempfile.mkdtemp(prefix="erasecli-uce-many-"))
    lines = ["| method | count | concepts | UA min | UA per concept | IRA | CRA | edit s |", "|" + " --- |" * 8]
    for k in [int(x) for x in a.counts.split(",") if x]:
        concept = {"name": names[0], "also": names[1:k]}
        r = api.load_recipe(None, list(a.sets), method=a.method, concept=concept)
        res = api.unlearn(r, out=work / f"{k}", base=base)
        e = api.load_recipe(None, [f"eval.samples_per_prompt={a.samples_per_prompt}", "eval.metrics=[ua,ira,cra]"],
                            concept=concept)
        rep = api.evaluate(e, deltas=[str(work / f"{k}")], base=base)
        m = rep["models"][1]
        ua = m["ua_by_concept"] if k > 1 else {names[0]: m["metrics"]["ua"]}
        f = m["metrics"]
        secs = res["summary"]["edit_seconds"]
        for key, val in (("ua_min", min(ua.values())), ("ira", f["ira"]), ("cra", f["cra"]), ("edit_seconds", secs)):
            emit("uce_many", key, val, "s" if key.endswith("seconds") else "fraction", method=a.method, count=k,
                 concepts=names[:k], ua_by_concept=ua, samples_per_prompt=a.samples_per_prompt, sets=a.sets)
        per = ", ".join(f"{n.split()[-1]} {v:.3f}" for n, v in ua.items())
        lines.append(f"| {a.method} | {k} | {'+'.join(n.split()[-1] for n in names[:k])} | {min(ua.values()):.3f} | "
                     f"{per} | {f['ira']:.3f} | {f['cra']:.3f} | {secs:.2f} |")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
