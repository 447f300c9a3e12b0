"""The noise-consistent target (torchrl_qsm.objectives.posterior): Monte-Carlo posterior noise against the exact
one-dimensional posterior, computed by quadrature on a fine grid of the box."""

import math

import pytest
import torch

from torchrl_qsm.diffusion.schedules import NoiseSchedule
from torchrl_qsm.objectives.posterior import posterior_candidates, posterior_spread, truncated_normal, weighted_noise

from _helpers import exact_posterior_noise

ALPHA_BARS = NoiseSchedule(5, "vp").alphas_cumprod.double()
BOX = (torch.tensor(-1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))


def two_peaks(a):  # alpha Q for the two-peak bandit at alpha 50
    return 50 * (torch.exp(-((a - 0.7) ** 2) / 0.02) + torch.exp(-((a + 0.7) ** 2) / 0.02))


def quadratic(a):  # alpha Q = -(alpha kappa / 2) (a - 0.3)^2, alpha kappa = 100
    return -50 * (a - 0.3) ** 2


def exact_noise(x_t, t, log_policy):
    return exact_posterior_noise(x_t, ALPHA_BARS[t], log_policy)


def estimate(x_t, t, log_policy, num_candidates):
    xi, a0 = posterior_candidates(x_t.unsqueeze(-1), ALPHA_BARS[t], *BOX, num_candidates)
    return weighted_noise(xi, log_policy(a0.squeeze(-1)))[0].squeeze(-1)


def noised_actions(t, n=1000):
    return ALPHA_BARS[t].sqrt() * (2 * torch.rand(n, dtype=torch.float64) - 1) + (
        1 - ALPHA_BARS[t]
    ).sqrt() * torch.randn(n, dtype=torch.float64)


@pytest.mark.parametrize("log_policy", [two_peaks, quadratic], ids=["two peaks", "quadratic"])
@pytest.mark.parametrize("t", [0, 2, 4])
def test_the_estimate_converges_to_the_exact_posterior_noise_as_the_candidates_grow(log_policy, t):
    # Measured (2000 noised actions): RMS error at t = 0, two peaks / quadratic: K 4 0.77 / 0.71, K 16 0.71 / 0.38,
    # K 64 0.55 / 0.18, K 256 0.28 / 0.10; at t = 4 (the noisiest) 0.05 / 0.02 already at K 4. The cleanest step
    # is the hard one: there the posterior is narrow and few candidates carry the weight.
    x_t = noised_actions(t)
    exact = exact_noise(x_t, t, log_policy)
    errors = {k: (estimate(x_t, t, log_policy, k) - exact).pow(2).mean().sqrt().item() for k in (4, 64, 1024)}

    assert errors[4] > errors[64] > errors[1024]
    assert errors[1024] < 0.2 * exact.pow(2).mean().sqrt().item() + 0.02


def test_the_estimate_is_unbiased_in_the_limit_the_regression_averages_to():
    # The eps-network regresses on the estimate: what it learns is the estimate's mean at each x_t. With 64
    # candidates, that mean is within a few hundredths of the exact noise at the noisiest and the cleanest step.
    for t in (0, 4):
        x_t = noised_actions(t, n=200)
        exact = exact_noise(x_t, t, quadratic)
        mean = torch.stack([estimate(x_t, t, quadratic, 64) for _ in range(64)]).mean(0)
        assert (mean - exact).abs().mean().item() < 0.06


def test_every_candidate_s_clean_action_lies_in_the_box_even_far_from_it():
    x_t = torch.tensor([[-4.0, 0.0, 4.0]], dtype=torch.float64).T.expand(3, 2)  # far outside, centre, far outside
    low, high = torch.tensor([-1.0, -0.5], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    for alpha_bar in ALPHA_BARS:
        xi, a0 = posterior_candidates(x_t, alpha_bar, low, high, 256)
        assert torch.isfinite(xi).all()
        assert ((a0 >= low) & (a0 <= high)).all()
        unclamped = (x_t - (1 - alpha_bar).sqrt() * xi) / alpha_bar.sqrt()
        assert ((unclamped >= low - 1e-9) & (unclamped <= high + 1e-9)).all()


@pytest.mark.parametrize("interval", [(0.5, 2.0), (-2.0, -0.5), (-0.3, 0.4), (6.0, 8.0), (-40.0, -38.0)])
def test_truncated_normal_draws_stay_in_their_interval_with_the_right_mean(interval):
    lower, upper = (torch.tensor([v], dtype=torch.float64) for v in interval)
    draws = truncated_normal(lower, upper, 20_000)
    assert ((draws >= lower) & (draws <= upper)).all()
    # the mean of N(0, 1) on [a, b]: (phi(a) - phi(b)) / (Phi(b) - Phi(a)); far out, about the nearer bound
    a, b = interval
    if abs(a) < 5:
        phi = [math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in (a, b)]
        cdf = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (a, b)]
        assert draws.mean().item() == pytest.approx((phi[0] - phi[1]) / (cdf[1] - cdf[0]), abs=0.01)
    else:
        nearer = a if a > 0 else b
        assert draws.mean().item() == pytest.approx(nearer + (1 / nearer), abs=0.05)


def test_the_posterior_spread_is_the_candidates_weighted_standard_deviation():
    a0 = torch.tensor([[-1.0], [1.0], [1.0], [-1.0]]).unsqueeze(-1)  # [K=4, B=1, A=1]
    uniform = torch.full((4, 1), 0.25)
    # weighted variance 1, times K / (K - 1) for four equal weights
    assert posterior_spread(a0, uniform).item() == pytest.approx(math.sqrt(4 / 3))
    one = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    assert posterior_spread(a0, one).item() < 1e-5  # one candidate carries it all: no spread measured
