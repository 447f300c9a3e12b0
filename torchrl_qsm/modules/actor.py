"""``DiffusionActor``: a DDPM policy as a TorchRL ``TensorDictModule``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict.nn.probabilistic import interaction_type, InteractionType
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import Composite, TensorSpec
from torchrl.modules import SafeModule

from torchrl_qsm.contract import bounded_action_spec
from torchrl_qsm.diffusion.networks import concatenated_denoiser, concatenated_noise, Denoiser, EpsilonNetwork
from torchrl_qsm.diffusion.sampler import chain_log_prob, ddpm_sample
from torchrl_qsm.diffusion.schedules import NoiseSchedule, ScheduleName


class DiffusionPolicy(nn.Module):
    """The policy ``pi(a | s)`` sampled by a ``T``-step DDPM chain in a normalised action box.

    The chain runs in ``x in [-1, 1]^A`` and maps to the action box ``[low, high]`` by
    ``a = loc + scale * x`` with ``loc = (high + low) / 2``, ``scale = (high - low) / 2``.

    It implements :class:`~torchrl_qsm.contract.DiffusionPolicyModule`, what
    :class:`~torchrl_qsm.QSMLoss` uses, and keeps the contract of TorchRL's ``DiffusionActor``
    module (``num_steps``, ``alphas_cumprod``, ``add_noise(action, t)``,
    ``score_network(cat([x_t, observation, t]))``), what TorchRL's ``DiffusionBCLoss`` uses.

    How the score network is called is settled here, once: a network that offers ``num_steps``,
    ``predict_noise(x_t, observation, t)`` and ``denoiser(observation)`` (the signatures of the contract's;
    :class:`~torchrl_qsm.EpsilonNetwork` does) is called through them and must have been built for the
    schedule's ``T``; any other is called on ``cat([x_t, observation, t])``.

    Args:
        score_network: the eps-network.
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
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(
                f"temperature (the scale of the chain's injected noise) must be finite and >= 0, got {temperature}."
            )
        # how the network is called, settled once (the class docstring)
        self._network_has_steps = all(
            hasattr(score_network, name) for name in ("num_steps", "predict_noise", "denoiser")
        )
        if self._network_has_steps and score_network.num_steps != schedule.num_steps:
            raise ValueError(
                f"The eps-network was built for num_steps={score_network.num_steps} denoising steps but the schedule "
                f"has {schedule.num_steps}; build both with the same T."
            )
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
        self, clean_action: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward process at integer steps ``t`` (shape ``action.shape[:-1]``).

        Returns ``(x_t, eps)`` with ``x_t = sqrt(alpha_bar_t) normalize(action) + sqrt(1 - alpha_bar_t) eps``,
        ``eps = noise`` if given, else drawn from ``N(0, I)``.
        """
        x = self.normalize(clean_action)
        eps = torch.randn_like(x) if noise is None else noise
        alpha_bar = self.schedule.alphas_cumprod[t].unsqueeze(-1)
        return alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * eps, eps

    def predict_noise(self, x_t: torch.Tensor, observation: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps_theta(x_t, s, t)`` for integer steps ``t`` (shape ``x_t.shape[:-1]``)."""
        if self._network_has_steps:
            return self.score_network.predict_noise(x_t, observation, t)
        return concatenated_noise(self.score_network, x_t, observation, t)

    def denoiser(self, observation: torch.Tensor) -> Denoiser:
        """``eps_hat(x_t, t)`` at a fixed observation ``[N, obs_dim]``, for the reverse chain."""
        if self._network_has_steps:
            return self.score_network.denoiser(observation)
        return concatenated_denoiser(self.score_network, observation)

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
        return self._sample(observation, x_T, noise).reshape(*batch_shape, self.action_dim)

    def sample_from(self, observation: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The chain's sample for given noise: ``observation [N, obs_dim]``, ``noise [T + 1, N, A]`` with
        ``noise[0] = x_T`` and ``noise[1:]`` the steps' ``z_t`` (what ``forward`` draws as one
        ``torch.randn(T + 1, N, A)``), to action ``[N, A]`` inside the bounds."""
        return self._sample(observation, noise[0], noise[1:])

    def _sample(self, observation: torch.Tensor, x_T: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x = ddpm_sample(self.denoiser(observation), x_T, noise, self.schedule, **self._sampler_options)
        return self.denormalize(x)

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
            x = ddpm_sample(
                self.denoiser(observation), x_T, noise, self.schedule, chain=states, **self._sampler_options
            )
        return self.denormalize(x), torch.stack([x_T, *states])

    def chain_log_prob(self, observation: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """``sum_t log pi_theta(x_{t-1} | x_t, s)`` of chains from :meth:`sample_chain` (paper eq. 9), ``[N]``.

        Differentiable in the eps-network's parameters; see
        :func:`~torchrl_qsm.diffusion.sampler.chain_log_prob` for what it leaves out (the noise-free last step).
        """
        return chain_log_prob(
            self.denoiser(observation), chain[0], list(chain[1:]), self.schedule, **self._sampler_options
        )

    def extra_repr(self) -> str:
        return f"action_dim={self.action_dim}, clip_sample={self.clip_sample}, temperature={self.temperature}"


class DiffusionActor(SafeModule):
    """A diffusion-model policy for TorchRL: ``in_keys=["observation"] -> out_keys=["action"]``.

    Constructed like ``torchrl.modules.DiffusionActor`` (the same positional and keyword head:
    ``action_dim, obs_dim, score_network, num_steps, beta_start, beta_end, in_keys, out_keys, spec``;
    this class's own options are keyword-only after it) and usable wherever it is (collectors,
    ``DiffusionBCLoss``, target updaters, ``torch.compile``), with the QSM authors' recipe by default.
    What differs from TorchRL's actor, by design:

    - ``T = 5`` steps and the "vp" schedule by default (TorchRL: 100 steps, linear betas from
      ``beta_start`` to ``beta_end``); passing ``beta_start``/``beta_end`` selects the linear schedule
      with those values, as TorchRL's actor does;
    - the chain runs in ``[-1, 1]`` and its samples are mapped to the bounds of ``spec``, clipped
      after every step, so every action is valid (TorchRL's chain runs unclipped in action units);
      ``spec=None`` means the box ``[-1, 1]^A``;
    - the default eps-network is :class:`~torchrl_qsm.EpsilonNetwork` (learnable Fourier time
      features, a conditioning MLP, mish; TorchRL's: an MLP over ``cat([x_t, s, t])`` with SiLU).

    A custom ``score_network`` takes ``cat([x_t, s, t])`` with ``t`` the raw integer step as a float,
    as in TorchRL. It is not a subclass of TorchRL's class: that class's constructor always builds
    its own inner module (linear schedule, unclipped chain), which this one replaces.

    Exploration (``tensordict.nn.set_exploration_type``):

    - ``RANDOM`` (collectors' default), ``MEAN``, ``MODE`` or unset: a stochastic sample of the
      chain (``x_T ~ N(0, I)``, noise at every step). Evaluate this way to follow the authors.
    - ``DETERMINISTIC``: the chain from ``x_T = 0`` with no injected noise, a repeatable action
      (a fixed latent, not the policy's mode; the authors never evaluate like this), as TorchRL's
      actor does. It is also what a TorchRL ``LossModule`` sets by default, so losses that sample
      (QSMLoss does) switch back to ``RANDOM`` themselves.

    The paper's exploration noise ``N(0, 0.1^2)`` composes the TorchRL way and stays off in
    evaluation by evaluating the bare actor::

        policy = TensorDictSequential(actor, AdditiveGaussianModule(spec, sigma_init=0.1, sigma_end=0.1))

    Args:
        action_dim: size of the action.
        obs_dim: size of the observation (``None``: inferred from the first observation, as TorchRL's
            default network does; run one forward before building optimizers).
        score_network: a custom eps-network taking ``cat([x_t, s, t])``; default
            ``EpsilonNetwork(action_dim, obs_dim, num_steps=num_steps, hidden_sizes=hidden_sizes)``.
        num_steps: ``T``, the number of denoising steps (default 5, the authors').
        beta_start, beta_end: the linear schedule's first and last ``beta`` (selects ``schedule="linear"``).
        in_keys: default ``["observation"]`` (one flat observation).
        out_keys: default ``["action"]``.

    Keyword Args:
        spec: the action spec (``Bounded`` or a ``Composite`` holding it); ``None`` is ``[-1, 1]^A``.
        schedule: ``"vp"`` (the default without betas), ``"cosine"`` or ``"linear"``.
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
        beta_start: float | None = None,
        beta_end: float | None = None,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        *,
        spec: TensorSpec | None = None,
        schedule: ScheduleName | None = None,
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
        betas = {
            name: value for name, value in (("beta_start", beta_start), ("beta_end", beta_end)) if value is not None
        }
        if betas and schedule not in (None, "linear"):
            raise ValueError(f"{' and '.join(betas)} set the linear schedule; schedule={schedule!r} takes none.")
        schedule = schedule or ("linear" if betas else "vp")
        if score_network is None:
            score_network = EpsilonNetwork(action_dim, obs_dim, num_steps=num_steps, hidden_sizes=hidden_sizes)
        action_spec = bounded_action_spec(spec, out_keys[0], action_dim)
        policy = DiffusionPolicy(
            score_network,
            action_dim,
            NoiseSchedule(num_steps, schedule, **betas),
            action_spec.space.low,
            action_spec.space.high,
            clip_sample=clip_sample,
            temperature=temperature,
        )
        super().__init__(
            policy, in_keys=in_keys, out_keys=out_keys, spec=Composite({out_keys[0]: action_spec}), **kwargs
        )
