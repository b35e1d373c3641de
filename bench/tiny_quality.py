"""Quality bar of a bundled tiny base (tiny, or the SDXL tiny-xl with --base tiny-xl), judged by the shipped
classifier.

For "a {colour} handwritten digit {word}" over 10 digits x 5 colours x --seeds seeds, DDIM --steps steps with
guidance: the share of samples whose digit / colour the classifier reads as prompted (bar: >= 0.90 digit,
>= 0.95 colour). Also how mixed the digits are for generic colour prompts ("a red digit").

    python -m bench.tiny_quality [--base tiny|tiny-xl] [--seeds 4] [--steps 25] [--guidance G ...]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

from bench.common import emit


def run(seeds: int = 4, steps: int = 25, guidances=(None,), generic_seeds: int = 40, base_name: str = "tiny") -> None:
    from erasecli import sampling
    from erasecli.models import tiny_world as W
    from erasecli.models.judges import classify, load_classifier
    from erasecli.models.registry import load_base
    from erasecli.recipes import Recipe

    base = load_base(base_name, device="cpu")
    clf = load_classifier()
    default_g = Recipe().sample.guidance
    for g in guidances:
        g = default_g if g is None else g
        pairs = [(c, d) for c in range(len(W.COLOUR_NAMES)) for d in range(10)]
        prompts = [W.quality_prompt(W.COLOUR_NAMES[c], d) for c, d in pairs for _ in range(seeds)]
        seed_list = [s for _ in pairs for s in range(seeds)]
        t0 = time.time()
        images = sampling.generate(base, prompts, seed_list, steps=steps, guidance=g, batch_size=100)
        secs = time.time() - t0
        pd, pc = classify(clf, images)
        want_d = [d for c, d in pairs for _ in range(seeds)]
        want_c = [c for c, d in pairs for _ in range(seeds)]
        acc_d = sum(int(a == b) for a, b in zip(pd.tolist(), want_d)) / len(prompts)
        acc_c = sum(int(a == b) for a, b in zip(pc.tolist(), want_c)) / len(prompts)
        common = dict(base=base_name, n=len(prompts), steps=steps, guidance=g, scheduler="ddim",
                      judge="tiny-classifier")
        emit("tiny_quality", "digit_accuracy", round(acc_d, 4), "fraction", target=0.90, **common)
        emit("tiny_quality", "colour_accuracy", round(acc_c, 4), "fraction", target=0.95, **common)
        emit("tiny_quality", "sampling_throughput", round(len(prompts) / secs, 2), "images/s", **common)
        # Generic prompts should give a mix of digits: entropy of the judged digits, in bits (max log2 10).
        for colour in ("red", "white"):
            imgs = sampling.generate(base, [f"a {colour} digit"] * generic_seeds, list(range(generic_seeds)),
                                steps=steps, guidance=g, batch_size=100)
            gd, gc = classify(clf, imgs)
            counts = Counter(gd.tolist())
            ent = -sum(k / generic_seeds * math.log2(k / generic_seeds) for k in counts.values())
            emit("tiny_quality", "generic_digit_entropy", round(ent, 3), "bits", prompt=f"a {colour} digit",
                 distinct_digits=len(counts), colour_accuracy=round(
                     (gc == W.COLOUR_NAMES.index(colour)).float().mean().item(), 4), **{**common, "n": generic_seeds})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="tiny", help="a bundled tiny-world base: tiny or tiny-xl")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, nargs="*", default=[None])
    a = ap.parse_args(argv)
    run(a.seeds, a.steps, a.guidance, base_name=a.base)


if __name__ == "__main__":
    main()
