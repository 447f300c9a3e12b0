"""The eps-network ``eps_theta(a_t, s, t)`` of a diffusion policy, and how the chain and the loss call it.

Two ways to evaluate an eps-network, both in the chain's coordinates:

- ``predict_noise(x_t, observation, t)``: one integer step ``t`` per sample (the denoising loss);
- ``denoiser(observation)``: returns ``denoise(x_t, t)``, every sample at the same Python-int step
  (the reverse chain, which runs ``T`` steps at a fixed observation).

:class:`EpsilonNetwork` implements both with its first layer split by input, so that the state
and time terms are computed once instead of at every step and sample. Any other network that
maps ``cat([x_t, observation, t])`` to ``eps`` (the ``score_network`` contract of TorchRL's
``DiffusionActor``) is evaluated both ways by :func:`concatenated_noise` and :func:`concatenated_denoiser`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from torchrl_qsm.diffusion.activations import Mish
from torchrl_qsm.diffusion.embeddings import make_time_embedding, TimeEmbeddingName
from torchrl_qsm.diffusion.schedules import check_num_steps

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
ScoreNetwork = Callable[[torch.Tensor], torch.Tensor]


def concatenated_noise(
    network: ScoreNetwork, x_t: torch.Tensor, observation: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``network(cat([x_t, observation, t]))`` at integer steps ``t`` (shape ``x_t.shape[:-1]``).

    ``t`` enters as the raw integer step cast to the input's dtype, as TorchRL's ``DiffusionActor``
    feeds it.
    """
    return network(torch.cat([x_t, observation, t.to(x_t.dtype).unsqueeze(-1)], -1))


def concatenated_denoiser(network: ScoreNetwork, observation: torch.Tensor) -> Denoiser:
    """``denoise(x_t, t) = network(cat([x_t, observation, t]))`` at a fixed observation, ``t`` a Python int."""

    def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
        return network(torch.cat([x_t, observation, torch.full_like(observation[..., :1], t)], -1))

    return denoise


