"""esd: Erasing Concepts from Diffusion Models (Gandikota et al. 2023), the field's standard baseline.

docs/methods.md, "esd". Code names and symbols:

    theta*        the frozen base: the same UNet with the adapter disabled (no second copy in memory)
    x_t           from partial DDIM sampling with the forget prompt c by the model being trained
                  (esd.xt_source: sample), or a forget latent noised to t (esd.xt_source: data) [ours]
    e_c, e_0      eps_theta*(x_t, c, t), eps_theta*(x_t, "", t)
    e_anchor      eps_theta*(x_t, c_anchor, t): e_0 for the original ESD (esd.anchor: empty), the forget
                  prompt's anchor prompt for the "erase from" variant (esd.anchor: prompt)
    eta           esd.negative_guidance
    e_ref         e_0 (esd.guide_from: empty, the original), or e_anchor (esd.guide_from: anchor) [ours]
    target        e_anchor - eta (e_c - e_ref)
    loss          ||eps_theta(x_t, c, t) - target||^2 (+ retain_weight L_r [ours, 0 by default])

The parameter subset is the adapter's: `lora.target_modules: [xattn]` is ESD-x, `[noxattn]` ESD-u (as LoRA,
so the delta loads in diffusers like every other method's).
"""

from __future__ import annotations

import torch

from erasecli.diffusion.cond import text_encoders
from erasecli.methods import Unlearner
from erasecli.methods.adapter import base_only


class Esd(Unlearner):
    name = "esd"
    kinds = ("sd", "sdxl", "flux")

    @classmethod
    def check(cls, recipe) -> None:
        if recipe.esd.guide_from == "anchor" and recipe.esd.anchor != "prompt":
            from erasecli.errors import RecipeError

            raise RecipeError("esd.guide_from 'anchor' measures from each forget prompt's anchor, which "
                              "esd.anchor 'empty' does not have", hint="add --set esd.anchor=prompt")

    def __init__(self, ctx):
        super().__init__(ctx)
        from erasecli.diffusion.ddim import ddim_from
        from erasecli.diffusion.noise import EpsSteps

        if ctx.noise.kind == "flow":  # the flow ODE's Euler steps (docs/methods.md, "Flux")
            self.sched = EpsSteps(ctx.noise, ctx.recipe.sample.steps, ctx.device)
        else:
            self.sched = ddim_from(ctx.base.pipe.scheduler.config)
            self.sched.set_timesteps(ctx.recipe.sample.steps, device=ctx.device)

    @torch.no_grad()
    def start_guidance(self) -> float:
        return self.cfg.start_guidance

    def _partial_sample(self, c, n_stop: int, n_all: int):
        """Run n_stop DDIM steps (eta 0) from pure noise with guidance `start_guidance()`; returns (x_t, t).
        The noise is drawn for all n_all rows of the batch; c holds this process's rows."""
        ctx, g = self.ctx, self.start_guidance()
        x = ctx.world.local(ctx.randn((n_all, *ctx.data.forget.shape[1:]))) * self.sched.init_noise_sigma
        empty = torch.zeros_like(c)
        for t in self.sched.timesteps[:n_stop]:
            tt = t.expand(len(c))
            e_c, e_0 = ctx.eps(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([c, empty])).chunk(2)
            x = self.sched.step(e_0 + g * (e_c - e_0), t, x).prev_sample
        return x, self.sched.timesteps[n_stop].expand(len(c))

    @property
    def cfg(self):
        """The recipe section that holds this method's ESD settings (receler reads its own)."""
        return self.ctx.recipe.esd

    def draw(self):
        """A batch: (i rows of data.forget drawn, c, c_anchor, x_t, t), this process's rows of the last four."""
        ctx, cfg = self.ctx, self.cfg
        d, B = ctx.data, ctx.recipe.train.batch_size
        i = ctx.randint(len(d.forget), B)  # every process draws the whole batch, then keeps its rows
        c, c_anchor = ctx.world.local(d.forget_c[i]), ctx.world.local(d.anchor_c[i])
        if cfg.xt_source == "sample":
            n_stop = int(ctx.randint(len(self.sched.timesteps), 1).item())
            x_t, t = self._partial_sample(c, n_stop, B)
        else:
            t = ctx.randint(ctx.num_timesteps, B)
            x_t = ctx.world.local(ctx.noise.add_noise(d.forget[i], ctx.randn(d.forget[i].shape), t))
            t = ctx.world.local(t)
        return i, c, c_anchor, x_t, t

    def frozen_target(self, x_t, t, c, c_anchor):
        """ESD's target from the frozen base (no gradient): e_anchor - eta (e_c - e_ref), (B, C, h, w)."""
        ctx, cfg = self.ctx, self.cfg
        empty = torch.zeros_like(c)
        with base_only(ctx.unet, *text_encoders(ctx.base.pipe)), torch.no_grad():  # theta*: the frozen base
            if cfg.anchor == "prompt":
                e_c, e_0, e_anchor = ctx.eps(torch.cat([x_t] * 3), torch.cat([t] * 3),
                                             torch.cat([c, empty, c_anchor])).chunk(3)
            else:
                e_c, e_0 = ctx.eps(torch.cat([x_t] * 2), torch.cat([t] * 2), torch.cat([c, empty])).chunk(2)
                e_anchor = e_0
        e_ref = e_anchor if cfg.guide_from == "anchor" else e_0
        return e_anchor - cfg.negative_guidance * (e_c - e_ref)

    def step(self, k: int) -> dict:
        cfg, B = self.cfg, self.ctx.recipe.train.batch_size
        _, c, c_anchor, x_t, t = self.draw()
        target = self.frozen_target(x_t, t, c, c_anchor)
        e, L_r = self.eps_and_retain(x_t, t, c, cfg.retain_weight)
        L_esd = self.ctx.err(e, target, t).sum() / B  # this process's share of the batch mean
        loss = L_esd + cfg.retain_weight * L_r
        return {**self.update(loss, {"L_esd": L_esd, "L_r": L_r}), "t": float(t.float().mean().item())}
