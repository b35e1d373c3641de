"""ac: Ablating Concepts in Text-to-Image Diffusion Models (Kumari et al., ICCV 2023, arXiv 2303.13516).

docs/methods.md, "ac". The concept's distribution is moved onto its anchor's: on latents of images the base drew
for the *anchor* prompt, the model under the *concept* prompt is trained to predict what it predicts under the
anchor prompt. Code names and symbols:

    x        an anchor image's latent (data.anchor row i, drawn from forget row i's anchor prompt)  (B, C, h, w)
    c*, c    the forget prompt (with the concept) and its anchor (without), indices into data.embeds  (B,)
    x_t      x noised to a random t with eps                                                          (B, C, h, w)
    target   model-based (ac.loss: model, the paper's default): sg(eps_theta(x_t, c, t)), the prediction of
             the model being trained under the anchor, gradient stopped; ac.target_from: base takes the frozen
             base's instead [ours]. Noise-based (ac.loss: noise): eps itself, i.e. the plain diffusion loss on
             anchor images captioned with the concept prompt
    L_ac     ||eps_theta(x_t, c*, t) - target||^2
    L_p      the paper's prior preservation: ||eps_theta(x'_t, c, t') - eps'||^2 on other anchor images under
             their own prompt (ac.prior_weight; the reference code's --with_prior_preservation)
    L_r      retain preservation on the retain prompts' images, as esd's [ours] (ac.retain_weight)
    loss     L_ac + prior_weight L_p + retain_weight L_r

The paper's parameter groups are the adapter's: `lora.target_modules: [attn2.to_k, attn2.to_v]` is its
"cross-attention" (k / v of every cross-attention), `[attn]` or wider a LoRA over more of the UNet (its
"full weights" as a low-rank update). Its "embedding" group (a new token) is not offered: the delta would not be
a LoRA.
"""

from __future__ import annotations

import torch

from erasecli.diffusion.cond import text_encoders
from erasecli.methods import Unlearner
from erasecli.methods.adapter import base_only
from erasecli.methods.losses import grad_norm, mse


class Ac(Unlearner):
    name = "ac"

    def targets(self, x_t, t, c_anchor, eps):
        """The ablation target of each row (no gradient): see the module docstring."""
        ctx, cfg = self.ctx, self.ctx.recipe.ac
        if cfg.loss == "noise":
            return eps
        with torch.no_grad():
            if cfg.target_from == "base":
                with base_only(ctx.unet, *text_encoders(ctx.base.pipe)):
                    return ctx.eps(x_t, t, c_anchor)
            return ctx.eps(x_t, t, c_anchor)

    def step(self, k: int) -> dict:
        ctx, cfg = self.ctx, self.ctx.recipe.ac
        d, B = ctx.data, ctx.recipe.train.batch_size
        local = ctx.world.local  # every process draws the whole batch, then keeps its rows
        i = ctx.randint(len(d.anchor), B)
        t = ctx.randint(ctx.num_timesteps, B)
        eps = ctx.randn(d.anchor[i].shape)
        x_t = ctx.noise.add_noise(d.anchor[i], eps, t)
        x_t, t, eps, c, c_anchor = (local(v) for v in (x_t, t, eps, d.forget_c[i], d.anchor_c[i]))
        target = self.targets(x_t, t, c_anchor, eps)
        terms = {"ac": (x_t, t, c, target)}  # term -> (input, t, prompt, target), evaluated in one forward
        if cfg.prior_weight > 0:
            j = ctx.randint(len(d.anchor), B)
            t_p = ctx.randint(ctx.num_timesteps, B)
            eps_p = ctx.randn(d.anchor[j].shape)
            x_p = ctx.noise.add_noise(d.anchor[j], eps_p, t_p)
            terms["p"] = tuple(local(v) for v in (x_p, t_p, d.anchor_c[j], eps_p))
        if cfg.retain_weight > 0 and len(d.retain) > 0:
            m_r, t_r, c_r, eps_r = (local(v) for v in ctx.noisy_retain(B))
            terms["r"] = (m_r, t_r, c_r, eps_r)
        preds = ctx.eps(*(torch.cat(parts) for parts in list(zip(*terms.values()))[:3]))
        zero = torch.zeros((), device=x_t.device)
        L = {"ac": zero, "p": zero, "r": zero}
        for name, e in zip(terms, preds.split([len(v[0]) for v in terms.values()])):
            L[name] = mse(e, terms[name][3]).sum() / B  # this process's share of the batch mean
        L_ac, L_p, L_r = L["ac"], L["p"], L["r"]
        loss = L_ac + cfg.prior_weight * L_p + cfg.retain_weight * L_r
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.world.sum_([p.grad for p in ctx.params if p.grad is not None])
        loss, L_ac, L_p, L_r = ctx.world.total(loss, L_ac, L_p, L_r)
        norm = grad_norm([p.grad for p in ctx.params if p.grad is not None])
        self.opt.step()
        return {"loss": loss.item(), "L_ac": L_ac.item(), "L_p": L_p.item(), "L_r": L_r.item(),
                "grad_norm": norm.item(), "t": float(t.float().mean().item())}
