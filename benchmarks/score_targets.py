"""What the noise-consistent target costs: the update with each score target, side by side in one process.

    python benchmarks/score_targets.py                          # CPU, widths 256 and 512, eager and compiled
    python benchmarks/score_targets.py --device cuda            # the same on a GPU
    python benchmarks/score_targets.py --widths 256 --no-compile

Every candidate is the training script's whole update (benchmarks/script_learner.py, on qsm.py's ``make_update``:
both losses, gradients, Adam steps, target update; ``compile.compile=true`` for the compiled ones), on the
same batches (DMC cheetah-run shapes: 17-dim observations, 6-dim actions, batch 256), timed round-robin; the
ratios are taken within each round, against the paper's target (``diffusion=faithful``), and their median
printed with their spread. Candidates: ``gradient`` (the paper's ``-alpha grad_a Q``), ``scaled_gradient``
(``-sigma_t alpha grad_a Q``), and ``q_weighted`` with K noise candidates (``diffusion=consistent``: the
posterior noise of ``pi ~ exp(alpha Q)`` with its learned alpha). Beside each K: the estimate's RMS error
against the exact posterior noise at the cleanest step (1-D, ``alpha kappa`` 100, by quadrature), the accuracy
that K buys.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from script_learner import make_learner
from update_speed import make_batch, script_config, time_updates

from torchrl_qsm.diffusion.schedules import NoiseSchedule
from torchrl_qsm.objectives.posterior import posterior_candidates, weighted_noise

from _helpers import exact_posterior_noise  # noqa: E402 (tests/, on the path through update_speed)
from utils import make_env


def estimate_error(num_candidates: int, n: int = 2000) -> float:
    """RMS error of the K-candidate estimate at t = 0 against the exact posterior noise (pi ~ exp(-50 (a - 0.3)^2))."""
    torch.manual_seed(0)
    alpha_bar = NoiseSchedule(5, "vp").alphas_cumprod[0].double()
    x_t = alpha_bar.sqrt() * (2 * torch.rand(n, dtype=torch.float64) - 1) + (1 - alpha_bar).sqrt() * torch.randn(
        n, dtype=torch.float64
    )
    box = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    xi, a0 = posterior_candidates(x_t.unsqueeze(-1), alpha_bar, *box, num_candidates)
    estimate = weighted_noise(xi, -50 * (a0.squeeze(-1) - 0.3) ** 2)[0].squeeze(-1)
    exact = exact_posterior_noise(x_t, alpha_bar, lambda a: -50 * (a - 0.3) ** 2)
    return (estimate - exact).pow(2).mean().sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--candidates", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch._dynamo.config.recompile_limit = 64  # one compiled update per candidate, each stepping its own Adams
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch 256")
    env = make_env("cheetah", "run")
    targets = {"gradient": (), "scaled_gradient": ("diffusion.score_target=scaled_gradient",)}
    targets |= {f"q_weighted K={k}": ("diffusion=consistent", f"diffusion.num_candidates={k}") for k in args.candidates}
    errors = {f"q_weighted K={k}": estimate_error(k) for k in args.candidates}
    for width in args.widths:
        print(f"\n=== widths {width}x{width} ===")
        modes = ["eager"] + ([] if args.no_compile else ["compiled"])
        updates = {}
        for mode in modes:
            for name, overrides in targets.items():
                compiled = (f"compile.compile={mode == 'compiled'}",)
                cfg = script_config(width, device, *overrides, *compiled)
                updates[f"{name}, {mode}"] = make_learner(cfg, env, device)["learn"]
        batches = [make_batch(256, device) for _ in range(args.iters)]
        for name, update in updates.items():  # warm-up, and compile
            start = time.perf_counter()
            for batch in batches[:3]:
                update(batch.clone())
            if name.endswith("compiled"):
                print(f"  {name}: compiled in {time.perf_counter() - start:.0f} s")
        times = {name: [] for name in updates}
        for _ in range(args.rounds):
            for name, update in updates.items():
                times[name].append(time_updates(update, [b.clone() for b in batches], device))
        print(f"  {'target, mode':<30}{'ms/update':>10}{'x gradient (within rounds)':>30}{'RMS error, t=0':>16}")
        for name, values in times.items():
            base = times["gradient, " + name.rsplit(", ", 1)[1]]
            ratios = sorted(v / b for v, b in zip(values, base))
            error = errors.get(name.rsplit(", ", 1)[0])
            print(
                f"  {name:<30}{1e3 * statistics.median(values):>10.2f}"
                f"{f'{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})':>30}"
                f"{'' if error is None else f'{error:.3f}':>16}"
            )


if __name__ == "__main__":
    main()
