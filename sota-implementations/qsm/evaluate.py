"""Evaluates a checkpoint of qsm.py and exports its policy; needs nothing but the checkpoint.

    python sota-implementations/qsm/evaluate.py checkpoint=outputs/<run>   # its newest checkpoint
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.episodes=50 eval.mode=deterministic
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.video=true output=DIR
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.best_of_n=16   # also the critic-ranked best of 16

``checkpoint`` is a run folder (its newest checkpoint) or one checkpoint folder (``checkpoints/checkpoint-<frames>``).
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
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchrl.envs.utils import ExplorationType

from torchrl_qsm import BestOfNActor, build_actor, export_policy
from torchrl_qsm.modules.saving import load_checkpoint_components, weights_only_checkpoint

from checkpoints import CHECKPOINTS, read_checkpoint
from config import saved_config
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

# what the command line may set: the checkpoint, where to write, the export, and the evaluation's fields
OPTIONS = {"checkpoint": None, "output": None, "export": True, "seed": None}
EVAL_FIELDS = ("eval.episodes", "eval.mode", "eval.video", "eval.best_of_n")


def parse(argv: list[str]) -> tuple[dict, dict]:
    """``key=value`` arguments -> (options, eval overrides); an unknown key is refused by name."""
    given = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    overrides = {f"eval.{k}": v for k, v in given.pop("eval", {}).items()}
    unknown = [k for k in given if k not in OPTIONS] + [k for k in overrides if k not in EVAL_FIELDS]
    if unknown:
        raise SystemExit(
            f"evaluate.py: unknown option(s) {unknown}; it takes checkpoint=PATH, output=DIR, export=true|false, "
            f"seed=N and {', '.join(f'{f}=...' for f in EVAL_FIELDS)}."
        )
    if not given.get("checkpoint"):
        raise SystemExit("evaluate.py: give the checkpoint to evaluate: checkpoint=outputs/<run>")
    return {**OPTIONS, **given}, overrides


def main(argv: list[str]) -> None:
    options, overrides = parse(argv)
    saved = read_checkpoint(options["checkpoint"], components=("config", "trainer_state", "actor_record"))
    path = saved["path"]
    cfg = saved_config(saved)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    run_folder = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    out = Path(options["output"] or run_folder / "evaluation")
    out.mkdir(parents=True, exist_ok=True)

    if "actor_record" not in saved:
        raise SystemExit(
            f"evaluate.py: {path} holds no diffusion actor (a {saved['config'].get('algorithm')} checkpoint of "
            "benchmarks/learning/baselines.py); evaluate.py evaluates the QSM script's checkpoints."
        )
    actor = build_actor(saved["actor_record"])  # built from its record, then its weights loaded
    load_checkpoint_components(weights_only_checkpoint(actor=actor), path, ["actor"])
    env = make_eval_env(cfg, make_logger(cfg, out, "eval") if cfg.eval.video else None)
    seed = options["seed"] if options["seed"] is not None else cfg.env.seed + EVAL_SEED_OFFSET
    mode = ExplorationType.DETERMINISTIC if cfg.eval.mode == "deterministic" else ExplorationType.RANDOM
    policies = {"": actor}
    if cfg.eval.best_of_n > 1:
        policies[f" (best of {cfg.eval.best_of_n} samples, critic-ranked)"] = best_of_n_policy(
            cfg, saved, actor, env, mode
        )
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
    if options["export"]:
        program = export_policy(actor, out / "policy.pt2")
        print(f"Exported the policy: {program} (torch.export; observation, noise -> action)", flush=True)


def best_of_n_policy(cfg, saved: dict, actor, env, mode: ExplorationType) -> BestOfNActor:
    """The best of ``eval.best_of_n`` chain samples as the checkpoint's critics rank them (its QSMLoss, rebuilt)."""
    if saved["config"].get("algorithm", "QSM") != "QSM" or mode != ExplorationType.RANDOM:
        raise SystemExit(
            "evaluate.py: eval.best_of_n > 1 ranks chain samples with a QSM checkpoint's critics; it needs a QSM "
            f"checkpoint (this one is {saved['config'].get('algorithm')}) and eval.mode=stochastic."
        )
    loss, _ = make_loss_module(cfg, actor, make_critic(cfg, env, torch.device("cpu")))
    load_checkpoint_components(weights_only_checkpoint(loss=loss), saved["path"], ["loss"])
    return BestOfNActor(actor, loss.state_action_value, cfg.eval.best_of_n)


if __name__ == "__main__":
    main(sys.argv[1:])
