"""erasecli.rl: the shared RL pieces, checked against numbers worked out by hand (and torch.distributions)."""

import math

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, SigmoidTransform

from erasecli.rl import (gae, gaussian_entropy, gaussian_log_prob, kl_to_standard_normal, normalize, ppo_clip_loss,
                         squash, squashed_log_prob, unsquash)

T = torch.tensor


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=tol, rtol=0)


# --- squash / unsquash -------------------------------------------------------------------------------------------

def test_squash_midpoint_and_bounds():
    # sigmoid(0) = 0.5 -> 0.05 + 0.9 * 0.5 = 0.5
    close(squash(T(0.0), 0.05, 0.95), 0.5)
    # sigmoid(+-40) is 1 / 0 to float precision -> the bounds
    close(squash(T([-40.0, 40.0]), 0.05, 0.95), [0.05, 0.95])


def test_unsquash_round_trips_and_is_finite_at_bounds():
    z = torch.linspace(-6, 6, 25, dtype=torch.float64)
    close(unsquash(squash(z, 0.05, 0.95), 0.05, 0.95), z, tol=1e-9)
    # lam = 0.5 in (0, 1) is fraction 0.5 -> logit 0
    close(unsquash(T(0.5), 0.0, 1.0), 0.0)
    # at the bounds the fraction is clamped to 1e-6 / 1 - 1e-6: z = -+log((1 - 1e-6) / 1e-6) ~ -+13.8155
    edge = unsquash(T([0.05, 0.95], dtype=torch.float64), 0.05, 0.95)
    assert torch.isfinite(edge).all()
    close(edge, [-13.815510, 13.815510])


# --- densities ---------------------------------------------------------------------------------------------------

def test_gaussian_log_prob_by_hand():
    # N(0; 0, 1): -0.5 * log(2 pi) = -0.5 * 1.837877 = -0.918939
    close(gaussian_log_prob(T(0.0), T(0.0), T(0.0)), -0.918939)
    # N(3; 1, 2^2): -0.5 * (2/2)^2 - log 2 - 0.918939 = -0.5 - 0.693147 - 0.918939 = -2.112086
    close(gaussian_log_prob(T(3.0), T(1.0), T(math.log(2.0))), -2.112086)


def test_squashed_log_prob_by_hand():
    # z = 0, N(0,1), lo=0, hi=1: dlam/dz = 1 * 0.5 * 0.5 = 0.25 -> -0.918939 - log 0.25 = -0.918939 + 1.386294
    close(squashed_log_prob(T(0.0), T(0.0), T(0.0), 0.0, 1.0), 0.467355)
    # same with lo=0.05, hi=0.95: dlam/dz = 0.9 * 0.25 = 0.225, -log 0.225 = 1.491655 -> 0.572716
    close(squashed_log_prob(T(0.0), T(0.0), T(0.0), 0.05, 0.95), 0.572716)


def test_squashed_log_prob_integrates_to_one_over_lam():
    lo, hi = 0.05, 0.95
    z = torch.linspace(-40, 40, 200_001, dtype=torch.float64)
    lam = squash(z, lo, hi)  # increasing in z, so a valid grid over (lo, hi)
    for mu, log_std in [(0.0, 0.0), (1.3, -0.7), (-2.0, 0.5)]:
        dens = torch.exp(squashed_log_prob(z, T(mu, dtype=torch.float64), T(log_std, dtype=torch.float64), lo, hi))
        close(torch.trapezoid(dens, lam), 1.0, tol=1e-4)


def test_squashed_log_prob_matches_torch_distributions():
    lo, hi = 0.05, 0.95
    mu, log_std = T([0.0, 0.7, -1.2], dtype=torch.float64), T([0.0, -0.5, 0.4], dtype=torch.float64)
    z = T([0.3, -1.5, 2.0], dtype=torch.float64)
    dist = TransformedDistribution(Normal(mu, log_std.exp()), [SigmoidTransform(), AffineTransform(lo, hi - lo)])
    close(squashed_log_prob(z, mu, log_std, lo, hi), dist.log_prob(squash(z, lo, hi)), tol=1e-8)


def test_gaussian_entropy_by_hand():
    # 0.5 * log(2 pi e) = 0.5 * (1.837877 + 1) = 1.418939; log_std = log 2 adds 0.693147 -> 2.112086
    close(gaussian_entropy(T([0.0, math.log(2.0)])), [1.418939, 2.112086])


def test_kl_to_standard_normal_by_hand():
    close(kl_to_standard_normal(T(0.0), T(0.0)), 0.0)  # same distribution
    close(kl_to_standard_normal(T(1.0), T(0.0)), 0.5)  # 0.5 * (1 + 1 - 1) - 0
    # sigma = 2: 0.5 * (4 + 0 - 1) - log 2 = 1.5 - 0.693147
    close(kl_to_standard_normal(T(0.0), T(math.log(2.0))), 0.806853)


# --- GAE -----------------------------------------------------------------------------------------------------------

R, V, LAST = T([1.0, 0.0, 2.0]), T([0.5, 0.5, 0.5]), 1.0


