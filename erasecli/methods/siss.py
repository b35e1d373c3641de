"""siss: importance-sampled data unlearning (Alberti et al. 2025), adapted to concept erasure.

docs/methods.md, "siss", in its order. Code names and symbols:

    gamma, sigma   sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)                       (B, 1, 1, 1)
    x, a           keep sample (an anchor image for the prompt) and forget sample  (B, C, h, w)
    c              the forget prompt (index into data.embeds)                       (B,)
    lam            lambda: probability that m is noised from a
    m              the noisy input: gamma a + sigma eps with prob. lam, else gamma x + sigma eps
    e              eps_theta(m, t, c)
    eps_x, eps_a   the noise that takes x (resp. a) to m
    d_x, d_a       ||m - gamma x||^2 / (2 sigma^2), likewise for a; summed over all dims  (B,)
    w_x, w_a       importance weights of the mixture q_lam, computed in log space       (B,)
    L_x, L_a       mean_b w ||e - eps||^2; ||.||^2 is the *mean* over dims (an MSE), a constant factor
    L_r            retain preservation ||eps_theta(x_r_t, t, c_r) - eps||^2 [ours]
    g_x, g_a       gradients of the keep loss (L_x + retain_weight L_r) and of L_a
    s              siss.scaling_norm: the surgery update is g_x - (s / ||g_a||) g_a, clipped to siss.clip_norm

`L_SISS = L_x + retain_weight L_r - (s / ||g_a||) L_a` with the coefficient held fixed is the scalar whose
gradient is the surgery update; adaptive-siss and ppo-alpha read it as the loss of a step.
"""

from __future__ import annotations

import math

import torch

from erasecli.methods import Unlearner
from erasecli.methods.losses import grad_norm, sq_dist


def siss_log_weights(d_x: torch.Tensor, d_a: torch.Tensor, lam) -> tuple[torch.Tensor, torch.Tensor]:
    """log w_x, log w_a for q_lam(m) = (1 - lam) q(m|x) + lam q(m|a), where q(m|.) = N(gamma ., sigma^2):

        w_x = q(m|x) / q_lam(m) = 1 / ((1 - lam) + lam exp(d_x - d_a))
        w_a = q(m|a) / q_lam(m) = 1 / ((1 - lam) exp(d_a - d_x) + lam)

    in log space (`logaddexp`): the exponents d_x - d_a reach thousands at small t and overflow fp32.
    `lam` is a float or a tensor (differentiable, for adaptive-siss)."""
    lam = torch.as_tensor(lam, dtype=d_x.dtype, device=d_x.device)
    log_w_x = -torch.logaddexp(torch.log1p(-lam), torch.log(lam) + d_x - d_a)  # (B,)
    log_w_a = -torch.logaddexp(torch.log1p(-lam) + d_a - d_x, torch.log(lam))  # (B,)
    return log_w_x, log_w_a


class SissBatch:
    """One SISS mini-batch: the mixture sample, its targets, and a retain batch, all drawn from ctx.gen."""

    def __init__(self, ctx, lam: float):
        d, B = ctx.data, ctx.recipe.train.batch_size
        i = ctx.randint(len(d.forget), B)
        self.a, self.x, self.c = d.forget[i], d.anchor[i], d.forget_c[i]  # (B, C, h, w), (B,)
        self.t = ctx.randint(ctx.num_timesteps, B)  # (B,)
        self.gamma, self.sigma = ctx.noise.coefficients(self.t)  # (B, 1, 1, 1)
        eps = ctx.randn(self.a.shape)
        from_a = (ctx.rand(B) < lam).view(-1, 1, 1, 1)  # the Bernoulli draw: not differentiable in lam
        self.m = self.gamma * torch.where(from_a, self.a, self.x) + self.sigma * eps  # (B, C, h, w)
        self.eps_x = (self.m - self.gamma * self.x) / self.sigma
        self.eps_a = (self.m - self.gamma * self.a) / self.sigma
        s2 = 2 * self.sigma.flatten() ** 2
        self.d_x = sq_dist(self.m, self.gamma * self.x) / s2  # (B,)
        self.d_a = sq_dist(self.m, self.gamma * self.a) / s2  # (B,)
        self.has_retain = len(d.retain) > 0 and ctx.recipe.siss.retain_weight > 0
        if self.has_retain:
            self.m_r, self.t_r, self.c_r, self.eps_r = ctx.noisy_retain(B)
        self.B = B  # the whole batch: losses are sums over this process's rows / B (erasecli.dist)
        w = ctx.world
        if w.size > 1:  # every process drew the same numbers; each keeps its rows
            for name in ("a", "x", "c", "t", "gamma", "sigma", "m", "eps_x", "eps_a", "d_x", "d_a",
                         "c_r", "t_r", "eps_r", "m_r"):
                if hasattr(self, name):
                    setattr(self, name, w.local(getattr(self, name)))

    def errors(self, ctx):
        """One UNet pass over the mixture and retain inputs: per-example squared errors (B,) each."""
        if self.has_retain:
            e = ctx.eps(torch.cat([self.m, self.m_r]), torch.cat([self.t, self.t_r]), torch.cat([self.c, self.c_r]))
            e, e_r = e.chunk(2)  # (B, C, h, w) each
            err_r = ctx.err(e_r, self.retain_target(ctx), self.t_r)
        else:
            e = ctx.eps(self.m, self.t, self.c)
            err_r = torch.zeros((), device=e.device)
        return ctx.err(e, self.eps_x, self.t), ctx.err(e, self.eps_a, self.t), err_r

    def retain_target(self, ctx):
        """What the retain term fits: the noise drawn (`siss.retain_target: noise`), or the frozen base's own
        prediction at the same noisy retain input (`base`: keep what the base does there, not what its images
        were; no gradient)."""
        if ctx.recipe.siss.retain_target == "noise":
            return self.eps_r
        from erasecli.diffusion.cond import text_encoders
        from erasecli.methods.adapter import base_only

        with base_only(ctx.unet, *text_encoders(ctx.base.pipe)), torch.no_grad():
            return ctx.eps(self.m_r, self.t_r, self.c_r)

    def losses(self, err_x, err_a, err_r, lam):
        """L_x, L_a, L_r for mixing weight lam (float or differentiable tensor)."""
        log_w_x, log_w_a = siss_log_weights(self.d_x, self.d_a, lam)
        B = self.B
        r = err_r.sum() / B if err_r.dim() else err_r
        return (log_w_x.exp() * err_x).sum() / B, (log_w_a.exp() * err_a).sum() / B, r


