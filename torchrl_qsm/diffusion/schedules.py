"""Discrete DDPM noise schedules.

A schedule with ``T`` denoising steps is a sequence of variances ``beta_t``, ``t = 0..T-1``
(index 0 is the cleanest step). Everything else follows from it:

- ``alpha_t = 1 - beta_t``
- ``alpha_bar_t = prod_{s <= t} alpha_s`` (``alphas_cumprod``): the forward process gives
  ``a_t = sqrt(alpha_bar_t) a_0 + sqrt(1 - alpha_bar_t) eps`` with ``eps ~ N(0, I)``;
- ``sigma_t = sqrt(1 - alpha_bar_t)``: the standard deviation of the noise in ``a_t``.
"""

from __future__ import annotations

import inspect
import math
from typing import get_args, Literal

import torch
from torch import nn

ScheduleName = Literal["vp", "cosine", "linear"]


def check_num_steps(num_steps: object) -> int:
    """``T``, the number of denoising steps, checked: an integer >= 1."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps (T) must be an integer >= 1, got {num_steps!r}.")
    return num_steps


def vp_betas(num_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """The variance-preserving schedule of the QSM authors' code (the default).

    With ``T = num_steps`` and ``t = 1..T``::

        beta_t = 1 - exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 t - 1) / T^2)

    i.e. the discretisation of the VP-SDE ``beta(s) = beta_min + s (beta_max - beta_min)``
    integrated over ``s in [(t - 1) / T, t / T]``.
    """
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    log_alpha = -beta_min / num_steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / num_steps**2
    return -torch.expm1(log_alpha)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule of Nichol & Dhariwal (2021).

    ``alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2) / cos^2(s / (1 + s) * pi / 2)`` on
    ``u = t / T``, and ``beta_t = 1 - alpha_bar(t / T) / alpha_bar((t - 1) / T)``, clipped to
    ``max_beta``.
    """
    u = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Linearly spaced ``beta_t`` from ``beta_start`` to ``beta_end`` (Ho et al., 2020).

    These are the authors' values; note that for a few steps they add little noise
    (``alpha_bar`` stays near 1), so the chain then starts far from its prior ``N(0, I)``.
    """
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


_BETAS = {"vp": vp_betas, "cosine": cosine_betas, "linear": linear_betas}


class NoiseSchedule(nn.Module):
    """The per-step coefficients of a ``T``-step DDPM, held as float32 buffers.

    Args:
        num_steps: ``T``, the number of denoising steps (``T >= 1``).
        kind: ``"vp"`` (default, the QSM authors' schedule), ``"cosine"`` or ``"linear"``.
        **options: the keyword arguments of the kind's betas function (e.g. ``beta_start`` and
            ``beta_end`` of :func:`linear_betas`).

    Buffers (each of shape ``[T]``): ``betas``, ``alphas``, ``alphas_cumprod`` (alpha_bar) and
    ``sigmas`` (``sqrt(1 - alpha_bar)``). The buffers stay float32 whatever dtype the module is
    cast to (the products of ``T`` factors lose their meaning in bf16). Loading a state dict whose
    betas differ from this schedule's is refused: ``step_coefficients`` are fixed at construction.

    ``step_coefficients`` holds, as Python floats, the three numbers of each ancestral DDPM step used
    by :func:`~torchrl_qsm.diffusion.sampler.ddpm_sample`::

        x_{t-1} = a_t x_t - b_t eps_hat + c_t z
        a_t = 1 / sqrt(alpha_t),  b_t = beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar_t)),
        c_t = sqrt(beta_t) for t > 0 and 0 at t = 0

    (the authors' variance ``beta_t``, not the posterior variance). Floats, not tensors: the schedule
    is fixed, and constants cost the chain no tensor op, no device transfer and no compile guard.
    """

    def __init__(self, num_steps: int, kind: ScheduleName = "vp", **options: float) -> None:
        super().__init__()
        check_num_steps(num_steps)
        if kind not in _BETAS:
            raise ValueError(f"Unknown noise schedule {kind!r}; expected one of {get_args(ScheduleName)}.")
        accepted = inspect.signature(_BETAS[kind]).parameters
        unknown = [name for name in options if name not in accepted or name == "num_steps"]
        if unknown:
            raise ValueError(f"The {kind!r} schedule takes no option {unknown}; it takes {list(accepted)[1:]}.")
        self.num_steps = num_steps
        self.kind = kind
        self.options = dict(options)  # with kind and num_steps, what rebuilds it (torchrl_qsm.actor_record)
        betas = _BETAS[kind](num_steps, **options)
        if not (torch.isfinite(betas).all() and (betas > 0).all() and (betas < 1).all()):
            raise ValueError(f"The {kind!r} schedule with {options} gives betas outside (0, 1): {betas.tolist()}.")
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        sigmas = (1 - alphas_cumprod).sqrt()
        for name, value in {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "sigmas": sigmas,
        }.items():
            self.register_buffer(name, value.to(torch.float32))
        noise = betas.sqrt()
        noise[0] = 0.0
        self.step_coefficients: list[tuple[float, float, float]] = [
            (a, b, c)
            for a, b, c in zip(alphas.rsqrt().tolist(), (betas / (alphas.sqrt() * sigmas)).tolist(), noise.tolist())
        ]

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # The chain's step coefficients are fixed at construction: loading another schedule's buffers
        # would make the training noise and the sampler disagree, so a different schedule is refused.
        loaded = state_dict.get(prefix + "betas")
        if loaded is not None and (
            loaded.shape != self.betas.shape or not torch.allclose(loaded.to(self.betas), self.betas)
        ):
            error_msgs.append(
                f"{prefix}betas: the saved noise schedule ({loaded.numel()} steps, betas {loaded.tolist()}) "
                "is not this "
                f"module's ({self.kind!r}, T={self.num_steps}, betas {self.betas.tolist()}); build the actor with the "
                "saved schedule and number of steps."
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _apply(self, fn, recurse=True):
        # Keep the schedule in float32 whatever dtype the module is cast to (the products of T
        # factors lose their meaning in half precision, and float64 buys nothing); devices still move.
        float32 = dict(self._buffers)
        super()._apply(fn, recurse=recurse)
        for name, buffer in float32.items():
            self._buffers[name] = buffer.to(self._buffers[name].device)
        return self

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, kind={self.kind!r}"
