"""Seconds of each `erase attack` attack on one bundled model, and what the prompt attack's batching buys.

The prompt attack (UnlearnDiffAtk) optimises one prefix per forget prompt; `attack.prompt_batch` prompts share
one UNet batch (1: one prompt at a time, the attack's first form). Each configuration runs with an empty sample
cache, so every row pays for the same pre-attack images. The default model is the oracle that never saw a 3:
no prompt succeeds there, so every restart runs to its end, the attack's worst case.

    python -m bench attack_speed [--model tiny-oracle-digit-3] [--batches 1,16] [--attacks prompt]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench.common import emit


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.attack_speed")
    ap.add_argument("--model", default="tiny-oracle-digit-3", help="a bundled base name")
    ap.add_argument("--concept", default="digit 3")
    ap.add_argument("--batches", default="1,16", help="attack.prompt_batch values, comma-separated")
    ap.add_argument("--attacks", default="prompt", help="attacks to time, comma-separated")
    ap.add_argument("--samples", type=int, default=4, help="attack.samples (images judged per prompt)")
    a = ap.parse_args(argv)

    from erasecli.attacks.run import attack_model
    from erasecli.concepts import tiny_concept
    from erasecli.models.registry import load_base
    from erasecli.recipes import load_recipe

    model = load_base(a.model, device="cpu")
    for batch in [int(b) for b in a.batches.split(",")]:
        for name in a.attacks.split(","):
            os.environ["ERASECLI_CACHE"] = tempfile.mkdtemp(prefix="erasecli-bench-attack-")
            r = load_recipe(None, [f"concept.name={a.concept}", f"attack.samples={a.samples}",
                                   f"attack.prompt_batch={batch}"])
            t0 = time.time()
            res = attack_model(r, model, tiny_concept(a.concept), [], [name])
            secs = time.time() - t0
            out = res["outcomes"][name]
            emit("attack_speed", f"{name}_seconds", round(secs, 2), "s", model=a.model, concept=a.concept,
                 prompt_batch=batch, attack_seconds=round(out.seconds, 2), asr=out.asr, pre_asr=res["pre_asr"],
                 samples=a.samples, attacked=out.extra.get("attacked"))


if __name__ == "__main__":
    main()
