"""critic-rl: critic-guided reinforcement unlearning (seeds 000/001, arXiv 2601.03213), our reconstruction.

docs/methods.md, "critic-rl", in its order. Denoising is the MDP: state (x_t, t, c), action x_{t-1}, policy the
DDIM (eta > 0) kernel p_theta(x_{t-1} | x_t, c) with the adapter, reward only at the end, R = r(x_0, c).

    traj          B rollouts x_T..x_0 with the current policy, log p_old per step        (B, K+1, C, h, w), (B, K)
    R             terminal reward (rewards registry): -concept score on forget prompts, utility on retain (B,)
    V             the critic V_phi(s_k) on x_t (critic.input: noisy) or x0_hat (clean)  (B, K)
    delta_k       V(s_{k+1}) - V(s_k), with V(s_K) := R (gamma = 1)                      (B, K)
    A_k           GAE over denoising steps: delta_k + lambda_gae A_{k+1}; lambda_gae = 1 is R - V(s_k)
                  critic.per_step: false replaces A_k by R (DDPO's terminal-reward advantage)
                  both are normalised per prompt (DDPO's per-prompt statistics)
    ratio         exp(log p_theta(x_{k+1} | x_k) - log p_old), guidance applied when recomputing
    loss          mean max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)), eps = critic.clip_range, summed over
                  steps / K (or over a random ceil(K * critic.timestep_fraction) of them per epoch, DDPO's
                  option); optional + kl_weight ||mu_theta - mu_base||^2 / (2 s_t^2) (mean over dims),
                  on every rollout or, with critic.kl_prompts: retain, on retain prompts' rollouts only [ours];
                  optional + retain_loss ||eps_theta(x_r_t, t, c_r) - eps||^2 on base retain latents, the
                  siss-family's retain term [ours]; optional + anchor_loss ||eps_theta(x_a_t, t, c_f) - eps||^2 on
                  the base's anchor latents under their forget prompts c_f (ac's noise target) [ours]
    epochs        critic.inner_epochs passes over the stored trajectories (off-policy reuse via the ratio);
                  the critic then fits R on the fresh trajectories (critic.updates_per_step passes)
    stop          optional [ours]: the run ends before train.steps once the mean forget reward over the last
                  critic.stop_window steps reaches critic.stop_reward
    robust        robust.enabled [ours]: once the inner attack (methods.robust) has run, a share robust.mix of each
                  step's forget prompts (at least one) roll out under their adversarial states c_j[P*]; their
                  reward still scores the plain prompt, their advantages are normalised apart from the plain
                  chains', and the critic's c is the plain prompt's pooled embedding or the adversarial states'
                  (critic.robust_input). The anchor term reads the adversary's mixed forget conditions too.
                  lora.text_encoder: every chain's states come through the text encoder and its adapter.

Log-probs are means over latent dims (DDPO's convention; see diffusion/ddim.py), which is why eps is small.
"""

from __future__ import annotations

import math
import time

import torch

from erasecli import rl
from erasecli.critic.train import RolloutEnv, check_critic, fit_critic, train_critic, values
from erasecli.delta import merged
from erasecli.methods import Unlearner
from erasecli.methods.adapter import base_only
from erasecli.methods.losses import grad_norm


def gae_over_steps(V, R, lam: float):
    """Per-step advantages over a denoising chain: delta_k = V_{k+1} - V_k with V_K := R, gamma = 1.  (B, K)
    The reward comes only at the end, so it is rl.gae with zero step rewards and R as the value after the
    last step."""
    return rl.gae(torch.zeros_like(V), V, R, gamma=1.0, lam=lam)[0]


def normalise_per_prompt(A, prompts):
    """(A - mean) / std within each prompt's rows (all their steps); a prompt seen once uses the batch."""
    out = torch.empty_like(A)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    for rows in groups.values():
        block = A[rows] if len(rows) > 1 else A
        out[rows] = (A[rows] - block.mean()) / (block.std(unbiased=False) + 1e-8)
    return out


