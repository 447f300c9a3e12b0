"""The DDPM reverse chain: with the exact eps of a known distribution it must return that distribution."""

import pytest
import torch

from torchrl_qsm import ddpm_sample, NoiseSchedule
from torchrl_qsm.diffusion.sampler import chain_log_prob


def exact_eps_of_gaussian(schedule, mean, std):
    """eps*(x, t) = sqrt(1 - ab) (x - sqrt(ab) mean) / (ab std^2 + 1 - ab) for data N(mean, std^2)."""

    def denoise(x, t):
        ab = schedule.alphas_cumprod[t]
        return (1 - ab).sqrt() * (x - ab.sqrt() * mean) / (ab * std**2 + 1 - ab)

    return denoise


@pytest.mark.parametrize("kind", ["vp", "cosine"])
def test_many_step_chain_recovers_the_data_distribution(kind):
    # A wrong coefficient anywhere in the schedule or the step moves the mean or the spread.
    T, n, mean, std = 100, 40_000, 0.3, 0.1
    schedule = NoiseSchedule(T, kind)
    x = ddpm_sample(exact_eps_of_gaussian(schedule, mean, std), torch.randn(n, 1), torch.randn(T, n, 1), schedule)
    assert x.mean().item() == pytest.approx(mean, abs=0.005)
    assert x.std().item() == pytest.approx(std, abs=0.01)


def test_five_step_vp_chain_is_centred_but_under_dispersed():
    # The authors' T = 5 chain with variance beta_t finds the mean but shrinks the spread (measured:
    # std 0.026 for data std 0.1). Pinned so that a change of sampler shows up.
    schedule = NoiseSchedule(5, "vp")
    n = 40_000
    x = ddpm_sample(exact_eps_of_gaussian(schedule, 0.3, 0.1), torch.randn(n, 1), torch.randn(5, n, 1), schedule)
    assert x.mean().item() == pytest.approx(0.3, abs=0.01)
    assert 0.015 < x.std().item() < 0.04


def test_every_step_is_clipped_to_the_box():
    schedule = NoiseSchedule(5)
    seen = []

    def denoise(x, t):
        seen.append(x.abs().max().item())
        return -10 * torch.ones_like(x)  # pushes far outside the box

    x = ddpm_sample(denoise, torch.zeros(3, 2), torch.zeros(5, 3, 2), schedule, clip=1.0)
    assert x.abs().max() <= 1.0 and max(seen[1:]) <= 1.0
    unclipped = ddpm_sample(denoise, torch.zeros(3, 2), torch.zeros(5, 3, 2), schedule, clip=None)
    assert unclipped.abs().max() > 1.0


def test_zero_noise_gives_the_same_chain_twice():
    schedule = NoiseSchedule(5)
    denoise = lambda x, t: 0.5 * x  # noqa: E731
    x_T = torch.randn(4, 2)
    zeros = torch.zeros(5, 4, 2)
    torch.testing.assert_close(ddpm_sample(denoise, x_T, zeros, schedule), ddpm_sample(denoise, x_T, zeros, schedule))


def test_no_noise_equals_zero_noise_and_temperature_scales_the_noise():
    schedule = NoiseSchedule(5)
    denoise = lambda x, t: 0.5 * x  # noqa: E731
    x_T, z = torch.randn(4, 2), torch.randn(5, 4, 2)
    torch.testing.assert_close(ddpm_sample(denoise, x_T, None, schedule), ddpm_sample(denoise, x_T, 0 * z, schedule))
    torch.testing.assert_close(
        ddpm_sample(denoise, x_T, z, schedule, temperature=0.5, clip=None),
        ddpm_sample(denoise, x_T, 0.5 * z, schedule, clip=None),
    )


def test_chain_log_prob_is_the_sum_of_the_gaussian_steps_computed_directly():
    # paper eq. 9: log pi(chain) = sum over stochastic steps of log N(x_{t-1}; mean_theta(x_t, t), sigma_t^2 I)
    T, temperature = 5, 0.7
    schedule = NoiseSchedule(T)
    weight = torch.randn(2, 2) * 0.5
    denoise = lambda x, t: x @ weight + 0.1 * t  # noqa: E731
    x_T, z = torch.randn(6, 2), torch.randn(T, 6, 2)
    chain: list = []
    x_0 = ddpm_sample(denoise, x_T, z, schedule, temperature=temperature, chain=chain)
    assert len(chain) == T
    torch.testing.assert_close(x_0, chain[-1].clamp(-1, 1))

    expected = torch.zeros(6)
    x = x_T
    for state, t in zip(chain, reversed(range(T))):
        alpha, alpha_bar, beta = schedule.alphas[t], schedule.alphas_cumprod[t], schedule.betas[t]
        if t > 0:  # the last step adds no noise and has no density
            mean = (x - (1 - alpha) / (1 - alpha_bar).sqrt() * denoise(x, t)) / alpha.sqrt()
            expected += torch.distributions.Normal(mean, temperature * beta.sqrt()).log_prob(state).sum(-1)
        x = state.clamp(-1, 1)
    actual = chain_log_prob(denoise, x_T, chain, schedule, temperature=temperature)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)
