"""sa: Selective Amnesia (Heng & Soh, NeurIPS 2023, arXiv 2305.10120). docs/methods.md, "sa".

Continual learning turned around: the concept is "forgotten" by learning a surrogate distribution in its place
while elastic weight consolidation (EWC) and generative replay keep everything else. Code names and symbols:

    x_s      latent of a surrogate image for forget prompt c*: the base's image of its anchor prompt
             (data.anchor row i; sa.surrogate: anchor, as the paper's "a middle-aged man" for a celebrity) or a
             uniform-noise image (sa.surrogate: noise, the paper's choice on its digit data sets)  (B, C, h, w)
    x_r      latent of the base's own image for a retain prompt c_r (data.retain): generative replay
    L_f      ||eps_theta(x_s,t, c*, t) - eps||^2     the surrogate's diffusion loss under the forget prompt
    L_g      ||eps_theta(x_r,t, c_r, t) - eps||^2    the replay's diffusion loss
    F        the diagonal Fisher information of the base's weights W under the base's own samples:
             E[(d l / d W)^2], l the per-sample diffusion loss (mean over elements) of a replay image at a random t,
             from sa.fisher_samples samples; kept in $ERASECLI_CACHE/fisher/
    dW       the adapter's change to W: scale B A (a LoRA adapter is theta - theta* itself)
    L_ewc    sum over adapted layers of sum(F * dW^2)
    loss     L_f + sa.replay_weight L_g + sa.ewc_lambda L_ewc
"""

from __future__ import annotations

import hashlib
import json

import torch

from erasecli.diffusion.cond import text_encoders
from erasecli.methods import Unlearner
from erasecli.methods.adapter import base_only
from erasecli.methods.losses import mse


def lora_layers(unet) -> list:
    """(name, layer) of every peft LoRA layer of the UNet, in module order."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer) and m.lora_A]


def delta_weight(layer) -> torch.Tensor:
    """dW = scale B A of a LoRA layer, in its base weight's shape (Linear or Conv2d)."""
    name = next(iter(layer.lora_A))
    A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
    W = layer.get_base_layer().weight
    dW = B.flatten(1) @ A.flatten(1)
    return (layer.scaling[name] * dW).view(W.shape)


def fisher_diagonal(ctx, layers, samples: int) -> dict:
    """{layer name: F} with F = mean over `samples` replay images (cycled, each at its own t and noise) of the
    squared gradient of that image's diffusion loss with respect to the base weight, the adapter off."""
    d = ctx.data
    weights = {n: layer.get_base_layer().weight for n, layer in layers}
    F = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    pool, pool_c = (d.retain, d.retain_c) if len(d.retain) else (d.anchor, d.anchor_c)
    for w in weights.values():
        w.requires_grad_(True)
    try:
        with base_only(ctx.unet, *text_encoders(ctx.base.pipe)):
            for s in range(samples):
                j = s % len(pool)
                t = ctx.randint(ctx.num_timesteps, 1)
                eps = ctx.randn(pool[j : j + 1].shape)
                x_t = ctx.noise.add_noise(pool[j : j + 1], eps, t)
                loss = mse(ctx.eps(x_t, t, pool_c[j : j + 1]), eps).sum()
                grads = torch.autograd.grad(loss, list(weights.values()))
                for n, g in zip(weights, grads):
                    F[n] += g.float().pow(2) / samples
    finally:
        for w in weights.values():
            w.requires_grad_(False)
    return F