class ChainConditions:
    """Each chain's condition when robust training or a text-encoder adapter is on: token ids with soft-token
    overrides read through methods.robust.Conditions, so an adversarial chain sees the inner attack's current soft
    tokens and every chain's states come through the text encoder (and its adapter, with gradient in the update).

        ids, S   (B, L) each chain's token ids and override map: its prompt's, or its adversarial row's
        adv      (B,) bool: the chains rolled out under adversarial states
    """

    def __init__(self, cond, ids, S, adv):
        self.cond, self.ids, self.S, self.adv = cond, ids, S, adv
        self.empty = cond.tokenize([""])  # (1, L)

    def states(self, rows=None):
        """(emb_c, emb_u) of chains `rows` (all by default), each (b, L, D); gradient to the text encoder's
        adapter when one trains and gradients are on."""
        ids, S = (self.ids, self.S) if rows is None else (self.ids[rows], self.S[rows])
        P = None if self.cond.P is None else self.cond.P.detach()
        with torch.set_grad_enabled(self.cond.trains and torch.is_grad_enabled()):
            both = self.cond.encode_ids(torch.cat([ids, self.empty]), torch.cat([S, torch.full_like(self.empty, -1)]),
                                        P).float()  # (b + 1, L, D)
        return both[:-1], both[-1:].expand(len(ids), *both.shape[1:])

    @torch.no_grad()
    def pooled(self):
        """Each chain's pooled embedding (B, D) from its own (possibly adversarial) states."""
        return self.cond.pooled_ids(self.ids, self.S, self.cond.P).float()


