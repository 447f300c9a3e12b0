"""Mish, the activation of the QSM authors' eps-network, with a one-exponential form for CPUs.

``mish(x) = x tanh(softplus(x))`` (Misra, 2019). With ``p = sigmoid(x)``, ``1 + e^x = 1 / (1 - p)``
gives::

    tanh(softplus(x)) = ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1) = n / (2 - n),   n = p (2 - p)

Every term stays accurate in float32 over the whole line (``tests/test_networks.py`` checks it
against a float64 reference). On a CPU, for tensors of a few thousand elements and more, this form
is faster than torch's ``mish`` kernel (tanh and softplus), and in the T-step chain the activation
costs about as much as the matmuls; elsewhere (GPUs, where the six ops are six kernel launches, and
small CPU tensors, where one call beats six) torch's kernel is used. The measurements are in
``benchmarks/README.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONE_EXP_MIN_NUMEL = 4096  # the measured crossover on a CPU


def mish(x: torch.Tensor) -> torch.Tensor:
    # torch.export: one form for every batch size (the size test would bound the exported program's batch)
    if x.device.type != "cpu" or torch.compiler.is_exporting() or x.numel() < ONE_EXP_MIN_NUMEL:
        return F.mish(x)
    p = torch.sigmoid(x)
    n = p * (2 - p)
    return x * n / (2 - n)


class Mish(nn.Module):
    """``x tanh(softplus(x))`` as :func:`mish` computes it; a drop-in for ``torch.nn.Mish``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)
