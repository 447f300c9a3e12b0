"""``DiffusionActor``: a DDPM policy as a TorchRL ``TensorDictModule``."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn.probabilistic import interaction_type, InteractionType
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.modules import SafeModule

from torchrl_qsm.diffusion.networks import Denoiser, EpsilonNetwork
from torchrl_qsm.diffusion.sampler import chain_log_prob, ddpm_sample
from torchrl_qsm.diffusion.schedules import NoiseSchedule, ScheduleName


class DiffusionPolicy(nn.Module):
    """The policy ``pi(a | s)`` sampled by a ``T``-step DDPM chain in a normalised action box.

    The chain runs in ``x in [-1, 1]^A`` and maps to the action box ``[low, high]`` by
    ``a = loc + scale * x`` with ``loc = (high + low) / 2``, ``scale = (high - low) / 2``.

    This module carries the contract of TorchRL's ``DiffusionActor`` module, so that TorchRL's
    ``DiffusionBCLoss`` and :class:`~torchrl_qsm.QSMLoss` train it unchanged:

    - ``num_steps`` (``T``), ``alphas_cumprod`` (and ``betas``, ``alphas``);
    - ``add_noise(action, t) -> (x_t, eps)``: ``x_t = sqrt(alpha_bar_t) x + sqrt(1 - alpha_bar_t) eps``
      where ``x = normalize(action)`` (``x_t`` lies in the normalised space);
    - ``score_network(cat([x_t, observation, t], -1))``: the eps prediction.

    and, beyond it, ``normalize`` / ``denormalize`` (found by QSMLoss to take ``grad_a Q`` in the
    chain's coordinates).

    Args:
        score_network: the eps-network (``cat([x_t, s, t]) -> eps``); an
            :class:`~torchrl_qsm.EpsilonNetwork` also gives a faster chain.
        action_dim: ``A``.
        schedule: the noise schedule (``T`` steps).
        low, high: the action bounds, shape ``[A]``.

    Keyword Args:
        clip_sample: clip ``x`` to ``[-1, 1]`` after every step (the authors' sampler).
        temperature: scale of the noise injected at each step (1.0 for DDPM).
    """

    def __init__(
        self,
        score_network: nn.Module,
        action_dim: int,
        schedule: NoiseSchedule,
        low: torch.Tensor,
        high: torch.Tensor,
        *,
        clip_sample: bool = True,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        self.score_network = score_network
        self.action_dim = action_dim
        self.schedule = schedule
        self.clip_sample = clip_sample
        self.temperature = temperature
        low = torch.as_tensor(low, dtype=torch.float32).expand(action_dim)
        high = torch.as_tensor(high, dtype=torch.float32).expand(action_dim)
        self.register_buffer("action_loc", (high + low) / 2)
        self.register_buffer("action_scale", (high - low) / 2)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def betas(self) -> torch.Tensor:
        return self.schedule.betas

    @property
    def alphas(self) -> torch.Tensor:
        return self.schedule.alphas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    def normalize(self, action: torch.Tensor) -> torch.Tensor:
        """Action box -> the chain's ``[-1, 1]`` box."""
        return (action - self.action_loc) / self.action_scale

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The chain's ``[-1, 1]`` box -> action box."""
        return self.action_loc + self.action_scale * x

    def add_noise(
        self, clean_action: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward process at integer steps ``t`` (shape ``action.shape[:-1]``).

        Returns ``(x_t, eps)`` with ``x_t = sqrt(alpha_bar_t) normalize(action) + sqrt(1 - alpha_bar_t) eps``.
        """
        x = self.normalize(clean_action)
        eps = torch.randn_like(x)
        alpha_bar = self.schedule.alphas_cumprod[t].unsqueeze(-1)
        return alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * eps, eps

    def denoiser(self, observation: torch.Tensor) -> Denoiser:
        """``eps_hat(x_t, t)`` at a fixed observation ``[N, obs_dim]``, for the reverse chain."""
        net = self.score_network
        if isinstance(net, EpsilonNetwork):
            return net.conditioned_on(observation, self.num_steps)

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
            step = torch.full_like(observation[..., :1], t)
            return net(torch.cat([x, observation, step], -1))

        return denoise

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """Samples ``a ~ pi(. | observation)`` for any leading batch shape.

        ``DETERMINISTIC`` exploration: the chain starts at ``x_T = 0`` and injects no noise, a
        repeatable action (not the mode of ``pi``). Any other exploration type (``RANDOM``,
        ``MEAN``, ``MODE``, none): ``x_T ~ N(0, I)`` and noise at each step, a sample of ``pi``;
        the QSM authors evaluate with such a sample.
        """
        batch_shape = observation.shape[:-1]
        observation = observation.reshape(-1, observation.shape[-1])
        x_T, noise = self._latents(observation)
        x = ddpm_sample(self.denoiser(observation), x_T, noise, self.schedule, **self._sampler_options)
        return self.denormalize(x).reshape(*batch_shape, self.action_dim)

    @property
    def _sampler_options(self) -> dict:
        return {"clip": 1.0 if self.clip_sample else None, "temperature": self.temperature}

    def _latents(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x_T`` and the step noises ``[T, N, A]`` for ``N`` observations (zeros / None if DETERMINISTIC)."""
        shape = (observation.shape[0], self.action_dim)
        if interaction_type() == InteractionType.DETERMINISTIC:
            return observation.new_zeros(shape), None
        noise = torch.randn(self.num_steps + 1, *shape, device=observation.device, dtype=observation.dtype)
        return noise[0], noise[1:]

    def sample_chain(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample with its whole chain, for likelihood-based (policy-gradient) estimators.

        For observations ``[N, obs_dim]`` returns ``(action [N, A], chain [T + 1, N, A])`` where
        ``chain[0] = x_T`` and ``chain[k]`` is the state after step ``T - k`` before clipping (in the
        chain's ``[-1, 1]`` coordinates). No gradient flows through the sample.
        """
        with torch.no_grad():
            x_T, noise = self._latents(observation)
            states: list[torch.Tensor] = []
            x = ddpm_sample(self.denoiser(observation), x_T, noise, self.schedule, chain=states, **self._sampler_options)
        return self.denormalize(x), torch.stack([x_T, *states])

    def chain_log_prob(self, observation: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """``sum_t log pi_theta(x_{t-1} | x_t, s)`` of chains from :meth:`sample_chain` (paper eq. 9), ``[N]``.

        Differentiable in the eps-network's parameters; see
        :func:`~torchrl_qsm.diffusion.sampler.chain_log_prob` for what it leaves out (the noise-free last step).
        """
        return chain_log_prob(self.denoiser(observation), chain[0], list(chain[1:]), self.schedule, **self._sampler_options)

    def extra_repr(self) -> str:
        return f"action_dim={self.action_dim}, clip_sample={self.clip_sample}, temperature={self.temperature}"


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
        raise ValueError(
            f"action_dim={action_dim} disagrees with the action spec, whose last dim is {spec.shape[-1]}."
        )
    return spec


class DiffusionActor(SafeModule):
    """A diffusion-model policy for TorchRL: ``in_keys=["observation"] -> out_keys=["action"]``.

    Built like TorchRL's ``torchrl.modules.DiffusionActor`` and usable wherever it is
    (collectors, ``DiffusionBCLoss``, target updaters, ``torch.compile``), with the QSM authors'
    recipe by default: ``T = 5`` steps, the "vp" schedule, a clipped DDPM sampler and the eps-network
    of :class:`~torchrl_qsm.EpsilonNetwork`. The chain runs in ``[-1, 1]`` and its samples are
    mapped to the bounds of ``spec``, so every action is valid.

    Exploration (``tensordict.nn.set_exploration_type``):

    - ``RANDOM`` (collectors' default), ``MEAN``, ``MODE`` or unset: a stochastic sample of the
      chain (``x_T ~ N(0, I)``, noise at every step). Evaluate this way to follow the authors.
    - ``DETERMINISTIC``: the chain from ``x_T = 0`` with no injected noise, a repeatable action
      (a fixed latent, not the policy's mode; the authors never evaluate like this). It is also
      what a TorchRL ``LossModule`` sets by default, so losses that sample (QSMLoss does) switch
      back to ``RANDOM`` themselves.

    The paper's exploration noise ``N(0, 0.1^2)`` composes the TorchRL way and stays off in
    evaluation by evaluating the bare actor::

        policy = TensorDictSequential(actor, AdditiveGaussianModule(spec, sigma_init=0.1, sigma_end=0.1))

    Args:
        action_dim: size of the action.
        obs_dim: size of the observation (needed to build the default eps-network).
        score_network: a custom eps-network taking ``cat([x_t, s, t])``; default
            ``EpsilonNetwork(action_dim, obs_dim, hidden_sizes=hidden_sizes)``.
        num_steps: ``T``, the number of denoising steps (default 5, the authors').
        in_keys: default ``["observation"]`` (one flat observation).
        out_keys: default ``["action"]``.

    Keyword Args:
        spec: the action spec (``Bounded`` or a ``Composite`` holding it); ``None`` is ``[-1, 1]^A``.
        schedule: ``"vp"`` (default), ``"cosine"`` or ``"linear"``.
        clip_sample: clip to the box after every denoising step (default ``True``).
        temperature: scale of the injected noise (default 1.0).
        hidden_sizes: widths of the default eps-network (default 256 x 256, the paper's text).
        **kwargs: passed to :class:`~torchrl.modules.SafeModule` (e.g. ``safe``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_qsm import DiffusionActor
        >>> spec = Bounded(-2 * torch.ones(3), 2 * torch.ones(3), (3,))
        >>> actor = DiffusionActor(action_dim=3, obs_dim=5, spec=spec)
        >>> actor(TensorDict(observation=torch.randn(7, 5), batch_size=[7]))["action"].shape
        torch.Size([7, 3])
    """

    def __init__(
        self,
        action_dim: int,
        obs_dim: int | None = None,
        score_network: nn.Module | None = None,
        num_steps: int = 5,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        *,
        spec: TensorSpec | None = None,
        schedule: ScheduleName = "vp",
        clip_sample: bool = True,
        temperature: float = 1.0,
        hidden_sizes: Sequence[int] = (256, 256),
        **kwargs,
    ) -> None:
        in_keys = ["observation"] if in_keys is None else list(in_keys)
        out_keys = ["action"] if out_keys is None else list(out_keys)
        if len(in_keys) != 1 or len(out_keys) != 1:
            raise ValueError(
                f"DiffusionActor reads one observation and writes one action, got in_keys={in_keys}, "
                f"out_keys={out_keys}; concatenate observations first (CatTensors)."
            )
        if score_network is None:
            if obs_dim is None:
                raise ValueError("DiffusionActor needs obs_dim to build its eps-network (or pass score_network).")
            score_network = EpsilonNetwork(action_dim, obs_dim, hidden_sizes=hidden_sizes)
        action_spec = bounded_action_spec(spec, out_keys[0], action_dim)
        policy = DiffusionPolicy(
            score_network,
            action_dim,
            NoiseSchedule(num_steps, schedule),
            action_spec.space.low,
            action_spec.space.high,
            clip_sample=clip_sample,
            temperature=temperature,
        )
        super().__init__(policy, in_keys=in_keys, out_keys=out_keys, spec=Composite({out_keys[0]: action_spec}), **kwargs)
