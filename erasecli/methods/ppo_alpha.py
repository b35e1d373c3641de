"""ppo-alpha: a PPO agent chooses SISS's mixing weight at every step (seed 002, section 5.3, Appendix C).

docs/methods.md, "ppo-alpha". The MDP is the unlearning run itself; one environment step = one SISS step.

    s_k       [log L_x, log L_a, log ||g_x||, log ||g_a||, lam_{k-1}, k/K]: the previous SISS step's losses
              and gradient norms (log-scaled [ours]), the previous action, the progress
    z, lam    z ~ N(mu(s), sigma(s)); lam = lambda_min + (lambda_max - lambda_min) sigmoid(z)
    logp      log-density of lam, the sigmoid's Jacobian included (rl.squashed_log_prob, kept in z)
    r_k       -L_SISS(theta_{k+1}; lam_k) - beta_s (lam_k - lam_{k-1})^2: the step's loss re-measured on the
              same batch after the update, minus the smoothness penalty
    pi, V     MLPs, 2 x hidden, tanh; Adam ppo.lr for both
    PPO       GAE(ppo.gamma, ppo.gae_lambda), normalised advantages, clipped surrogate (ppo.clip), value MSE,
              entropy bonus ppo.entropy_coef; ppo.epochs full-window epochs per update

Modes: `online` (default): one run of train.steps, a PPO update every ppo.update_every steps on the last
window. `episodic`: ppo.episodes episodes of ppo.episode_steps, each starting from the initial adapter and a
fresh optimiser; then a final run of train.steps with the fixed policy's mean action makes the delta.
"""

from __future__ import annotations

import torch

from erasecli import rl
from erasecli.methods.adaptive_siss import mlp
from erasecli.methods.adapter import load_peft_state, peft_state
from erasecli.methods.siss import Siss, SissBatch, log_scaled

STATE_DIM = 6


