"""Features of the denoising step index ``t`` fed to the eps-network."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

TimeEmbeddingName = Literal["fourier", "sinusoidal"]


class FourierFeatures(nn.Module):
    """Learnable Fourier features (the QSM authors' default).

    ``f(t) = [cos(2 pi t w), sin(2 pi t w)]`` with ``w`` a learnable vector of
    ``dim / 2`` frequencies, initialised from ``N(0, std^2)`` (``std = 0.2``).

    Args:
        dim: the output size (even).
        std: the standard deviation of the initial frequencies.
    """

    def __init__(self, dim: int = 64, std: float = 0.2) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"FourierFeatures needs an even dim, got {dim}.")
        self.dim = dim
        self.std = std
        self.weight = nn.Parameter(torch.empty(dim // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Maps ``t`` of shape ``[*B]`` to features of shape ``[*B, dim]``."""
        angle = (2 * math.pi) * t.unsqueeze(-1) * self.weight
        return torch.cat([angle.cos(), angle.sin()], -1)


class SinusoidalFeatures(nn.Module):
    """Fixed sinusoidal features (Vaswani et al., 2017), no parameters.

    ``f(t) = [sin(t w_k), cos(t w_k)]`` with ``w_k = max_period^(-k / (dim / 2))``, ``k < dim / 2``.
    """

    def __init__(self, dim: int = 64, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalFeatures needs an even dim, got {dim}.")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Maps ``t`` of shape ``[*B]`` to features of shape ``[*B, dim]``."""
        angle = t.unsqueeze(-1) * self.freqs
        return torch.cat([angle.sin(), angle.cos()], -1)


def make_time_embedding(kind: TimeEmbeddingName, dim: int) -> nn.Module:
    """Builds the time embedding named ``kind`` (``"fourier"`` or ``"sinusoidal"``)."""
    if kind == "fourier":
        return FourierFeatures(dim)
    if kind == "sinusoidal":
        return SinusoidalFeatures(dim)
    raise ValueError(f"Unknown time embedding {kind!r}; expected 'fourier' or 'sinusoidal'.")
