"""The DDPM reverse chain (ancestral sampling) of the QSM authors' code."""

from __future__ import annotations

import math

import torch

from torchrl_qsm.diffusion.networks import Denoiser
from torchrl_qsm.diffusion.schedules import NoiseSchedule


def ddpm_sample(
    denoise: Denoiser,
    x_T: torch.Tensor,
    noise: torch.Tensor | None,
    schedule: NoiseSchedule,
    *,
    clip: float | None = 1.0,
    temperature: float = 1.0,
    chain: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Runs ``x_T -> x_0`` through ``T = schedule.num_steps`` denoising steps.

    For ``t = T-1, ..., 0``::

        x <- (x - (1 - alpha_t) / sqrt(1 - alpha_bar_t) * eps_hat(x, t)) / sqrt(alpha_t)
             + temperature * sqrt(beta_t) * z_t       (no noise at t = 0)
        x <- clip(x, -clip, clip)                     (the authors clip to [-1, 1] after every step)

    with the coefficients of ``schedule.step_coefficients``. The loop runs over Python ints and
    floats only: ``torch.compile`` unrolls it with no graph break.

    Args:
        denoise: ``eps_hat(x, t)`` for an int ``t`` (see ``EpsilonNetwork.denoiser``).
        x_T: the starting latent, ``[*B, A]`` (``N(0, I)`` for a sample).
        noise: ``z_t`` of each step, ``[T, *B, A]``; ``None`` runs the noise-free chain.
        schedule: the noise schedule.
        clip: the per-step clipping box ``[-clip, clip]``; ``None`` disables it.
        temperature: the scale of the injected noise.
        chain: if a list, the state of every step before clipping is appended to it
            (``x_{T-1}, ..., x_0``), for :func:`chain_log_prob`.
    """
    x = x_T
    for t in reversed(range(schedule.num_steps)):
        a, b, c = schedule.step_coefficients[t]
        x = torch.add(x * a, denoise(x, t), alpha=-b)
        if noise is not None and t > 0:
            x = x.add_(noise[t], alpha=c * temperature)
        if chain is not None:
            chain.append(x.clone())
        if clip is not None:
            x = x.clamp_(-clip, clip)
    return x


def chain_log_prob(
    denoise: Denoiser,
    x_T: torch.Tensor,
    chain: list[torch.Tensor],
    schedule: NoiseSchedule,
    *,
    clip: float | None = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``sum_t log pi_theta(x_{t-1} | x_t, s)`` of a chain recorded by :func:`ddpm_sample` (paper eq. 9).

    Each stochastic step is Gaussian: ``x_{t-1} ~ N(a_t x_t - b_t eps_theta(x_t, t), (c_t temperature)^2 I)``
    where ``x_t`` is the previous state after clipping, and ``x_{t-1}`` the recorded state before
    clipping, so the clipping (a fixed function of the recorded states) does not enter the density.
    The last step (``t = 0``) adds no noise: it has no density and is left out of the sum, so a
    score-function estimator built on this misses that step's dependence on ``theta``.

    Returns the log-probability of each chain, shape ``[*B]``, differentiable in ``denoise``'s parameters.
    """
    log_prob = torch.zeros(x_T.shape[:-1], device=x_T.device, dtype=x_T.dtype)
    x = x_T
    for state, t in zip(chain, reversed(range(schedule.num_steps))):
        a, b, c = schedule.step_coefficients[t]
        if t > 0:
            mean = torch.add(x * a, denoise(x, t), alpha=-b)
            std = c * temperature
            log_prob = log_prob - ((state - mean) ** 2).sum(-1) / (2 * std**2)
            log_prob = log_prob - state.shape[-1] * (math.log(std) + 0.5 * math.log(2 * math.pi))
        x = state.clamp(-clip, clip) if clip is not None else state
    return log_prob
