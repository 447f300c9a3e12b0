"""Evaluates a checkpoint of qsm.py and exports its policy; needs nothing but the checkpoint.

    python sota-implementations/qsm/evaluate.py checkpoint=outputs/<run>   # its newest checkpoint
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.episodes=50 eval.mode=deterministic
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.video=true output=DIR
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.best_of_n=16   # also the critic-ranked best of 16

The options are the fields of ``EvaluateConfig`` (``--help`` lists them); the ``eval.*`` ones are the training
script's, checked the same way (config.py), and replace the checkpoint's. ``checkpoint`` is a run folder (its
newest checkpoint) or one checkpoint folder (``checkpoints/checkpoint-<frames>``).
The task and its settings come from the checkpoint's config; the actor from the checkpoint itself, built
by the library from the record and weights it holds (``torchrl_qsm.build_actor``): a checkpoint is tensors
and JSON, and reading it runs no code from it.
Writes into ``output`` (default: ``evaluation/`` in the run folder):
``returns.csv`` (one row per episode, its return; the share of action components on the box edges is printed;
with ``eval.best_of_n=N > 1`` also the return of the best of N chain samples as the checkpoint's critics rank
them, on the same episodes, next to the plain one),
``policy.pt2`` (the sampler as a ``torch.export`` program, ``torchrl_qsm.export_policy``; ``export=false``
skips it) and, with ``eval.video=true``, the videos under ``logs/``.
"""

from __future__ import annotations

import ctypes.util
import os

if "DISPLAY" not in os.environ and "MUJOCO_GL" not in os.environ:  # as qsm.py does, before MuJoCo's import
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "disable"

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.envs.utils import ExplorationType

from torchrl_qsm import BestOfNActor, build_actor, export_policy
from torchrl_qsm.modules.saving import load_checkpoint_components, weights_only_checkpoint

from checkpoints import CHECKPOINTS, read_checkpoint
from config import describe, EvalConfig, saved_config, validate_config
from utils import (
    EVAL_SEED_OFFSET,
    evaluate_policy,
    make_critic,
    make_eval_env,
    make_logger,
    make_loss_module,
    return_std,
    task_name,
)


@dataclass
class EvaluateConfig:
    """evaluate.py's options (``key=value`` on the command line)."""

    checkpoint: str | None = None  # a run folder (its newest checkpoint) or one checkpoint folder
    output: str | None = None  # where to write (null: evaluation/ in the run folder)
    export: bool = True  # export the policy as policy.pt2 (torch.export)
    seed: int | None = None  # the episodes' seed (null: the run's evaluation seed)
    eval: EvalConfig = field(default_factory=EvalConfig)  # the evaluation; the fields given replace the checkpoint's

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("give the checkpoint to evaluate: checkpoint=outputs/<run>")


def checked(cfg: DictConfig, schema: type) -> Any:
    """``cfg`` as ``schema``'s dataclass, checked by it (the training script's checks), or evaluate.py's error."""
    try:
        return validate_config(cfg, schema)
    except ValueError as err:
        raise SystemExit(f"evaluate.py: {err}") from None


def main(argv: list[str]) -> None:
    if argv in (["--help"], ["-h"]):
        print(__doc__ + "\nOptions (key=value):\n\n" + "\n".join(describe(EvaluateConfig)))
        return
    given = OmegaConf.from_dotlist(argv)
    options = checked(given, EvaluateConfig)
    saved = read_checkpoint(options.checkpoint, components=("config", "trainer_state", "actor_record"))
    path = saved["path"]
    cfg = saved_config(saved)
    cfg.eval = OmegaConf.merge(cfg.eval, given.get("eval", {}))  # the checkpoint's, with the fields given here
    checked(cfg.eval, EvalConfig)
    run_folder = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    out = Path(options.output or run_folder / "evaluation")
    out.mkdir(parents=True, exist_ok=True)

    if "actor_record" not in saved:
        raise SystemExit(
            f"evaluate.py: {path} holds no diffusion actor (a {saved['config'].get('algorithm')} checkpoint of "
            "benchmarks/learning/baselines.py); evaluate.py evaluates the QSM script's checkpoints."
        )
    actor = build_actor(saved["actor_record"])  # built from its record, then its weights loaded
    load_checkpoint_components(weights_only_checkpoint(actor=actor), path, ["actor"])
    env = make_eval_env(cfg, make_logger(cfg, out, "eval") if cfg.eval.video else None)
    seed = options.seed if options.seed is not None else cfg.env.seed + EVAL_SEED_OFFSET
    mode = ExplorationType.DETERMINISTIC if cfg.eval.mode == "deterministic" else ExplorationType.RANDOM
    policies = {"": actor}
    if cfg.eval.best_of_n > 1:
        policies[f" (best of {cfg.eval.best_of_n} samples, critic-ranked)"] = best_of_n_policy(cfg, saved, actor, env)
    results = {}
    for name, policy in policies.items():
        env.set_seed(seed)  # the same episodes for each
        results[name] = evaluate_policy(env, policy, cfg.env.max_episode_steps, mode)
    env.apply(lambda module: module.dump() if hasattr(module, "dump") else None)  # the videos, if recorded
    env.close()

    per_policy = [returns.tolist() for returns, _ in results.values()]  # the plain evaluation, then the best of N
    with open(out / "returns.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", *["return", "best_of_n_return"][: len(per_policy)]])
        writer.writerows([i, *row] for i, row in enumerate(zip(*per_policy)))
    for name, (returns, edges) in results.items():
        print(
            f"{task_name(cfg)}, {saved['config'].get('algorithm', 'QSM')} at frame {saved['frames']}{name}: "
            f"return {returns.mean():.1f} +- {return_std(returns):.1f} over {returns.numel()} episodes "
            f"({cfg.eval.mode} chain, seed {seed}); {100 * edges:.0f}% of action components on the box edges",
            flush=True,
        )
    print(f"Returns: {out / 'returns.csv'}", flush=True)
    if options.export:
        program = export_policy(actor, out / "policy.pt2")
        print(f"Exported the policy: {program} (torch.export; observation, noise -> action)", flush=True)


def best_of_n_policy(cfg, saved: dict, actor, env) -> BestOfNActor:
    """The best of ``eval.best_of_n`` chain samples as the checkpoint's critics rank them (its QSMLoss, rebuilt;
    a QSM checkpoint, the only kind with an actor, and eval.mode=stochastic, which EvalConfig requires)."""
    loss, _ = make_loss_module(cfg, actor, make_critic(cfg, env, torch.device("cpu")))
    load_checkpoint_components(weights_only_checkpoint(loss=loss), saved["path"], ["loss"])
    return BestOfNActor(actor, loss.state_action_value, cfg.eval.best_of_n)


if __name__ == "__main__":
    main(sys.argv[1:])
