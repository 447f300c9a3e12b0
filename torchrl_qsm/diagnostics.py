"""Diagnostics of sampled actions."""

from __future__ import annotations

import torch


def edge_fraction(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    """The share of action components that sit on an edge of the box ``[low, high]``.

    A component counts as on the edge when it lies within ``tol`` half-widths of ``low`` or
    ``high``. A diffusion chain that is unstable for its alpha times the critic's curvature puts
    most of its samples there (bang-bang actions; see the README's notes on the sampler).
    """
    half_width = (high - low) / 2
    distance = torch.minimum(action - low, high - action) / half_width
    return (distance <= tol).float().mean()
