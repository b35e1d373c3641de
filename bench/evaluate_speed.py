"""Wall time of a full `erase evaluate` on the tiny base with default sample counts: base + one delta.

Cold: empty sample cache (the base is sampled). Warm: the base's images come from the cache, so only the
delta is sampled; this is the cost of each further delta.

    python -m bench.evaluate_speed
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import emit


def random_lora_delta(out: Path) -> Path:
    """A LoRA delta with random lora_B (peft starts it at zero), to time evaluation of a real delta file."""
    import torch

    from erasecli.delta import add_lora, save_lora_delta
    from erasecli.models.registry import load_base

    base = load_base("tiny", device="cpu")
    add_lora(base.pipe.unet, 4, 4.0, ("to_q", "to_k", "to_v", "to_out.0"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in base.pipe.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    save_lora_delta(base.pipe.unet, out, base=base, method="bench-random", concept="digit 3", recipe={})
    return out


def main(argv=None) -> None:
    from erasecli import api
    from erasecli.models.registry import load_base
    from erasecli.recipes import load_recipe

    work = Path(tempfile.mkdtemp(prefix="erasecli-bench-"))
    os.environ["ERASECLI_CACHE"] = str(work / "cache")
    delta = random_lora_delta(work / "delta")
    r = load_recipe(None, ["concept.name=digit 3"])
    for label in ("cold", "warm"):
        t0 = time.time()
        base = load_base("tiny", device="cpu")
        rep = api.evaluate(r, deltas=[str(delta)], base=base)
        secs = time.time() - t0
        p = rep["protocol"]
        emit("evaluate_speed", f"full_tiny_evaluation_{label}", round(secs, 2), "s", target=120,
             images_per_model=p["images_per_model"], models=len(rep["models"]),
             base_images_from_cache=p["base_images_from_cache"], metrics=list(rep["models"][0]["metrics"]),
             samples_per_prompt=p["samples_per_prompt"], steps=p["steps"])


if __name__ == "__main__":
    main()