def fisher_cached(ctx, layers) -> tuple[dict, dict]:
    """The Fisher of these layers from the cache, else computed and stored there. Returns (F, info)."""
    from safetensors.torch import load_file, save_file

    from erasecli.models.registry import weights_fingerprint
    from erasecli.sampling import cache_root

    cfg, d = ctx.recipe.sa, ctx.data
    pool = d.retain if len(d.retain) else d.anchor
    data = hashlib.sha256(pool.detach().float().cpu().numpy().tobytes()).hexdigest()  # the replay images it reads
    parts = [weights_fingerprint(ctx.base), [n for n, _ in layers], cfg.fisher_samples, ctx.recipe.train.seed,
             data, [d.prompts[int(c)] for c in (d.retain_c if len(d.retain) else d.anchor_c)], str(ctx.device),
             str(ctx.base.dtype)]
    key = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]
    path = cache_root() / "fisher" / f"{key}.safetensors"
    info = {"fisher_samples": cfg.fisher_samples, "fisher_cache": str(path), "fisher_cached": path.exists()}
    if path.exists():
        F = {n: v.to(ctx.device) for n, v in load_file(str(path)).items()}
        if set(F) == {n for n, _ in layers}:
            return F, info
    state = ctx.gen.get_state()  # the Fisher's draws do not shift the training run's
    F = fisher_diagonal(ctx, layers, cfg.fisher_samples)
    ctx.gen.set_state(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({n: v.detach().cpu().contiguous() for n, v in F.items()}, str(tmp))
    tmp.replace(path)
    info["fisher_cached"] = False
    return F, info


def noise_surrogate(ctx) -> torch.Tensor:
    """Latents of uniform-noise images, one per anchor row: the paper's surrogate for its digit data sets."""
    from PIL import Image

    from erasecli.data import encode_images

    g = torch.Generator().manual_seed(int(ctx.recipe.train.seed) + 7)
    res = ctx.base.resolution
    pixels = torch.randint(0, 256, (len(ctx.data.anchor), res, res, 3), generator=g, dtype=torch.uint8).numpy()
    return encode_images(ctx.base, [Image.fromarray(a) for a in pixels]).to(ctx.device)


class Sa(Unlearner):
    name = "sa"
    kinds = ("sd", "sdxl", "flux")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.layers = lora_layers(ctx.adapter.denoiser)
        self.fisher, self.fisher_info = fisher_cached(ctx, self.layers)
        self.surrogate = ctx.data.anchor if ctx.recipe.sa.surrogate == "anchor" else noise_surrogate(ctx)

    def ewc(self) -> torch.Tensor:
        """L_ewc = sum F * dW^2 over the adapted layers."""
        return sum((self.fisher[n] * delta_weight(layer).float().pow(2)).sum() for n, layer in self.layers)

    def step(self, k: int) -> dict:
        ctx, cfg = self.ctx, self.ctx.recipe.sa
        d, B = ctx.data, ctx.recipe.train.batch_size
        local = ctx.world.local
        i = ctx.randint(len(self.surrogate), B)
        t = ctx.randint(ctx.num_timesteps, B)
        eps = ctx.randn(self.surrogate[i].shape)
        x_s = self.surrogate[i]
        terms = {"f": (local(ctx.noise.add_noise(x_s, eps, t)), local(t), local(d.forget_c[i]), local(eps))}
        if cfg.replay_weight > 0 and len(d.retain) > 0:
            terms["g"] = tuple(local(v) for v in ctx.noisy_retain(B))
        inputs, ts, prompts, targets = zip(*terms.values())
        preds = ctx.eps(torch.cat(inputs), torch.cat(ts), torch.cat(prompts)).split([len(x) for x in inputs])
        zero = torch.zeros((), device=ctx.device)
        L = {"f": zero, "g": zero}
        for name, e, target, tt in zip(terms, preds, targets, ts):
            L[name] = ctx.err(e, target, tt).sum() / B  # this process's share of the batch mean
        L_ewc = self.ewc() / ctx.world.size  # every process adds the same penalty: its share
        loss = L["f"] + cfg.replay_weight * L["g"] + cfg.ewc_lambda * L_ewc
        row = self.update(loss, {"L_f": L["f"], "L_g": L["g"], "L_ewc": L_ewc})
        return {**row, "t": float(t.float().mean().item())}

    def extra_summary(self) -> dict:
        return dict(self.fisher_info)
