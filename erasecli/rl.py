"""Small, pure torch pieces shared by the RL-flavoured unlearning methods (PPO over lambda, critic-guided RL).

Names in code and in the math:

    z          pre-squash action, z ~ N(mu, sigma^2), sigma = exp(log_std)
    lam        squashed action in (lo, hi): lam = lo + (hi - lo) * sigmoid(z)
    logp       log-density of lam (change of variables from z); callers keep z, not lam, to avoid logit round-off
    r_t, V_t   reward and value estimate at step t; V(s_T) = `last_value` bootstraps the window's end
    done_t     1 when the episode ended after step t (no bootstrap across it)
    delta_t    TD residual  r_t + gamma * V_{t+1} * (1 - done_t) - V_t
    A_t        GAE advantage  delta_t + gamma * lam_gae * (1 - done_t) * A_{t+1}
    ratio      pi_new / pi_old = exp(logp_new - logp_old)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def squash(z: Tensor, lo: float, hi: float) -> Tensor:
    """lam = lo + (hi - lo) * sigmoid(z), mapping R onto (lo, hi)."""
    return lo + (hi - lo) * torch.sigmoid(z)


def unsquash(lam: Tensor, lo: float, hi: float) -> Tensor:
    """z = logit((lam - lo) / (hi - lo)), the fraction clamped to [1e-6, 1 - 1e-6] so the bounds give finite z."""
    frac = ((lam - lo) / (hi - lo)).clamp(1e-6, 1 - 1e-6)
    return torch.log(frac) - torch.log1p(-frac)


def gaussian_log_prob(x: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mu, sigma^2) = -0.5 * ((x - mu) / sigma)^2 - log sigma - 0.5 * log(2 pi), elementwise."""
    return -0.5 * ((x - mu) * torch.exp(-log_std)) ** 2 - log_std - _LOG_SQRT_2PI


def squashed_log_prob(z: Tensor, mu: Tensor, log_std: Tensor, lo: float, hi: float) -> Tensor:
    """log p(lam) for lam = squash(z), z ~ N(mu, sigma^2), elementwise:

        log p(lam) = log N(z; mu, sigma^2) - log((hi - lo) * sigmoid(z) * (1 - sigmoid(z)))

    with log sigmoid(z) + log(1 - sigmoid(z)) = logsigmoid(z) + logsigmoid(-z) for stability.
    """
    log_jac = math.log(hi - lo) + F.logsigmoid(z) + F.logsigmoid(-z)  # log |d lam / d z|
    return gaussian_log_prob(z, mu, log_std) - log_jac


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """H[N(mu, sigma^2)] = 0.5 * log(2 pi e) + log sigma (of the pre-squash Gaussian)."""
    return 0.5 * math.log(2 * math.pi * math.e) + log_std


def kl_to_standard_normal(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = 0.5 * (sigma^2 + mu^2 - 1) - log sigma, elementwise."""
    return 0.5 * (torch.exp(2 * log_sigma) + mu**2 - 1) - log_sigma


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, last_value: Tensor | float, gamma: float, lam: float,
        dones: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a window of T steps (the last dim; leading dims are a batch).

        delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t        (V_T = last_value)
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}    (A_T = 0)

    Returns (advantages, returns = advantages + values), both (..., T). ppo-alpha uses it over the steps of
    an unlearning run, critic-rl over the steps of denoising chains (rewards 0, V_T = R, gamma = 1).
    """
    rewards, values = rewards.detach(), values.detach()  # (..., T), (..., T)
    T = rewards.shape[-1]
    not_done = torch.ones_like(rewards) if dones is None else 1.0 - dones.detach().to(rewards.dtype)  # (..., T)
    v_last = torch.as_tensor(last_value, dtype=values.dtype, device=values.device)
    v_last = v_last.expand(values.shape[:-1]).unsqueeze(-1)  # (..., 1)
    next_values = torch.cat([values[..., 1:], v_last], -1)  # (..., T)
    deltas = rewards + gamma * next_values * not_done - values  # (..., T)
    adv = torch.zeros_like(rewards)  # (..., T)
    running = rewards.new_zeros(rewards.shape[:-1])  # A_T = 0, (...)
    for t in range(T - 1, -1, -1):
        running = deltas[..., t] + gamma * lam * not_done[..., t] * running
        adv[..., t] = running
    return adv, adv + values


def ppo_clip_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """PPO clipped surrogate (to minimise), a scalar:

        L = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip))),  ratio = exp(logp_new - logp_old)
    """
    ratio = torch.exp(logp_new - logp_old)  # (N,)
    unclipped = -advantages * ratio  # (N,)
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)  # (N,)
    return torch.max(unclipped, clipped).mean()


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) with the population std; one element gives 0, not NaN."""
    centred = x - x.mean()
    return centred / (x.std(unbiased=False) + eps)