class CriticRl(Unlearner):
    name = "critic-rl"
    uses_critic = True
    kinds = ("sd", "sdxl", "flux")  # on Flux the policy is the DDIM step on the flow path (ddim.path_step_with_logprob)

    def __init__(self, ctx):
        super().__init__(ctx)
        from erasecli.critic.model import load_critic

        r, base = ctx.recipe, ctx.base
        self.env = RolloutEnv(r, base, ctx.data.sets, world=ctx.world)
        if ctx.cond is not None:  # robust or text-encoder adapter: chains are conditioned through token ids
            self.ids = ctx.cond.tokenize(self.env.prompts)  # (P, L), row i env.prompts[i]
        self.report = {}
        if r.critic.path:
            try:
                self.critic, meta = load_critic(r.critic.path, device=base.device)
            except FileNotFoundError as err:
                from erasecli.errors import EraseError

                raise EraseError(str(err), hint="pass the folder `erase train-critic --out` wrote") from None
            check_critic(meta, r, base.name, r.critic.path)
            self.report = {"critic": str(r.critic.path), "trained_here": False}
        else:
            t0 = time.time()
            ctx.unet.disable_adapters()  # the critic learns the base's trajectories
            try:
                self.critic, rep = train_critic(r, base, ctx.data.sets, env=self.env)
            finally:
                ctx.unet.enable_adapters()
            self.report = {"trained_here": True, "critic_seconds": round(time.time() - t0, 2),
                           "critic_report": rep}
        self.critic.train()
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=r.critic.lr)

    @classmethod
    def uses_images(cls, recipe) -> bool:
        # latents for the denoising terms; robust: the inner attack's forget images
        return recipe.critic.retain_loss > 0 or recipe.critic.anchor_loss > 0 or recipe.robust.enabled

    def extra_summary(self) -> dict:
        return self.report

    def _prompts(self):
        """Each chain's prompt (B,) and whether it rolls out under the prompt's adversarial states (B,): robust,
        after the first inner attack, the first round(robust.mix x forget prompts) (at least one) of the randomly
        drawn forget prompts that have adversarial states."""
        ctx = self.ctx
        cfg, sets, gen = ctx.recipe.critic, ctx.data.sets, ctx.gen
        n_r = math.floor(cfg.prompts_per_step * cfg.retain_prompts) if sets.retain else 0
        n_f = cfg.prompts_per_step - n_r
        pick = [sets.forget[int(i)] for i in torch.randint(len(sets.forget), (n_f,), generator=gen)]
        adv = [False] * len(pick)
        a = ctx.adversary
        if a is not None and a.log:  # the inner attack has run (a user folder's captions: only those have rows)
            has = [j for j, p in enumerate(pick) if p in a.adv_row]
            for j in has[: max(1, round(ctx.recipe.robust.mix * n_f))]:
                adv[j] = True
        if n_r:
            pick += [sets.retain[int(i)] for i in torch.randint(len(sets.retain), (n_r,), generator=gen)]
            adv += [False] * n_r
        n = cfg.samples_per_prompt
        return [p for p in pick for _ in range(n)], [x for x in adv for _ in range(n)]

    def _conditions(self, prompts, adv):
        """The chains' ChainConditions, or None when neither robust training nor a text-encoder adapter is on
        (the prompts' cached embeddings then condition every chain)."""
        cond = self.ctx.cond
        if cond is None:
            return None
        ids = self.ids[torch.tensor([self.env.index[p] for p in prompts], device=self.ids.device)].clone()
        S = torch.full_like(ids, -1)
        for i in [i for i, x in enumerate(adv) if x]:
            r = self.ctx.adversary.adv_row[prompts[i]]
            ids[i], S[i] = cond.ids[r], cond.S[r]
        return ChainConditions(cond, ids, S, torch.tensor(adv, device=ids.device))

    def step(self, k: int) -> dict:
        ctx, cfg = self.ctx, self.ctx.recipe.critic
        env, unet = self.env, ctx.unet
        prompts, adv = self._prompts()
        conds = self._conditions(prompts, adv)
        unet.eval()
        states = None
        if conds is not None:
            with torch.no_grad():
                states = conds.states()  # (B, L, D) each
        with merged(unet):  # no gradient here: the adapter folded into the weights, one product per layer
            traj, R = env.rollout(unet, prompts, ctx.gen,  # (B, ...), (B,)
                                  states=None if states is None else (states[0], states[1][0]))
        unet.train()
        B, K = traj.log_probs.shape
        # the critic's c: the prompt's pooled embedding, or (critic.robust_input: states) the chain's own states'
        pooled = conds.pooled() if conds is not None and cfg.robust_input == "states" else env.pooled[traj.c]
        if cfg.per_step:
            with torch.no_grad():
                V = values(self.critic, traj, pooled, cfg.input)  # (B, K)
            A = gae_over_steps(V, R, cfg.gae_lambda)
        else:
            A = R[:, None].expand(B, K)
        # advantages are normalised per condition: a prompt's adversarial chains form their own group
        A = normalise_per_prompt(A, [p + "\n[adversarial]" if a else p for p, a in zip(prompts, adv)])
        forget_set = set(ctx.data.sets.forget)
        forget = torch.tensor([p in forget_set for p in prompts], device=R.device)
        # several processes: each updates on its rows of the batch (every process holds every trajectory) and
        # the gradients are summed, so each row's loss is weighted 1 / B as in one process's batch mean
        world = ctx.world
        loc = torch.tensor(world.rows(B), device=R.device)
        share = len(loc) / B
        lat, old_lp, A_loc = traj.latents[loc], traj.log_probs[loc], A[loc]
        if conds is None:
            emb_c, emb_u = env.embeds[traj.c[loc]], env.embeds[torch.zeros_like(traj.c[loc])]
        else:
            emb_c, emb_u = states[0][loc], states[1][loc]
        te_trains = conds is not None and conds.cond.trains  # the states take gradients: re-encoded every pass
        tes = list(ctx.adapter.text_encoders.values())
        b = len(loc)
        kl_rows = None
        if cfg.kl_weight > 0:  # this process's rows whose kernel is pulled towards the base's
            kl_on = torch.ones_like(forget) if cfg.kl_prompts == "all" else ~forget
            kl_rows, n_kl = kl_on[loc].nonzero()[:, 0], int(kl_on.sum())
        n_train = math.ceil(K * cfg.timestep_fraction)  # steps trained per epoch; the loss is their mean
        per_pass = cfg.timesteps_per_pass  # steps recomputed in one UNet pass: the same sum of per-step losses
        zero = torch.zeros((), device=R.device)
        policy_loss = kl_total = retain_total = anchor_total = clipped = approx_kl = zero
        for _ in range(cfg.inner_epochs):
            self.opt.zero_grad(set_to_none=True)
            order = torch.randperm(K, generator=ctx.gen)[:n_train].tolist()
            starts = list(range(0, len(order), per_pass))
            for at in starts:
                js = order[at : at + per_pass]
                # the denoising terms ride in the epoch's last pass (their draws come after the epoch's permutation,
                # as when they had a pass of their own)
                draws = self._denoising_draws() if at == starts[-1] else None
                n = len(js)
                # rows grouped by step: row q * b + i is this process's chain i at step js[q]
                x = lat[:, js].transpose(0, 1).reshape(n * b, *lat.shape[2:])
                x_next = lat[:, [j + 1 for j in js]].transpose(0, 1).reshape(x.shape)
                ks = torch.tensor(js, device=x.device).repeat_interleave(b)
                if te_trains:
                    emb_c, emb_u = conds.states(loc)
                e_c, e_u = torch.cat([emb_c] * n), torch.cat([emb_u] * n)
                if draws is None:
                    out = env.sampler.step(unet, x, ks, e_c, e_u, prev_sample=x_next)
                else:
                    out, e_d = env.sampler.step(unet, x, ks, e_c, e_u, prev_sample=x_next, extra=draws[:3])
                lp = out.log_prob.view(n, b)
                loss = 0.0
                for q, j in enumerate(js):
                    loss = loss + share * rl.ppo_clip_loss(lp[q], old_lp[:, j], A_loc[:, j], cfg.clip_range) / n_train
                if kl_rows is not None and len(kl_rows):
                    rows = (torch.arange(n, device=x.device)[:, None] * b + kl_rows[None]).flatten()
                    with base_only(unet, *tes), torch.no_grad():  # the base's kernel: its text states too
                        b_c, b_u = (torch.cat([s] * n) for s in conds.states(loc)) if te_trains else (e_c, e_u)
                        mu_base = env.sampler.step(unet, x[rows], ks[rows], b_c[rows], b_u[rows],
                                                   prev_sample=x_next[rows]).mean
                    per_row = (out.mean[rows] - mu_base).pow(2).flatten(1).mean(1) / (2 * out.std.flatten()[rows] ** 2)
                    kl = per_row.view(n, -1).sum(1) / n_kl  # (n,): each step's share of its mean over the KL rows
                    loss = loss + cfg.kl_weight * kl.sum() / n_train
                    kl_total = kl_total + kl.sum().detach() / n_train
                policy_loss = policy_loss + loss.detach()
                if draws is not None:
                    denoise, L_r, L_a = self._denoising_loss(draws, e_d)
                    loss = loss + denoise
                    retain_total, anchor_total = retain_total + L_r.detach(), anchor_total + L_a.detach()
                loss.backward()
                with torch.no_grad():
                    ratio = (lp - old_lp[:, js].T).exp()  # (n, b)
                    clipped = clipped + ((ratio - 1).abs() > cfg.clip_range).float().sum() / (B * n_train)
                    approx_kl = approx_kl + (old_lp[:, js].T - lp).sum() / (B * n_train)
            params = [p for p in ctx.params if p.grad is not None]
            world.sum_([p.grad for p in params])
            norm = grad_norm([p.grad for p in params])
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.opt.step()
        critic_loss = fit_critic(self.critic, self.critic_opt, env, traj, R, cfg.updates_per_step, 256, ctx.gen,
                                 pooled=pooled) if cfg.updates_per_step else float("nan")
        policy_loss, kl_total, retain_total, anchor_total, clipped, approx_kl = (
            v.item() / cfg.inner_epochs
            for v in world.total(policy_loss, kl_total, retain_total, anchor_total, clipped, approx_kl))
        return {"loss": policy_loss, "reward": R.mean().item(), "reward_forget": R[forget].mean().item(),
                "reward_retain": R[~forget].mean().item() if (~forget).any() else float("nan"),
                "critic_loss": critic_loss, "clipfrac": clipped, "approx_kl": approx_kl, "kl_base": kl_total,
                "L_r": retain_total, "L_a": anchor_total, "grad_norm": norm.item(),
                **({} if conds is None else {"adv_chains": int(conds.adv.sum()),
                                             "reward_adv": R[conds.adv].mean().item() if conds.adv.any() else
                                             float("nan")})}

    def _denoising_draws(self):
        """The rows of the two denoising terms, each noised to a random t: critic.retain_loss's L_r on B base retain
        latents under their own prompts, critic.anchor_loss's L_a on B base anchor latents (row i drawn for forget
        row i's anchor prompt) under their forget prompts. Returns this process's rows (x_t, t, c_states, eps,
        {term: number of rows}) to ride in a UNet pass, or None when both terms are off."""
        ctx, cfg, d, B = self.ctx, self.ctx.recipe.critic, self.ctx.data, self.ctx.recipe.train.batch_size
        draws = {}  # term -> (x_t, t, c, eps) of the whole batch
        if cfg.retain_loss > 0 and len(d.retain):
            draws["r"] = ctx.noisy_retain(B)
        if cfg.anchor_loss > 0 and len(d.anchor):
            i = ctx.randint(len(d.anchor), B)
            t, eps = ctx.randint(ctx.num_timesteps, B), ctx.randn(d.anchor[i].shape)
            draws["a"] = (ctx.noise.add_noise(d.anchor[i], eps, t), t, d.forget_c[i], eps)
        if not draws:
            return None
        mine = {k: [ctx.world.local(v) for v in x] for k, x in draws.items()}
        x_t, t, c, eps = (torch.cat([x[j] for x in mine.values()]) for j in range(4))
        states = d.embeds[c] if ctx.encode is None else ctx.encode(c)  # what ctx.eps conditions on
        return x_t, t, states, eps, {k: len(x[0]) for k, x in mine.items()}

    def _denoising_loss(self, draws, pred):
        """(critic.retain_loss L_r + critic.anchor_loss L_a, L_r, L_a) from the UNet's raw predictions `pred` of
        `_denoising_draws`' rows: each term this process's share of its batch mean (flow: on the velocity)."""
        ctx, cfg, B = self.ctx, self.ctx.recipe.critic, self.ctx.recipe.train.batch_size
        x_t, t, _, eps, sizes = draws
        per_row = ctx.err(ctx.noise.eps_from(pred, x_t, t), eps, t).split(list(sizes.values()))
        L = {k: rows.sum() / B for k, rows in zip(sizes, per_row)}
        zero = torch.zeros((), device=pred.device)
        L_r, L_a = L.get("r", zero), L.get("a", zero)
        return cfg.retain_loss * L_r + cfg.anchor_loss * L_a, L_r, L_a

    def finished(self, rows: list[dict]) -> bool:
        """critic.stop_reward: the forget reward's mean over the last critic.stop_window steps reached it."""
        cfg = self.ctx.recipe.critic
        if cfg.stop_reward is None or len(rows) < cfg.stop_window or len(rows) >= self.total_steps(self.ctx.recipe):
            return False  # off, too few steps yet, or the last step anyway
        mean = sum(r["reward_forget"] for r in rows[-cfg.stop_window:]) / cfg.stop_window
        if mean < cfg.stop_reward:
            return False
        self.report["stopped_early"] = {"step": len(rows), "reward_forget_mean": round(mean, 4)}
        return True

    def state_dict(self) -> dict:
        return {**super().state_dict(), "critic": self.critic.state_dict(), "critic_opt": self.critic_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])


__all__ = ["CriticRl", "gae_over_steps", "normalise_per_prompt"]
