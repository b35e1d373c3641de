"""One DDIM step as a Gaussian policy step, with the log-density of the sample it draws.

Names in code and in the math (docs/methods.md, "Sampling with log-probs"):

    eps                    e, the (already classifier-free-guided) noise prediction eps_theta(x_t, t, c)
    x_t                    the current latent x_t
    ab_t, ab_prev          alpha_bar_t = alphas_cumprod[t], alpha_bar_prev = alphas_cumprod[t_prev]
                           (t_prev < 0, the last step: alpha_bar_prev = final_alpha_cumprod)
    pred_original_sample   x0_hat = (x_t - sqrt(1 - ab_t) e) / sqrt(ab_t)
    variance               s_t^2 / eta^2 = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    std                    s_t = eta * sqrt(variance)
    mean                   mu = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s_t^2) e
    prev_sample            x_{t-1} = mu + s_t z,  z ~ N(0, I)
    log_prob               log p(x_{t-1} | x_t, c), the Gaussian log-density of x_{t-1} under N(mu, s_t^2 I),
                           MEAN over the non-batch dims (DDPO's convention), not the sum
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class DdimStep(NamedTuple):
    """The outputs of one DDIM step; float32 throughout."""

    prev_sample: Tensor  # (B, C, H, W)  x_{t-1}
    log_prob: Tensor  # (B,)  mean over dims of log N(x_{t-1}; mu, s_t^2)
    mean: Tensor  # (B, C, H, W)  mu
    std: Tensor  # (B, 1, 1, 1)  s_t
    pred_original_sample: Tensor  # (B, C, H, W)  x0_hat


def _per_element(t: int | Tensor, batch: int, device: torch.device) -> Tensor:
    """An int, a 0-d tensor or a (B,) tensor of timesteps as a (B,) long tensor on `device`."""
    t = torch.as_tensor(t, dtype=torch.long, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must be an int or a tensor of shape ({batch},), got shape {tuple(t.shape)}")
    return t


def ddim_step_with_logprob(
    eps: Tensor,
    t: int | Tensor,
    t_prev: int | Tensor,
    x_t: Tensor,
    alphas_cumprod: Tensor,
    final_alpha_cumprod: float,
    eta: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
    variance_noise: Tensor | None = None,
) -> DdimStep:
    """One DDIM step x_t -> x_{t-1} and log p(x_{t-1} | x_t).

    Reproduces `diffusers.DDIMScheduler.step` for `prediction_type="epsilon"` with no clipping or thresholding
    of x0_hat (Stable Diffusion's config has `clip_sample=False`) and `use_clipped_model_output=False`:

        x0_hat  = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
        s_t^2   = eta^2 * (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        mu      = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s_t^2) eps
        x_{t-1} = mu + s_t z

    with ab_prev = `final_alpha_cumprod` where t_prev < 0 (diffusers: 1.0 when `set_alpha_to_one`, else
    alphas_cumprod[0]; see `final_alpha_cumprod()`). As in diffusers, no noise is added when eta == 0, and
    passing both `generator` and `variance_noise` is an error.

    What it adds over diffusers:
      - `t` and `t_prev` may be (B,) tensors, so one batch can hold different timesteps; ab values are
        gathered per element and broadcast as (B, 1, 1, 1). `t_prev` is passed in, not derived from the
        scheduler (use `ddim_timesteps()` for diffusers' rule).
      - `prev_sample` may be given (a stored action), and then only its log-density is evaluated.
      - log_prob = mean over dims of [-(x_{t-1} - mu)^2 / (2 s_t^2) - log s_t - 0.5 log(2 pi)]:
        the mean over dims, so ratios stay near 1 (DDPO's convention; ours, docs/methods.md "Sampling with log-probs").
        It is differentiable with respect to `eps`, so PPO can recompute it under the current policy.
      - The variance and the term under the square root of mu are clamped at >= 0 (diffusers would give NaN).
      - With eta == 0 the step is deterministic and the density is undefined: log_prob is zeros(B) (NaN-free
        but meaningless). Likewise a zero s_t for some element with eta > 0 (e.g. the last step with
        `set_alpha_to_one`) gives that element log_prob 0.
      - Everything is computed in float32 and returned in float32.

    Noise, when drawn, is `torch.randn` on the CPU with `generator` (a CPU generator), moved to x_t's device,
    so a seed gives the same draws on any device.
    """
    if variance_noise is not None and generator is not None:
        raise ValueError("pass either generator or variance_noise, not both")
    eps = eps.float()  # (B, C, H, W)
    x_t = x_t.float()  # (B, C, H, W)
    batch = x_t.shape[0]
    device = x_t.device
    ac = alphas_cumprod.to(device=device, dtype=torch.float32)  # (T,)

    t = _per_element(t, batch, device)  # (B,)
    t_prev = _per_element(t_prev, batch, device)  # (B,)
    ab_t = ac[t].view(batch, 1, 1, 1)  # (B, 1, 1, 1)
    final = torch.full_like(ab_t, float(final_alpha_cumprod))  # (B, 1, 1, 1)
    ab_prev = torch.where(t_prev.view(batch, 1, 1, 1) >= 0, ac[t_prev.clamp(min=0)].view(batch, 1, 1, 1), final)
    beta_t = 1 - ab_t  # (B, 1, 1, 1)
    beta_prev = 1 - ab_prev  # (B, 1, 1, 1)

    pred_original_sample = (x_t - beta_t**0.5 * eps) / ab_t**0.5  # (B, C, H, W)  x0_hat, no clipping
    variance = ((beta_prev / beta_t) * (1 - ab_t / ab_prev)).clamp(min=0)  # (B, 1, 1, 1)
    std = eta * variance**0.5  # (B, 1, 1, 1)
    direction = (1 - ab_prev - std**2).clamp(min=0) ** 0.5 * eps  # (B, C, H, W)
    mean = ab_prev**0.5 * pred_original_sample + direction  # (B, C, H, W)

    return _draw_and_score(mean, std, pred_original_sample, eta, prev_sample, generator, variance_noise)


def _draw_and_score(mean, std, pred_original_sample, eta, prev_sample, generator, variance_noise) -> DdimStep:
    """x_{t-1} = mu + s_t z (or the given prev_sample) and its log-density, mean over dims (0 where s_t = 0)."""
    batch, device = mean.shape[0], mean.device
    if prev_sample is None:
        if eta > 0:
            if variance_noise is None:
                variance_noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
            prev_sample = mean + std * variance_noise.to(device=device, dtype=torch.float32)
        else:
            prev_sample = mean
    prev_sample = prev_sample.float()  # (B, C, H, W)

    if eta == 0:
        log_prob = torch.zeros(batch, device=device)  # (B,)
    else:
        positive = std > 0  # (B, 1, 1, 1)
        safe_std = torch.where(positive, std, torch.ones_like(std))  # no inf/NaN, even in gradients
        density = -((prev_sample - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
        log_prob = density.mean(dim=tuple(range(1, density.ndim)))  # (B,)  mean over dims
        log_prob = torch.where(positive.view(batch), log_prob, torch.zeros_like(log_prob))

    return DdimStep(prev_sample, log_prob, mean, std, pred_original_sample)


def path_step_with_logprob(eps: Tensor, x_t: Tensor, coef_t: tuple, coef_prev: tuple, eta: float,
                           prev_sample: Tensor | None = None, generator: torch.Generator | None = None,
                           variance_noise: Tensor | None = None) -> DdimStep:
    """The DDIM step on any Gaussian path x_t = gamma_t x_0 + sigma_t eps (a flow base: gamma = 1 - s, sigma = s),
    where gamma^2 + sigma^2 need not be 1. `coef_t`, `coef_prev`: (gamma, sigma) at t and at the step's target
    level, each (B, 1, 1, 1). With r = gamma_t / gamma_prev, the posterior q(x_prev | x_t, x_0) has variance

        v = sigma_prev^2 (sigma_t^2 - r^2 sigma_prev^2) / sigma_t^2

    (on a VP path, sigma^2 = 1 - alpha_bar, this is DDIM's (1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev)), and

        x0_hat  = (x_t - sigma_t eps) / gamma_t
        s_t     = eta sqrt(v)
        mu      = gamma_prev x0_hat + sqrt(sigma_prev^2 - s_t^2) eps
        x_prev  = mu + s_t z

    which keeps every marginal of the path for any eta in [0, 1] given exact predictions (Song et al.'s DDIM
    argument; docs/methods.md, "Flux"). eta = 0 is the Euler step of the flow ODE. Log-density as
    `ddim_step_with_logprob`'s."""
    if variance_noise is not None and generator is not None:
        raise ValueError("pass either generator or variance_noise, not both")
    eps, x_t = eps.float(), x_t.float()
    (g_t, s_t), (g_p, s_p) = (tuple(v.float() for v in c) for c in (coef_t, coef_prev))
    pred_original_sample = (x_t - s_t * eps) / g_t
    r = g_t / g_p
    variance = (s_p**2 * (s_t**2 - r**2 * s_p**2) / s_t**2).clamp(min=0)
    std = eta * variance**0.5
    mean = g_p * pred_original_sample + (s_p**2 - std**2).clamp(min=0) ** 0.5 * eps
    return _draw_and_score(mean, std, pred_original_sample, eta, prev_sample, generator, variance_noise)


def ddim_timesteps(scheduler, steps: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(timesteps, prev_timesteps) of a `steps`-step DDIM schedule, both (steps,) long tensors.

    Calls `scheduler.set_timesteps(steps)` (which sets the scheduler's own schedule, spacing and
    `steps_offset` included), then reproduces the rule of `DDIMScheduler.step`:

        prev_t = t - num_train_timesteps // num_inference_steps

    A negative prev_t marks the last step, where alpha_bar_prev = `final_alpha_cumprod(scheduler)`.
    For SD's config (1000 train steps, "leading" spacing, steps_offset 1) and 25 steps:
    t = 961, 921, ..., 1 and prev_t = 921, 881, ..., -39.
    """
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.to(dtype=torch.long)  # (steps,)
    prev = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps  # (steps,)
    if device is not None:
        timesteps, prev = timesteps.to(device), prev.to(device)
    return timesteps, prev


def final_alpha_cumprod(scheduler) -> float:
    """alpha_bar used after the last step: 1.0 if `set_alpha_to_one`, else alphas_cumprod[0] (diffusers' rule)."""
    return float(scheduler.final_alpha_cumprod)


def ddim_from(config):
    """A DDIMScheduler with the base's noise schedule. Where the base's config is silent (SDXL-style Euler
    configs may be), `clip_sample` and `set_alpha_to_one` take Stable Diffusion's values (False, False) rather
    than DDIMScheduler's own pixel-space defaults: clipping a latent x0 to [-1, 1] ruins every image."""
    from diffusers import DDIMScheduler

    sd_defaults = {k: False for k in ("clip_sample", "set_alpha_to_one") if k not in config}
    return DDIMScheduler.from_config(config, **sd_defaults)
