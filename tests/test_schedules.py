"""Noise schedules: the authors' vp formula, and the invariants of every schedule."""

import math

import pytest
import torch

from torchrl_qsm import NoiseSchedule


def test_vp_matches_the_authors_formula_for_T5():
    # the authors' vp_beta_schedule (jaxrl5/networks/diffusion.py):
    # beta_t = 1 - exp(-b_min/T - 0.5 (b_max - b_min)(2t - 1)/T^2), b_min 0.1, b_max 10, t = 1..T
    T = 5
    expected = [1 - math.exp(-0.1 / T - 0.5 * 9.9 * (2 * t - 1) / T**2) for t in range(1, T + 1)]
    schedule = NoiseSchedule(T, "vp")
    torch.testing.assert_close(schedule.betas, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    # the first and last values written out, so a change of formula shows here too
    assert schedule.betas[0].item() == pytest.approx(0.19587, abs=1e-5)
    assert schedule.betas[-1].item() == pytest.approx(0.83504, abs=1e-5)


@pytest.mark.parametrize("kind", ["vp", "cosine", "linear"])
@pytest.mark.parametrize("T", [1, 2, 5, 50])
def test_alpha_bar_decreases_inside_zero_one(kind, T):
    s = NoiseSchedule(T, kind)
    assert s.betas.shape == s.alphas_cumprod.shape == s.sigmas.shape == (T,)
    assert ((s.alphas_cumprod > 0) & (s.alphas_cumprod < 1)).all()
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    torch.testing.assert_close(s.sigmas, (1 - s.alphas_cumprod).sqrt())


def test_sampler_coefficients_follow_from_betas():
    s = NoiseSchedule(5)
    a, b, c = (torch.tensor(column) for column in zip(*s.step_coefficients))
    torch.testing.assert_close(a, 1 / s.alphas.sqrt())
    torch.testing.assert_close(b, (1 - s.alphas) / (s.alphas.sqrt() * (1 - s.alphas_cumprod).sqrt()))
    assert c[0] == 0  # no noise on the last (t = 0) step
    torch.testing.assert_close(c[1:], s.betas[1:].sqrt())


def test_vp_and_cosine_end_near_the_prior():
    # alpha_bar_{T-1} close to 0: the chain may start from N(0, I)
    assert NoiseSchedule(5, "vp").alphas_cumprod[-1] < 0.01
    assert NoiseSchedule(5, "cosine").alphas_cumprod[-1] < 0.01


def test_schedule_stays_float32_under_half_precision():
    s = NoiseSchedule(5).to(torch.bfloat16)
    assert s.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(s.alphas_cumprod, NoiseSchedule(5).alphas_cumprod)


@pytest.mark.parametrize("T", [0, -1, 2.5])
def test_invalid_number_of_steps_is_refused(T):
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule(T)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="Unknown noise schedule 'quadratic'"):
        NoiseSchedule(5, "quadratic")


def test_linear_schedule_takes_torchrl_s_beta_range():
    schedule = NoiseSchedule(4, "linear", beta_start=1e-3, beta_end=0.3)
    torch.testing.assert_close(schedule.betas, torch.linspace(1e-3, 0.3, 4))
    with pytest.raises(ValueError, match="takes no option \\['beta_start'\\]"):
        NoiseSchedule(4, "vp", beta_start=1e-3)
    with pytest.raises(ValueError, match="betas outside"):
        NoiseSchedule(4, "linear", beta_start=0.5, beta_end=1.5)


def test_loading_another_schedule_is_refused_because_the_sampler_would_disagree():
    # the chain's step coefficients are fixed at construction: vp buffers in a cosine schedule
    # would make the training noise (buffers) and the sampler (coefficients) disagree
    cosine = NoiseSchedule(5, "cosine")
    with pytest.raises(RuntimeError, match="the saved noise schedule .* is not this module's \\('cosine', T=5"):
        cosine.load_state_dict(NoiseSchedule(5, "vp").state_dict())
    with pytest.raises(RuntimeError, match="6 steps"):
        cosine.load_state_dict(NoiseSchedule(6, "cosine").state_dict())
    cosine.load_state_dict(NoiseSchedule(5, "cosine").state_dict())
