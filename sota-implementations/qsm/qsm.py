"""Q-score matching (QSM) on DeepMind Control, TorchRL-style.

    python sota-implementations/qsm/qsm.py env=walker_run
    python sota-implementations/qsm/qsm.py env=quickstart                 # ~15 min on a 2-core CPU
    python sota-implementations/qsm/qsm.py checkpoint.resume=outputs/.../checkpoint.pt

Each run writes to its results folder (printed at start): the resolved ``config.yaml``,
``returns.csv`` (train and eval returns by frame), ``learning_curve.png``, ``checkpoint.pt`` and
the logger's files. The factories live in utils.py.
"""
from __future__ import annotations

import ctypes.util
import math
import os
import random
import sys
import time
from pathlib import Path

if "DISPLAY" not in os.environ and "MUJOCO_GL" not in os.environ:
    # Headless: render eval videos with EGL where its library exists; otherwise physics only (MuJoCo's
    # default, GLFW, warns without a display and can fail to import).
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "disable"

import hydra
import numpy as np
import torch
import tqdm
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torchrl._utils import timeit
from torchrl.envs.utils import ExplorationType, set_exploration_type

from agents import compile_update
from torchrl_qsm import edge_fraction
from utils import (
    load_checkpoint,
    make_agent,
    make_collector,
    make_eval_env,
    make_logger,
    make_replay_buffer,
    mean_metrics,
    resolve_device,
    Results,
    rng_state,
    save_checkpoint,
    set_rng_state,
    validate_config,
)

torch.set_float32_matmul_precision("high")


