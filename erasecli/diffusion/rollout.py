"""Trajectories of the denoising MDP: latents x_T..x_0, per-step log-probs, decoded images.

The policy is the reverse kernel p_theta(x_{t-1} | x_t, c) of DDIM with eta > 0 (`ddim.ddim_step_with_logprob`);
classifier-free guidance is applied to eps both when sampling here and when log-probs are recomputed for PPO
(`guided_eps`). Shapes: B trajectories, K steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erasecli.diffusion.cond import added_conditioning, encode_prompts, pooled_dim, unet_eps
from erasecli.diffusion.ddim import (ddim_from, ddim_step_with_logprob, ddim_timesteps, final_alpha_cumprod,
                                     path_step_with_logprob)


@dataclass
class Trajectories:
    c: torch.Tensor  # (B,) prompt index into the caller's embeddings
    latents: torch.Tensor  # (B, K+1, C, h, w): x_T, ..., x_0
    x0_hats: torch.Tensor  # (B, K, C, h, w): the predicted clean latent at each step
    log_probs: torch.Tensor  # (B, K): log p(x_{k+1} | x_k) under the sampling policy (mean over dims)
    timesteps: torch.Tensor  # (K,)
    prev_timesteps: torch.Tensor  # (K,); < 0 is the last step


def guided_eps(unet, x, t, emb_c, emb_u, guidance: float, extra=None):
    """e = e_u + g (e_c - e_u) in one batched UNet pass (g <= 1: the conditional prediction alone). `extra`
    (x_e, t_e, c_e): more rows predicted in the same pass without guidance (critic-rl's denoising terms ride in
    PPO's recompute); then (e, their raw predictions) come back."""
    if extra is None and guidance <= 1.0:
        return unet_eps(unet, x, t, emb_c)
    n = len(x)
    tt = t.expand(n) if t.ndim == 0 else t
    xs, ts, cs = ([x, x], [tt, tt], [emb_c, emb_u]) if guidance > 1.0 else ([x], [tt], [emb_c])
    own = len(xs) * n  # the chains' rows (conditional, then unconditional); the extra rows follow
    if extra is not None:
        xs, ts, cs = xs + [extra[0]], ts + [extra[1]], cs + [extra[2]]
    out = unet_eps(unet, torch.cat(xs), torch.cat(ts), torch.cat(cs))  # (own [+ extra rows], C, h, w)
    e = out[:n] if guidance <= 1.0 else out[n:own] + guidance * (out[:n] - out[n:own])
    return e if extra is None else (e, out[own:])


# Where a flow base's rollouts stop: s = 0.03, about the noise-to-signal ratio (sigma / gamma = 0.029) at which SD's
# DDIM chains stop (alpha_bar_0 = 0.99915). A last step to s = 1/T would have a kernel of std ~1e-3, whose
# log-density moves by whole nats when the mean moves by 1e-3, so PPO's ratio read that step's noise rather than
# the policy's change (docs/methods.md, "Flux").
FLOW_LAST_SIGMA = 0.03


class Sampler:
    """DDIM with eta > 0 over a fixed K-step schedule, from the base pipeline's scheduler config. On a flow base
    (Flux) the same step on the straight path x_s = (1 - s) x_0 + s eps (`ddim.path_step_with_logprob`): levels
    evenly spaced from s = 1 - 1/T to the last step's target s = FLOW_LAST_SIGMA (every step stochastic), the
    velocity turned into the noise it implies (classifier-free guidance, an affine combination, commutes with
    that)."""

    def __init__(self, base, steps: int, eta: float, guidance: float):
        self.eta, self.guidance = eta, guidance
        self.device = base.device
        self.flow = base.kind.flow
        if self.flow:
            from erasecli.diffusion.noise import schedule_of

            self.schedule = schedule_of(base.pipe.scheduler, base.device)
            T = self.schedule.num_timesteps
            last = max(round(FLOW_LAST_SIGMA * T) - 1, 0)  # level index t holds s = (t + 1) / T
            levels = torch.linspace(T - 2, last, steps + 1).round().long().to(base.device)
            self.timesteps, self.prevs = levels[:-1], levels[1:]
            self.init_sigma = 1.0
            return
        sched = ddim_from(base.pipe.scheduler.config)
        self.timesteps, self.prevs = ddim_timesteps(sched, steps, device=base.device)
        self.final_ab = final_alpha_cumprod(sched)
        self.ab = sched.alphas_cumprod.to(base.device, torch.float32)
        self.init_sigma = float(sched.init_noise_sigma)

    def step(self, unet, x, k, emb_c, emb_u, prev_sample=None, generator=None, variance_noise=None, extra=None):
        """One DDIM step of every row of x at step index k: an int, or a (B,) tensor of step indices, one per row
        (several steps of the chains in one UNet pass, as the PPO update batches them: the same math row by row).
        `extra` (x_e, t_e, c_e): rows predicted in the same UNet pass (`guided_eps`); then (the step, their
        predictions) come back."""
        t, prev = self.timesteps[k], self.prevs[k]  # 0-d, or (B,) per row
        eps = guided_eps(unet, x, t, emb_c, emb_u, self.guidance, extra)
        eps, e_extra = eps if extra is not None else (eps, None)
        if self.flow:
            t, prev = (v.expand(len(x)) if v.ndim == 0 else v for v in (t, prev))  # (B,) each
            eps = self.schedule.eps_from(eps, x.float(), t)
            out = path_step_with_logprob(eps, x, self.schedule.coefficients(t), self.schedule.coefficients(prev),
                                         self.eta, prev_sample=prev_sample, generator=generator,
                                         variance_noise=variance_noise)
        else:
            out = ddim_step_with_logprob(eps, t, prev, x, self.ab, self.final_ab, self.eta, prev_sample=prev_sample,
                                         generator=generator, variance_noise=variance_noise)
        return out if extra is None else (out, e_extra)

    @torch.no_grad()
    def sample(self, unet, c, embeds, shape, generator, rows=None) -> Trajectories:
        """B = len(c) trajectories; embeds (P, L, D) with the empty prompt at index 0. `rows` (indices into c):
        only those chains are computed and returned, with the same noise they get in the whole batch (every
        draw is the whole batch's), so processes that split the rows together make the one-process batch."""
        n = len(c)
        rows = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        c = c[rows.to(c.device)]
        emb_c, emb_u = embeds[c], embeds[torch.zeros_like(c)]

        def draw():  # the whole batch's noise, this caller's rows
            return torch.randn((n, *shape), generator=generator)[rows].to(self.device)

        x = draw() * self.init_sigma
        xs, x0s, lps = [x], [], []
        for k in range(len(self.timesteps)):
            noise = draw() if self.eta > 0 else None
            out = self.step(unet, x, k, emb_c, emb_u, variance_noise=noise)
            x = out.prev_sample
            xs.append(x)
            x0s.append(out.pred_original_sample)
            lps.append(out.log_prob)
        return Trajectories(c=c, latents=torch.stack(xs, 1), x0_hats=torch.stack(x0s, 1),
                            log_probs=torch.stack(lps, 1), timesteps=self.timesteps, prev_timesteps=self.prevs)


@torch.no_grad()
def decode(base, latents):
    """Scaled latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]."""
    vae = base.pipe.vae
    x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return x.float().clamp(-1, 1)


@torch.no_grad()
def pooled_text(base, prompts) -> torch.Tensor:
    """The text encoder's pooled (end-of-text) embedding per prompt: the critic's c.  (P, D); on SDXL the
    second encoder's pooled projection, the one the UNet itself receives (on Flux, CLIP's)."""
    pipe, den = base.pipe, base.denoiser
    if added_conditioning(den):  # SDXL; Flux: CLIP's pooled embedding, the one its transformer receives
        return encode_prompts(pipe, prompts, base.device)[:, -1, : pooled_dim(den)].float()
    out = []
    for i in range(0, len(prompts), 64):
        ids = pipe.tokenizer(list(prompts[i : i + 64]), padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        out.append(pipe.text_encoder(ids.to(base.device)).pooler_output.float())
    return torch.cat(out)
