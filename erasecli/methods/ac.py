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
from erasecli.methods.losses import grad_norm


class Ac(Unlearner):
    name = "ac"
    kinds = ("sd", "sdxl", "flux")

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

        def noisy_anchors():
            """B anchor latents noised to random t, this process's rows: (x_t, t, eps, rows drawn)."""
            i = ctx.randint(len(d.anchor), B)
            t = ctx.randint(ctx.num_timesteps, B)
            eps = ctx.randn(d.anchor[i].shape)
            return local(ctx.noise.add_noise(d.anchor[i], eps, t)), local(t), local(eps), i

        x_t, t, eps, i = noisy_anchors()
        c, c_anchor = local(d.forget_c[i]), local(d.anchor_c[i])
        terms = {"ac": (x_t, t, c, self.targets(x_t, t, c_anchor, eps))}  # name -> (input, t, prompt, target)
        if cfg.prior_weight > 0:
            x_p, t_p, eps_p, j = noisy_anchors()
            terms["p"] = (x_p, t_p, local(d.anchor_c[j]), eps_p)
        if cfg.retain_weight > 0 and len(d.retain) > 0:
            m_r, t_r, c_r, eps_r = (local(v) for v in ctx.noisy_retain(B))
            terms["r"] = (m_r, t_r, c_r, eps_r)
        inputs, ts, prompts, targets = zip(*terms.values())
        preds = ctx.eps(torch.cat(inputs), torch.cat(ts), torch.cat(prompts)).split([len(x) for x in inputs])
        zero = torch.zeros((), device=x_t.device)
        L = {"ac": zero, "p": zero, "r": zero}
        for name, e, target, tt in zip(terms, preds, targets, ts):  # all terms in one forward
            L[name] = ctx.err(e, target, tt).sum() / B  # this process's share of the batch mean
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
