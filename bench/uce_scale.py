"""uce at Stable Diffusion 1.4 size: how long the closed-form edit takes for 1 to 100 concepts.

The SD-1.4 UNet is built from its config with random weights (`bench.sd_size.SD14_UNET`, no download); its 16
cross-attention layers give the 32 `attn2.to_k` / `attn2.to_v` projections (in 768) that uce edits. Text states
are random stand-ins for encoded prompts: per concept 76 erased states (one forget prompt through the padding,
as `uce.tokens: padding` takes them) with 76 guide states, and 100 retain prompts x 77 kept states. Timed: the
shared solve and its exact LoRA factors for every projection (`erasecli.methods.uce.shared_map` / `factor`), that
is the edit, on the device; the text encoding a real run adds is not timed (a forward of the text encoder per
prompt batch). JSON lines: seconds per concept count, LoRA rank, delta size in fp32.

    python -m bench.uce_scale [--concepts 1,10,100] [--device cuda] [--repeat 3] [--ranks 16,64,128]

`--ranks`: per concept count, also the `uce.rank` truncation of each projection's change to each rank
(`erasecli.methods.uce.truncated`): delta size and the relative errors (Frobenius), max and mean over the
projections. Random stand-in states have a flatter spectrum than encoded prompts, so these errors are an upper
side of what a real concept's edit loses.
"""

from __future__ import annotations

import argparse
import time

from bench.common import emit

TARGET_SECONDS_100 = 5.0  # the closed-form issue: 100 concepts at SD-1.4 size on one GPU


def main(argv=None) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from bench.sd_size import SD14_UNET
    from erasecli.methods.uce import DTYPE, edited_modules, factor, shared_map, truncated

    ap = argparse.ArgumentParser(prog="python -m bench.uce_scale")
    ap.add_argument("--concepts", default="1,10,100")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3, help="Timed edits per concept count (the best is reported).")
    ap.add_argument("--ranks", default="", help="uce.rank truncations to measure, comma-separated (default: none).")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD14_UNET)
    mods = edited_modules(unet, ("to_k", "to_v"))
    W0s = {n: m.weight.detach().to(dev, DTYPE) for n, m in mods.items()}
    del unet
    d = next(iter(W0s.values())).shape[1]
    C_p = torch.randn(100 * 77, d, dtype=DTYPE, device=dev)
    for n_c in [int(x) for x in a.concepts.split(",") if x]:
        C_e = torch.randn(n_c * 76, d, dtype=DTYPE, device=dev)
        G_e = torch.randn(n_c * 76, d, dtype=DTYPE, device=dev)
        best = float("inf")
        for _ in range(a.repeat):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            P = shared_map(C_e, G_e, C_p, 0.5, 1.0, 1.0)  # what erasecli.methods.uce.edit does
            rank = min(len(C_e), P.shape[0])
            right, down = factor(P, rank)
            factors = {n: (W @ right, down) for n, W in W0s.items()}
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            best = min(best, time.perf_counter() - t0)
        size = sum((up.numel() + down.numel()) * 4 for up, down in factors.values())
        extra = {"target": TARGET_SECONDS_100} if n_c == 100 else {}
        emit("uce_scale", "edit_seconds", round(best, 4), "s", concepts=n_c, modules=len(W0s), rank=rank,
             erased_states=len(C_e), kept_states=len(C_p), device=str(dev), delta_mb=round(size / 2**20, 1), **extra)
        for r in [int(x) for x in a.ranks.split(",") if x]:
            if r >= rank:  # uce.rank writes the exact edit there
                continue
            t0 = time.perf_counter()
            tf, errors = truncated({n: W @ P for n, W in W0s.items()}, r)
            secs = time.perf_counter() - t0
            mb = sum((up.numel() + down.numel()) * 4 for up, down in tf.values()) / 2**20
            errs = list(errors.values())
            emit("uce_scale", "rank_max_relative_error", round(max(errs), 5), "fraction", concepts=n_c, rank=r,
                 mean_relative_error=round(sum(errs) / len(errs), 5), delta_mb=round(mb, 1),
                 exact_delta_mb=round(size / 2**20, 1), truncate_seconds=round(secs, 3), device=str(dev))


if __name__ == "__main__":
    main()
