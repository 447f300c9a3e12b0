"""Update and acting speed of QSM against TorchRL's SAC and TD3, measured side by side in one process.

    python benchmarks/update_speed.py                      # CPU, widths 256 and 512, eager and compiled
    python benchmarks/update_speed.py --device cuda        # the same on a GPU
    python benchmarks/update_speed.py --compile --widths 256   # eager only

Every candidate runs the full update of its algorithm (all losses, backward, optimizer steps, target
update) on the same batch shapes (DMC cheetah-run: 17-dim observations, 6-dim actions), timed
round-robin: each round runs every candidate for ``--iters`` updates; the table gives the median over
rounds and the spread (min-max). Candidates:

- ``qsm``: torchrl_qsm's QSMLoss + DiffusionActor, as the training script builds them
  (benchmarks/script_learner.py: qsm.py's update with its defaults: T = 5, vp schedule, mish
  eps-network, ReLU critics, fused Adam);
- ``qsm-auto``: the same with ``diffusion=auto`` (``QSMLoss(alpha="auto")``: one more action gradient
  through the critics, on 64 transitions of the batch, to measure their curvature);
- ``qsm-bf16``: the same with ``optim.bf16_matmuls`` (autocast: matmuls in bf16, schedule, losses and
  optimizer in fp32);
- ``qsm-unchecked``: ``qsm`` with ``QSMLoss(check_finite=False)`` (on CPU the default checks every
  input and loss for NaN/inf; the ratio of the two is that check's cost);
- ``qsm-reference``: a straightforward eager QSM update (tests/reference_qsm.py, the tests' oracle, plain Adam);
- ``sac``, ``td3``: TorchRL's SACLoss and TD3Loss agents as TorchRL's sota scripts build them
  (benchmarks/learning/baselines.py);
- ``*-compiled``: the same updates under ``torch.compile`` as the training script compiles them
  (QSM: ``compile.compile=true``, its update as one graph, update.py; SAC and TD3 through
  utils.compile_update: mode "default" on CPU, "reduce-overhead" on CUDA).

It also prints the FLOPs of one update (matmuls, from torch.utils.flop_counter's formulas) divided by its
time, against the same matmuls replayed alone (the roofline fraction), and the acting latency of each
actor at batch 1 and 16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torchrl.envs.utils import ExplorationType, set_exploration_type

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_DIR = ROOT / "sota-implementations" / "qsm"
for folder in (SCRIPT_DIR, ROOT / "benchmarks", ROOT / "benchmarks" / "learning", ROOT / "tests"):
    sys.path.insert(0, str(folder))
from hydra import compose, initialize_config_dir
from script_learner import make_learner

from baselines import sac, td3
from reference_qsm import ReferenceQSM
from utils import compile_update, make_env

OBS_DIM, ACTION_DIM = 17, 6


def make_batch(batch_size: int, device) -> TensorDict:
    return TensorDict(
        {
            "observation": torch.randn(batch_size, OBS_DIM),
            "action": torch.rand(batch_size, ACTION_DIM) * 2 - 1,
            ("next", "observation"): torch.randn(batch_size, OBS_DIM),
            ("next", "reward"): torch.randn(batch_size, 1),
            ("next", "done"): torch.zeros(batch_size, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(batch_size, 1, dtype=torch.bool),
        },
        [batch_size],
        device=device,
    )


def script_config(width: int, device, *overrides: str):
    """The training script's configuration at these widths, eager (the compiled candidates compile it here)."""
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.3"):
        overrides = [f"network.hidden_sizes=[{width},{width}]", f"device={device}", "compile.compile=false", *overrides]
        return compose("config", overrides=overrides)


def reference_update(width: int, device, env) -> Callable[[TensorDict], TensorDict]:
    """The straightforward eager QSM update: tests/reference_qsm.py's losses (the tests' oracle), ``backward()``,
    plain Adam steps and the soft update, on an agent built as the training script builds it."""
    reference = make_learner(script_config(width, device, "optim.fused_adam=false"), env, device)
    losses = ReferenceQSM(reference["state"]["loss"]).losses
    optimizers = [reference["state"]["actor_optim"], reference["state"]["critic_optim"]]

    def update(batch: TensorDict) -> TensorDict:
        loss_actor, loss_qvalue = losses(batch)
        (loss_actor + loss_qvalue).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        reference["state"]["target_updater"].step()
        return TensorDict(loss_actor=loss_actor.detach(), loss_qvalue=loss_qvalue.detach())

    return update


