"""The noise module against diffusers' own schedulers: noising, targets, x0 and epsilon from a prediction."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from erasecli.diffusion.noise import Schedule, schedule_of


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_family_matches_diffusers(cls, prediction):
    sched = cls(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction)
    s = schedule_of(sched)
    assert (s.kind, s.prediction, s.num_timesteps) == ("ddpm", prediction, 1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = s.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, sched.add_noise(x0, eps, t), rtol=1e-5, atol=1e-5)
    want = eps if prediction == "epsilon" else sched.get_velocity(x0, eps, t)
    torch.testing.assert_close(s.target(x0, eps, t), want, rtol=1e-5, atol=1e-5)
    # a perfect prediction gives back the clean sample and the noise
    torch.testing.assert_close(s.x0_from(want, x_t, t), x0, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(s.eps_from(want, x_t, t), eps, rtol=1e-3, atol=1e-3)
    ab = sched.alphas_cumprod[t]
    torch.testing.assert_close(s.snr(t), ab / (1 - ab))


def test_epsilon_prediction_passes_through_unchanged():
    """The tiny bases predict epsilon: the methods' numbers must be the same tensors as before the module."""
    s = schedule_of(DDPMScheduler(num_train_timesteps=1000))
    pred = torch.randn(2, 4, 8, 8)
    assert s.eps_from(pred, torch.randn_like(pred), torch.tensor([3, 7])) is pred


def test_flow_matching_matches_scale_noise():
    """Timestep t is the noise level (t + 1) / T, larger t noisier, whatever the scheduler's sampling shift or
    the timesteps its last sampling run set."""
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    s = schedule_of(sched)
    assert (s.kind, s.prediction) == ("flow", "flow")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    k = torch.tensor([0, 400, 999])
    want = sched.scale_noise(x0, sched.timesteps[999 - k], eps)  # the scheduler's timesteps run from noisy to clean
    torch.testing.assert_close(s.add_noise(x0, eps, k), want, rtol=1e-5, atol=1e-5)
    u = s.target(x0, eps, k)
    torch.testing.assert_close(u, eps - x0)
    torch.testing.assert_close(s.x0_from(u, want, k), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.eps_from(u, want, k), eps, rtol=1e-4, atol=1e-4)
    shifted = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    shifted.set_timesteps(4)
    torch.testing.assert_close(schedule_of(shifted).sigmas, s.sigmas)


def test_unknown_prediction_is_refused():
    s = Schedule("ddpm", "sample", alphas_cumprod=torch.linspace(0.99, 0.01, 10))
    with pytest.raises(ValueError, match="unknown prediction"):
        s.target(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([0]))


def test_the_epsilon_space_steps_are_the_flow_odes_euler_steps():
    """EpsSteps (esd's partial sampler on a flow base): the DDIM update in epsilon space is x + (s' - s) u."""
    from erasecli.diffusion.noise import EpsSteps

    s = schedule_of(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0))
    steps = EpsSteps(s, 5)
    assert steps.timesteps.tolist() == [998, 748, 499, 250, 0]
    g = torch.Generator().manual_seed(2)
    x, u = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for i, t in enumerate(steps.timesteps[:-1]):
        tt = t.expand(2)
        nxt = steps.step(s.eps_from(u, x, tt), t, x).prev_sample
        level, level_next = s.sigmas[t], s.sigmas[steps.timesteps[i + 1]]
        torch.testing.assert_close(nxt, x + (level_next - level) * u, rtol=1e-4, atol=1e-4)
