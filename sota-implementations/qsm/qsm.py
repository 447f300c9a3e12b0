"""Q-score matching (QSM) on DeepMind Control, TorchRL-style.

    python sota-implementations/qsm/qsm.py env=quickstart                 # walker-stand, ~13 min on a 2-core CPU
    python sota-implementations/qsm/qsm.py env.domain=walker env.task=run
    python sota-implementations/qsm/qsm.py checkpoint.resume=outputs/<run>   # its newest checkpoint

Each run writes to its results folder (printed at start): the resolved ``config.yaml``,
``returns.csv`` (train and eval returns by frame), ``learning_curve.png``, ``checkpoints/`` (the newest
two ``torchrl.checkpoint`` folders) and the logger's files. The factories live in utils.py, the loop in loop.py.
"""

from __future__ import annotations

import ctypes.util
import os

if "DISPLAY" not in os.environ and "MUJOCO_GL" not in os.environ:
    # Headless, before MuJoCo is first imported (torchrl imports it): render eval videos with EGL where its
    # library exists; otherwise physics only (MuJoCo's default, GLFW, warns without a display and can fail).
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "disable"

import random
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tensordict import TensorDict
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType

from torchrl_qsm import BestOfNActor, CurvatureAlpha

from checkpoints import RunFolder
from config import resolve_device, validate_config
from loop import train
from update import make_update
from utils import (
    compile_enabled,
    compile_update,
    make_alpha_optimizer,
    make_critic,
    make_eval_env,
    make_logger,
    make_loss_module,
    make_optimizers,
    make_qsm_agent,
    set_matmul_kernels,
    task_name,
)


def make_learner(cfg: DictConfig, env: EnvBase, device: torch.device) -> dict:
    """QSM as the loop runs it: the actor, its exploration policy, ``learn`` (one update) and its state."""
    actor, exploration_policy = make_qsm_agent(cfg, env, device)
    loss, target_updater = make_loss_module(cfg, actor, make_critic(cfg, env, device))
    actor_optim, critic_optim, actor_lr_schedule = make_optimizers(cfg, loss)
    alpha_optim = make_alpha_optimizer(cfg, loss)
    optimizers = [actor_optim, critic_optim] + ([alpha_optim] if alpha_optim else [])
    alpha_updater = CurvatureAlpha(loss) if loss.auto_alpha else None
    update = make_update(loss, optimizers, target_updater, cfg.optim.bf16_matmuls, alpha_updater)

    if compile_enabled(cfg, device)[0]:
        update = compile_update(update, cfg, device)

    def learn(batch: TensorDict) -> TensorDict:
        torch.compiler.cudagraph_mark_step_begin()
        metrics = update(batch).clone()
        actor_lr_schedule.step()  # outside the compiled update: the learning rate is a tensor, changed in place
        return metrics

    state = {
        "loss": loss,
        "actor_optim": actor_optim,
        "critic_optim": critic_optim,
        "actor_lr_schedule": actor_lr_schedule,
        "target_updater": target_updater,
    }
    if alpha_optim:
        state["alpha_optim"] = alpha_optim
    best_of_n = BestOfNActor(actor, loss.state_action_value, cfg.eval.best_of_n)
    return dict(
        policy=actor, exploration_policy=exploration_policy, learn=learn, state=state, best_of_n_policy=best_of_n
    )


@hydra.main(version_base="1.3", config_path="", config_name="config")
def main(cfg: DictConfig) -> None:
    validate_config(cfg)
    folder = RunFolder(Path(HydraConfig.get().runtime.output_dir), cfg.checkpoint.resume)
    device = resolve_device(cfg.device)
    print(f"QSM on {task_name(cfg)}, device {device}; results in {folder.folder}", flush=True)

    torch.manual_seed(cfg.env.seed)
    np.random.seed(cfg.env.seed)
    random.seed(cfg.env.seed)

    logger = make_logger(cfg, folder.folder)
    eval_env = make_eval_env(cfg, logger)
    learner = make_learner(cfg, eval_env, device)
    loss = learner["state"]["loss"]
    set_matmul_kernels(cfg, device, loss.actor_network, loss.qvalue_network)
    compiled, why = compile_enabled(cfg, device)
    print(f"torch.compile of the update: {'on' if compiled else 'off'} ({why})", flush=True)
    eval_exploration = ExplorationType.DETERMINISTIC if cfg.eval.mode == "deterministic" else ExplorationType.RANDOM
    train(
        cfg,
        folder,
        name="QSM",
        device=device,
        logger=logger,
        eval_env=eval_env,
        eval_exploration=eval_exploration,
        **learner,
    )


if __name__ == "__main__":
    main()