class Siss(Unlearner):
    """Static SISS: lambda fixed at siss.lam."""

    name = "siss"
    kinds = ("sd", "sdxl", "flux")

    @classmethod
    def check(cls, recipe) -> None:
        from erasecli.errors import RecipeError

        s = recipe.siss
        if s.lambda_min >= s.lambda_max:
            raise RecipeError(f"siss.lambda_min ({s.lambda_min}) must be below siss.lambda_max ({s.lambda_max})",
                              hint="e.g. --set siss.lambda_min=0.05 --set siss.lambda_max=0.95")

    def __init__(self, ctx):
        super().__init__(ctx)
        d = ctx.data
        n_keep, n_forget = len(d.anchor), len(d.forget)
        self.n, self.k = n_keep + n_forget, n_forget  # the weighted objective's n and k

    def pick_lambda(self, k: int):
        """lambda for step k; subclasses infer or choose it."""
        return self.ctx.recipe.siss.lam

    def siss_update(self, batch, lam, extra_loss=None) -> dict:
        """One SISS optimiser step on `batch` with mixing weight `lam`; returns the log row.

        `extra_loss(err_x, err_a, err_r, coef) -> Tensor` adds a term whose gradient reaches only networks
        other than the adapter (adaptive-siss's q_phi); `coef` is the surgery coefficient s / ||g_a||."""
        ctx, cfg = self.ctx, self.ctx.recipe.siss
        lam_value = float(lam.detach()) if torch.is_tensor(lam) else float(lam)
        err_x, err_a, err_r = batch.errors(ctx)
        L_x, L_a, L_r = batch.losses(err_x, err_a, err_r, lam_value)
        L_keep = L_x + cfg.retain_weight * L_r
        self.opt.zero_grad(set_to_none=True)
        w = ctx.world
        if cfg.objective == "surgery":
            g_a = torch.autograd.grad(L_a, ctx.params, retain_graph=True)
            g_x = torch.autograd.grad(L_keep, ctx.params)
            w.sum_([*g_a, *g_x])  # each process's share of the batch mean -> the whole batch's
            n_a, n_x = grad_norm(g_a), grad_norm(g_x)
            coef = (cfg.scaling_norm / (n_a + 1e-12)).detach()
            g = [gx - coef * ga for gx, ga in zip(g_x, g_a)]  # g_x - (s / ||g_a||) g_a
        elif cfg.objective == "weighted":
            coef = torch.tensor(0.0)  # unused in this form
            g = torch.autograd.grad(self.siss_scalar(L_x, L_a, L_r, coef), ctx.params)
            w.sum_(list(g))
            n_a = n_x = torch.tensor(float("nan"))  # not separated in this form
        else:
            raise ValueError(f"unknown siss.objective {cfg.objective!r}")
        L_x, L_a, L_r = w.total(L_x, L_a, L_r)  # the whole batch's losses, the same on every process
        L_siss = self.siss_scalar(L_x, L_a, L_r, coef)
        self.last_coef = coef
        total = grad_norm(g)
        scale = torch.clamp(cfg.clip_norm / (total + 1e-12), max=1.0)  # clip the total update
        for p, gp in zip(ctx.params, g):
            p.grad = gp * scale
        row = {"loss": L_siss.item(), "L_x": L_x.item(), "L_a": L_a.item(), "L_r": L_r.item(),
               "grad_norm_x": n_x.item(), "grad_norm_a": n_a.item(), "grad_norm": total.item(), "lambda": lam_value}
        if extra_loss is not None:
            extra = extra_loss(err_x.detach(), err_a.detach(), err_r.detach(), coef.detach())
            extra.backward()
        self.opt.step()
        return row

    def siss_scalar(self, L_x, L_a, L_r, coef):
        """L_SISS: the scalar whose gradient is the step's update (surgery: with coef = s / ||g_a|| fixed)."""
        cfg = self.ctx.recipe.siss
        if cfg.objective == "weighted":
            n, k = self.n, self.k
            return n / (n - k) * L_x - (1 + cfg.superfactor) * k / (n - k) * L_a + cfg.retain_weight * L_r
        return L_x + cfg.retain_weight * L_r - coef * L_a

    def step(self, k: int) -> dict:
        lam = self.pick_lambda(k)
        return self.siss_update(SissBatch(self.ctx, float(lam)), lam)


def log_scaled(*values) -> list[float]:
    """Context features: log of losses and gradient norms (they span decades) [ours]; NaN -> 0."""
    out = []
    for v in values:
        v = float(v)
        out.append(0.0 if not math.isfinite(v) else math.log(max(v, 1e-8)))
    return out