class PpoAlpha(Siss):
    name = "ppo-alpha"

    @classmethod
    def total_steps(cls, recipe) -> int:
        p = recipe.ppo
        return recipe.train.steps + (p.episodes * p.episode_steps if p.mode == "episodic" else 0)

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.recipe.ppo
        g = torch.Generator("cpu").manual_seed(ctx.recipe.train.seed + 2)
        self.pi, self.v = mlp(STATE_DIM, cfg.hidden, 2), mlp(STATE_DIM, cfg.hidden, 1)
        with torch.no_grad():  # seeded init, independent of the global generator
            for net in (self.pi, self.v):
                for p in net.parameters():
                    p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=g) / max(p.shape[-1], 1) ** 0.5)
            self.pi[-1].weight.mul_(0.01)
            self.pi[-1].bias.copy_(torch.tensor([0.0, -0.5]))  # mu = 0 (lam mid-range), sigma = 0.6
        self.pi.to(ctx.device)
        self.v.to(ctx.device)
        self.opt_pv = torch.optim.Adam([*self.pi.parameters(), *self.v.parameters()], lr=cfg.lr)
        self.init_adapter = peft_state(ctx.adapter.denoiser)
        self.lam_prev = ctx.recipe.siss.lam
        self.feat = [0.0, 0.0, 0.0, 0.0]
        self.buffer: list[tuple] = []  # (s, z, logp, v, r, done)
        self.ppo_updates = 0

    # -- phases (episodic mode) -------------------------------------------------------------------------
    def _phase(self, k: int) -> tuple[int | None, int, int]:
        """(episode or None for the delta-making run, step within it, its length)."""
        p, r = self.ctx.recipe.ppo, self.ctx.recipe
        if p.mode == "episodic" and k < p.episodes * p.episode_steps:
            return k // p.episode_steps, k % p.episode_steps, p.episode_steps
        start = p.episodes * p.episode_steps if p.mode == "episodic" else 0
        return None, k - start, r.train.steps

    def run_position(self, k: int) -> tuple[int, int]:
        return self._phase(k)[1:]  # each episode, and the final run, starts its own schedule at train.lr

    def _reset_run(self) -> None:
        """A new episode (or the final run): the initial adapter, a fresh optimiser, the start lambda."""
        load_peft_state(self.ctx.adapter.denoiser, self.init_adapter)
        self.opt = torch.optim.AdamW(self.ctx.params, lr=self.ctx.recipe.train.lr, weight_decay=0.0)
        self.lam_prev = self.ctx.recipe.siss.lam
        self.feat = [0.0, 0.0, 0.0, 0.0]

    def _policy(self, s):
        mu, log_std = self.pi(s).unbind(-1)
        return mu, log_std.clamp(-5.0, 2.0)

    def step(self, k: int) -> dict:
        ctx, cfg, sc = self.ctx, self.ctx.recipe.ppo, self.ctx.recipe.siss
        episode, i, length = self._phase(k)
        learning = episode is not None or cfg.mode == "online"
        if i == 0 and cfg.mode == "episodic":
            self._reset_run()
        s = torch.tensor([*self.feat, self.lam_prev, i / length], device=ctx.device)  # (6,)
        with torch.no_grad():
            mu, log_std = self._policy(s)
            z = mu + log_std.exp() * ctx.randn(()) if learning else mu  # the final run acts on the mean
            logp = rl.squashed_log_prob(z, mu, log_std, sc.lambda_min, sc.lambda_max)
            value = self.v(s)[0]
        lam = float(rl.squash(z, sc.lambda_min, sc.lambda_max))
        batch = SissBatch(ctx, lam)
        row = self.siss_update(batch, lam)
        with torch.no_grad():  # reward: the same batch's loss after the update, minus the smoothness penalty
            L_after = self.siss_scalar(*batch.losses(*batch.errors(ctx), lam), self.last_coef)
            L_after = ctx.world.total(L_after)  # the whole batch's loss: the same reward on every process
        r = -float(L_after) - cfg.smooth_beta * (lam - self.lam_prev) ** 2
        done = i + 1 == length
        self.lam_prev = lam
        self.feat = log_scaled(row["L_x"], row["L_a"], row["grad_norm_x"], row["grad_norm_a"])
        row.update({"reward": r, "mu": mu.item(), "log_std": log_std.item(),
                    "episode": -1 if episode is None else episode})
        if learning:
            self.buffer.append((s, z, logp, value, r, float(done)))
            if len(self.buffer) >= cfg.update_every or done:
                s_next = torch.tensor([*self.feat, self.lam_prev, (i + 1) / length], device=ctx.device)
                row.update(self._ppo_update(s_next, done))
        return row

    def _ppo_update(self, s_next, done: bool) -> dict:
        cfg = self.ctx.recipe.ppo
        sc = self.ctx.recipe.siss
        obs = torch.stack([b[0] for b in self.buffer])  # (W, 6)
        z = torch.stack([b[1] for b in self.buffer])  # (W,)
        logp_old = torch.stack([b[2] for b in self.buffer])  # (W,)
        values = torch.stack([b[3] for b in self.buffer])  # (W,)
        rewards = torch.tensor([b[4] for b in self.buffer], device=obs.device)  # (W,)
        dones = torch.tensor([b[5] for b in self.buffer], device=obs.device)  # (W,)
        self.buffer = []
        with torch.no_grad():
            last_value = 0.0 if done else self.v(s_next)[0]
        adv, ret = rl.gae(rewards, values, last_value, cfg.gamma, cfg.gae_lambda, dones)
        adv = rl.normalize(adv)
        for _ in range(cfg.epochs):
            mu, log_std = self._policy(obs)
            logp = rl.squashed_log_prob(z, mu, log_std, sc.lambda_min, sc.lambda_max)
            loss_pi = rl.ppo_clip_loss(logp, logp_old, adv, cfg.clip)
            loss_v = 0.5 * (self.v(obs)[:, 0] - ret).pow(2).mean()
            entropy = rl.gaussian_entropy(log_std).mean()
            loss = loss_pi + loss_v - cfg.entropy_coef * entropy
            self.opt_pv.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_pv.step()
        self.ppo_updates += 1
        return {"ppo_policy_loss": loss_pi.item(), "ppo_value_loss": loss_v.item(), "ppo_entropy": entropy.item()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pi": self.pi.state_dict(), "v": self.v.state_dict(),
                "opt_pv": self.opt_pv.state_dict(), "init_adapter": self.init_adapter, "lam_prev": self.lam_prev,
                "feat": list(self.feat), "buffer": self.buffer, "ppo_updates": self.ppo_updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pi.load_state_dict(state["pi"])
        self.v.load_state_dict(state["v"])
        self.opt_pv.load_state_dict(state["opt_pv"])
        self.init_adapter = state["init_adapter"]
        self.lam_prev, self.feat = state["lam_prev"], list(state["feat"])
        self.buffer, self.ppo_updates = list(state["buffer"]), state["ppo_updates"]
