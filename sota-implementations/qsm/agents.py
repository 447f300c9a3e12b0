"""The algorithms the training loop can run: QSM (ours) and TorchRL's SAC and TD3 as baselines.

Each factory returns an :class:`Agent`, everything the loop in qsm.py needs, so that the baselines
run with the same environments, collector, replay buffer, widths, batch, warm-up and evaluation as
QSM and only the algorithm differs. SAC and TD3 are built as TorchRL's sota-implementations build
them (sac/utils.py, td3/utils.py): TorchRL's own losses, actors and target updaters.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType
from torchrl.modules import (
    AdditiveGaussianModule,
    MLP,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)
from torchrl._utils import compile_with_warmup
from torchrl.objectives import SACLoss, SoftUpdate, TD3Loss

from torchrl_qsm import DiffusionActor, EpsilonNetwork, QSMLoss

ALGORITHMS = ("qsm", "sac", "td3")


@dataclass
class Agent:
    """What the training loop needs from an algorithm.

    ``exploration_policy`` collects, ``policy`` is evaluated under ``eval_exploration``;
    ``update(batch)`` runs one gradient step (losses, backward, optimizer steps, target update) and
    returns detached metrics; ``schedulers`` are stepped after each update (outside ``update``, so a
    compiled update sees no Python learning-rate floats change); ``stateful`` is what a checkpoint holds.
    """

    policy: TensorDictModule
    exploration_policy: TensorDictModule
    eval_exploration: ExplorationType
    loss: nn.Module
    update: Callable[[TensorDict], TensorDict]
    schedulers: list = field(default_factory=list)
    stateful: dict[str, object] = field(default_factory=dict)


def adam(params, lr: float, fused: bool) -> torch.optim.Adam:
    """Adam over the trainable entries.

    The learning rate is a tensor, so schedulers update it in place and a compiled update does not
    recompile when it changes; on CUDA the step is capturable, so the update can run as a CUDA graph.
    """
    params = [p for p in params if p.requires_grad]
    device = params[0].device
    return torch.optim.Adam(
        params, lr=torch.tensor(lr, device=device), fused=fused or None, capturable=device.type == "cuda"
    )


def compile_update(
    update: Callable[[TensorDict], TensorDict], *, mode: str, recompute_pointwise: bool = True, warmup: int = 1
) -> Callable[[TensorDict], TensorDict]:
    """``update`` under ``torch.compile`` (after ``warmup`` eager calls, as TorchRL's sota scripts do).

    ``recompute_pointwise``: AOTAutograd's partitioner may recompute, in the backward, the pointwise
    results the backward needs instead of saving them from the forward
    (``torch._functorch.config.ban_recompute_materialized_backward=False`` while the update compiles).
    It matters for ReLU critics: by default each ReLU saves its mask ``h <= 0`` as a bool tensor, and
    inductor's CPU code writes bool tensors through a scalar path (``VecMask<float>::store`` converts via
    the generic 64-lane ``Vectorized<bool>``): 1.3 ms per [2, 256, 512] mask against 0.09 ms in eager,
    about 4 of the 29 ms of a compiled QSM update at widths 512. Recomputed, the mask is fused into the
    backward kernel that reads it; the values are the same (benchmarks/README.md, "Compiled updates").
    The setting is read when the update compiles; dynamo does not guard on it, so within one process
    updates of the same factory share the compiled code of whichever compiled first.
    """
    compiled = compile_with_warmup(update, mode=mode, warmup=warmup)
    if not recompute_pointwise:
        return compiled

    def run(batch: TensorDict) -> TensorDict:
        with torch._functorch.config.patch(ban_recompute_materialized_backward=False):
            return compiled(batch)

    return run


def cosine_decay(horizon: int, step: int) -> float:
    """``0.5 (1 + cos(pi min(step, horizon) / horizon))``: 1 -> 0 over ``horizon`` steps (1 if horizon is 0)."""
    if horizon <= 0:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, horizon) / horizon))


def critic_network(obs_dim: int, action_dim: int, hidden_sizes: Sequence[int], activation: type[nn.Module], device) -> ValueOperator:
    net = MLP(obs_dim + action_dim, 1, num_cells=list(hidden_sizes), activation_class=activation, device=device)
    return ValueOperator(net, in_keys=["observation", "action"])


def make_qsm_agent(
    obs_dim: int,
    action_spec: Bounded,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    actor_activation: type[nn.Module] | None = None,
    critic_activation: type[nn.Module] = nn.ReLU,
    layer_norm: bool = False,
    time_embedding: str = "fourier",
    num_steps: int = 5,
    schedule: str = "vp",
    temperature: float = 1.0,
    alpha: float = 50.0,
    grad_at: str = "noised",
    critic_reduction: str = "mean",
    normalize_grad: bool = False,
    policy_noise: float = 0.1,
    exploration_std: float = 0.1,
    gamma: float = 0.99,
    tau: float = 0.005,
    lr: float = 3e-4,
    actor_lr_decay_updates: int = 2_000_000,
    fused_adam: bool = True,
    bf16_matmuls: bool = False,
    device: torch.device | str = "cpu",
) -> Agent:
    """QSM with the authors' recipe by default (QSM.md): T = 5, vp, alpha 50, mish eps-network, ReLU critics."""
    action_dim = action_spec.shape[-1]
    network_options = {"activation": actor_activation} if actor_activation is not None else {}
    eps_network = EpsilonNetwork(
        action_dim, obs_dim, hidden_sizes=tuple(hidden_sizes), layer_norm=layer_norm, time_embedding=time_embedding,
        **network_options,
    )
    actor = DiffusionActor(
        action_dim, obs_dim, eps_network, num_steps=num_steps, spec=action_spec, schedule=schedule, temperature=temperature
    ).to(device)
    loss = QSMLoss(
        actor,
        critic_network(obs_dim, action_dim, hidden_sizes, critic_activation, device),
        alpha=alpha,
        grad_at=grad_at,
        critic_reduction=critic_reduction,
        normalize_grad=normalize_grad,
        policy_noise=policy_noise,
    )
    loss.make_value_estimator(gamma=gamma)
    updater = SoftUpdate(loss, tau=tau)
    actor_optim = adam(loss.actor_network_params.values(True, True), lr, fused_adam)
    critic_optim = adam(loss.qvalue_network_params.values(True, True), lr, fused_adam)
    scheduler = torch.optim.lr_scheduler.LambdaLR(actor_optim, functools.partial(cosine_decay, actor_lr_decay_updates))
    device_type = torch.device(device).type

    def update(batch: TensorDict) -> TensorDict:
        # bf16_matmuls: matmuls in bfloat16 under autocast; the schedule, losses and optimizer stay fp32
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16_matmuls):
            out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        actor_optim.step()
        critic_optim.step()
        actor_optim.zero_grad(set_to_none=True)
        critic_optim.zero_grad(set_to_none=True)
        updater.step()
        return out.detach()

    exploration = TensorDictSequential(
        actor, AdditiveGaussianModule(action_spec, sigma_init=exploration_std, sigma_end=exploration_std, device=device)
    )
    stateful = {"loss": loss, "actor_optim": actor_optim, "critic_optim": critic_optim, "scheduler": scheduler, "target_updater": updater}
    return Agent(actor, exploration, ExplorationType.RANDOM, loss, update, [scheduler], stateful)


