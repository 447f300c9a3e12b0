"""The eps-network ``eps_theta(a_t, s, t)`` of a diffusion policy."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrl.modules import MLP

from torchrl_qsm.diffusion.activations import Mish
from torchrl_qsm.diffusion.embeddings import make_time_embedding, TimeEmbeddingName

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


class EpsilonNetwork(nn.Module):
    """Predicts the noise ``eps`` in a noised action ``a_t`` given the state ``s`` and step ``t``.

    The architecture of the QSM authors' code::

        cond  = MLP_cond(time_features(t))               # Fourier(64) -> 128 -> 128, mish
        eps   = MLP([a_t, s, cond])                      # hidden_sizes, mish, linear output

    Two ways to call it, one set of weights:

    - ``forward(x)`` with ``x = cat([a_t, s, t], -1)`` (``t`` the integer step as a float): the
      ``score_network`` contract of TorchRL's ``DiffusionActor``, used by ``DiffusionBCLoss`` and
      :class:`~torchrl_qsm.QSMLoss`, one ``t`` per sample;
    - ``conditioned_on(s, T)`` returns ``denoise(a_t, t)`` for the reverse chain, where every
      sample shares ``t``. The first layer is linear in its concatenated input, so
      ``W [a_t, s, cond_t] + b = W_a a_t + (W_s s + b) + W_c cond_t``: the state term is computed
      once per chain and the ``T`` time terms once per call, leaving ``W_a a_t`` per step;
    - ``at_steps(a_t, s, t, T)``: ``forward`` for integer steps ``t < T``, one per sample (the
      denoising loss), with the time term ``W_c cond_t`` computed for the ``T`` distinct steps and
      gathered, instead of once per sample.

    Args:
        action_dim: size of the action.
        obs_dim: size of the (flat) observation.

    Keyword Args:
        hidden_sizes: widths of the hidden layers of the main MLP (the paper's text: 256 x 256;
            the authors' code: 512 x 512).
        activation: activation class, used in both MLPs (default: mish, as
            :class:`~torchrl_qsm.diffusion.activations.Mish` computes it).
        layer_norm: apply ``LayerNorm`` before each hidden activation of the main MLP.
        time_embedding: ``"fourier"`` (learnable, default) or ``"sinusoidal"`` (fixed).
        time_dim: size of the time features.
        cond_sizes: widths of the conditioning MLP; its last entry is the size of ``cond``.
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int,
        *,
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
        self.time_embedding = make_time_embedding(time_embedding, time_dim)
        self.cond_mlp = MLP(
            in_features=time_dim,
            out_features=cond_sizes[-1],
            num_cells=list(cond_sizes[:-1]),
            activation_class=activation,
        )
        width = hidden_sizes[0]
        self.input_layer = nn.Linear(action_dim + obs_dim + cond_sizes[-1], width)
        norm = [nn.LayerNorm(width)] if layer_norm else []
        self.input_activation = nn.Sequential(*norm, activation())
        self.body = MLP(
            in_features=width,
            out_features=action_dim,
            num_cells=list(hidden_sizes[1:]),
            activation_class=activation,
            norm_class=nn.LayerNorm if layer_norm else None,
            norm_kwargs=[{"normalized_shape": w} for w in hidden_sizes[1:]] if layer_norm else None,
        )

    def cond(self, t: torch.Tensor) -> torch.Tensor:
        """The conditioning vector of step ``t`` (shape ``[*B]`` -> ``[*B, cond_dim]``)."""
        return self.cond_mlp(self.time_embedding(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``eps_theta`` of ``x = cat([a_t, s, t], -1)``, of shape ``[*B, action_dim]``."""
        expected = self.action_dim + self.obs_dim + 1
        if x.shape[-1] != expected:
            raise ValueError(
                f"EpsilonNetwork expects cat([noisy_action ({self.action_dim}), observation "
                f"({self.obs_dim}), t (1)]) of size {expected} in its last dim, got {x.shape[-1]}."
            )
        weight = self.input_layer.weight
        cut = self.action_dim + self.obs_dim
        hidden = F.linear(x[..., :cut], weight[:, :cut], self.input_layer.bias)
        hidden = hidden + F.linear(self.cond(x[..., -1]), weight[:, cut:])
        return self.body(self.input_activation(hidden))

    def time_terms(self, num_steps: int, like: torch.Tensor) -> torch.Tensor:
        """``W_c cond_t`` of the first layer for ``t = 0..T-1``, ``[T, width]`` (dtype, device of ``like``)."""
        steps = torch.arange(num_steps, device=like.device, dtype=like.dtype)
        return F.linear(self.cond(steps), self.input_layer.weight[:, self.action_dim + self.obs_dim :])

    def at_steps(
        self, noisy_action: torch.Tensor, observation: torch.Tensor, t: torch.Tensor, num_steps: int
    ) -> torch.Tensor:
        """``eps_theta(a_t, s, t)``, ``[*B, action_dim]``, for integer steps ``t`` (``[*B]``) in ``range(num_steps)``.

        The numbers of ``forward(cat([a_t, s, t]))``; the conditioning MLP and ``W_c`` run on the
        ``T`` distinct steps rather than on every sample (at batch 256, T = 5 and widths 256 this
        removes about a tenth of the FLOPs of a QSM update), and ``index_select`` gathers them, its
        backward summing each step's samples (``index_add_``: on CPU half the time of the ``index_put_``
        that ``table[t]``'s backward runs, 0.21 vs 0.37 ms at batch 256 and width 256).
        """
        weight, cut = self.input_layer.weight, self.action_dim + self.obs_dim
        hidden = F.linear(torch.cat([noisy_action, observation], -1), weight[:, :cut], self.input_layer.bias)
        hidden = hidden + self.time_terms(num_steps, noisy_action).index_select(0, t.reshape(-1)).view(*t.shape, -1)
        return self.body(self.input_activation(hidden))

    def conditioned_on(self, observation: torch.Tensor, num_steps: int) -> Denoiser:
        """Returns ``denoise(a_t, t) = eps_theta(a_t, s, t)`` for ``t`` in ``range(num_steps)``.

        ``observation`` is ``[N, obs_dim]``. The state and time terms of the first layer are summed
        once into a ``[T, N, width]`` bias, so each step's first layer is one ``addmm``. Call it
        while the parameters to use are in place (e.g. inside ``params.to_module``).
        """
        weight = self.input_layer.weight
        a, cut = self.action_dim, self.action_dim + self.obs_dim
        state_term = F.linear(observation, weight[:, a:cut], self.input_layer.bias)
        bias = state_term + self.time_terms(num_steps, observation).unsqueeze(1)
        action_weight = weight[:, :a].t()

        def denoise(noisy_action: torch.Tensor, t: int) -> torch.Tensor:
            return self.body(self.input_activation(torch.addmm(bias[t], noisy_action, action_weight)))

        return denoise