def test_gae_three_steps_by_hand():
    # gamma = 0.9, lam = 0.8, gamma * lam = 0.72
    # delta_2 = 2 + 0.9 * 1.0 - 0.5 = 2.4       A_2 = 2.4
    # delta_1 = 0 + 0.9 * 0.5 - 0.5 = -0.05     A_1 = -0.05 + 0.72 * 2.4   = 1.678
    # delta_0 = 1 + 0.9 * 0.5 - 0.5 = 0.95      A_0 = 0.95  + 0.72 * 1.678 = 2.15816
    # returns = A + 0.5
    adv, ret = gae(R, V, T(LAST), 0.9, 0.8)
    close(adv, [2.15816, 1.678, 2.4])
    close(ret, [2.65816, 2.178, 2.9])
    adv_f, _ = gae(R, V, LAST, 0.9, 0.8)  # a float last_value works the same
    close(adv_f, adv)


def test_gae_done_stops_bootstrap():
    # dones = [0, 1, 0]: the episode ends after step 1
    # delta_2 = 2.4                        A_2 = 2.4
    # delta_1 = 0 + 0 - 0.5 = -0.5         A_1 = -0.5 (A_2 not carried across the end)
    # delta_0 = 0.95                       A_0 = 0.95 + 0.72 * (-0.5) = 0.59
    adv, ret = gae(R, V, LAST, 0.9, 0.8, dones=T([0.0, 1.0, 0.0]))
    close(adv, [0.59, -0.5, 2.4])
    close(ret, [1.09, 0.0, 2.9])


def test_gae_lam_one_is_monte_carlo():
    # G_2 = 2 + 0.9 * 1.0 = 2.9, G_1 = 0 + 0.9 * 2.9 = 2.61, G_0 = 1 + 0.9 * 2.61 = 3.349; A = G - 0.5
    adv, ret = gae(R, V, LAST, 0.9, 1.0)
    close(adv, [2.849, 2.11, 2.4])
    close(ret, [3.349, 2.61, 2.9])


def test_gae_lam_zero_is_td_residual():
    adv, _ = gae(R, V, LAST, 0.9, 0.0)
    close(adv, [0.95, -0.05, 2.4])  # the deltas above


def test_gae_needs_no_grad():
    values = V.clone().requires_grad_(True)
    adv, ret = gae(R, values, LAST, 0.9, 0.8)
    assert not adv.requires_grad and not ret.requires_grad


# --- PPO -----------------------------------------------------------------------------------------------------------

def test_ppo_inside_clip_range_is_plain_surrogate():
    # ratios 1.1 and 0.9 lie in [0.8, 1.2]: loss = mean(-A * ratio) = (-2 * 1.1 + 1 * 0.9) / 2 = -0.65
    logp_old = T([0.0, 0.0])
    logp_new = torch.log(T([1.1, 0.9]))
    close(ppo_clip_loss(logp_new, logp_old, T([2.0, -1.0]), 0.2), -0.65)


def test_ppo_positive_advantage_clips_at_one_plus_clip():
    # A = 2, ratio 1.5: -2 * 1.5 = -3.0 vs -2 * 1.2 = -2.4 -> max = -2.4
    close(ppo_clip_loss(torch.log(T([1.5])), T([0.0]), T([2.0]), 0.2), -2.4)


def test_ppo_negative_advantage_clips_at_one_minus_clip():
    # A = -2, ratio 0.5: -A * 0.5 = 1.0 vs -A * 0.8 = 1.6 -> max = 1.6
    close(ppo_clip_loss(torch.log(T([0.5])), T([0.0]), T([-2.0]), 0.2), 1.6)


def test_ppo_clipped_element_has_zero_grad():
    # element 0: A = 2, ratio 1.5 (clipped branch, constant); element 1: A = 1, ratio 1.0 (unclipped)
    # d/d logp_new of mean(-A * exp(logp_new - logp_old)) for element 1 = -1 * 1.0 / 2 = -0.5
    logp_new = torch.log(T([1.5, 1.0])).requires_grad_(True)
    ppo_clip_loss(logp_new, T([0.0, 0.0]), T([2.0, 1.0]), 0.2).backward()
    close(logp_new.grad, [0.0, -0.5])


# --- normalize -----------------------------------------------------------------------------------------------------

def test_normalize_mean_zero_std_one():
    # [1, 2, 3]: mean 2, population std sqrt(2/3) = 0.816497 -> [-1.224745, 0, 1.224745]
    close(normalize(T([1.0, 2.0, 3.0])), [-1.224745, 0.0, 1.224745])
    y = normalize(torch.randn(50, generator=torch.Generator().manual_seed(0)))
    close(y.mean(), 0.0)
    close(y.std(unbiased=False), 1.0, tol=1e-4)


@pytest.mark.parametrize("x", [T([3.7]), T([2.0, 2.0, 2.0])])
def test_normalize_degenerate_gives_zeros_not_nan(x):
    close(normalize(x), torch.zeros_like(x))