def make_sac_agent(
    obs_dim: int,
    action_spec: Bounded,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    gamma: float = 0.99,
    tau: float = 0.005,
    lr: float = 3e-4,
    fused_adam: bool = True,
    device: torch.device | str = "cpu",
) -> Agent:
    """TorchRL's SAC sota agent: TanhNormal actor, twin critics, learned entropy coefficient; evaluated at its mean."""
    action_dim = action_spec.shape[-1]
    net = nn.Sequential(
        MLP(obs_dim, 2 * action_dim, num_cells=list(hidden_sizes), activation_class=nn.ReLU, device=device),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        spec=action_spec,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high, "tanh_loc": False},
        default_interaction_type=InteractionType.RANDOM,
    )
    loss = SACLoss(
        actor, critic_network(obs_dim, action_dim, hidden_sizes, nn.ReLU, device), num_qvalue_nets=2,
        loss_function="l2", delay_actor=False, delay_qvalue=True,
    )
    loss.make_value_estimator(gamma=gamma)
    updater = SoftUpdate(loss, tau=tau)
    actor_optim = adam(loss.actor_network_params.values(True, True), lr, fused_adam)
    critic_optim = adam(loss.qvalue_network_params.values(True, True), lr, fused_adam)
    alpha_optim = adam([loss.log_alpha], lr, fused_adam)
    optimizers = (actor_optim, critic_optim, alpha_optim)

    def update(batch: TensorDict) -> TensorDict:
        out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        updater.step()
        return out.detach()

    stateful = {"loss": loss, "actor_optim": actor_optim, "critic_optim": critic_optim, "alpha_optim": alpha_optim, "target_updater": updater}
    return Agent(actor, actor, ExplorationType.DETERMINISTIC, loss, update, [], stateful)