def candidates(width: int, device, compiled: list[str]) -> dict:
    """``name: (update, actor)``; every agent as the training script (or the learning grid) builds it."""
    env = make_env("cheetah", "run")  # 17-dim observations, 6-dim actions
    cfg = script_config(width, device)
    qsm = make_learner(cfg, env, device)
    unchecked = make_learner(cfg, env, device)
    unchecked["state"]["loss"].check_finite = False
    sac_agent, td3_agent = sac(cfg, env, device), td3(cfg, env, device)
    variants = {"qsm": (), "qsm-auto": ("diffusion=auto",), "qsm-bf16": ("optim.bf16_matmuls=true",)}

    def qsm_learner(name: str, *overrides: str):
        overrides = (*variants[name], *overrides)
        return make_learner(script_config(width, device, *overrides), env, device)

    out = {
        "qsm": (qsm["learn"], qsm["policy"]),
        "qsm-auto": (qsm_learner("qsm-auto")["learn"], None),
        "qsm-bf16": (qsm_learner("qsm-bf16")["learn"], None),
        "qsm-unchecked": (unchecked["learn"], None),
        "qsm-reference": (reference_update(width, device, env), None),
        "sac": (sac_agent["learn"], sac_agent["policy"]),
        "td3": (td3_agent["learn"], td3_agent["policy"]),
    }
    for name in compiled:  # QSM as the script compiles it (its update whole, the schedule's step outside)
        learn = qsm_learner(name, "compile.compile=true")["learn"] if name in variants else None
        out[f"{name}-compiled"] = (learn or compile_update(out[name][0], cfg, device, warmup=0), None)
    return out


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_updates(fn, batches, device) -> float:
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        fn(batch)
    sync(device)
    return (time.perf_counter() - start) / len(batches)


@dataclass(frozen=True)
class Operand:
    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype

    def make(self, device) -> torch.Tensor:
        size = 1 + sum((n - 1) * step for n, step in zip(self.shape, self.stride))  # expanded operands share memory
        return torch.randn(size, device=device).to(self.dtype).as_strided(self.shape, self.stride)


class MatmulRecorder(TorchDispatchMode):
    """Records every matmul of one update (forward and backward): op, operand layouts, FLOPs.

    (``FlopCounterMode`` itself cannot be used: its module tracker tests TensorDicts for truth.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            layout = [Operand(a.shape, a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
            self.calls.append((func, layout, formula(*args, **kwargs, out_val=out)))
        return out


def record_matmuls(fn, batch) -> list[tuple]:
    with MatmulRecorder() as recorder:
        fn(batch)
    return recorder.calls


def matmul_time(calls: list[tuple], device, repeats: int = 20) -> float:
    """Seconds the recorded matmuls take replayed alone: same ops, shapes, strides and dtypes.

    This is the update's GEMM-only time, so ``matmul_time / update_time`` is its roofline fraction.
    """
    replays = [(func, [a.make(device) if isinstance(a, Operand) else a for a in layout]) for func, layout, _ in calls]
    for func, args in replays:
        func(*args)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        for func, args in replays:
            func(*args)
    sync(device)
    return (time.perf_counter() - start) / repeats


def gemm_throughput(width: int, batch: int, device, dtype=torch.float32, iters: int = 200) -> float:
    """GFLOP/s of [batch, width] x [width, width] + bias, the update's largest matmul shape."""
    a, w, b = (torch.randn(*s, device=device, dtype=dtype) for s in ((batch, width), (width, width), (width,)))
    for _ in range(10):
        torch.addmm(b, a, w)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        torch.addmm(b, a, w)
    sync(device)
    return 2 * batch * width * width / ((time.perf_counter() - start) / iters) / 1e9


