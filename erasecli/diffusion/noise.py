"""Forward noising and training targets, in one place: every method and attack noises and compares here.

docs/methods.md, "Notation". A schedule maps a timestep t to the coefficients of the forward process

    x_t = gamma_t x_0 + sigma_t eps,        eps ~ N(0, I)

DDPM / DDIM (schedule kind "ddpm"): gamma_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) from the
scheduler's `alphas_cumprod`; what the denoiser predicts is the scheduler's `prediction_type`: epsilon, or
v = gamma_t eps - sigma_t x_0 (v-prediction). Rectified flow ("flow", Flux / SD3): t in [0, 1], gamma_t = 1 - t,
sigma_t = t, and the denoiser predicts the velocity u = eps - x_0. The methods work in epsilon space whatever the
prediction: `eps_from` turns a prediction into the epsilon it implies, `target` is what a denoising loss
compares the prediction with.

Pinned against diffusers' `DDPMScheduler.add_noise` / `get_velocity` and
`FlowMatchEulerDiscreteScheduler.scale_noise` in tests/test_noise.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTIONS = ("epsilon", "v_prediction", "flow")


@dataclass(frozen=True)
class Schedule:
    """`alphas_cumprod` (T,) fp32 on the device for "ddpm"; `sigmas` (T,) in [0, 1] for "flow"."""

    kind: str  # "ddpm" or "flow"
    prediction: str  # one of PREDICTIONS
    alphas_cumprod: torch.Tensor | None = None
    sigmas: torch.Tensor | None = None

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod if self.kind == "ddpm" else self.sigmas)

    def coefficients(self, t) -> tuple:
        """(gamma_t, sigma_t), each (B, 1, 1, 1), for integer timesteps t (B,)."""
        if self.kind == "ddpm":
            ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            return ab.sqrt(), (1 - ab).sqrt()
        s = self.sigmas[t].view(-1, 1, 1, 1)
        return 1 - s, s

    def add_noise(self, x0, eps, t):
        """x_t = gamma_t x_0 + sigma_t eps."""
        gamma, sigma = self.coefficients(t)
        return gamma * x0 + sigma * eps

    def target(self, x0, eps, t):
        """What the denoiser is trained to output at (x_t, t): eps, v, or the flow velocity."""
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "v_prediction":
            gamma, sigma = self.coefficients(t)
            return gamma * eps - sigma * x0
        if self.prediction == "flow":
            return eps - x0
        raise ValueError(f"unknown prediction {self.prediction!r}; known: {', '.join(PREDICTIONS)}")

    def x0_from(self, pred, x_t, t):
        """The clean sample a prediction implies."""
        gamma, sigma = self.coefficients(t)
        if self.prediction == "epsilon":
            return (x_t - sigma * pred) / gamma
        if self.prediction == "v_prediction":
            return gamma * x_t - sigma * pred
        if self.prediction == "flow":
            return x_t - sigma * pred
        raise ValueError(f"unknown prediction {self.prediction!r}; known: {', '.join(PREDICTIONS)}")

    def eps_from(self, pred, x_t, t):
        """The noise a prediction implies (the identity for an epsilon-predicting model)."""
        if self.prediction == "epsilon":
            return pred
        gamma, sigma = self.coefficients(t)
        if self.prediction == "v_prediction":
            return sigma * x_t + gamma * pred
        if self.prediction == "flow":
            return x_t + gamma * pred
        raise ValueError(f"unknown prediction {self.prediction!r}; known: {', '.join(PREDICTIONS)}")

    def snr(self, t):
        """gamma_t^2 / sigma_t^2, (B,)."""
        gamma, sigma = self.coefficients(t)
        return (gamma**2 / sigma**2).flatten()


def schedule_of(scheduler, device=None) -> Schedule:
    """The Schedule of a diffusers scheduler: DDPM-family ones carry `alphas_cumprod`, flow-matching ones
    `sigmas` (FlowMatchEulerDiscreteScheduler: its training sigmas, t = sigma * num_train_timesteps)."""
    cfg = scheduler.config
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is not None:
        return Schedule("ddpm", cfg.get("prediction_type", "epsilon"), alphas_cumprod=ac.to(device, torch.float32))
    sig = getattr(scheduler, "sigmas", None)
    if sig is not None and "shift" in cfg:
        return Schedule("flow", "flow", sigmas=sig.to(device, torch.float32))
    raise ValueError(f"{type(scheduler).__name__} is neither a DDPM-family nor a flow-matching scheduler")
