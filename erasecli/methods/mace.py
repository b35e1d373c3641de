"""mace: MACE, Mass Concept Erasure in Diffusion Models (Lu, Wang, Li, Liu, Kong, CVPR 2024, arXiv 2403.06135).
docs/methods.md, "mace".

Three stages, in the paper's order, on the cross-attention key / value projections W0 (out x in):

1. Closed-form refinement (CFR, `mace.cfr`): uce's solve (erasecli.methods.uce) with the erased states taken from
   the concept's first token to the end of the sequence ("padding"), because the words after a concept carry it
   too; each maps to its anchor's state at the same position, the retain prompts keep theirs:
       W1 = W0 + W0 P,  P = K M^-1  (uce's shared_map with mace.cfr_lam, mace.cfr_preserve)
2. One LoRA per concept i on every key projection, dW_i = B_i A_i (rank lora.rank, train.steps Adam steps at
   train.lr on batches of train.batch_size), trained on the base's own images x of concept i's forget prompts,
   noised to random t, with W1 in place, to take the concept's attention out of where it is drawn:
       L_att = mean_l mean_b sum_{q, k in concept tokens} m_l(b, q) A_l(b, q, k)^2
   with A_l the layer's attention probabilities averaged over heads and m_l the concept's mask at the layer's
   resolution: `mace.mask: pixels` the digit's or colour's own pixels in the tiny world (brightness above
   mace.mask_threshold, area-averaged to the layer's size: a soft mask) [adapted: the paper segments with
   Grounded-SAM], `attention` the base's own attention to the concept's words, thresholded as receler's.
   Only the keys move the attention, so only they carry a LoRA.
3. Closed-form fusion of the LoRAs: one key projection W* for every concept at once,
       W* = argmin sum_i ||W* E_i - (W1 + dW_i) E_i||^2 + s_p ||W* E_p - W1 E_p||^2 + l ||W* - W1||^2
          = W1 + (sum_i dW_i C_i) (sum_i C_i + s_p C_p + l I)^-1,   C = E E^T
   E_i the text states of concept i's forget prompts (every position), E_p the retain prompts',
   s_p = mace.fuse_preserve, l = mace.fuse_lam.

The delta is the change of every projection, W* - W0 (keys) and W0 P (values), written as an exact LoRA of the
largest rank any of them needs, like uce's.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import ClassVar

import torch

from erasecli.errors import RecipeError
from erasecli.methods.uce import (DTYPE, ClosedForm, _states, applied, edited_modules, erase_pairs, factor, shared_map,
                                  solve_device)


class Mace(ClosedForm):
    name = "mace"
    why_not_robust: ClassVar[str] = "its LoRAs are fused in closed form; no inner attack is wired in"

    @classmethod
    def check(cls, recipe) -> None:
        """uce.guide is not read (the refinement maps each forget prompt to its anchor); a pixel mask needs the
        tiny world, whose images are a drawn shape on black."""
        if recipe.mace.mask == "pixels":
            from erasecli.models.registry import resolve_base

            if not resolve_base(recipe.base).tiny_world:
                raise RecipeError(f"mace.mask 'pixels' reads the tiny world's drawn pixels; {recipe.base!r} draws "
                                  "real images", hint="set mace.mask=attention (the base's own attention map)")

    @classmethod
    def edit(cls, recipe, base, concept):
        return edit(recipe, base, concept)


def parts_of(concept) -> list:
    """The concepts erased together, each with its own forget prompts (a LoRA each)."""
    if not concept.tiny_world or not concept.together:
        return [concept]
    from erasecli.concepts import tiny_concept

    return [tiny_concept(n, concept.kind, concept.world) for n in concept.names]


def pixel_masks(images, threshold: float) -> torch.Tensor:
    """(N, 1, H, W) float: 1 where a pixel is drawn (its brightest channel above `threshold` of 255)."""
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0  # (N, H, W, 3)
    return torch.from_numpy((arr.max(-1) > threshold).astype(np.float32))[:, None]


def at_layer(mask, Q: int) -> torch.Tensor:
    """(N, Q) soft mask: the share of each query's patch that the (N, 1, H, W) mask covers."""
    import torch.nn.functional as F

    s = int(round(Q ** 0.5))
    return F.interpolate(mask, size=(s, s), mode="area").flatten(1)


