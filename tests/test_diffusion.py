"""DDIM step with log-probabilities against diffusers' DDIMScheduler (SD's config), on tiny random tensors."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from erasecli.diffusion.ddim import ddim_step_with_logprob, ddim_timesteps, final_alpha_cumprod

SHAPE = (2, 4, 8, 8)  # (B, C, H, W)
STEPS = 25


def _sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )


@pytest.fixture
def sched():
    s = _sd_scheduler()
    s.set_timesteps(STEPS)
    return s


def _tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(SHAPE, generator=g)  # (B, C, H, W)
    eps = torch.randn(SHAPE, generator=g)  # (B, C, H, W)
    noise = torch.randn(SHAPE, generator=g)  # (B, C, H, W)
    return x_t, eps, noise


def _ours(sched, eps, i, x_t, eta, **kw):
    ts, prev = ddim_timesteps(sched, STEPS)
    return ddim_step_with_logprob(
        eps, int(ts[i]), int(prev[i]), x_t, sched.alphas_cumprod, final_alpha_cumprod(sched), eta, **kw
    )


STEP_INDICES = [0, 1, 12, STEPS - 2, STEPS - 1]  # first and last step included


def test_timesteps_follow_diffusers_rule(sched):
    ts, prev = ddim_timesteps(sched, STEPS)
    assert torch.equal(ts, sched.timesteps.long())
    assert ts[0].item() == 961 and ts[-1].item() == 1
    assert torch.equal(prev[:-1], ts[1:])
    assert prev[-1].item() == 1 - 1000 // STEPS < 0
    assert final_alpha_cumprod(sched) == pytest.approx(float(sched.alphas_cumprod[0]))
    one = DDIMScheduler(set_alpha_to_one=True)
    assert final_alpha_cumprod(one) == 1.0


@pytest.mark.parametrize("i", STEP_INDICES)
def test_eta0_matches_diffusers(sched, i):
    x_t, eps, _ = _tensors(i)
    ours = _ours(sched, eps, i, x_t, 0.0)
    ref = sched.step(eps, int(sched.timesteps[i]), x_t, eta=0.0)
    assert torch.allclose(ours.prev_sample, ref.prev_sample, atol=1e-5)
    assert torch.allclose(ours.pred_original_sample, ref.pred_original_sample, atol=1e-5)
    assert torch.equal(ours.prev_sample, ours.mean)
    assert torch.equal(ours.log_prob, torch.zeros(SHAPE[0]))


@pytest.mark.parametrize("i", STEP_INDICES)
def test_eta1_with_same_noise_matches_diffusers(sched, i):
    x_t, eps, noise = _tensors(100 + i)
    ours = _ours(sched, eps, i, x_t, 1.0, variance_noise=noise)
    ref = sched.step(eps, int(sched.timesteps[i]), x_t, eta=1.0, variance_noise=noise)
    assert torch.allclose(ours.prev_sample, ref.prev_sample, atol=1e-5)
    assert ours.log_prob.shape == (SHAPE[0],) and ours.std.shape == (SHAPE[0], 1, 1, 1)
    assert ours.prev_sample.dtype == ours.log_prob.dtype == torch.float32
    assert torch.isfinite(ours.log_prob).all()


def test_log_prob_matches_torch_normal_mean_over_dims(sched):
    x_t, eps, _ = _tensors(7)
    ours = _ours(sched, eps, 5, x_t, 1.0, generator=torch.Generator().manual_seed(3))
    direct = torch.distributions.Normal(ours.mean, ours.std).log_prob(ours.prev_sample).mean(dim=(1, 2, 3))
    assert torch.allclose(ours.log_prob, direct, atol=1e-5)


def test_generator_reproducible_and_exclusive_with_noise(sched):
    x_t, eps, noise = _tensors(8)
    a = _ours(sched, eps, 3, x_t, 1.0, generator=torch.Generator().manual_seed(11))
    b = _ours(sched, eps, 3, x_t, 1.0, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.prev_sample, b.prev_sample)
    with pytest.raises(ValueError):
        _ours(sched, eps, 3, x_t, 1.0, generator=torch.Generator(), variance_noise=noise)


def test_log_prob_hand_case():
    # One element, one train step: ab_t = 0.5, ab_prev = final = 0.8, eta = 1.
    # variance = (0.2 / 0.5) * (1 - 0.5 / 0.8) = 0.15, std = sqrt(0.15); at prev_sample == mean,
    # log_prob = -log(std) - 0.5 log(2 pi).
    ac = torch.tensor([0.5])
    x_t = torch.tensor([[[[0.3]]]])  # (1, 1, 1, 1)
    eps = torch.tensor([[[[-0.7]]]])  # (1, 1, 1, 1)
    first = ddim_step_with_logprob(eps, 0, -1, x_t, ac, 0.8, 1.0, variance_noise=torch.zeros(1, 1, 1, 1))
    std = math.sqrt(0.15)
    assert first.std.item() == pytest.approx(std, rel=1e-6)
    x0 = (0.3 - math.sqrt(0.5) * -0.7) / math.sqrt(0.5)
    mean = math.sqrt(0.8) * x0 + math.sqrt(1 - 0.8 - 0.15) * -0.7
    assert first.mean.item() == pytest.approx(mean, rel=1e-5)
    assert first.prev_sample.item() == pytest.approx(mean, rel=1e-5)
    assert first.log_prob.item() == pytest.approx(-math.log(std) - 0.5 * math.log(2 * math.pi), rel=1e-5)


def test_log_prob_higher_near_mean_than_three_std_away(sched):
    x_t, eps, _ = _tensors(9)
    base = _ours(sched, eps, 4, x_t, 1.0, variance_noise=torch.zeros(SHAPE))
    near = _ours(sched, eps, 4, x_t, 1.0, prev_sample=base.mean + 0.1 * base.std)
    far = _ours(sched, eps, 4, x_t, 1.0, prev_sample=base.mean + 3 * base.std)
    assert (near.log_prob > far.log_prob).all()
    # exactly: the mean over dims of -z^2 / 2 differs by (9 - 0.01) / 2
    assert torch.allclose(near.log_prob - far.log_prob, torch.full((SHAPE[0],), (9 - 0.01) / 2), atol=1e-4)


def test_per_element_timesteps_match_separate_calls(sched):
    x_t, eps, noise = _tensors(10)
    ts, prev = ddim_timesteps(sched, STEPS)
    idx = torch.tensor([2, STEPS - 1])  # second element takes the last step (prev < 0)
    ac, fin = sched.alphas_cumprod, final_alpha_cumprod(sched)
    joint = ddim_step_with_logprob(eps, ts[idx], prev[idx], x_t, ac, fin, 1.0, variance_noise=noise)
    for b in range(2):
        one = ddim_step_with_logprob(
            eps[b : b + 1], int(ts[idx[b]]), int(prev[idx[b]]), x_t[b : b + 1], ac, fin, 1.0,
            variance_noise=noise[b : b + 1],
        )
        for name in ("prev_sample", "log_prob", "mean", "std", "pred_original_sample"):
            assert torch.allclose(getattr(joint, name)[b : b + 1], getattr(one, name), atol=1e-6), name


def test_log_prob_differentiable_in_eps(sched):
    x_t, eps, noise = _tensors(12)
    eps = eps.clone().requires_grad_(True)
    old = _ours(sched, eps.detach(), 6, x_t, 1.0, variance_noise=noise)
    new = _ours(sched, eps, 6, x_t, 1.0, prev_sample=old.prev_sample)
    assert torch.allclose(new.log_prob, old.log_prob, atol=1e-6)
    new.log_prob.sum().backward()
    assert eps.grad is not None and torch.isfinite(eps.grad).all()


def test_eta0_gives_zero_log_prob(sched):
    x_t, eps, _ = _tensors(13)
    out = _ours(sched, eps, 0, x_t, 0.0, prev_sample=torch.randn(SHAPE))
    assert torch.equal(out.log_prob, torch.zeros(SHAPE[0]))
    assert torch.equal(out.std, torch.zeros(SHAPE[0], 1, 1, 1))


@pytest.mark.parametrize("i", [0, 12, STEPS - 2])
def test_the_path_step_on_a_variance_preserving_path_is_the_ddim_step(sched, i):
    """path_step_with_logprob with gamma = sqrt(ab), sigma = sqrt(1 - ab) is ddim_step_with_logprob."""
    from erasecli.diffusion.ddim import path_step_with_logprob

    x_t, eps, noise = _tensors(i)
    ts, prev = ddim_timesteps(sched, STEPS)
    ab = sched.alphas_cumprod
    coef = [(ab[int(t)].sqrt().expand(2, 1, 1, 1), (1 - ab[int(t)]).sqrt().expand(2, 1, 1, 1))
            for t in (ts[i], prev[i])]
    want = _ours(sched, eps, i, x_t, 1.0, variance_noise=noise)
    got = path_step_with_logprob(eps, x_t, coef[0], coef[1], 1.0, variance_noise=noise)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_path_step_on_a_flow_path_keeps_its_marginals_and_is_euler_at_eta_0():
    """On the straight path x_s = (1 - s) x_0 + s eps with the exact noise prediction of a point mass x_0, ten
    stochastic steps (eta 1) from pure noise leave x at each level distributed as the path says (mean (1 - s) x_0,
    std s); at eta 0 a step is the flow ODE's Euler step x + (s_prev - s) v."""
    from erasecli.diffusion.ddim import path_step_with_logprob

    x0 = torch.full((1, 1, 200, 200), 0.7)
    levels = torch.linspace(0.999, 0.001, 11)
    coef = [(torch.tensor(1 - s).view(1, 1, 1, 1), torch.tensor(s).view(1, 1, 1, 1)) for s in levels.tolist()]
    g = torch.Generator().manual_seed(0)
    x = (1 - levels[0]) * x0 + levels[0] * torch.randn(x0.shape, generator=g)
    for k in range(10):
        eps = (x - coef[k][0] * x0) / coef[k][1]  # the exact prediction
        x = path_step_with_logprob(eps, x, coef[k], coef[k + 1], 1.0, generator=g).prev_sample
        s = float(levels[k + 1])
        assert abs(float((x - (1 - s) * x0).mean())) < 0.01 + 0.02 * s
        assert abs(float((x - (1 - s) * x0).std()) - s) < 0.02 * s + 1e-4
    x_t, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    s_t, s_p = 0.6, 0.45
    eps = x_t + (1 - s_t) * v  # the noise a velocity implies
    out = path_step_with_logprob(eps, x_t, coef_t=(torch.tensor(1 - s_t), torch.tensor(s_t)),
                                 coef_prev=(torch.tensor(1 - s_p), torch.tensor(s_p)), eta=0.0)
    torch.testing.assert_close(out.prev_sample, x_t + (s_p - s_t) * v, atol=1e-5, rtol=1e-5)
