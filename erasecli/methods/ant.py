"""ant: "Set You Straight: Auto-Steering Denoising Trajectories to Sidestep Unwanted Concepts" (Li, Lu, Ren,
Kong, 2025, arXiv 2504.12782). docs/methods.md, "ant".

The concept is erased where the trajectory fills in content, not where it lays out structure: in the
mid-to-late denoising steps the model under the concept prompt is trained to follow the *reversed* direction of
classifier-free guidance, while in the early steps it keeps the base's prediction (the score field that steers
samples to the image manifold), so no anchor concept is needed. A weight saliency map picks what trains.
Code names and symbols:

    x_t, t        from n DDIM steps (eta 0) with the forget prompt c by the model being trained, n drawn
                  uniformly from the sample.steps of a trajectory (ant.xt_source: sample, as esd's), or a
                  forget latent noised to a random t (ant.xt_source: data [ours], no sampling per step)
    e_c, e_0      eps_theta*(x_t, c, t), eps_theta*(x_t, "", t): the frozen base (the adapter off)
    e_ref         e_0 (ant.guide_from: empty, the paper's), or eps_theta*(x_t, c_anchor, t), the forget prompt's
                  anchor (ant.guide_from: anchor [ours]: only what the prompt adds to its anchor is reversed)
    late          n >= ant.early_share x steps, or t < (1 - ant.early_share) T (the mid-to-late phase)
    target        late: e_ref - eta (e_c - e_ref)  (the condition direction reversed; eta ant.negative_guidance)
                  early: e_c                   (the base's own field kept)
    loss          mean_b w ||eps_theta(x_t, c, t) - target||^2, w = 1 late, ant.early_weight early
                  (+ ant.retain_weight L_r on the retain prompts' images [ours])
    saliency      per adapted module, the mean |d L_late / d W| of its base weight over ant.saliency_batches
                  batches; the top ant.saliency share of modules train, the others' adapters stay at zero
                  [adapted: the paper masks single weights of a full fine-tune; a LoRA is chosen per module]
"""

from __future__ import annotations

import torch

from erasecli.diffusion.cond import text_encoders
from erasecli.methods.adapter import base_only
from erasecli.methods.esd import Esd
from erasecli.methods.losses import mse
from erasecli.methods.sa import lora_layers


class Ant(Esd):
    name = "ant"
    kinds = ("sd", "sdxl", "flux")

    @classmethod
    def check(cls, recipe) -> None:  # esd's cross-field check is about esd's own fields
        return None

    def __init__(self, ctx):
        super().__init__(ctx)
        self.saliency, self.trained = self._select()
        keep = {id(p) for _, layer in self.trained for p in layer.parameters() if p.requires_grad}
        chosen = [p for p in ctx.params if id(p) in keep or not self._in_unet(p)]
        for p in ctx.params:
            if id(p) not in {id(q) for q in chosen}:
                p.requires_grad_(False)
        self.opt = torch.optim.AdamW(chosen, lr=ctx.recipe.train.lr, weight_decay=0.0)

    def start_guidance(self) -> float:
        return self.ctx.recipe.ant.start_guidance

    def _in_unet(self, p) -> bool:
        return any(p is q for q in self.ctx.adapter.denoiser.parameters())

    def _targets(self, x_t, t, c, c_ref):
        """(e_c, e_ref) of the frozen base, no gradient; c_ref is the empty prompt's or the anchors' states."""
        ctx = self.ctx
        with base_only(ctx.unet, *text_encoders(ctx.base.pipe)), torch.no_grad():
            return ctx.eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, c_ref])).chunk(2)

    def _late_target(self, e_c, e_ref):
        """The mid-to-late target: e_ref - eta (e_c - e_ref)."""
        return e_ref - self.ctx.recipe.ant.negative_guidance * (e_c - e_ref)

    def _draw(self):
        """A batch: (c, c_ref, x_t, t, late (B,) bool), c_ref the states the reversed direction is measured
        from (ant.guide_from). ant.xt_source sample: one partial trajectory of n steps, late when n >=
        early_share x steps; data [ours]: forget latents noised to random t, late where t < (1 - early_share) T."""
        ctx, cfg = self.ctx, self.ctx.recipe.ant
        d, B = ctx.data, ctx.recipe.train.batch_size
        i = ctx.randint(len(d.forget), B)
        c = ctx.world.local(d.forget_c[i])
        c_ref = ctx.world.local(d.anchor_c[i]) if cfg.guide_from == "anchor" else torch.zeros_like(c)
        if cfg.xt_source == "data":
            t = ctx.randint(ctx.num_timesteps, B)
            x_t = ctx.world.local(ctx.noise.add_noise(d.forget[i], ctx.randn(d.forget[i].shape), t))
            t = ctx.world.local(t)
            return c, c_ref, x_t, t, t < (1 - cfg.early_share) * ctx.num_timesteps
        n_all = len(self.sched.timesteps)
        n = int(ctx.randint(n_all, 1).item())
        x_t, t = self._partial_sample(c, n, B)
        return c, c_ref, x_t, t, torch.full((len(c),), n >= cfg.early_share * n_all, device=x_t.device)

    def _select(self):
        """Module saliency at the base (the late-phase loss's gradient) and the top share of modules."""
        ctx, cfg = self.ctx, self.ctx.recipe.ant
        layers = lora_layers(ctx.adapter.denoiser)
        if cfg.saliency >= 1.0:
            return {}, layers
        weights = [layer.get_base_layer().weight for _, layer in layers]
        score = [0.0] * len(layers)
        state = ctx.gen.get_state()  # its own draws (the same on a resume), not the training run's
        ctx.gen.manual_seed(int(ctx.recipe.train.seed) + 11)
        for w in weights:
            w.requires_grad_(True)
        try:
            for _ in range(cfg.saliency_batches):
                c, c_ref, x_t, t, _late = self._draw()
                e_c, e_ref = self._targets(x_t, t, c, c_ref)
                with base_only(ctx.unet):
                    e = ctx.eps(x_t, t, c)
                loss = mse(e, self._late_target(e_c, e_ref)).mean()
                for j, g in enumerate(torch.autograd.grad(loss, weights)):
                    score[j] += g.abs().mean().item() / cfg.saliency_batches
        finally:
            for w in weights:
                w.requires_grad_(False)
            ctx.gen.set_state(state)
        k = max(1, round(cfg.saliency * len(layers)))
        top = sorted(range(len(layers)), key=lambda j: -score[j])[:k]
        return {layers[j][0]: score[j] for j in range(len(layers))}, [layers[j] for j in sorted(top)]

    def step(self, k: int) -> dict:
        ctx, cfg = self.ctx, self.ctx.recipe.ant
        B = ctx.recipe.train.batch_size
        c, c_ref, x_t, t, late = self._draw()
        e_c, e_ref = self._targets(x_t, t, c, c_ref)
        target = torch.where(late.view(-1, 1, 1, 1), self._late_target(e_c, e_ref), e_c)
        e, L_r = self.eps_and_retain(x_t, t, c, cfg.retain_weight)
        w = torch.where(late, 1.0, cfg.early_weight)
        L_ant = (w * ctx.err(e, target, t)).sum() / B  # this process's share of the batch mean
        loss = L_ant + cfg.retain_weight * L_r
        row = self.update(loss, {"L_ant": L_ant, "L_r": L_r})
        return {**row, "late": float(late.float().mean()), "t": float(t.float().mean().item())}

    def extra_summary(self) -> dict:
        return {"trained_modules": [n for n, _ in self.trained], "saliency": self.saliency}
