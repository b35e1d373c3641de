"""Fingerprints of every method's delta on the tiny base after a few steps: a refactor that must not change
what is computed leaves every line the same. Run from the checkout under test, with one shared cache:

    ERASECLI_CACHE=/tmp/fp-cache HF_HUB_OFFLINE=1 python scripts/delta_fingerprints.py > before.txt
    ... change the code ...
    ERASECLI_CACHE=/tmp/fp-cache HF_HUB_OFFLINE=1 python scripts/delta_fingerprints.py | diff before.txt -

Each line: method, variant, the SHA-256 of the delta's tensors (names and bytes, sorted by name).
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

FAST = ["train.steps=3", "train.checkpoint_every=1000", "data.images_per_prompt=2", "data.retain_images_per_prompt=1"]
CRITIC = ["critic.steps=2", "critic.train_trajectories=8", "critic.train_epochs=2", "critic.width=16", "critic.blocks=2",
          "critic.prompts_per_step=2", "critic.samples_per_prompt=2"]
RUNS = [
    ("siss", []), ("adaptive-siss", []), ("ppo-alpha", []), ("esd", []), ("critic-rl", CRITIC),
    ("uce", []), ("rece", []), ("ac", []), ("sa", ["sa.fisher_samples=4"]), ("ant", []),
    ("siss", ["robust.enabled=true", "robust.warmup=0", "robust.every=2", "robust.attack_steps=2",
              "lora.text_encoder=true"]),
    ("esd", ["lora.target_modules=[xattn]", "esd.xt_source=data"]),
]


def fingerprint(folder: Path) -> str:
    from safetensors.torch import load_file

    sd = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    import torch

    from erasecli import api
    from erasecli.models.registry import load_base

    torch.set_num_threads(2)
    base = load_base("tiny", device="cpu")
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (method, sets) in enumerate(RUNS):
            if only and method not in only:
                continue
            r = api.load_recipe(None, [*FAST, *sets], method=method, concept={"name": "digit 3"}, base="tiny")
            out = Path(tmp) / f"{i}-{method}"
            api.unlearn(r, out=out, base=base)
            print(method, " ".join(sets) or "-", fingerprint(out), flush=True)


if __name__ == "__main__":
    main()
