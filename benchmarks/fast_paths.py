"""Each fast path of the QSM update, on and off, side by side in one process, eager and compiled.

    python benchmarks/fast_paths.py                                   # widths 512, 2 threads
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/fast_paths.py --threads 1

Every candidate is the training script's update (``script_learner.make_learner`` at the authors' widths, batch 256,
cheetah-run shapes) with the fp32 matmul path that ``optim.fp32_matmuls=auto`` chooses, and with one
fast path turned off:

- ``torch-mish``: the eps-network's activations are torch's ``nn.Mish`` (tanh and softplus) instead of
  ``torchrl_qsm.Mish`` (one exponential: ``x n / (2 - n)``, ``n = p (2 - p)``, ``p = sigmoid(x)``);
- ``concat-input``: the eps-network is called on ``cat([x_t, s, t])`` at every chain step and in the
  loss (TorchRL's ``score_network`` contract) instead of through its split first layer, which computes
  the state term once per chain, the time term once per step (``EpsilonNetwork.denoiser`` and
  ``predict_noise``) and each chain step's first layer as one ``addmm``;
- ``unfused-adam`` (eager only): ``optim.fused_adam=false``, torch's per-parameter Adam;
- ``reference`` (eager only): not a fast path but the straightforward eager update none of them is in
  (tests/reference_qsm.py: the critics in a Python loop, ``backward()``, plain Adam), which the issue asks
  our eager update to be at least as fast as (a ratio above 1: ours is faster).

The candidates run round-robin; each round times every candidate for ``--iters`` updates, and the ratio
to ``default`` is taken within the round (the host's slow drifts cancel). A ratio above 1: the fast path
saves that share of the update's time. Each compiled candidate has its own copy of the update's code
object, so that dynamo keeps one cache for each: with one shared code object the candidates would count
against dynamo's recompile limit (8 by default, past which a frame runs eager), and the first update after
each switch of candidate would run the others' guards before finding its own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "sota-implementations" / "qsm", ROOT / "benchmarks"):
    sys.path.insert(0, str(folder))

from script_learner import make_learner
from update_speed import make_batch, reference_update, script_config

from torchrl_qsm import EpsilonNetwork, Mish

import qsm
import utils
from utils import make_env, set_matmul_kernels

EAGER = {
    "default": (),
    "torch-mish": (),
    "concat-input": (),
    "unfused-adam": ("optim.fused_adam=false",),
    "reference": (),
}
COMPILED = {"default": (), "torch-mish": (), "concat-input": ()}


class ConcatenatedOnly(EpsilonNetwork):
    """An ``EpsilonNetwork`` that offers only ``forward(cat([x_t, s, t]))``: the actor it is built into calls
    it on ``cat([x_t, s, t])`` (``predict_noise`` and ``denoiser`` are hidden, so the actor does not find
    them when it is built)."""

    @property
    def predict_noise(self):
        raise AttributeError("predict_noise")

    @property
    def denoiser(self):
        raise AttributeError("denoiser")


def torch_mish(module: nn.Module) -> None:
    """Replaces every ``torchrl_qsm.Mish`` below ``module`` with ``torch.nn.Mish`` (no parameters move)."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, Mish):
                setattr(parent, name, nn.Mish())


def own_code(update: Callable) -> Callable:
    """``update`` with a copy of its code object: dynamo caches compiled code per code object."""
    return types.FunctionType(
        update.__code__.replace(), update.__globals__, update.__name__, update.__defaults__, update.__closure__
    )


def learner(name: str, width: int, compiled: bool, env, device) -> dict:
    if name == "reference":
        return {"learn": reference_update(width, device, env)}
    overrides = (EAGER if not compiled else COMPILED)[name]
    cfg = script_config(width, device, f"compile.compile={str(compiled).lower()}", *overrides)
    make_update = qsm.make_update
    qsm.make_update = lambda *args, **kwargs: own_code(make_update(*args, **kwargs))
    if name == "concat-input":  # the actor settles how it calls its network when it is built
        utils.EpsilonNetwork = ConcatenatedOnly
    try:
        built = make_learner(cfg, env, device)
    finally:
        qsm.make_update = make_update
        utils.EpsilonNetwork = EpsilonNetwork
    if name == "torch-mish":
        torch_mish(built["state"]["loss"].actor_network)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=10, help="updates per candidate and round")
    parser.add_argument("--no-compile", action="store_true", help="eager candidates only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    env = make_env("cheetah", "run")
    print(f"torch {torch.__version__}, {args.threads} thread(s), widths {args.width}, batch 256")
    modes = [("eager", EAGER)] + ([] if args.no_compile else [("compiled", COMPILED)])
    built = {
        f"{name} {mode}": learner(name, args.width, mode == "compiled", env, device)
        for mode, names in modes
        for name in names
    }
    loss = built["default eager"]["state"]["loss"]
    set_matmul_kernels(script_config(args.width, device), device, loss.actor_network, loss.qvalue_network)
    candidates = {name: learner["learn"] for name, learner in built.items()}
    batches = [make_batch(256, device) for _ in range(args.iters)]
    for name, learn in candidates.items():  # warm-up: the first (eager) update, then the compile
        start = time.perf_counter()
        for batch in batches[:3]:
            learn(batch.clone())
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    times = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, learn in candidates.items():
            run = [batch.clone() for batch in batches]
            start = time.perf_counter()
            for batch in run:
                learn(batch)
            times[name].append((time.perf_counter() - start) / args.iters)
    print("  time / the default update's in the same round: median (min-max); above 1, the fast path saves time")
    for name, t in times.items():
        mode = name.split()[1]
        ratios = sorted(a / b for a, b in zip(t, times[f"default {mode}"]))
        print(
            f"    {name:<24}{1e3 * statistics.median(t):8.2f} ms   {statistics.median(ratios):.3f} "
            f"({ratios[0]:.3f}-{ratios[-1]:.3f})"
        )


if __name__ == "__main__":
    main()
