"""The DDPM reverse chain (ancestral sampling) of the QSM authors' code."""
from __future__ import annotations

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
) -> torch.Tensor:
    """Runs ``x_T -> x_0`` through ``T = schedule.num_steps`` denoising steps.

    For ``t = T-1, ..., 0``::

        x <- (x - (1 - alpha_t) / sqrt(1 - alpha_bar_t) * eps_hat(x, t)) / sqrt(alpha_t)
             + temperature * sqrt(beta_t) * z_t       (no noise at t = 0)
        x <- clip(x, -clip, clip)                     (the authors clip to [-1, 1] after every step)

    with the coefficients of ``schedule.step_coefficients``. The loop runs over Python ints and
    floats only: ``torch.compile`` unrolls it with no graph break.

    Args:
        denoise: ``eps_hat(x, t)`` for an int ``t`` (see ``EpsilonNetwork.conditioned_on``).
        x_T: the starting latent, ``[*B, A]`` (``N(0, I)`` for a sample).
        noise: ``z_t`` of each step, ``[T, *B, A]``; ``None`` runs the noise-free chain.
        schedule: the noise schedule.
        clip: the per-step clipping box ``[-clip, clip]``; ``None`` disables it.
        temperature: the scale of the injected noise.
    """
    x = x_T
    for t in reversed(range(schedule.num_steps)):
        a, b, c = schedule.step_coefficients[t]
        x = torch.add(x * a, denoise(x, t), alpha=-b)
        if noise is not None and t > 0:
            x = x.add_(noise[t], alpha=c * temperature)
        if clip is not None:
            x = x.clamp_(-clip, clip)
    return x
