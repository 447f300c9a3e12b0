"""Diagnostics of sampled actions, and the one check for non-finite values that the loss and the script share."""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A NaN or infinite value where training needs finite numbers: in data, in a loss or in the weights."""


def first_non_finite(value: torch.Tensor) -> tuple[int, ...] | None:
    """The index of ``value``'s first NaN or infinite element (``None``: all finite, or not floating point).

    One device synchronisation when all is finite; the search runs only when something is not.
    """
    if not value.is_floating_point() or torch.isfinite(value).all():
        return None
    return tuple((~torch.isfinite(value)).nonzero()[0].tolist())


def edge_fraction(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    """The share of action components that sit on an edge of the box ``[low, high]``.

    A component counts as on the edge when it lies within ``tol`` half-widths of ``low`` or
    ``high``. A diffusion chain that is unstable for its alpha times the critic's curvature puts
    most of its samples there (bang-bang actions; see the README's notes on the sampler).
    """
    half_width = (high - low) / 2
    distance = torch.minimum(action - low, high - action) / half_width
    return (distance <= tol).float().mean()
