"""adaptive-siss: SISS whose mixing weight lambda is inferred at every step (seed 002, section 5.1, Alg. 2).

docs/methods.md, "adaptive-siss". Code names and symbols:

    f        context [log L_x, log L_a, log ||g_x||, log ||g_a||] of the previous step, detached [ours: log]
    q_phi    MLP (2 x hidden, tanh) f -> (mu, log_sigma)
    xi       N(0, 1) draw; z = mu + sigma xi (reparameterised)
    lam      lambda_min + (lambda_max - lambda_min) sigmoid(z)
    KL       KL(q_phi(z|f) || N(0, 1)), closed form, weighted by adaptive.beta

phi's loss is L_SISS(theta, lam) + beta KL with the UNet errors held fixed: phi reaches L_SISS only through
the importance weights w_x(lam), w_a(lam) (the Bernoulli draw of which sample is noised is not
differentiable). theta takes the SISS step with the same lam; both optimisers step together.
"""

from __future__ import annotations

import torch
from torch import nn

from erasecli import rl
from erasecli.methods.siss import Siss, SissBatch, log_scaled


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


class AdaptiveSiss(Siss):
    name = "adaptive-siss"

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.recipe.adaptive
        g = torch.Generator("cpu").manual_seed(ctx.recipe.train.seed + 1)
        self.q_phi = mlp(4, cfg.hidden, 2)
        with torch.no_grad():  # seeded init, independent of the global generator
            for p in self.q_phi.parameters():
                p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=g) / max(p.shape[-1], 1) ** 0.5)
            self.q_phi[-1].weight.mul_(0.01)
            self.q_phi[-1].bias.zero_()  # starts at mu = 0, sigma = 1: lam centred in its range
        self.q_phi.to(ctx.device)
        self.opt_phi = torch.optim.Adam(self.q_phi.parameters(), lr=cfg.lr)
        self.f = [0.0, 0.0, 0.0, 0.0]

    def step(self, k: int) -> dict:
        ctx, s = self.ctx, self.ctx.recipe.siss
        f = torch.tensor(self.f, device=ctx.device).view(1, 4)  # (1, 4)
        mu, log_sigma = self.q_phi(f)[0]
        xi = ctx.randn(())
        z = mu + log_sigma.exp() * xi
        lam = rl.squash(z, s.lambda_min, s.lambda_max)
        kl = rl.kl_to_standard_normal(mu, log_sigma)
        batch = SissBatch(ctx, float(lam.detach()))
        beta = ctx.recipe.adaptive.beta

        def phi_loss(err_x, err_a, err_r, coef):
            L_x, L_a, L_r = batch.losses(err_x, err_a, err_r, lam)  # differentiable in lam only
            # each process's share of the batch; kl once over all processes
            return self.siss_scalar(L_x, L_a, L_r, coef) + beta * kl / ctx.world.size

        self.opt_phi.zero_grad(set_to_none=True)
        row = self.siss_update(batch, lam, extra_loss=phi_loss)
        ctx.world.sum_([p.grad for p in self.q_phi.parameters()])
        self.opt_phi.step()
        self.f = log_scaled(row["L_x"], row["L_a"], row["grad_norm_x"], row["grad_norm_a"])
        row.update({"mu": mu.item(), "log_sigma": log_sigma.item(), "kl": kl.item()})
        return row

    def state_dict(self) -> dict:
        return {**super().state_dict(), "q_phi": self.q_phi.state_dict(), "opt_phi": self.opt_phi.state_dict(),
                "f": list(self.f)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.q_phi.load_state_dict(state["q_phi"])
        self.opt_phi.load_state_dict(state["opt_phi"])
        self.f = list(state["f"])
