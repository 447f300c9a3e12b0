"""Q-score matching (QSM) on DeepMind Control, TorchRL-style: the shape of TorchRL's sota-implementations/sac/sac.py.

    python sota-implementations/qsm/qsm.py env=quickstart                 # walker-stand, ~13 min on a 2-core CPU
    python sota-implementations/qsm/qsm.py env.domain=walker env.task=run
    python sota-implementations/qsm/qsm.py checkpoint.resume=outputs/<run>   # its newest checkpoint

Each run writes to its results folder (printed at start): the resolved ``config.yaml``,
``returns.csv`` (train and eval returns by frame), ``learning_curve.png``, ``checkpoints/`` (the newest
two ``torchrl.checkpoint`` folders) and the logger's files. The factories live in utils.py, checkpoints and
the loop's counters in checkpoints.py.

SIGINT (Ctrl-C) or SIGTERM stops the run at the loop's next safe point with a checkpoint, and it exits with 130 /
143; a second signal aborts at once, without one. Non-finite data or losses stop the run with an error naming
the key, the frame and the update, and no checkpoint holds a non-finite weight. A resumed run continues the
counters, the updates owed and the random streams of the one it resumes (README, "Checkpoints and resume").
"""

from __future__ import annotations

import ctypes.util
import os

if "DISPLAY" not in os.environ and "MUJOCO_GL" not in os.environ:
    # Headless, before MuJoCo is first imported (torchrl imports it): render eval videos with EGL where its
    # library exists; otherwise physics only (MuJoCo's default, GLFW, warns without a display and can fail).
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "disable"

import random
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import torch
import tqdm
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torchrl._utils import timeit
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import SoftUpdate

from torchrl_qsm import BestOfNActor, CurvatureAlpha, QSMLoss
from torchrl_qsm.run import RunGuard

from checkpoints import make_checkpointer, Progress, resume, save_checkpoint
from config import resolve_device, validate_config
from update import adam_steps
from utils import (
    check_finite_batch,
    check_finite_losses,
    compile_enabled,
    compile_update,
    describe_collection,
    EVAL_SEED_OFFSET,
    evaluate_policy,
    log_metrics,
    make_alpha_optimizer,
    make_collector,
    make_critic,
    make_eval_env,
    make_logger,
    make_loss_module,
    make_optimizers,
    make_qsm_agent,
    make_replay_buffer,
    return_std,
    set_matmul_kernels,
    stream_seed,
    task_name,
)


def make_update(
    cfg: DictConfig,
    device: torch.device,
    loss: QSMLoss,
    optimizers: list[torch.optim.Adam],
    target_updater: SoftUpdate,
    curvature_alpha: CurvatureAlpha | None,
) -> Callable[[TensorDict], TensorDict]:
    """One update: the sum of the loss's ``loss_*`` terms, one Adam step per optimizer, the targets' soft update,
    and (``alpha=auto`` with the gradient target) the curvature the loss measured committed to alpha."""
    params = [p for optim in optimizers for group in optim.param_groups for p in group["params"]]

    def update(batch: TensorDict) -> TensorDict:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.optim.bf16_matmuls):
            out = loss(batch)
        total = sum(value for key, value in out.items() if key.startswith("loss_"))
        metrics = out.detach()  # before the gradients: a traced autograd.grad must not share them
        adam_steps(optimizers, torch.autograd.grad(total, params))  # = total.backward(); step(); zero_grad()
        target_updater.step()
        if curvature_alpha is not None:
            curvature_alpha.step(metrics["action_curvature"])
        return metrics

    return update


@hydra.main(version_base="1.3", config_path="", config_name="config")
def main(cfg: DictConfig) -> None:
    validate_config(cfg)
    train(cfg, Path(HydraConfig.get().runtime.output_dir))


