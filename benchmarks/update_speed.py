"""Update and acting speed of QSM against TorchRL's SAC and TD3, measured side by side in one process.

    python benchmarks/update_speed.py                      # CPU, widths 256 and 512, eager and compiled
    python benchmarks/update_speed.py --device cuda        # the same on a GPU
    python benchmarks/update_speed.py --no-compile --widths 256

Every candidate runs the full update of its algorithm (all losses, backward, optimizer steps, target
update) on the same batch shapes (DMC cheetah-run: 17-dim observations, 6-dim actions), timed
round-robin: each round runs every candidate for ``--iters`` updates; the table gives the median over
rounds and the spread (min-max). Candidates:

- ``qsm``: torchrl_qsm's QSMLoss + DiffusionActor through the public API, as the training script
  builds them (T = 5, vp schedule, mish eps-network, ReLU critics, fused Adam where available);
- ``qsm-bf16``: the same under ``torch.autocast(bfloat16)`` (matmuls in bf16, schedule and losses in fp32);
- ``qsm-reference``: a straightforward eager QSM update (benchmarks/reference_qsm.py);
- ``sac``, ``td3``: TorchRL's SACLoss and TD3Loss agents as TorchRL's sota scripts build them.

It also prints the FLOPs of one update (torch.utils.flop_counter) divided by its time, next to the
GEMM throughput this process reaches on the update's largest matmul shape (the roofline fraction),
and the acting latency of each actor at batch 1 and 16.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import SoftUpdate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import make_sac, make_td3  # noqa: E402
from reference_qsm import ReferenceQSM  # noqa: E402

from torchrl_qsm import DiffusionActor, EpsilonNetwork, QSMLoss  # noqa: E402

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


def adam(params, fused: bool) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=3e-4, fused=fused or None)


def make_qsm(width: int, device, *, fused: bool, autocast: bool = False, reference: bool = False):
    spec = Bounded(-torch.ones(ACTION_DIM), torch.ones(ACTION_DIM), (ACTION_DIM,), device=device)
    actor = DiffusionActor(ACTION_DIM, OBS_DIM, EpsilonNetwork(ACTION_DIM, OBS_DIM, hidden_sizes=(width, width)), spec=spec).to(device)
    critic = ValueOperator(MLP(OBS_DIM + ACTION_DIM, 1, num_cells=[width, width], activation_class=nn.ReLU, device=device), in_keys=["observation", "action"])
    loss = QSMLoss(actor, critic)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    actor_optim = adam(loss.actor_network_params.values(True, True), fused)
    critic_optim = adam(loss.qvalue_network_params.values(True, True), fused)
    reference_losses = ReferenceQSM(loss).losses if reference else None

    def update(batch: TensorDict) -> TensorDict:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            if reference_losses is None:
                out = loss(batch)
                loss_actor, loss_qvalue = out["loss_actor"], out["loss_qvalue"]
            else:
                loss_actor, loss_qvalue = reference_losses(batch)
        (loss_actor + loss_qvalue).backward()
        actor_optim.step()
        critic_optim.step()
        actor_optim.zero_grad(set_to_none=True)
        critic_optim.zero_grad(set_to_none=True)
        updater.step()
        return TensorDict(loss_actor=loss_actor.detach(), loss_qvalue=loss_qvalue.detach())

    return update, actor


def candidates(width: int, device, compile_: bool, fused: bool) -> dict:
    spec = Bounded(-torch.ones(ACTION_DIM), torch.ones(ACTION_DIM), (ACTION_DIM,), device=device)
    sac, td3 = make_sac(OBS_DIM, spec, (width, width), device=device), make_td3(OBS_DIM, spec, (width, width), device=device)
    qsm, qsm_actor = make_qsm(width, device, fused=fused)
    qsm_bf16, _ = make_qsm(width, device, fused=fused, autocast=True)
    reference, _ = make_qsm(width, device, fused=False, reference=True)
    out = {
        "qsm": (qsm, qsm_actor),
        "qsm-bf16": (qsm_bf16, None),
        "qsm-reference": (reference, None),
        "sac": (sac.update, sac.policy),
        "td3": (td3.update, td3.policy),
    }
    if compile_:
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        for name in ("qsm", "sac", "td3"):
            update, actor = out[name]
            out[f"{name}-compiled"] = (torch.compile(update, mode=mode), None)
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
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    fused = True  # fused Adam has CPU and CUDA kernels since torch 2.4
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"rounds {args.rounds} x {args.iters} updates, fused Adam {fused}")
    if device.type == "cuda":
        print(torch.cuda.get_device_name())

    for width in args.widths:
        print(f"\n=== widths {width}x{width} ===")
        cands = candidates(width, device, not args.no_compile, fused)
        batches = [make_batch(args.batch, device) for _ in range(args.iters)]
        warm = time.perf_counter()
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
            print(f"  {name:<22}{1e3 * median[name]:>10.2f}{f'{1e3 * min(t):.2f}-{1e3 * max(t):.2f}':>16}"
                  f"{1 / median[name]:>11.1f}{median[name] / median['sac']:>8.2f}")
        print(f"  QSM / SAC time ratio (eager): {median['qsm'] / median['sac']:.2f}; "
              f"fast QSM vs straightforward eager QSM: {median['qsm-reference'] / median['qsm']:.2f}x faster")
        print(f"  FLOPs per update: QSM {flops['qsm'] / 1e6:.0f} M, SAC {flops['sac'] / 1e6:.0f} M "
              f"(QSM/SAC {flops['qsm'] / flops['sac']:.2f})")
        print("  roofline: the update's FLOPs / its time, against its own matmuls replayed alone (same shapes, dtypes)")
        for name, recorded in (("qsm", "qsm"), ("qsm-compiled", "qsm"), ("qsm-bf16", "qsm-bf16"), ("sac", "sac")):
            if name in median:
                achieved, gemm = flops[recorded] / median[name] / 1e9, flops[recorded] / gemm_seconds[recorded] / 1e9
                print(f"    {name:<14} {achieved:6.0f} GFLOP/s; its matmuls alone {gemm:6.0f} GFLOP/s "
                      f"({1e3 * gemm_seconds[recorded]:.2f} ms); roofline fraction {achieved / gemm:.2f}")
        print(f"  (one [{args.batch}x{width}]x[{width}x{width}] GEMM: fp32 {gemm_throughput(width, args.batch, device):.0f}, "
              f"bf16 {gemm_throughput(width, args.batch, device, torch.bfloat16):.0f} GFLOP/s)")
        print("  acting latency (ms), RANDOM, no grad:")
        for name in ("qsm", "sac", "td3"):
            actor = cands[name][1]
            b1, b16 = acting_latency(actor, 1, device), acting_latency(actor, 16, device)
            print(f"    {name:<6} batch 1: {1e3 * b1:.3f}  batch 16: {1e3 * b16:.3f}")
        qsm_b1, sac_b1 = acting_latency(cands["qsm"][1], 1, device), acting_latency(cands["sac"][1], 1, device)
        print(f"  acting QSM / SAC at batch 1: {qsm_b1 / sac_b1:.2f}")


if __name__ == "__main__":
    main()