@hydra.main(version_base="1.3", config_path="", config_name="config")
def main(cfg: DictConfig) -> None:
    validate_config(cfg)
    device = resolve_device(cfg.device)
    folder = Path(HydraConfig.get().runtime.output_dir)
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    print(f"{cfg.algorithm.upper()} on {cfg.env.domain}-{cfg.env.task}, device {device}; results in {folder}", flush=True)

    torch.manual_seed(cfg.env.seed)
    np.random.seed(cfg.env.seed)
    random.seed(cfg.env.seed)

    logger = make_logger(cfg, folder)
    eval_env = make_eval_env(cfg, logger)
    agent = make_agent(cfg, eval_env, device)
    replay_buffer = make_replay_buffer(cfg, device)
    state = dict(agent.stateful)
    if cfg.checkpoint.save_replay_buffer:
        state["replay_buffer"] = replay_buffer

    frames, updates, update_credit, results, wall_offset = 0, 0, 0.0, Results(folder), 0.0
    if cfg.checkpoint.resume:
        saved = load_checkpoint(cfg.checkpoint.resume, device)
        for name, component in state.items():
            if name in saved:
                component.load_state_dict(saved[name])
        frames, updates, update_credit = saved["frames"], saved["updates"], saved["update_credit"]
        wall_offset = saved["wall_time"]
        results = Results(folder, saved["results"])
        set_rng_state(saved["rng"])
        print(f"Resumed from {cfg.checkpoint.resume} at frame {frames} ({updates} updates).", flush=True)

    def checkpoint() -> Path:
        path = folder / "checkpoint.pt"
        saved = {name: component.state_dict() for name, component in state.items()}
        saved.update(
            frames=frames, updates=updates, update_credit=update_credit, results=results.rows, rng=rng_state(),
            wall_time=wall_time(),
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        save_checkpoint(path, saved)
        return path

    start = time.perf_counter()

    def wall_time() -> float:
        """Seconds of training so far, across resumes."""
        return round(wall_offset + time.perf_counter() - start, 3)

    update = agent.update
    if cfg.compile.compile:
        mode = cfg.compile.mode or ("reduce-overhead" if device.type == "cuda" else "default")
        update = compile_update(update, mode=mode, recompute_pointwise=cfg.compile.recompute_pointwise)

    total_frames = cfg.collector.total_frames
    init_random_frames = cfg.collector.init_random_frames
    collector = None
    if frames < total_frames:
        collector = make_collector(
            cfg, agent.exploration_policy, total_frames - frames, max(0, init_random_frames - frames), device
        )
    action_spec = eval_env.action_spec_unbatched.to(device)
    low, high = action_spec.space.low, action_spec.space.high
    eval_mode = agent.eval_exploration
    if cfg.algorithm == "qsm" and cfg.eval.mode == "deterministic":
        eval_mode = ExplorationType.DETERMINISTIC

    def evaluate() -> None:
        with set_exploration_type(eval_mode), torch.no_grad(), timeit("eval"):
            rollout = eval_env.rollout(
                cfg.env.max_episode_steps, agent.policy, auto_cast_to_device=True, break_when_any_done=True
            )
        returns = rollout["next", "reward"].sum(-2).squeeze(-1)
        edges = edge_fraction(rollout["action"].to(low.device), low, high).item()
        results.add(
            frame=frames, wall_time=wall_time(),
            eval_return=returns.mean().item(), eval_return_std=returns.std().item(), eval_edge_fraction=edges,
        )
        tqdm.tqdm.write(
            f"[eval] frame {frames}: return {returns.mean():.1f} +- {returns.std():.1f} over {returns.numel()} "
            f"episodes; {100 * edges:.0f}% of action components on the box edges"
        )
        if logger is not None:
            logger.log_scalar("eval/return", returns.mean().item(), step=frames)
            logger.log_scalar("eval/edge_fraction", edges, step=frames)
            eval_env.apply(lambda module: module.dump() if hasattr(module, "dump") else None)

    pbar = tqdm.tqdm(total=total_frames, initial=frames, unit="frame", unit_scale=True, dynamic_ncols=True)
    next_eval = (frames // cfg.eval.interval + 1) * cfg.eval.interval
    next_checkpoint = (frames // cfg.checkpoint.interval + 1) * cfg.checkpoint.interval
    last_train, last_eval = math.nan, math.nan
    try:
        for batch in collector or ():
            with timeit("rb - extend"):
                replay_buffer.extend(batch.reshape(-1))
            frames += batch.numel()
            metrics = []
            if frames >= init_random_frames:
                update_credit += batch.numel() * cfg.optim.utd_ratio
                num_updates, update_credit = int(update_credit), update_credit - int(update_credit)
                for _ in range(num_updates):
                    with timeit("rb - sample"):
                        sample = replay_buffer.sample()
                    with timeit("update"):
                        torch.compiler.cudagraph_mark_step_begin()
                        metrics.append(update(sample).clone())
                        for scheduler in agent.schedulers:
                            scheduler.step()
                    if cfg.replay_buffer.prb:
                        replay_buffer.update_priority(sample)
                updates += num_updates
                collector.update_policy_weights_()

            episode_end = batch["next", "done"].squeeze(-1)
            for episode_return in batch["next", "episode_reward"][episode_end].flatten().tolist():
                results.add(frame=frames, wall_time=wall_time(), train_return=episode_return)
                last_train = episode_return
            if frames >= next_eval or frames >= total_frames:
                evaluate()
                last_eval = results.rows[-1]["eval_return"]
                next_eval += cfg.eval.interval
            if frames >= next_checkpoint:
                checkpoint()
                next_checkpoint += cfg.checkpoint.interval

            pbar.update(batch.numel())
            pbar.set_postfix(train_return=f"{last_train:.1f}", eval_return=f"{last_eval:.1f}", updates=updates)
            if logger is not None:
                scalars = {"train/return": last_train}
                scalars.update({f"train/{key}": value for key, value in mean_metrics(metrics).items()})
                scalars.update(timeit.todict(prefix="time"))
                for name, value in scalars.items():
                    logger.log_scalar(name, value, step=frames)
    except KeyboardInterrupt:
        pbar.close()
        print(f"\nInterrupted at frame {frames}; checkpoint written to {checkpoint()}", flush=True)
        collector.shutdown()
        sys.exit(130)
    pbar.close()
    if collector is not None:
        collector.shutdown()
    path = checkpoint()
    figure = results.plot(f"{cfg.algorithm.upper()} {cfg.env.domain}-{cfg.env.task}")
    eval_env.close()
    print(f"Done: {frames} frames, {updates} updates. Results: {folder / 'returns.csv'}, {figure}, {path}", flush=True)


if __name__ == "__main__":
    main()