def attention_loss(maps: dict, tokens, masks) -> torch.Tensor:
    """L_att: per layer, the squared attention of the concept's tokens (B, K bool) inside the mask, summed over
    queries and tokens, averaged over heads and images; then averaged over layers. `masks(layer, Q)` gives (B, Q)."""
    terms = []
    for name, probs in maps.items():
        a = probs.float().mean(1) * tokens[:, None, :].float()  # (B, Q, K): heads averaged
        terms.append(((a ** 2).sum(-1) * masks(name, probs.shape[2])).sum(-1).mean())
    return torch.stack(terms).mean()


@contextmanager
def lora_on(mods: dict, factors: dict):
    """While inside, each module in `factors` ({name: (B (out, r), A (r, in))}) adds B A x to its output."""
    hooks = []
    for n, (B, A) in factors.items():
        def add(module, args, out, B=B, A=A):
            return out + (args[0].to(A.dtype) @ A.T @ B.T).to(out.dtype)

        hooks.append(mods[n].register_forward_hook(add))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def train_lora(recipe, base, part, keys: dict, gen) -> tuple:
    """Stage 2 for one concept: ({key module: dW_i (out, in)}, first loss, last loss). The refined weights are in
    place already; the base's images of the concept's forget prompts come through the image cache."""
    from erasecli.data import encode_images
    from erasecli.diffusion.attention import recording
    from erasecli.diffusion.cond import encode_prompts, unet_eps
    from erasecli.diffusion.noise import schedule_of
    from erasecli.methods.receler import concept_masks, states_tokens
    from erasecli.sampling import cached_generate

    m, tr, pipe = recipe.mace, recipe.train, base.pipe
    forget = list(part.forget)
    seeds = [recipe.train.seed + 20_000 + i for i in range(m.images)]
    prompts = [p for p in forget for _ in seeds]
    imgs, _ = cached_generate(base, prompts, seeds * len(forget), recipe.sample)
    z0 = encode_images(base, imgs)  # (N, C, h, w)
    with torch.no_grad():
        emb = encode_prompts(pipe, forget, base.device)  # (J, L, D)
    row_prompt = torch.arange(len(forget)).repeat_interleave(len(seeds))  # (N,)
    tokens = states_tokens(pipe, forget, part).to(base.device)  # (J, L)
    if not tokens.any():
        raise RecipeError(f"no forget prompt of {part.name!r} names it in words mace can find",
                          hint="use forget prompts that contain the concept's name")
    pix = pixel_masks(imgs, m.mask_threshold).to(base.device) if m.mask == "pixels" else None
    noise = schedule_of(pipe.scheduler, base.device)
    r = recipe.lora.rank
    factors = {}
    for n, k in keys.items():
        A = (torch.randn(r, k.in_features, generator=gen) / k.in_features ** 0.5).to(base.device)
        factors[n] = (torch.zeros(k.out_features, r, device=base.device, requires_grad=True), A.requires_grad_(True))
    opt = torch.optim.Adam([p for BA in factors.values() for p in BA], lr=tr.lr)
    losses = []
    unet = pipe.unet
    for _ in range(tr.steps):
        rows = torch.randint(len(z0), (min(tr.batch_size, len(z0)),), generator=gen)
        t = torch.randint(noise.num_timesteps, (len(rows),), generator=gen).to(base.device)
        eps = torch.randn(z0[rows].shape, generator=gen).to(base.device)
        x_t = noise.add_noise(z0[rows.to(z0.device)], eps, t)
        c, tok = emb[row_prompt[rows]], tokens[row_prompt[rows]]
        if pix is not None:
            mask = pix[rows.to(pix.device)]

            def masks(name, Q, mask=mask):
                return at_layer(mask, Q)
        else:
            with torch.no_grad(), recording(unet) as base_maps:  # the refined model's own attention, no LoRA
                unet_eps(unet, x_t, t, c)
            att = concept_masks(dict(base_maps), tok, m.mask_threshold)

            def masks(name, Q, att=att):
                return att[name]
        with lora_on(keys, factors), recording(unet) as maps:
            unet_eps(unet, x_t, t, c)
            loss = attention_loss(maps, tok, masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {n: (B @ A).detach() for n, (B, A) in factors.items()}, losses[0], losses[-1]


def fuse(W1: torch.Tensor, dWs: list, Cs: list, C_p, s_p: float, lam: float) -> torch.Tensor:
    """Stage 3 for one key projection: W* - W1 = (sum_i dW_i C_i) (sum_i C_i + s_p C_p + lam I)^-1."""
    eye = torch.eye(W1.shape[1], dtype=W1.dtype, device=W1.device)
    M = sum(Cs) + s_p * C_p + lam * eye
    N = sum(dW @ C for dW, C in zip(dWs, Cs))
    return torch.linalg.solve(M, N.T).T  # N M^-1 (M symmetric)


def edit(recipe, base, concept):
    """The three stages; returns ({module: (up, down)}, rank, summary) as uce's edit does."""
    m = recipe.mace
    t0 = time.time()
    unet = base.pipe.unet
    mods = edited_modules(unet, ("to_k", "to_v"))
    if not mods:
        raise RecipeError("the base's UNet has no cross-attention key / value projection to edit")
    dev = solve_device(base)
    W0s = {n: mod.weight.detach().to(dev, DTYPE) for n, mod in mods.items()}
    keep = [p for p in concept.retain if p not in set(concept.forget)]
    C_p = _states(base, keep).reshape(-1, next(iter(W0s.values())).shape[1]) if keep else None
    d_in = next(iter(W0s.values())).shape[1]
    if C_p is None:
        C_p = torch.zeros(0, d_in, dtype=DTYPE, device=dev)
    # 1. closed-form refinement
    n_cfr = 0
    P = torch.zeros(d_in, d_in, dtype=DTYPE, device=dev)
    if m.cfr:
        C_e, G_e, _ = erase_pairs(base, list(concept.forget), list(concept.anchor), "padding")
        P = shared_map(C_e, G_e, C_p, m.cfr_lam, 1.0, m.cfr_preserve)
        n_cfr = len(C_e)
    W1s = {n: W0 + W0 @ P for n, W0 in W0s.items()}
    t_cfr = time.time() - t0
    # 2. one LoRA per concept on the keys, the refinement in place
    keys = {n: mod for n, mod in mods.items() if n.endswith("to_k")}
    parts = parts_of(concept)
    gen = torch.Generator("cpu").manual_seed(recipe.train.seed)
    dWs, log = [], []
    with applied(mods, W0s, P), torch.enable_grad():  # W1 in place while the LoRAs train
        unet.requires_grad_(False)
        for part in parts:
            dW, first, last = train_lora(recipe, base, part, keys, gen)
            dWs.append(dW)
            log.append({"concept": part.name, "loss_start": round(first, 6), "loss_end": round(last, 6)})
    t_lora = time.time() - t0 - t_cfr
    # 3. closed-form fusion of the LoRAs into the keys
    Cs = []
    for part in parts:
        E = _states(base, list(part.forget)).reshape(-1, d_in)  # every position of every forget prompt
        Cs.append(E.T @ E)
    C_pp = C_p.T @ C_p
    deltas = {}
    for n, W0 in W0s.items():
        D = W0 @ P
        if n in keys:
            D = D + fuse(W1s[n], [dW[n].to(dev, DTYPE) for dW in dWs], Cs, C_pp, m.fuse_preserve, m.fuse_lam)
        deltas[n] = D
    rank = min(d_in, n_cfr + len(parts) * recipe.lora.rank)
    factors = {n: factor(D, rank) for n, D in deltas.items()}
    seconds = time.time() - t0
    err = max(float((up @ down - deltas[n]).abs().max() / deltas[n].abs().max().clamp_min(1e-30))
              for n, (up, down) in factors.items())
    summary = {"edit_seconds": round(seconds, 4), "cfr_seconds": round(t_cfr, 4), "lora_seconds": round(t_lora, 4),
               "modules": len(mods), "rank": rank, "erased_states": n_cfr, "kept_states": len(C_p),
               "factor_rel_error": err, "loras": log,
               "relative_change": round(max(float(deltas[n].norm() / W0s[n].norm()) for n in W0s), 6)}
    return factors, rank, summary
