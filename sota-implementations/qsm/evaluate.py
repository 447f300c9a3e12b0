"""Evaluates a checkpoint of qsm.py and exports its policy; needs nothing but the checkpoint.

    python sota-implementations/qsm/evaluate.py checkpoint=outputs/.../checkpoint.pt
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.episodes=50 eval.mode=deterministic
    python sota-implementations/qsm/evaluate.py checkpoint=PATH eval.video=true output=DIR

The task and its settings come from the checkpoint's config; the actor from the checkpoint itself
(``torchrl_qsm.load_actor``). Writes into ``output`` (default: ``evaluation/`` beside the checkpoint):
``returns.csv`` (one row per episode, its return; the share of action components on the box edges is printed),
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

from torchrl_qsm import export_policy, load_actor

from checkpoints import load_checkpoint
from loop import EVAL_SEED_OFFSET, evaluate_policy
from utils import make_eval_env, make_logger, task_name

# what the command line may set: the checkpoint, where to write, the export, and the evaluation's fields
OPTIONS = {"checkpoint": None, "output": None, "export": True, "seed": None}
EVAL_FIELDS = ("eval.episodes", "eval.mode", "eval.video")


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
        raise SystemExit("evaluate.py: give the checkpoint to evaluate: checkpoint=outputs/<run>/checkpoint.pt")
    return {**OPTIONS, **given}, overrides


def main(argv: list[str]) -> None:
    options, overrides = parse(argv)
    path = Path(options["checkpoint"])
    saved = load_checkpoint(path, torch.device("cpu"))  # verified against its checksum
    config = {k: v for k, v in saved["config"].items() if k != "algorithm"}
    cfg = OmegaConf.create(config)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    out = Path(options["output"] or path.parent / "evaluation")
    out.mkdir(parents=True, exist_ok=True)

    actor = load_actor(path)
    env = make_eval_env(cfg, make_logger(cfg, out, "eval") if cfg.eval.video else None)
    seed = options["seed"] if options["seed"] is not None else cfg.env.seed + EVAL_SEED_OFFSET
    env.set_seed(seed)
    mode = ExplorationType.DETERMINISTIC if cfg.eval.mode == "deterministic" else ExplorationType.RANDOM
    returns, edges = evaluate_policy(env, actor, cfg.env.max_episode_steps, mode)
    env.apply(lambda module: module.dump() if hasattr(module, "dump") else None)  # the videos, if recorded
    env.close()

    with open(out / "returns.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "return"])
        writer.writerows(enumerate(returns.tolist()))
    print(
        f"{task_name(cfg)}, {saved['config'].get('algorithm', 'QSM')} at frame {saved['frames']}: "
        f"return {returns.mean():.1f} +- {returns.std():.1f} over {returns.numel()} episodes ({cfg.eval.mode} chain, "
        f"seed {seed}); {100 * edges:.0f}% of action components on the box edges. Returns: {out / 'returns.csv'}",
        flush=True,
    )
    if options["export"]:
        program = export_policy(actor, out / "policy.pt2")
        print(f"Exported the policy: {program} (torch.export; observation, noise -> action)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
