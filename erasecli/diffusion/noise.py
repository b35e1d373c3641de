"""Forward noising and training targets, in one place: every method and attack noises and compares here.

docs/methods.md, "Notation". A schedule maps a timestep t to the coefficients of the forward process

    x_t = gamma_t x_0 + sigma_t eps,        eps ~ N(0, I)

DDPM / DDIM (schedule kind "ddpm"): gamma_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) from the
scheduler's `alphas_cumprod`; what the denoiser predicts is the scheduler's `prediction_type`: epsilon, or
v = gamma_t eps - sigma_t x_0 (v-prediction). Rectified flow ("flow", Flux / SD3): the integer timestep t in
[0, T) stands for the noise level s_t = (t + 1) / T (T = the scheduler's num_train_timesteps), gamma_t = 1 - s_t,
sigma_t = s_t, and the denoiser predicts the velocity u = eps - x_0 at `timestep = s_t` (`flow_level`). As for
DDPM, a larger t is a noisier x_t, and a uniform t is a uniform noise level: the scheduler's `shift` spaces the
sampler's steps and is not applied here. The methods work in epsilon space whatever the
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
    """`alphas_cumprod` (T,) fp32 on the device for "ddpm"; `sigmas` (T,) in (0, 1], ascending, for "flow"."""

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

    def loss_weight(self, t):
        """(B,) weights that turn a squared error of epsilons into the squared error of the predictions the model
        makes, or None (DDPM bases: the methods' losses are epsilon losses as their papers write them). On a
        flow schedule eps_from(u) = x_t + (1 - s) u, so an epsilon error is (1 - s)^2 times the velocity error:
        the weight 1 / (1 - s)^2 (capped at T^2, where s = 1 and every epsilon error is 0) makes it the
        flow-matching loss."""
        if self.kind != "flow":
            return None
        return (1 - self.sigmas[t]).clamp_min(1.0 / self.num_timesteps).pow(-2)

    def snr(self, t):
        """gamma_t^2 / sigma_t^2, (B,)."""
        gamma, sigma = self.coefficients(t)
        return (gamma**2 / sigma**2).flatten()


def flow_level(t, num_timesteps: int = 1000):
    """The noise level s_t = (t + 1) / T of integer timesteps t (B,): what a flow model is told as `timestep`."""
    return (t.float() + 1) / num_timesteps


def schedule_of(scheduler, device=None) -> Schedule:
    """The Schedule of a diffusers scheduler: DDPM-family ones carry `alphas_cumprod`; a flow-matching one
    (FlowMatchEulerDiscreteScheduler, with its `shift`) gets the levels (t + 1) / T of `flow_level`, from its
    config (its `sigmas` attribute is the last sampling run's)."""
    cfg = scheduler.config
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is not None:
        return Schedule("ddpm", cfg.get("prediction_type", "epsilon"), alphas_cumprod=ac.to(device, torch.float32))
    if "shift" in cfg and "num_train_timesteps" in cfg:
        T = int(cfg["num_train_timesteps"])
        return Schedule("flow", "flow", sigmas=flow_level(torch.arange(T), T).to(device))
    raise ValueError(f"{type(scheduler).__name__} is neither a DDPM-family nor a flow-matching scheduler")


class EpsSteps:
    """Deterministic sampling in epsilon space over `steps` timesteps, noisy to clean, for any Schedule: the DDIM
    (eta 0) update x_prev = gamma_prev x0_hat + sigma_prev eps, which on a flow schedule is exactly the Euler step
    of the flow ODE. The interface is the diffusers schedulers' (`timesteps`, `init_noise_sigma`,
    `step(eps, t, x).prev_sample`). A flow schedule starts at t = T - 2 (s = 1 - 1/T): at s = 1 an epsilon
    prediction says nothing of x_0."""

    init_noise_sigma = 1.0

    def __init__(self, schedule: Schedule, steps: int, device=None):
        top = schedule.num_timesteps - (2 if schedule.kind == "flow" else 1)
        self.schedule = schedule
        self.timesteps = torch.linspace(top, 0, steps).round().long().to(device)

    def step(self, eps, t, x):
        from types import SimpleNamespace

        t = torch.as_tensor(t, device=x.device).reshape(-1)[:1]
        i = int((self.timesteps == t).nonzero()[0, 0])
        gamma, sigma = self.schedule.coefficients(t)
        x0 = (x - sigma * eps) / gamma
        if i + 1 == len(self.timesteps):
            return SimpleNamespace(prev_sample=x0)
        gamma_p, sigma_p = self.schedule.coefficients(self.timesteps[i + 1 : i + 2])
        return SimpleNamespace(prev_sample=gamma_p * x0 + sigma_p * eps)
