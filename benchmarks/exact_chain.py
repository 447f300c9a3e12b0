"""The ceiling of the noise-consistent target: what a perfect eps-network gives through the library's sampler.

    python benchmarks/exact_chain.py

For 1-D policies ``pi(a) ~ exp(log_pi(a))`` on ``[-1, 1]``, the eps a perfect network predicts at step ``t``
is the posterior mean of the noise, ``E[xi | x_t]`` (``QSMLoss(score_target="q_weighted")`` estimates it with
K candidates); here it is exact, by quadrature on 4001 points, and runs through ``torchrl_qsm.ddpm_sample``
(the authors' clipped DDPM sampler). Beside it, the paper's target ``-alpha grad_a Q`` at every step, the fixed
point of ``score_target="gradient"``, and ``-sigma_t alpha grad_a Q`` (``"scaled_gradient"``). What the samples
show is what the sampler can represent, apart from how a target is estimated or learned. Printed:
benchmarks/results/exact_chain.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from torchrl_qsm import ddpm_sample, NoiseSchedule

from _helpers import exact_posterior_noise

POLICIES = {  # name: (log pi = alpha Q, grad_a log pi)
    "two peaks (alpha 50, bumps at +-0.7)": (
        lambda a: 50 * (torch.exp(-((a - 0.7) ** 2) / 0.02) + torch.exp(-((a + 0.7) ** 2) / 0.02)),
        lambda a: (
            50
            * (
                -(a - 0.7) / 0.01 * torch.exp(-((a - 0.7) ** 2) / 0.02)
                - (a + 0.7) / 0.01 * torch.exp(-((a + 0.7) ** 2) / 0.02)
            )
        ),
    ),
    "quadratic (alpha kappa 100, optimum 0.3)": (lambda a: -50 * (a - 0.3) ** 2, lambda a: -100 * (a - 0.3)),
    "quadratic (alpha kappa 10000, optimum 0.3)": (lambda a: -5000 * (a - 0.3) ** 2, lambda a: -10000 * (a - 0.3)),
}


def sample(denoise, schedule: NoiseSchedule, n: int) -> torch.Tensor:
    x_T = torch.randn(n, 1, dtype=torch.float64)
    noise = torch.randn(schedule.num_steps, n, 1, dtype=torch.float64)
    return ddpm_sample(denoise, x_T, noise, schedule).squeeze(-1)


def describe(x: torch.Tensor, name: str) -> str:
    edges = f"edges {(x.abs() > 0.999).double().mean():.3f}"
    if name.startswith("two peaks"):
        near = [((x - p).abs() < 0.25).double().mean().item() for p in (-0.7, 0.7)]
        return f"near -0.7 {near[0]:.2f}, near +0.7 {near[1]:.2f}, {edges}"
    return f"mean {x.mean():.3f}, std {x.std():.3f}, mean |a - a*| {(x - 0.3).abs().mean():.3f}, {edges}"


def denoisers(log_pi, score, alpha_bars: torch.Tensor) -> dict:
    """eps(x, t) of each target for the policy ``exp(log_pi)``: the exact posterior noise and the two gradient forms."""
    return {
        "posterior noise (q_weighted, exact)": lambda x, t: exact_posterior_noise(
            x.squeeze(-1), alpha_bars[t], log_pi
        ).unsqueeze(-1),
        "-alpha grad_a Q (gradient)": lambda x, t: -score(x),
        "-sigma_t alpha grad_a Q (scaled)": lambda x, t: -(1 - alpha_bars[t]).sqrt() * score(x),
    }


def main() -> None:
    torch.manual_seed(0)
    for steps in (5, 20):
        schedule = NoiseSchedule(steps, "vp").double()
        print(f"=== T = {steps}, vp schedule, 8000 samples ===")
        for name, (log_pi, score) in POLICIES.items():
            print(name)
            for target, denoise in denoisers(log_pi, score, schedule.alphas_cumprod).items():
                print(f"  {target + ':':<38}{describe(sample(denoise, schedule, 8000), name)}")


if __name__ == "__main__":
    main()
