"""The contract between a diffusion actor and what trains or samples it.

A diffusion actor is a ``TensorDictModule`` (one observation in, one action out) whose ``.module``
offers :class:`DiffusionPolicyModule`. :class:`~torchrl_qsm.DiffusionActor` implements it;
:class:`~torchrl_qsm.QSMLoss` uses only it, through :func:`diffusion_policy` once, when it is built.
TorchRL's own ``torchrl.modules.DiffusionActor`` offers a smaller contract
(``num_steps``, ``alphas_cumprod``, ``add_noise(action, t)`` and ``score_network(cat([x_t, obs, t]))``,
its chain in action coordinates), which :class:`ScoreNetworkPolicy` completes.
"""

from __future__ import annotations

from typing import Protocol

import torch
from tensordict.utils import NestedKey
from torchrl.data import Bounded, Composite, TensorSpec
from typing_extensions import get_protocol_members  # typing's own from Python 3.13; torch requires the package

from torchrl_qsm.diffusion.networks import concatenated_denoiser, concatenated_noise, Denoiser


class DiffusionPolicyModule(Protocol):
    """The inner module of a diffusion actor, in the chain's coordinates ``x``.

    - ``num_steps``: ``T``, the number of denoising steps; ``alphas_cumprod``: ``alpha_bar_t``, ``[T]``.
    - ``normalize(action) -> x`` and ``denormalize(x) -> action``: between the action box and the
      box the chain samples in (``[-1, 1]`` for :class:`~torchrl_qsm.DiffusionActor`).
    - ``add_noise(action, t, noise=None) -> (x_t, eps)``: the forward process at integer steps ``t``
      (shape ``action.shape[:-1]``), ``x_t = sqrt(alpha_bar_t) normalize(action) + sqrt(1 - alpha_bar_t) eps``
      with ``eps`` drawn from ``N(0, I)`` unless given.
    - ``predict_noise(x_t, observation, t) -> eps_theta``: the eps prediction, one step per sample.
    - ``denoiser(observation) -> denoise(x_t, t)``: what the reverse chain calls, one step for all.

    A module offers it by having these members (checked with ``hasattr`` by :func:`diffusion_policy`, so
    that members held as parameters, buffers or submodules count), not by deriving from this class.
    """

    num_steps: int
    alphas_cumprod: torch.Tensor

    def normalize(self, action: torch.Tensor) -> torch.Tensor: ...

    def denormalize(self, x: torch.Tensor) -> torch.Tensor: ...

    def add_noise(
        self, action: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def predict_noise(self, x_t: torch.Tensor, observation: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def denoiser(self, observation: torch.Tensor) -> Denoiser: ...


TORCHRL_CONTRACT = ("num_steps", "alphas_cumprod", "add_noise", "score_network")


class ScoreNetworkPolicy:
    """TorchRL's ``DiffusionActor`` module seen through :class:`DiffusionPolicyModule`.

    Its chain runs in action coordinates (``normalize`` is the identity) and its network takes
    ``cat([x_t, observation, t])``. Holds a reference to the module, not a copy, so parameters swapped
    into it (``TensorDictParams.to_module``) are the ones used.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    @property
    def num_steps(self) -> int:
        return self.module.num_steps

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.module.alphas_cumprod

    def normalize(self, action: torch.Tensor) -> torch.Tensor:
        return action

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def add_noise(
        self, action: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if noise is None:
            return self.module.add_noise(action, t)
        alpha_bar = self.alphas_cumprod[t].unsqueeze(-1).to(action.dtype)
        return alpha_bar.sqrt() * action + (1 - alpha_bar).sqrt() * noise, noise

    def predict_noise(self, x_t: torch.Tensor, observation: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return concatenated_noise(self.module.score_network, x_t, observation, t)

    def denoiser(self, observation: torch.Tensor) -> Denoiser:
        return concatenated_denoiser(self.module.score_network, observation)


def diffusion_policy(module: object) -> DiffusionPolicyModule:
    """``module`` as a :class:`DiffusionPolicyModule`: itself if it offers the contract, TorchRL's smaller
    contract completed by :class:`ScoreNetworkPolicy`, else ``TypeError`` naming what is missing.

    Resolve it once (``QSMLoss`` does when it is built): the answer refers to ``module`` itself, so it sees
    the parameters swapped into it on every later call.
    """
    if all(hasattr(module, name) for name in get_protocol_members(DiffusionPolicyModule)):
        return module
    missing = [name for name in TORCHRL_CONTRACT if not hasattr(module, name)]
    if missing:
        raise TypeError(
            f"{type(module).__name__} is not a diffusion policy: it lacks {missing}. A diffusion actor's .module "
            "offers torchrl_qsm.contract.DiffusionPolicyModule (torchrl_qsm.DiffusionActor does) or TorchRL's "
            "DiffusionActor contract (num_steps, alphas_cumprod, add_noise, score_network)."
        )
    return ScoreNetworkPolicy(module)


def bounded_action_spec(spec: TensorSpec | None, action_key: NestedKey, action_dim: int) -> Bounded:
    """The ``Bounded`` spec of the action in ``spec`` (``None``: the ``[-1, 1]`` box).

    Raises ``ValueError`` naming the problem when the spec is not a finite box of ``action_dim``.
    """
    if spec is None:
        return Bounded(-torch.ones(action_dim), torch.ones(action_dim), (action_dim,))
    if isinstance(spec, Composite):
        if action_key not in spec.keys(True):
            raise ValueError(f"The action spec has no entry {action_key!r}: {spec}.")
        spec = spec[action_key]
    if not isinstance(spec, Bounded):
        raise ValueError(
            f"A diffusion policy samples in a box: the action spec must be Bounded, got {type(spec).__name__}."
        )
    low, high = spec.space.low, spec.space.high
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()) or (low >= high).any():
        raise ValueError(f"The action spec's bounds must be finite with low < high, got [{low}, {high}].")
    if spec.shape[-1] != action_dim:
        raise ValueError(f"action_dim={action_dim} disagrees with the action spec, whose last dim is {spec.shape[-1]}.")
    return spec
