"""Shared builders for the tests: small actors, critics and replay-like batches (the shape of TorchRL's
test/_utils_internal.py)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ValueOperator

from torchrl_qsm import DiffusionActor

OBS_DIM, ACTION_DIM = 5, 3
SCRIPT_DIR = Path(__file__).resolve().parents[1] / "sota-implementations" / "qsm"


def script_module(name: str) -> ModuleType:
    """A module of the training script's folder (``utils``, ``config``, ``loop``), imported without leaving the
    folder on ``sys.path``, where its ``utils`` would shadow any other."""
    sys.path.insert(0, str(SCRIPT_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPT_DIR))


def box(action_dim: int = ACTION_DIM, bound: float = 1.0) -> Bounded:
    return Bounded(-bound * torch.ones(action_dim), bound * torch.ones(action_dim), (action_dim,))


def make_actor(obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, bound: float = 1.0, **kwargs) -> DiffusionActor:
    kwargs.setdefault("hidden_sizes", (32, 32))
    return DiffusionActor(action_dim, obs_dim, spec=box(action_dim, bound), **kwargs)


def make_critic(obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, dropout: float | None = None) -> ValueOperator:
    return ValueOperator(
        MLP(obs_dim + action_dim, 1, num_cells=[32, 32], dropout=dropout), in_keys=["observation", "action"]
    )


def make_batch(batch=(8,), obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, bound: float = 1.0) -> TensorDict:
    batch = torch.Size(batch)
    return TensorDict(
        {
            "observation": torch.randn(*batch, obs_dim),
            "action": box(action_dim, bound).rand(batch),
            ("next", "observation"): torch.randn(*batch, obs_dim),
            ("next", "reward"): torch.randn(*batch, 1),
            ("next", "done"): torch.zeros(*batch, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(*batch, 1, dtype=torch.bool),
        },
        batch,
    )


class QuadraticCritic(nn.Module):
    """Q(s, a) = -||a - a*(s)||^2 with a*(s) = 0.6 tanh(W s): curvature 2 in every action dim."""

    def __init__(self, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        self.optimum_map = nn.Linear(obs_dim, action_dim, bias=False)
        with torch.no_grad():
            self.optimum_map.weight.normal_(std=0.3)

    def optimum(self, observation: torch.Tensor) -> torch.Tensor:
        return 0.6 * torch.tanh(self.optimum_map(observation))

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return -(action - self.optimum(observation)).pow(2).sum(-1, keepdim=True)


class DoubleWellCritic(nn.Module):
    """Q(s, a) = -c (a^2 - m^2)^2 in one action dim: two equal maxima at a = +-m, whatever s."""

    def __init__(self, m: float = 0.5, c: float = 1.0) -> None:
        super().__init__()
        self.m, self.c = m, c
        self.unused = nn.Parameter(torch.zeros(()))  # a critic with parameters, as QSMLoss expects

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return -self.c * (action.pow(2) - self.m**2).pow(2).sum(-1, keepdim=True) + 0 * self.unused


def pin_critics(loss, critic: TensorDictModule) -> None:
    """Make every critic copy of ``loss`` the given critic (``convert_to_functional`` re-draws them)."""
    params = TensorDict.from_module(critic).data
    loss.qvalue_network_params.data.copy_(params.expand(loss.num_qvalue_nets))
    loss.target_qvalue_network_params.data.copy_(params.expand(loss.num_qvalue_nets))
