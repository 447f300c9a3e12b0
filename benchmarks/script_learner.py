"""The training script's update as the benchmarks time it: qsm.py's ``make_update`` on the script's factories.

    learner = make_learner(cfg, env, device)   # cfg: the script's config (sota-implementations/qsm/config.yaml)
    metrics = learner["learn"](batch)          # one update, the actor's learning-rate schedule stepped after it

``learner`` holds ``policy`` (the diffusion actor), ``exploration_policy``, ``learn`` and ``state`` (the loss,
its optimizers and target updater), built in the order qsm.py builds them, compiled where the config says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sota-implementations" / "qsm"))

from torchrl_qsm import CurvatureAlpha  # noqa: E402

import qsm  # noqa: E402  (the script folder is not a package)
from utils import (  # noqa: E402
    compile_enabled,
    compile_update,
    make_alpha_optimizer,
    make_critic,
    make_loss_module,
    make_optimizers,
    make_qsm_agent,
)


def make_learner(cfg: DictConfig, env, device: torch.device) -> dict:
    actor, exploration_policy = make_qsm_agent(cfg, env, device)
    loss, target_updater = make_loss_module(cfg, actor, make_critic(cfg, env, device))
    actor_optim, critic_optim, actor_lr_schedule = make_optimizers(cfg, loss)
    optimizers = [o for o in (actor_optim, critic_optim, make_alpha_optimizer(cfg, loss)) if o is not None]
    curvature_alpha = CurvatureAlpha(loss) if loss.auto_alpha else None
    update = qsm.make_update(cfg, device, loss, optimizers, target_updater, curvature_alpha)
    if compile_enabled(cfg, device)[0]:
        update = compile_update(update, cfg, device)

    def learn(batch: TensorDict) -> TensorDict:
        torch.compiler.cudagraph_mark_step_begin()
        metrics = update(batch).clone()
        actor_lr_schedule.step()
        return metrics

    state = dict(loss=loss, actor_optim=actor_optim, critic_optim=critic_optim, target_updater=target_updater)
    return dict(policy=actor, exploration_policy=exploration_policy, learn=learn, state=state)