def train(cfg: DictConfig, folder: Path) -> None:
    """The run: its factories, its update and its loop, writing into ``folder``."""
    device = resolve_device(cfg.device)
    with RunGuard(folder, resume=cfg.checkpoint.resume) as guard:
        print(f"QSM on {task_name(cfg)}, device {device}; results in {folder}", flush=True)
        if guard.removed_partials:
            print(f"Removed the partial files of an interrupted write: {[p.name for p in guard.removed_partials]}")
        torch.manual_seed(cfg.env.seed)
        np.random.seed(cfg.env.seed)
        random.seed(cfg.env.seed)

        # --- the factories ---------------------------------------------------------------------------
        logger = make_logger(cfg, folder)
        eval_env = make_eval_env(cfg, logger)
        actor, exploration_policy = make_qsm_agent(cfg, eval_env, device)
        loss, target_updater = make_loss_module(cfg, actor, make_critic(cfg, eval_env, device))
        actor_optim, critic_optim, actor_lr_schedule = make_optimizers(cfg, loss)
        alpha_optim = make_alpha_optimizer(cfg, loss)  # q_weighted with alpha=auto: a learned log_alpha, as SAC's
        curvature_alpha = CurvatureAlpha(loss) if loss.auto_alpha else None  # gradient with alpha=auto
        optimizers = [optim for optim in (actor_optim, critic_optim, alpha_optim) if optim is not None]
        replay_buffer = make_replay_buffer(cfg, device)
        set_matmul_kernels(cfg, device, loss.actor_network, loss.qvalue_network)
        OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
        best_of_n = BestOfNActor(actor, loss.state_action_value, cfg.eval.best_of_n) if cfg.eval.best_of_n > 1 else None
        eval_mode = ExplorationType.DETERMINISTIC if cfg.eval.mode == "deterministic" else ExplorationType.RANDOM

        update = make_update(cfg, device, loss, optimizers, target_updater, curvature_alpha)
        compiled, why = compile_enabled(cfg, device)
        print(f"torch.compile of the update: {'on' if compiled else 'off'} ({why})", flush=True)
        if compiled:
            update = compile_update(update, cfg, device)

        # --- the run's counters and its checkpoint; resume --------------------------------------------------
        progress = Progress(cfg, folder)
        state = dict(
            loss=loss,
            actor_optim=actor_optim,
            critic_optim=critic_optim,
            actor_lr_schedule=actor_lr_schedule,
            target_updater=target_updater,
        )
        if alpha_optim is not None:
            state["alpha_optim"] = alpha_optim
        checkpointer = make_checkpointer(progress, replay_buffer, actor, state)
        if cfg.checkpoint.resume:
            resume(checkpointer, progress, replay_buffer, device)
        eval_env.set_seed(stream_seed(cfg.env.seed + EVAL_SEED_OFFSET, progress.frames))

        def learn() -> list[TensorDict]:
            """The updates owed, one at a time, until none is owed or a stop is requested."""
            guard.phase, metrics, first = "updates", [], progress.updates
            while progress.update_credit >= 1 and not guard.stop_requested:
                with timeit("rb - sample"):
                    batch = replay_buffer.sample()
                with timeit("update"):
                    torch.compiler.cudagraph_mark_step_begin()
                    metrics.append(update(batch).clone())
                actor_lr_schedule.step()  # outside the compiled update: the rate is a tensor, changed in place
                if cfg.replay_buffer.prb:
                    replay_buffer.update_priority(batch)
                progress.update_credit -= 1
                progress.updates += 1
            check_finite_losses(metrics, first)
            return metrics

        def evaluate() -> None:
            guard.phase, row = "evaluation", {}
            for prefix, policy in {"": actor, "best_of_n_": best_of_n}.items():
                if policy is None:
                    continue
                with timeit("eval"):
                    returns, edges = evaluate_policy(eval_env, policy, cfg.env.max_episode_steps, eval_mode)
                std = return_std(returns)
                row |= {f"eval_{prefix}return": returns.mean().item(), f"eval_{prefix}return_std": std}
                row[f"eval_{prefix}edge_fraction"] = edges
                which = f", best of {cfg.eval.best_of_n} samples (critic-ranked)" if prefix else ""
                tqdm.tqdm.write(
                    f"[eval] frame {progress.frames}{which}: return {returns.mean():.1f} +- {std:.1f} over "
                    f"{returns.numel()} episodes; {100 * edges:.0f}% of action components on the box edges"
                )
                if logger is not None:
                    logger.log_scalar(f"eval/{prefix}return", returns.mean().item(), step=progress.frames)
                    logger.log_scalar(f"eval/{prefix}edge_fraction", edges, step=progress.frames)
            progress.results.add(frame=progress.frames, wall_time=progress.wall_time(), **row)
            progress.last_eval = progress.frames
            if logger is not None:
                eval_env.apply(lambda module: module.dump() if hasattr(module, "dump") else None)

        def checkpoint() -> Path:
            previous, guard.phase = guard.phase, "checkpoint writing"
            with timeit("checkpoint"):
                path = save_checkpoint(checkpointer, progress, state)
            guard.phase, guard.last_checkpoint = previous, f"frame {progress.frames}, {path}"
            return path

        def scheduled() -> None:
            if progress.eval_due():
                evaluate()
            if progress.checkpoint_due():
                checkpoint()

        # --- the loop: collect, check, store, the updates owed, weights to the collector, eval, checkpoint ---
        pbar = tqdm.tqdm(total=cfg.collector.total_frames, initial=progress.frames, unit="frame", unit_scale=True)
        if progress.frames >= progress.update_start:
            learn()  # the updates a stopped run still owed
        if not guard.stop_requested:
            scheduled()
        if progress.frames < cfg.collector.total_frames and not guard.stop_requested:
            tqdm.tqdm.write(f"collection: {describe_collection(cfg)}")
            with guard.signals_ignored():  # collector processes inherit it: stopping is this process's job
                collector = make_collector(cfg, exploration_policy, device, progress.frames)
            try:
                guard.phase = "collection"
                for batch in collector:
                    check_finite_batch(batch, progress.frames)
                    with timeit("rb - extend"):
                        replay_buffer.extend(batch.reshape(-1))
                    progress.collected(batch.numel())
                    metrics = learn() if progress.frames >= progress.update_start else []
                    if metrics and not getattr(collector, "update_after_each_batch", False):
                        collector.update_policy_weights_()  # else the collector sends them itself, worker by worker
                    progress.record_episodes(batch)
                    pbar.update(batch.numel())
                    if not guard.stop_requested:
                        scheduled()
                    pbar.set_postfix(train_return=f"{progress.last_train:.1f}", updates=progress.updates)
                    log_metrics(logger, metrics, progress.frames, progress.last_train)
                    if guard.stop_requested:
                        break
                    guard.phase = "collection"  # the collector's next batch
            finally:
                collector.shutdown()
        pbar.close()
        path = checkpoint()
    if guard.stop_requested:
        print(f"Stopped at frame {progress.frames} ({progress.updates} updates); checkpoint written to {path}")
        sys.exit(guard.exit_code)
    figure = progress.results.plot(f"QSM {task_name(cfg)}")
    eval_env.close()
    print(
        f"Done: {progress.frames} frames, {progress.updates} updates. "
        f"Results: {folder / 'returns.csv'}, {figure}, {path}"
    )


if __name__ == "__main__":
    main()
