"""``QSMLoss``: Q-score matching (Psenka et al., ICML 2024) as a TorchRL ``LossModule``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args, Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import dispatch, TensorDictModule
from tensordict.utils import NestedKey
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    _cache_values,
    _pseudo_vmap,
    dispatch_value_estimator,
    distance_loss,
    ValueEstimators,
)

from torchrl_qsm.contract import bounded_action_spec, diffusion_policy, DiffusionPolicyModule
from torchrl_qsm.diagnostics import edge_fraction, first_non_finite, NonFiniteError
from torchrl_qsm.objectives.posterior import posterior_candidates, posterior_spread, weighted_noise

ScoreTarget = Literal["gradient", "q_weighted", "scaled_gradient"]
GradAt = Literal["noised", "clean"]
CriticReduction = Literal["mean", "min", "first"]
LossFunction = Literal["l2", "l1", "smooth_l1"]
Reduction = Literal["mean", "sum", "none"]


class QSMLoss(LossModule):
    r"""Q-score matching: a diffusion policy trained off-policy by matching its score to ``grad_a Q``.

    Critic (``qvalue_loss``), as in the paper's Algorithm 1 and the authors' code::

        a'  = clip(chain sample of the *current* actor at s' + N(0, policy_noise^2), low, high)
        y   = r + gamma (1 - terminated) min_i Q'_i(s', a')         (target critics Q'_i)
        L_Q = sum_i (Q_i(s, a) - y)^2

    Actor (``actor_loss``): with ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)``, the replay action is noised,
    ``a_t = sqrt(alpha_bar_t) a + sqrt(1 - alpha_bar_t) eps``, and the eps-network regresses::

        g   = mean_i grad_a Q_i(s, a_t)        (critic parameters detached)
        L_pi = mean_dims (eps_theta(a_t, s, t) - (-alpha g))^2

    ``eps_theta`` predicts the noise, which points away from the data, so its target is *minus*
    ``alpha`` times the score target ``grad_a Q``. ``alpha`` is the paper's scale of ``grad_a Q``
    (the authors' ``M_q``): at the fixed point ``pi(a|s) ~ exp(alpha Q(s, a))`` (paper eq. 20), so
    it acts as an inverse temperature.

    That target (``score_target="gradient"``, the paper's) is the same at every noise level ``t``, while
    the chain must traverse the *noised* policy, whose score at high noise is far milder. With a sharp
    policy (large ``alpha`` times the critic's curvature) the 5-step sampler oscillates and its clipping
    leaves the samples on the box edges (README, "The sampler's edge collapse"). ``score_target="q_weighted"``
    regresses instead on the noise a perfect eps-network predicts for ``pi ~ exp(alpha Q)`` on the action box,
    the posterior mean ``E[xi | a_t]`` (:mod:`torchrl_qsm.objectives.posterior`)::

        xi_k ~ N(0, I) restricted so that a0_k = (a_t - sigma_t xi_k) / sqrt(alpha_bar_t) is in the box, k = 1..K
        w_k  = softmax_k(alpha R_i Q_i(s, a0_k))        (R: mean, min or first of the online critics, detached)
        L_pi = mean_dims (eps_theta(a_t, s, t) - sum_k w_k xi_k)^2

    It is right at every noise level, bounded, and its support is the box, so ``alpha`` only sets how sharp
    the policy is: the chain stays interior and keeps several modes. It costs ``K`` critic evaluations per
    sample and no action gradient. ``score_target="scaled_gradient"`` is the cheap noise-aware variant,
    ``-sigma_t alpha g`` (the first-order form of the posterior mean at small ``sigma_t``).

    ``alpha="auto"`` with ``"q_weighted"`` learns ``log_alpha`` the way ``SACLoss`` learns its temperature, through
    a ``loss_alpha`` output: the spread of ``pi`` the last denoising step resolves (the candidates' posterior
    standard deviation of ``a0`` at ``t = 0``, in the chain's ``[-1, 1]`` box, geometric mean over action dims)
    is held at ``target_spread``, which means the same on every task::

        loss_alpha = log_alpha * (log target_spread - log spread).detach()

    A broader policy than the target raises ``alpha`` (sharper), a narrower one lowers it. Only ``log_alpha``
    gets a gradient from ``loss_alpha``, and the eps target uses ``alpha`` detached.

    ``alpha="auto"`` with the ``"gradient"`` target sets it from the critic, so that it means the same
    thing on every task: it holds the chain in its stable window. Near a maximum ``a*`` where ``Q`` has
    curvature ``kappa`` in the action (``Q ~ Q* - kappa/2 |a - a*|^2``), the fixed point ``eps = alpha kappa (x - a*)``
    makes each of the sampler's steps map a deviation ``d`` to::

        d <- (1 - c_t alpha kappa) d / sqrt(alpha_t),     c_t = beta_t / sqrt(1 - alpha_bar_t)

    (``c_t`` 0.44..0.84 for the authors' T = 5 vp schedule). Below ``alpha kappa ~ 0.7`` the last
    steps expand deviations, beyond ``~ 3`` they oscillate, and in both cases the clipping leaves
    the samples on the box edges; in between the chain concentrates at ``a*`` (the README's table,
    "The sampler's edge collapse"). The auto mode holds ``alpha kappa_hat = alpha_curvature``
    (default 1.5, halfway into the window, so that states twice as curved as the mean stay
    below 3) with ``kappa_hat`` the critic's measured curvature::

        kappa_i   = -(g(x_i + h v_i) - g(x_i)) . v_i / h      (v_i a random unit direction, h = 0.1)
        kappa_hat = EMA over updates of mean_i max(kappa_i, 0)  (rate 0.01, bias-corrected)
        alpha     = alpha_curvature / kappa_hat               (clamped to [1e-3, 1e4])

    at the first ``curvature_samples`` noised actions ``x_i`` of each batch, in the chain's
    coordinates, with ``g`` the action gradient of the target below. A finite difference, not a
    Hessian-vector product: ReLU critics are piecewise linear, their Hessian is zero almost
    everywhere, while their secant at the chain's scale is what the sampler sees. The loss stays a
    function of its state: each call measures the batch's curvature, uses the ``alpha`` that folding it
    into ``kappa_hat`` gives, and reports both (``action_curvature``, ``alpha``); :class:`CurvatureAlpha`
    commits the measurement, stepped by the loop as ``SoftUpdate`` is (``curvature_sum`` and
    ``curvature_weight``, ``kappa_hat``'s two halves, are buffers saved with the state dict). Calling the
    loss twice moves nothing. Only one eps-network evaluation per sample is
    differentiated, never the ``T``-step chain. ``a_t`` and ``g`` live in the chain's coordinates
    (``normalize``/``denormalize`` of the contract: the ``[-1, 1]`` box of
    :class:`~torchrl_qsm.DiffusionActor`), ``g`` taken through ``denormalize``.

    Args:
        actor_network: the diffusion actor, a ``TensorDictModule`` with one in_key and one out_key
            whose ``.module`` offers :class:`~torchrl_qsm.contract.DiffusionPolicyModule`
            (:class:`~torchrl_qsm.DiffusionActor` does), or the smaller contract of TorchRL's
            ``DiffusionActor`` (``num_steps``, ``alphas_cumprod``, ``add_noise``, ``score_network``),
            which :class:`~torchrl_qsm.contract.ScoreNetworkPolicy` completes; which of the two is settled
            once, here. The loss uses nothing else of it. Pass the bare actor, not an exploration wrapper.
        qvalue_network: ``Q(s, a)``, a ``TensorDictModule`` reading the action and the observation
            and writing ``state_action_value``; copied ``num_qvalue_nets`` times and run through
            ``vmap``.

    Keyword Args:
        action_spec: the bounded action spec (exclusive with ``bounds``); default: the actor's spec.
        bounds: ``(low, high)`` action bounds (exclusive with ``action_spec``).
        num_qvalue_nets: number of critics (2, as in the paper).
        score_target: ``"gradient"`` (default, the paper's ``-alpha g``), ``"q_weighted"`` (the posterior noise
            of ``pi ~ exp(alpha Q)``, above) or ``"scaled_gradient"`` (``-sigma_t alpha g``).
        alpha: the inverse temperature of ``pi ~ exp(alpha Q)``: the scale of ``grad_a Q`` in the eps target
            (default 50, the authors' ``M_q``; 120 for quadruped_walk and humanoid_walk), or ``"auto"``: with
            ``"gradient"`` set from the critic's curvature, with ``"q_weighted"`` learned through ``loss_alpha``
            (above). With ``normalize_grad`` it is the mean magnitude of the eps target instead (try 1).
        num_candidates: ``K``, the noise candidates per sample of ``"q_weighted"`` (default 16; the README's
            performance section measures the cost).
        target_spread: the policy spread ``alpha="auto"`` holds with ``"q_weighted"`` (default 0.1 of the box's
            half-width; SAC's default target entropy, ``-1`` nat per action dim, is a Gaussian of std 0.09 there).
            It must lie below ``sigma_0 / sqrt(alpha_bar_0)``, the widest spread the last step can resolve.
        alpha_init: the first ``alpha`` of the learned ``"q_weighted"`` auto mode (default 1).
        alpha_curvature: the product ``alpha * kappa_hat`` that ``alpha="auto"`` holds (default 1.5).
        curvature_samples: how many transitions of each batch the curvature is measured at
            (default 64; each costs one more action gradient through the critics).
        grad_at: ``"noised"`` (default, the authors' code: ``grad_a Q`` at ``a_t``) or ``"clean"``
            (at the replay action, as Algorithm 1 is written).
        critic_reduction: which critics the actor's target reads: ``"mean"`` (default, the authors') or ``"min"``
            over them, or ``"first"`` alone (TD3's actor; half the critic work of the ``"q_weighted"`` candidates).
        normalize_grad: divide ``g`` by its batch mean magnitude ``mean |g|`` (default ``False``):
            the target then no longer depends on the critic's scale, which keeps the chain stable
            (see the README's notes on the sampler).
        data_score: regress on ``eps - sigma_t alpha g`` instead of ``-alpha g`` (default ``False``),
            with ``eps`` the noise drawn for ``a_t`` and ``sigma_t = sqrt(1 - alpha_bar_t)``: the
            score of the replayed actions' distribution tilted by ``exp(alpha Q)``, so the policy
            keeps the data's shape and moves where Q says so (offline-to-online fine-tuning; with
            ``g = 0`` it is DiffusionBCLoss).
        policy_noise: std of the smoothing noise on next actions, in action units (default 0.1).
        check_finite: raise :class:`NonFiniteError`, naming the key or the loss, when an input the
            loss reads or a loss it returns is NaN or infinite (before any optimizer step can spread
            it into the weights). ``None`` (default): where it costs no device synchronisation, i.e.
            for CPU tensors outside ``torch.compile``; ``True``: always (on CUDA one host sync per
            loss call); ``False``: never.
        loss_function: critic regression, ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        delay_qvalue: keep target critics (default ``True``); update them with ``SoftUpdate``.
        priority_key: where ``forward`` writes the TD error (default ``"td_error"``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses).
        deactivate_vmap: run the critics in a Python loop instead of ``vmap``.
        use_prioritized_weights: ``"auto"`` (default) weights per-sample losses by
            ``priority_weight`` when the batch has it.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_qsm import DiffusionActor, QSMLoss
        >>> n_obs, n_act, batch = 5, 2, [4]
        >>> spec = Bounded(-torch.ones(n_act), torch.ones(n_act), (n_act,))
        >>> actor = DiffusionActor(n_act, n_obs, spec=spec, hidden_sizes=(32, 32))
        >>> critic = ValueOperator(MLP(n_obs + n_act, 1, num_cells=[32, 32]), in_keys=["observation", "action"])
        >>> loss = QSMLoss(actor, critic)
        >>> data = TensorDict({
        ...     "observation": torch.randn(*batch, n_obs), "action": spec.rand(batch),
        ...     ("next", "observation"): torch.randn(*batch, n_obs), ("next", "reward"): torch.randn(*batch, 1),
        ...     ("next", "done"): torch.zeros(*batch, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(*batch, 1, dtype=torch.bool)}, batch)
        >>> out = loss(data)
        >>> (out["loss_actor"] + out["loss_qvalue"]).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``loss.set_keys(name=key)``).

        Attributes:
            action: the replay action. Defaults to ``"action"``.
            state_action_value: what the critic writes. Defaults to ``"state_action_value"``.
            priority: where the TD error is written. Defaults to ``"td_error"``.
            reward: the reward (under ``"next"``). Defaults to ``"reward"``.
            done: the done flag (under ``"next"``). Defaults to ``"done"``.
            terminated: the termination flag (under ``"next"``). Defaults to ``"terminated"``.
            priority_weight: importance weights of prioritized replay. Defaults to ``"priority_weight"``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0, ValueEstimators.TD1, ValueEstimators.TDLambda)
    out_keys = [
        "loss_actor",
        "loss_qvalue",
        "grad_q_norm",
        "eps_pred_mean",
        "eps_pred_std",
        "pred_value",
        "target_value",
        "next_state_value",
        "next_action_edge_fraction",
        "alpha",
    ]

    # alpha="auto" (the class docstring)
    CURVATURE_STEP = 0.1  # h, the finite-difference step, in the chain's coordinates
    CURVATURE_EMA = 0.01  # the EMA's rate per actor_loss call
    ALPHA_BOUNDS = (1e-3, 1e4)

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        action_spec: TensorSpec | None = None,
        bounds: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
        num_qvalue_nets: int = 2,
        score_target: ScoreTarget = "gradient",
        alpha: float | Literal["auto"] = 50.0,
        num_candidates: int = 16,
        target_spread: float = 0.1,
        alpha_init: float = 1.0,
        alpha_curvature: float = 1.5,
        curvature_samples: int = 64,
        grad_at: GradAt = "noised",
        critic_reduction: CriticReduction = "mean",
        normalize_grad: bool = False,
        data_score: bool = False,
        policy_noise: float = 0.1,
        loss_function: LossFunction = "l2",
        delay_qvalue: bool = True,
        priority_key: NestedKey | None = None,
        reduction: Reduction | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        check_finite: bool | None = None,
    ) -> None:
        self._in_keys = None
        super().__init__()
        _check_choice("score_target", score_target, ScoreTarget)
        _check_choice("grad_at", grad_at, GradAt)
        _check_choice("critic_reduction", critic_reduction, CriticReduction)
        _check_choice("loss_function", loss_function, LossFunction)
        _check_choice("reduction", "mean" if reduction is None else reduction, Reduction)
        self.score_target = score_target
        self.learn_alpha = alpha == "auto" and score_target == "q_weighted"
        self.auto_alpha = alpha == "auto" and score_target == "gradient"  # the curvature rule
        if score_target != "gradient" and normalize_grad:
            raise ValueError(f"normalize_grad rescales the gradient target; score_target={score_target!r} excludes it.")
        if alpha == "auto" and score_target == "scaled_gradient":
            raise ValueError(
                "alpha='auto' is defined for score_target='gradient' (curvature) and 'q_weighted' (learned); "
                "give score_target='scaled_gradient' a number."
            )
        if score_target == "q_weighted" and num_candidates < 2:
            raise ValueError(f"num_candidates (K noise candidates per sample) must be >= 2, got {num_candidates}.")
        if self.learn_alpha:
            for name, value in (("target_spread", target_spread), ("alpha_init", alpha_init)):
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"{name} must be finite and > 0, got {value}.")
        if self.auto_alpha:
            if normalize_grad:
                raise ValueError("alpha='auto' sets the scale of grad_a Q itself; it excludes normalize_grad=True.")
            if not (math.isfinite(alpha_curvature) and alpha_curvature > 0):
                raise ValueError(
                    f"alpha_curvature (alpha x the critic's curvature) must be > 0, got {alpha_curvature}."
                )
            if curvature_samples < 1:
                raise ValueError(f"curvature_samples must be >= 1, got {curvature_samples}.")
        elif alpha != "auto" and (isinstance(alpha, str) or not (math.isfinite(alpha) and alpha > 0)):
            raise ValueError(f"alpha (the scale of grad_a Q) must be 'auto' or a finite number > 0, got {alpha!r}.")
        if not (math.isfinite(policy_noise) and policy_noise >= 0):
            raise ValueError(f"policy_noise must be finite and >= 0, got {policy_noise}.")
        if data_score and score_target != "gradient":
            raise ValueError(f"data_score tilts the gradient target; score_target={score_target!r} excludes it.")
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}.")
        _check_actor_keys(actor_network)

        self._set_deprecated_ctor_keys(priority=priority_key)
        self.use_prioritized_weights = use_prioritized_weights
        self.reduction = "mean" if reduction is None else reduction
        self.grad_at = grad_at
        self.num_candidates = num_candidates
        self.target_spread = target_spread
        self.critic_reduction = critic_reduction
        self.normalize_grad = normalize_grad
        self.data_score = data_score
        self.policy_noise = policy_noise
        self.loss_function = loss_function
        self.num_qvalue_nets = num_qvalue_nets
        self.delay_qvalue = delay_qvalue
        self.deactivate_vmap = deactivate_vmap
        self.check_finite = check_finite
        self._inputs_checked: set[str] = set()

        self.convert_to_functional(actor_network, "actor_network")
        # How the loss calls the actor's module, settled once (see _policy). Only an adapter is held here: a
        # LossModule takes every nn.Module in its __dict__ for a functional network of its own.
        module = getattr(self.actor_network, "module", None)
        policy = diffusion_policy(module)
        self._adapter = None if policy is module else policy
        low, high = _action_bounds(self.actor_network, policy, action_spec, bounds)
        self.convert_to_functional(qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=delay_qvalue)
        device = next(self.parameters()).device
        self.register_buffer("min_action", low.to(device))
        self.register_buffer("max_action", high.to(device))
        if self.auto_alpha:
            self.alpha_curvature = alpha_curvature
            self.curvature_samples = curvature_samples
            # kappa_hat = curvature_sum / curvature_weight: an EMA corrected for its start at 0, as Adam's
            self.register_buffer("curvature_sum", torch.zeros((), device=device))
            self.register_buffer("curvature_weight", torch.zeros((), device=device))
            self.out_keys = [*self.out_keys, "action_curvature"]
        elif self.learn_alpha:
            alpha_bar = policy.alphas_cumprod[0]
            widest = ((1 - alpha_bar) / alpha_bar).sqrt().item()
            if target_spread >= widest:
                raise ValueError(
                    f"target_spread={target_spread} is not below sigma_0 / sqrt(alpha_bar_0) = {widest:.3g}, the "
                    "widest posterior spread the last denoising step can resolve with this schedule: lower it."
                )
            self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(alpha_init), device=device))
            self.out_keys = [*self.out_keys, "loss_alpha"]
        else:
            self._alpha = alpha
        if score_target == "q_weighted":
            self.out_keys = [key for key in self.out_keys if key != "grad_q_norm"] + ["policy_spread"]
        self._make_vmap()

    @property
    def alpha(self) -> float | torch.Tensor:
        """The scale of ``grad_a Q`` in the eps target: the constructor's number, or the auto mode's
        current value (a 0-dim tensor; 1 until the first ``actor_loss`` call measures the critic)."""
        if self.learn_alpha:
            return self.log_alpha.detach().exp()
        if self.auto_alpha:  # 1 until CurvatureAlpha has committed a measurement
            alpha = self._curvature_alpha(self.curvature_sum, self.curvature_weight)
            return torch.where(self.curvature_weight > 0, alpha, torch.ones_like(alpha))
        return self._alpha

    @property
    def _policy(self) -> DiffusionPolicyModule:
        """The actor's module through the contract, as settled in ``__init__``: the module itself (not a copy),
        or TorchRL's through :class:`~torchrl_qsm.contract.ScoreNetworkPolicy`, which refers to it. Either sees
        ``actor_network_params`` as each call swaps them in."""
        return self.actor_network.module if self._adapter is None else self._adapter

    @property
    def action_curvature(self) -> torch.Tensor:
        """``kappa_hat`` of the auto mode (0 before its first update)."""
        return self.curvature_sum / self.curvature_weight.clamp_min(1e-12)

    def _make_vmap(self) -> None:
        # Same data, one set of parameters per critic: Q of shape [num_qvalue_nets, *B, 1]. TorchRL's
        # _vmap_func, with the parameters swapped in by _swapped_in (exceptions pass unchanged).
        critic = self.qvalue_network

        def call(critic_input: TensorDictBase, params: TensorDictBase) -> TensorDictBase:
            with _swapped_in(params, critic):
                return critic(critic_input)

        vmap = _pseudo_vmap if self.deactivate_vmap else torch.vmap
        self._vmap_qvalue_networkN0 = vmap(call, (None, 0), randomness=self.vmap_randomness)

    # --- keys -------------------------------------------------------------------------------------
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.state_action_value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *[("next", key) for key in self.actor_network.in_keys],
            *self.qvalue_network.in_keys,
        ]
        self._in_keys = list(dict.fromkeys(keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = values

    def _check_input(self, tensordict: TensorDictBase, keys: Sequence[NestedKey], role: str) -> None:
        """Names a missing key, a wrong action size or dtype; then, if enabled, non-finite inputs.

        The structural checks (and, on the first call of any loss, one transition through the
        networks) run on a role's first call only: the data's layout does not change between updates.
        The finite check runs on every call it is enabled for (``check_finite``).
        """
        if role not in self._inputs_checked:
            self._check_layout(tensordict, keys, role)
            self._inputs_checked.add(role)
        if self._finite_checks_on():
            for key in keys:
                _raise_if_non_finite(tensordict.get(key), f"QSMLoss.{role}: the input {key!r}")

    def _check_layout(self, tensordict: TensorDictBase, keys: Sequence[NestedKey], role: str) -> None:
        for key in keys:
            if tensordict.get(key, None) is None:
                raise _MissingKeyError(
                    f"QSMLoss.{role} needs the key {key!r} in its input, which has keys "
                    f"{list(tensordict.keys(True, True))}. The loss reads {self.in_keys}; "
                    "use loss.set_keys(...) if your data names them differently."
                )
        action = tensordict.get(self.tensor_keys.action)
        if action.shape[-1] != self.max_action.shape[-1]:
            raise ValueError(
                f"The action {self.tensor_keys.action!r} has {action.shape[-1]} dims but the action "
                f"bounds have {self.max_action.shape[-1]}."
            )
        dtype = next(p for p in self.actor_network_params.values(True, True) if p.is_floating_point()).dtype
        for key in [self.tensor_keys.action, *self.actor_network.in_keys, *self.qvalue_network.in_keys]:
            value = tensordict.get(key, None)
            if value is not None and value.is_floating_point() and value.dtype != dtype:
                raise TypeError(
                    f"QSMLoss.{role}: the input {key!r} is {value.dtype} but the networks' parameters are {dtype}; "
                    "convert the data (TorchRL's DoubleToFloat transform on a float64 environment) or the networks."
                )

        if not self._inputs_checked:  # the first call of any loss
            self._probe_networks(tensordict, role)

    def _probe_networks(self, tensordict: TensorDictBase, role: str) -> None:
        """One transition through the eps-network and the first critic, so that a network built for
        other sizes is named as such (the actor's own checks speak first)."""
        transition = tensordict.reshape(-1)[:1]
        action = transition.get(self.tensor_keys.action)
        with torch.no_grad(), _swapped_in(self.actor_network_params, self.actor_network):
            self._probe(
                "the actor's eps-network",
                role,
                transition.select(*self.actor_network.in_keys),
                lambda obs: self._policy.predict_noise(
                    action, obs.get(self.actor_network.in_keys[0]), action.new_zeros(1, dtype=torch.long)
                ),
            )
        critic_input = transition.select(*self.qvalue_network.in_keys, strict=False).clone()
        with torch.no_grad(), _swapped_in(self.qvalue_network_params[0], self.qvalue_network):
            self._probe("the critic", role, critic_input, self.qvalue_network)

    def _probe(self, what: str, role: str, inputs: TensorDictBase, run: Callable) -> None:
        try:
            run(inputs)
        except RuntimeError as err:
            sizes = {key: tuple(value.shape[1:]) for key, value in inputs.items(True, True)}
            raise ValueError(
                f"QSMLoss.{role}: {what} fails on one transition of the batch, whose inputs have sizes {sizes} (and an "
                f"action of {self.max_action.shape[-1]} dims): {err}. Build it for these sizes."
            ) from err

    def _finite_checks_on(self) -> bool:
        if self.check_finite is not None:
            return self.check_finite
        return self.min_action.device.type == "cpu" and not torch.compiler.is_compiling()

    # --- critics ----------------------------------------------------------------------------------
    @property
    @_cache_values
    def _cached_detach_qvalue_network_params(self) -> TensorDictBase:
        return self.qvalue_network_params.detach()

    def _critics(self, tensordict: TensorDictBase, params: TensorDictBase) -> torch.Tensor:
        """``Q_i(s, a)`` of every critic, ``[num_qvalue_nets, *B, 1]``."""
        critic_input = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        return self._vmap_qvalue_networkN0(critic_input, params).get(self.tensor_keys.state_action_value)

    @torch.no_grad()
    def state_action_value(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``Q(s, a)`` as the actor's target sees it: the mean (``critic_reduction="min"``: the min)
        over the critics, ``[*B, 1]``, no gradients; e.g. the ranking of
        :class:`~torchrl_qsm.BestOfNActor`."""
        return self._reduced_q(tensordict, self.qvalue_network_params)

    def _reduced_q(self, tensordict: TensorDictBase, params: TensorDictBase) -> torch.Tensor:
        """``R_i Q_i(s, a)``, ``[*B, 1]``: the mean or the min over the critics, or the first critic alone."""
        if self.critic_reduction == "first":
            return self._critics(tensordict, params[:1])[0]
        q = self._critics(tensordict, params)
        return q.mean(0) if self.critic_reduction == "mean" else q.min(0).values

    def _action_gradient(
        self, tensordict: TensorDictBase, x: torch.Tensor, to_action: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``g = grad_x R_i Q_i(s, to_action(x))`` with ``R`` the mean (or min) over critics.

        One ``torch.func.grad`` through the vmapped critics (no graph break under ``torch.compile``);
        the critics' parameters are detached, so no gradient reaches them.
        """
        params = self._cached_detach_qvalue_network_params
        action_key = self.tensor_keys.action

        def total_q(x: torch.Tensor) -> torch.Tensor:
            return self._reduced_q(tensordict.clone(False).set(action_key, to_action(x)), params).sum()

        return torch.func.grad(total_q)(x.detach())

    @torch.no_grad()
    def _measure_curvature(
        self,
        tensordict: TensorDictBase,
        x: torch.Tensor,
        grad_q: torch.Tensor,
        to_action: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``mean_i max(kappa_i, 0)``: the secant curvature of ``Q`` at the first ``curvature_samples`` rows of
        ``x`` (the class docstring)."""
        n = min(self.curvature_samples, x.reshape(-1, x.shape[-1]).shape[0])
        x = x.reshape(-1, x.shape[-1])[:n]
        rows = tensordict.reshape(-1)[:n]
        h = self.CURVATURE_STEP
        v = torch.randn_like(x)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        with torch.enable_grad():
            moved = self._action_gradient(rows, x + h * v, to_action)
        kappa = -((moved - grad_q.reshape(-1, x.shape[-1])[:n]) * v).sum(-1) / h
        return kappa.clamp_min(0).mean()

    def _folded(self, kappa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(curvature_sum, curvature_weight)`` once ``kappa`` is folded into the EMA (rate ``CURVATURE_EMA``)."""
        rate = self.CURVATURE_EMA
        weight = self.curvature_weight
        return torch.lerp(self.curvature_sum, kappa, rate), torch.lerp(weight, torch.ones_like(weight), rate)

    def _curvature_alpha(self, curvature_sum: torch.Tensor, curvature_weight: torch.Tensor) -> torch.Tensor:
        """``alpha_curvature / kappa_hat``, ``kappa_hat = curvature_sum / curvature_weight``, in ALPHA_BOUNDS."""
        return (self.alpha_curvature * curvature_weight / curvature_sum).clamp(*self.ALPHA_BOUNDS)

    @torch.no_grad()
    def _posterior_noise(
        self, tensordict: TensorDictBase, x_t: torch.Tensor, alpha_bar: torch.Tensor, policy: DiffusionPolicyModule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_k w_k xi_k, spread)`` of the ``"q_weighted"`` target (the class docstring) for each sample.

        The ``K`` candidates of every sample go through the vmapped critics as one ``[K, *B]`` batch.
        """
        low, high = policy.normalize(self.min_action), policy.normalize(self.max_action)
        xi, a0 = posterior_candidates(x_t, alpha_bar, low, high, self.num_candidates)
        candidates = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        candidates = candidates.expand(self.num_candidates, *tensordict.shape).clone(False)
        candidates.set(self.tensor_keys.action, policy.denormalize(a0))
        q = self._reduced_q(candidates, self._cached_detach_qvalue_network_params).squeeze(-1)
        target, weights = weighted_noise(xi, self.alpha * q)
        return target, posterior_spread(a0, weights)

    def alpha_loss(self, policy_spread: torch.Tensor) -> torch.Tensor:
        """``loss_alpha = log_alpha * (log target_spread - log policy_spread)``: learns ``alpha`` (the
        ``"q_weighted"`` auto mode) from the spread ``actor_loss`` measured (its ``policy_spread`` output)."""
        return self.log_alpha * (math.log(self.target_spread) - policy_spread.detach().log())

    def _check_loss(self, loss: torch.Tensor, name: str, param_sets: Sequence[str]) -> None:
        """Raises NonFiniteError naming the first non-finite parameter when ``loss`` is not finite."""
        if torch.isfinite(loss).all():
            return
        for param_set in param_sets:
            for key, value in getattr(self, param_set).items(True, True):
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise NonFiniteError(
                        f"QSMLoss: {name} is {loss.flatten()[0].item()} because {param_set}[{key!r}] is not finite: "
                        "an earlier optimizer step diverged (lower the learning rate, or look for a non-finite "
                        "loss before it)."
                    )
        raise NonFiniteError(
            f"QSMLoss: {name} is {loss.flatten()[0].item()} with finite inputs and parameters: it overflowed "
            "(rewards or alpha * grad_a Q far too large for float32?)."
        )

    # --- losses -----------------------------------------------------------------------------------
    def actor_loss(
        self, tensordict: TensorDictBase, *, t: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Regresses ``eps_theta(a_t, s, t)`` on the score target; returns ``(loss, metrics)``.

        ``t`` (integer steps, shape ``batch``) and ``noise`` (``eps``, the action's shape) are drawn
        from ``U{0..T-1}`` and ``N(0, I)`` unless given.
        """
        obs_key = self.actor_network.in_keys[0]
        self._check_input(tensordict, [self.tensor_keys.action, obs_key], "actor_loss")
        action = tensordict.get(self.tensor_keys.action)
        observation = tensordict.get(obs_key)
        policy = self._policy
        with _swapped_in(self.actor_network_params, self.actor_network):
            if t is None:
                t = torch.randint(0, policy.num_steps, action.shape[:-1], device=action.device)
            noised, noise = policy.add_noise(action, t, noise)
            eps_pred = policy.predict_noise(noised, observation, t)
            alpha_bar = policy.alphas_cumprod[t].unsqueeze(-1)
            if self.score_target == "q_weighted":
                eps_target, spread = self._posterior_noise(tensordict, noised, alpha_bar, policy)
            else:
                x = noised if self.grad_at == "noised" else policy.normalize(action)
                grad_q = self._action_gradient(tensordict, x, policy.denormalize)
        metrics = {}
        if self.auto_alpha:  # this batch's curvature, folded in without writing anything (CurvatureAlpha does)
            metrics["action_curvature"] = self._measure_curvature(tensordict, x, grad_q, policy.denormalize)
            alpha = self._curvature_alpha(*self._folded(metrics["action_curvature"]))
        else:
            alpha = self.alpha
        if self.score_target == "q_weighted":
            # the spread at t = 0 (the class docstring); a batch without such a sample reads as on target
            first = t == 0
            log_spread = torch.where(first, spread.log(), 0.0).sum() / first.sum().clamp_min(1)
            log_spread = torch.where(first.any(), log_spread, math.log(self.target_spread))
            metrics["policy_spread"] = log_spread.exp()
        else:
            scale = grad_q.abs().mean().clamp_min(1e-8) if self.normalize_grad else 1.0
            q_score = alpha * grad_q / scale
            sigma = (1 - alpha_bar).sqrt()
            if self.data_score:
                eps_target = noise - sigma * q_score
            elif self.score_target == "scaled_gradient":
                eps_target = -sigma * q_score
            else:
                eps_target = -q_score
            metrics["grad_q_norm"] = grad_q.norm(dim=-1).mean()
        loss = (eps_pred - eps_target).pow(2).mean(-1)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=self._maybe_get_priority_weight(tensordict))
        if self._finite_checks_on():
            self._check_loss(loss, "loss_actor", ("actor_network_params", "qvalue_network_params"))
        eps_pred = eps_pred.detach()
        metrics.update(
            eps_pred_mean=eps_pred.mean(),
            eps_pred_std=eps_pred.std(),
            alpha=torch.as_tensor(alpha, dtype=eps_pred.dtype, device=eps_pred.device),
        )
        self._clear_weakrefs(
            tensordict, "actor_network_params", "qvalue_network_params", "target_qvalue_network_params"
        )
        return loss, metrics

    def _next_action(self, next_tensordict: TensorDictBase) -> torch.Tensor:
        """``a'``: a chain sample of the current actor (RANDOM mode) + smoothing noise, clipped to the bounds."""
        actor = self.actor_network
        with (
            torch.no_grad(),
            set_exploration_type(ExplorationType.RANDOM),
            _swapped_in(self.actor_network_params, actor),
        ):
            action = actor(next_tensordict.select(*actor.in_keys)).get(actor.out_keys[0])
            noise = torch.randn_like(action) * self.policy_noise
            return torch.clamp(action + noise, self.min_action, self.max_action)

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Regresses both critics on the TD target; returns ``(loss, metrics)`` (metrics hold ``td_error``)."""
        keys = self.tensor_keys
        self._check_input(
            tensordict,
            [keys.action, ("next", keys.reward), ("next", keys.done), ("next", keys.terminated)]
            + [("next", key) for key in self.actor_network.in_keys],
            "qvalue_loss",
        )
        weights = self._maybe_get_priority_weight(tensordict)
        tensordict = tensordict.clone(False)
        next_tensordict = tensordict.get("next")
        next_action = self._next_action(next_tensordict)
        with torch.no_grad():
            next_q = (
                self._critics(
                    next_tensordict.clone(False).set(keys.action, next_action), self.target_qvalue_network_params
                )
                .min(0)
                .values
            )
            tensordict.set(("next", keys.state_action_value), next_q)
            target = self.value_estimator.value_estimate(tensordict)
        q = self._critics(tensordict, self.qvalue_network_params)
        loss = distance_loss(q, target.expand_as(q), loss_function=self.loss_function).sum(0).squeeze(-1)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        if self._finite_checks_on():
            self._check_loss(
                loss, "loss_qvalue", ("qvalue_network_params", "target_qvalue_network_params", "actor_network_params")
            )
        metrics = {
            "td_error": (q.detach() - target).abs().max(0).values.squeeze(-1),
            "pred_value": q.detach().mean(),
            "target_value": target.mean(),
            "next_state_value": next_q.mean(),
            "next_action_edge_fraction": edge_fraction(next_action, self.min_action, self.max_action),
        }
        self._clear_weakrefs(
            tensordict, "actor_network_params", "qvalue_network_params", "target_qvalue_network_params"
        )
        return loss, metrics

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Both losses and their detached metrics; writes the TD error into ``tensordict``."""
        loss_qvalue, metrics_qvalue = self.qvalue_loss(tensordict)
        loss_actor, metrics_actor = self.actor_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, metrics_qvalue.pop("td_error"))
        if self.learn_alpha:
            metrics_actor["loss_alpha"] = self.alpha_loss(metrics_actor["policy_spread"])
        return TensorDict(loss_actor=loss_actor, loss_qvalue=loss_qvalue, **metrics_actor, **metrics_qvalue)

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> QSMLoss:
        """TD0 (default), TD1 or TD(lambda) on ``("next", state_action_value)`` written by ``qvalue_loss``."""
        value_type, hp = self._prepare_value_estimator_kwargs(value_type, **hyperparams)
        if value_type is None:
            return self
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value": self.tensor_keys.state_action_value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hp,
        )
        return self


class CurvatureAlpha:
    """Commits ``QSMLoss(alpha="auto")``'s curvature measurements (the ``"gradient"`` target), outside the loss.

    The loss measures the critic's curvature on each call and reports it (``action_curvature``); this folds it
    into the loss's ``kappa_hat``, so that the next call starts from it, as ``SoftUpdate`` steps target
    networks::

        alpha_updater = CurvatureAlpha(loss)
        out = loss(batch)
        ...  # backward, optimizer steps
        alpha_updater.step(out["action_curvature"])

    The ``alpha`` a call used is the one this step commits. Without the step ``alpha`` stays 1.
    """

    def __init__(self, loss: QSMLoss) -> None:
        if not loss.auto_alpha:
            raise ValueError("CurvatureAlpha steps QSMLoss(alpha='auto', score_target='gradient'); this loss has none.")
        self.loss = loss

    @torch.no_grad()
    def step(self, action_curvature: torch.Tensor) -> None:
        """Folds one measured curvature (a loss output) into ``kappa_hat``."""
        total, weight = self.loss._folded(action_curvature)
        self.loss.curvature_sum.copy_(total)
        self.loss.curvature_weight.copy_(weight)


class _MissingKeyError(KeyError):
    """A KeyError whose message prints as written (KeyError quotes its argument)."""

    def __str__(self) -> str:
        return str(self.args[0])


class _swapped_in:
    """``params.to_module(module)`` as a context that lets every exception through unchanged.

    (tensordict's own context returns a TensorDict from ``__exit__`` when a ``BaseException`` such
    as ``KeyboardInterrupt`` passes, and Python's test of that value for truth raises a
    ``RuntimeError`` that replaces the interrupt.)
    """

    def __init__(self, params: TensorDictBase, module: torch.nn.Module) -> None:
        self.params, self.module = params, module

    def __enter__(self) -> None:
        self.previous = self.params.to_module(self.module, preserve_module_state=False)
        self.previous.__enter__()

    def __exit__(self, *exc_info) -> None:
        self.previous.__exit__(None, None, None)


def _raise_if_non_finite(value: torch.Tensor, what: str) -> None:
    index = first_non_finite(value)
    if index is None:
        return
    raise NonFiniteError(
        f"{what} holds {value[index].item()} at index {list(index)} (shape {tuple(value.shape)}): a NaN or infinite "
        "value in the data would make every weight it reaches non-finite after one optimizer step. Find where it "
        "entered (the environment's reward or observation, an action) and drop or fix those transitions."
    )


def _check_choice(name: str, value: str, choices) -> None:
    choices = get_args(choices)
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {choices}.")


def _check_actor_keys(actor_network: TensorDictModule) -> None:
    """A TypeError unless the actor reads one key and writes one (not an exploration wrapper)."""
    if len(getattr(actor_network, "in_keys", ())) != 1 or len(getattr(actor_network, "out_keys", ())) != 1:
        raise TypeError(
            f"QSMLoss needs a diffusion actor with one in_key and one out_key; {type(actor_network).__name__} has "
            f"in_keys={getattr(actor_network, 'in_keys', None)}, out_keys={getattr(actor_network, 'out_keys', None)}. "
            "Pass the bare actor, not an exploration wrapper."
        )


def _action_bounds(
    actor_network: TensorDictModule,
    policy: DiffusionPolicyModule,
    action_spec: TensorSpec | None,
    bounds: tuple[float | torch.Tensor, float | torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` from ``action_spec`` xor ``bounds``, else from the actor's spec (checked by
    :func:`~torchrl_qsm.contract.bounded_action_spec`)."""
    if action_spec is not None and bounds is not None:
        raise ValueError("Pass action_spec or bounds to QSMLoss, not both.")
    action_key = actor_network.out_keys[0]
    spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
    if isinstance(spec, Composite) and spec.get(action_key, None) is None:
        spec = None  # e.g. TorchRL's DiffusionActor built without a spec: Composite(action=None)
    action_dim = getattr(policy, "action_dim", None)
    if bounds is not None:
        low, high = (torch.as_tensor(b, dtype=torch.float32) for b in bounds)
        if action_dim is None:  # scalar bounds give a one-dim box
            action_dim = torch.broadcast_shapes(low.shape, high.shape, (1,))[-1]
        spec = Bounded(low.expand(action_dim), high.expand(action_dim), (action_dim,))
    if spec is None:
        raise ValueError(
            "QSMLoss needs the action bounds: pass action_spec= or bounds=, or give the actor a bounded spec."
        )
    if action_dim is None:
        action_dim = (spec[action_key] if action_key in spec.keys(True) else spec).shape[-1]
    spec = bounded_action_spec(spec, action_key, action_dim)
    return spec.space.low.float().clone(), spec.space.high.float().clone()