class _Counter:
    """An update counter that checkpoints with the agent (TD3's actor delay); a Python int, no device sync."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def make_td3_agent(
    obs_dim: int,
    action_spec: Bounded,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    exploration_std: float = 0.1,
    policy_delay: int = 2,
    gamma: float = 0.99,
    tau: float = 0.005,
    lr: float = 3e-4,
    fused_adam: bool = True,
    device: torch.device | str = "cpu",
) -> Agent:
    """TorchRL's TD3 sota agent: tanh actor with target, twin critics, actor and targets updated every 2nd step."""
    action_dim = action_spec.shape[-1]
    actor = TensorDictSequential(
        TensorDictModule(
            MLP(obs_dim, action_dim, num_cells=list(hidden_sizes), activation_class=nn.ReLU, device=device),
            in_keys=["observation"],
            out_keys=["param"],
        ),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=action_spec),
    )
    exploration = TensorDictSequential(
        actor, AdditiveGaussianModule(action_spec, sigma_init=exploration_std, sigma_end=exploration_std, device=device)
    )
    loss = TD3Loss(
        actor, critic_network(obs_dim, action_dim, hidden_sizes, nn.ReLU, device), action_spec=action_spec,
        num_qvalue_nets=2, loss_function="l2", delay_actor=True, delay_qvalue=True, policy_noise=0.2, noise_clip=0.5,
    )
    loss.make_value_estimator(gamma=gamma)
    updater = SoftUpdate(loss, tau=tau)
    actor_optim = adam(loss.actor_network_params.values(True, True), lr, fused_adam)
    critic_optim = adam(loss.qvalue_network_params.values(True, True), lr, fused_adam)
    counter = _Counter()

    def update(batch: TensorDict) -> TensorDict:
        loss_qvalue, metrics = loss.value_loss(batch)
        loss_qvalue.backward()
        critic_optim.step()
        critic_optim.zero_grad(set_to_none=True)
        out = TensorDict(loss_qvalue=loss_qvalue.detach(), pred_value=metrics["pred_value"].mean())
        counter.count += 1
        if counter.count % policy_delay == 0:
            loss_actor, _ = loss.actor_loss(batch)
            loss_actor.backward()
            actor_optim.step()
            actor_optim.zero_grad(set_to_none=True)
            updater.step()
            out["loss_actor"] = loss_actor.detach()
        return out

    stateful = {"loss": loss, "actor_optim": actor_optim, "critic_optim": critic_optim, "target_updater": updater, "counter": counter}
    return Agent(actor, exploration, ExplorationType.DETERMINISTIC, loss, update, [], stateful)