def acting_latency(actor, batch: int, device, iters: int = 300) -> float:
    td = TensorDict(observation=torch.randn(batch, OBS_DIM, device=device), batch_size=[batch])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for _ in range(20):
            actor(td.clone())
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            actor(td.clone())
        sync(device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument(
        "--compile",
        nargs="*",
        default=["qsm", "qsm-auto", "qsm-bf16", "sac", "td3"],
        metavar="NAME",
        help="candidates to also time under torch.compile (none: --compile with no name)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    # Every compiled candidate steps its own Adams through the one Optimizer.step code object; past
    # dynamo's default of 8 recompiles the last candidates' steps would silently run eager.
    torch._dynamo.config.recompile_limit = 64
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}, "
        f"rounds {args.rounds} x {args.iters} updates"
    )
    if device.type == "cuda":
        print(torch.cuda.get_device_name())

    for width in args.widths:
        print(f"\n=== widths {width}x{width} ===")
        cands = candidates(width, device, args.compile)
        batches = [make_batch(args.batch, device) for _ in range(args.iters)]
        for name, (fn, _) in cands.items():  # warm-up (and compile)
            t0 = time.perf_counter()
            for batch in batches[:3]:
                fn(batch.clone())
            if name.endswith("compiled"):
                print(f"  {name}: compiled in {time.perf_counter() - t0:.0f} s")
        times = {name: [] for name in cands}
        for _ in range(args.rounds):
            for name, (fn, _) in cands.items():
                times[name].append(time_updates(fn, [b.clone() for b in batches], device))
        median = {name: statistics.median(t) for name, t in times.items()}
        matmuls = {name: record_matmuls(cands[name][0], batches[0].clone()) for name in ("qsm", "qsm-bf16", "sac")}
        flops = {name: sum(call[2] for call in calls) for name, calls in matmuls.items()}
        gemm_seconds = {name: matmul_time(calls, device) for name, calls in matmuls.items()}
        print(f"  {'candidate':<22}{'ms/update':>10}{'spread':>16}{'updates/s':>11}{'x SAC':>8}")
        for name, t in times.items():
            print(
                f"  {name:<22}{1e3 * median[name]:>10.2f}{f'{1e3 * min(t):.2f}-{1e3 * max(t):.2f}':>16}"
                f"{1 / median[name]:>11.1f}{median[name] / median['sac']:>8.2f}"
            )
        # each round times QSM and SAC minutes apart at most: the ratio within a round cancels the host's slow drifts
        paired = sorted(q / s for q, s in zip(times["qsm"], times["sac"]))
        print(
            f"  QSM / SAC time ratio (eager): {median['qsm'] / median['sac']:.2f} (of the medians); within each round: "
            f"median {statistics.median(paired):.2f}, spread {paired[0]:.2f}-{paired[-1]:.2f}"
        )
        print(f"  fast QSM vs straightforward eager QSM: {median['qsm-reference'] / median['qsm']:.2f}x faster")
        for name in ("qsm-auto", "qsm-auto-compiled"):
            base = name.replace("-auto", "")
            if name in times and base in times:
                within = sorted(a / q for a, q in zip(times[name], times[base]))
                print(
                    f"  alpha=auto's cost ({name} / {base}, within rounds): median {statistics.median(within):.3f}, "
                    f"spread {within[0]:.3f}-{within[-1]:.3f}"
                )
        checked = sorted(c / u for c, u in zip(times["qsm"], times["qsm-unchecked"]))
        print(
            "  QSMLoss's finite check (check_finite on / off, within rounds): "
            f"median {statistics.median(checked):.3f}, "
            f"spread {checked[0]:.3f}-{checked[-1]:.3f}"
        )
        print(
            f"  FLOPs per update: QSM {flops['qsm'] / 1e6:.0f} M, SAC {flops['sac'] / 1e6:.0f} M "
            f"(QSM/SAC {flops['qsm'] / flops['sac']:.2f})"
        )
        print("  roofline: the update's FLOPs / its time, against its own matmuls replayed alone (same shapes, dtypes)")
        for name, recorded in (
            ("qsm", "qsm"),
            ("qsm-compiled", "qsm"),
            ("qsm-bf16", "qsm-bf16"),
            ("qsm-bf16-compiled", "qsm-bf16"),
            ("sac", "sac"),
            ("sac-compiled", "sac"),
        ):
            if name in median:
                achieved, gemm = flops[recorded] / median[name] / 1e9, flops[recorded] / gemm_seconds[recorded] / 1e9
                print(
                    f"    {name:<14} {achieved:6.0f} GFLOP/s; its matmuls alone {gemm:6.0f} GFLOP/s "
                    f"({1e3 * gemm_seconds[recorded]:.2f} ms); roofline fraction {achieved / gemm:.2f}"
                )
        print(
            f"  (one [{args.batch}x{width}]x[{width}x{width}] GEMM: "
            f"fp32 {gemm_throughput(width, args.batch, device):.0f}, "
            f"bf16 {gemm_throughput(width, args.batch, device, torch.bfloat16):.0f} GFLOP/s)"
        )
        print("  acting latency (ms), RANDOM, no grad (compiled: the training script's compile.policy=true):")
        actors = {name: cands[name][1] for name in ("qsm", "sac", "td3")}
        actors.update(
            {f"{name}-compiled": torch.compile(actors[name]) for name in ("qsm", "sac") if name in args.compile}
        )
        batch1 = {}
        for name, actor in actors.items():
            batch1[name], b16 = acting_latency(actor, 1, device), acting_latency(actor, 16, device)
            print(f"    {name:<13} batch 1: {1e3 * batch1[name]:.3f}  batch 16: {1e3 * b16:.3f}")
        print(f"  acting QSM / SAC at batch 1: eager {batch1['qsm'] / batch1['sac']:.2f}", end="")
        if "qsm-compiled" in batch1:
            print(f"; compiled QSM / eager SAC {batch1['qsm-compiled'] / batch1['sac']:.2f}", end="")
        if {"qsm-compiled", "sac-compiled"} <= batch1.keys():
            print(f"; both compiled {batch1['qsm-compiled'] / batch1['sac-compiled']:.2f}", end="")
        print()


if __name__ == "__main__":
    main()
