"""TorchRL's SAC and TD3, built as TorchRL's sota-implementations build them (sac/utils.py, td3/utils.py).

Used by the update-speed benchmark and the learning harness, so that QSM is compared with the
baselines TorchRL users run: same widths, batch and data, TorchRL's own losses and actors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import (
    AdditiveGaussianModule,
    MLP,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)
from torchrl.objectives import SACLoss, SoftUpdate, TD3Loss


@dataclass
class Agent:
    """What a training loop needs from an algorithm.

    ``policy`` acts in evaluation, ``exploration_policy`` collects; ``update(batch)`` runs one
    gradient step (all losses, optimizers and target updates) and returns detached metrics;
    ``stateful`` lists what a checkpoint must hold.
    """

    policy: TensorDictModule
    exploration_policy: TensorDictModule
    loss: nn.Module
    update: Callable[[TensorDict], TensorDict]
    stateful: dict[str, object] = field(default_factory=dict)


def _critic(obs_dim: int, action_dim: int, hidden_sizes, device) -> ValueOperator:
    net = MLP(obs_dim + action_dim, 1, num_cells=list(hidden_sizes), activation_class=nn.ReLU, device=device)
    return ValueOperator(net, in_keys=["observation", "action"])


def _adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr)


def make_sac(obs_dim: int, action_spec: Bounded, hidden_sizes=(256, 256), *, gamma=0.99, tau=0.005, lr=3e-4, device="cpu") -> Agent:
    """TorchRL's SAC sota agent: TanhNormal actor (biased softplus scale), twin critics, learned alpha."""
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
    loss = SACLoss(actor, _critic(obs_dim, action_dim, hidden_sizes, device), num_qvalue_nets=2, loss_function="l2", delay_actor=False, delay_qvalue=True)
    loss.make_value_estimator(gamma=gamma)
    updater = SoftUpdate(loss, tau=tau)
    actor_optim = _adam(loss.actor_network_params.values(True, True), lr)
    critic_optim = _adam(loss.qvalue_network_params.values(True, True), lr)
    alpha_optim = torch.optim.Adam([loss.log_alpha], lr=lr)
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
    # SAC collects with its own stochastic policy and evaluates with the mean action (TorchRL's DETERMINISTIC)
    return Agent(actor, actor, loss, update, stateful)


def make_td3(
    obs_dim: int, action_spec: Bounded, hidden_sizes=(256, 256), *, gamma=0.99, tau=0.005, lr=3e-4,
    exploration_std=0.1, policy_delay=2, device="cpu",
) -> Agent:
    """TorchRL's TD3 sota agent: deterministic tanh actor, target actor and critics, delayed actor updates."""
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
        actor, _critic(obs_dim, action_dim, hidden_sizes, device), action_spec=action_spec, num_qvalue_nets=2,
        loss_function="l2", delay_actor=True, delay_qvalue=True, policy_noise=0.2, noise_clip=0.5,
    )
    loss.make_value_estimator(gamma=gamma)
    updater = SoftUpdate(loss, tau=tau)
    actor_optim = _adam(loss.actor_network_params.values(True, True), lr)
    critic_optim = _adam(loss.qvalue_network_params.values(True, True), lr)
    step = [0]

    def update(batch: TensorDict) -> TensorDict:
        loss_qvalue, metrics = loss.value_loss(batch)
        loss_qvalue.backward()
        critic_optim.step()
        critic_optim.zero_grad(set_to_none=True)
        out = {"loss_qvalue": loss_qvalue.detach(), "pred_value": metrics["pred_value"].mean()}
        step[0] += 1
        if step[0] % policy_delay == 0:
            loss_actor, _ = loss.actor_loss(batch)
            loss_actor.backward()
            actor_optim.step()
            actor_optim.zero_grad(set_to_none=True)
            updater.step()
            out["loss_actor"] = loss_actor.detach()
        return TensorDict(out)

    stateful = {"loss": loss, "actor_optim": actor_optim, "critic_optim": critic_optim, "target_updater": updater}
    return Agent(actor, exploration, loss, update, stateful)