def mlp(
    in_features: int,
    out_features: int,
    hidden_sizes: Sequence[int],
    activation: type[nn.Module],
    layer_norm: bool = False,
) -> nn.Sequential:
    """``Linear -> [LayerNorm] -> activation`` per hidden layer, then a linear output."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_features, width), *([nn.LayerNorm(width)] if layer_norm else []), activation()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, out_features))


class Projection(nn.Linear):
    """One input's block ``W_i x_i`` of a dense layer ``W [x_1, ..., x_k] + b`` over a concatenation.

    Initialised from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in`` the size of the whole
    concatenation, the distribution ``nn.Linear`` gives the whole layer.
    """

    def __init__(self, in_features: int, out_features: int, *, concat_fan_in: int, bias: bool, device=None) -> None:
        self.concat_fan_in = concat_fan_in
        super().__init__(in_features, out_features, bias=bias, device=device)

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.concat_fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)


class EpsilonNetwork(nn.Module):
    """Predicts the noise ``eps`` in a noised action ``x_t`` given the state ``s`` and the step ``t``.

    The architecture of the QSM authors' code (``jaxrl5/networks/diffusion.py`` in
    Alescontrela/score_matching_rl)::

        cond  = MLP_cond(time_features(t))                 # Fourier(64) -> 128 -> 128, mish
        h     = W_a x_t + (W_s s + b) + W_c cond           # the first layer over [x_t, s, cond]
        eps   = MLP(act(h))                                # hidden_sizes, mish, linear output

    The first layer is linear in its concatenated input, so it is held as one projection per input
    (``action_proj``, ``state_proj`` with the bias, ``time_proj``); drawn at construction as one
    ``nn.Linear`` over the concatenation would be. The network knows its ``T`` (``num_steps``):
    ``predict_noise`` and ``denoiser`` compute the time term ``W_c cond_t`` for the ``T`` steps once
    per call and gather it, and ``denoiser`` computes the state term once per chain.

    ``forward(cat([x_t, s, t]))`` (``t`` the integer step as a float) is the ``score_network``
    contract of TorchRL's ``DiffusionActor`` (used by ``DiffusionBCLoss``); it gives the same
    numbers as ``predict_noise`` for integer steps.

    Args:
        action_dim: size of the action.
        obs_dim: size of the (flat) observation; ``None`` infers it from the first observation the
            network sees (``state_proj`` is then an ``nn.LazyLinear``, initialised by torch for its own
            fan-in, as TorchRL's default score network is), so run one forward before building optimizers.

    Keyword Args:
        num_steps: ``T``, the number of denoising steps of the chain this network serves (default 5).
        hidden_sizes: widths of the hidden layers of the main MLP (the paper's text: 256 x 256;
            the authors' code: 512 x 512).
        activation: activation class, used in both MLPs (default: mish).
        layer_norm: apply ``LayerNorm`` before each hidden activation of the main MLP.
        time_embedding: ``"fourier"`` (learnable, default) or ``"sinusoidal"`` (fixed).
        time_dim: size of the time features.
        cond_sizes: widths of the conditioning MLP; its last entry is the size of ``cond``.
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int | None,
        *,
        num_steps: int = 5,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: type[nn.Module] = Mish,
        layer_norm: bool = False,
        time_embedding: TimeEmbeddingName = "fourier",
        time_dim: int = 64,
        cond_sizes: Sequence[int] = (128, 128),
    ) -> None:
        super().__init__()
        if not hidden_sizes or not cond_sizes:
            raise ValueError("hidden_sizes and cond_sizes need at least one entry each.")
        self.action_dim = action_dim
        self.obs_dim = obs_dim
        self.num_steps = check_num_steps(num_steps)
        # with the sizes, what rebuilds it (torchrl_qsm.actor_record writes them into a saved actor's record)
        self.options = {
            "hidden_sizes": tuple(hidden_sizes),
            "activation": activation,
            "layer_norm": layer_norm,
            "time_embedding": time_embedding,
            "time_dim": time_dim,
            "cond_sizes": tuple(cond_sizes),
        }
        self.time_embedding = make_time_embedding(time_embedding, time_dim)
        cond_dim = cond_sizes[-1]
        self.cond_mlp = mlp(time_dim, cond_dim, cond_sizes[:-1], activation)
        width = hidden_sizes[0]
        fan_in = action_dim + (obs_dim or 0) + cond_dim
        self.action_proj = torch.nn.utils.skip_init(Projection, action_dim, width, concat_fan_in=fan_in, bias=False)
        if obs_dim is None:
            self.state_proj = nn.LazyLinear(width)
        else:
            self.state_proj = torch.nn.utils.skip_init(Projection, obs_dim, width, concat_fan_in=fan_in, bias=True)
        self.time_proj = torch.nn.utils.skip_init(Projection, cond_dim, width, concat_fan_in=fan_in, bias=False)
        self._draw_first_layer()
        self.input_activation = nn.Sequential(*([nn.LayerNorm(width)] if layer_norm else []), activation())
        self.body = mlp(width, action_dim, hidden_sizes[1:], activation, layer_norm)

    @torch.no_grad()
    def _draw_first_layer(self) -> None:
        """The three projections as the blocks of one ``nn.Linear(action_dim + obs_dim + cond_dim, width)``."""
        if self.obs_dim is None:  # the state block is drawn when it first sees an observation
            self.action_proj.reset_parameters()
            self.time_proj.reset_parameters()
            return
        blocks = (self.action_proj, self.state_proj, self.time_proj)
        whole = nn.Linear(sum(block.in_features for block in blocks), self.action_proj.out_features)
        for block, weight in zip(blocks, whole.weight.split([block.in_features for block in blocks], dim=1)):
            block.weight.copy_(weight)
        self.state_proj.bias.copy_(whole.bias)

    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """``cond_t``, the conditioning vector of steps ``t`` (shape ``[*B]`` -> ``[*B, cond_dim]``)."""
        return self.cond_mlp(self.time_embedding(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``eps_theta`` of ``x = cat([x_t, s, t], -1)``, of shape ``[*B, action_dim]``."""
        obs_dim = x.shape[-1] - self.action_dim - 1 if self.obs_dim is None else self.obs_dim
        expected = self.action_dim + obs_dim + 1
        if x.shape[-1] != expected or obs_dim < 1:
            raise ValueError(
                f"EpsilonNetwork expects cat([noisy_action ({self.action_dim}), observation "
                f"({self.obs_dim}), t (1)]) of size {expected} in its last dim, got {x.shape[-1]}."
            )
        x_t, observation, t = x.split([self.action_dim, obs_dim, 1], dim=-1)
        hidden = (
            self.action_proj(x_t) + self.state_proj(observation) + self.time_proj(self.time_condition(t.squeeze(-1)))
        )
        return self.body(self.input_activation(hidden))

    def _time_table(self, like: torch.Tensor) -> torch.Tensor:
        """``W_c cond_t`` for ``t = 0..T-1``, ``[T, width]``, in the dtype and on the device of ``like``."""
        steps = torch.arange(self.num_steps, device=like.device, dtype=like.dtype)
        return self.time_proj(self.time_condition(steps))

    def _check_observation(self, observation: torch.Tensor) -> None:
        if self.obs_dim is not None and observation.shape[-1] != self.obs_dim:
            raise ValueError(
                f"EpsilonNetwork was built for observations of size obs_dim={self.obs_dim}, got size "
                f"{observation.shape[-1]} (shape {tuple(observation.shape)}); flatten the observation to that size "
                "(CatTensors) or build the actor with the environment's observation size."
            )
        dtype = self.state_proj.weight.dtype
        if observation.dtype != dtype and not torch.is_autocast_enabled(observation.device.type):
            raise TypeError(
                f"EpsilonNetwork's weights are {dtype} but the observation is {observation.dtype}; convert the "
                f"observations (TorchRL's DoubleToFloat transform for float64 environments) or the network."
            )

    def predict_noise(self, x_t: torch.Tensor, observation: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps_theta(x_t, s, t)``, ``[*B, action_dim]``, for integer steps ``t`` (``[*B]``) in ``range(T)``.

        The numbers of ``forward(cat([x_t, s, t]))``, with the time term computed for the ``T``
        distinct steps and gathered (``index_select``) rather than computed once per sample.
        """
        self._check_observation(observation)
        time_term = self._time_table(x_t).index_select(0, t.reshape(-1)).view(*t.shape, -1)
        hidden = self.action_proj(x_t) + self.state_proj(observation) + time_term
        return self.body(self.input_activation(hidden))

    def denoiser(self, observation: torch.Tensor) -> Denoiser:
        """``denoise(x_t, t) = eps_theta(x_t, s, t)`` at observations ``[N, obs_dim]``, ``t`` in ``range(T)``.

        The state and time terms are summed once into a ``[T, N, width]`` bias, so each step's
        first layer is one ``addmm``. Call it while the parameters to use are in place (e.g. inside
        ``params.to_module``).
        """
        self._check_observation(observation)
        bias = self.state_proj(observation) + self._time_table(observation).unsqueeze(1)
        action_weight = self.action_proj.weight.t()

        def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
            return self.body(self.input_activation(torch.addmm(bias[t], x_t, action_weight)))

        return denoise
