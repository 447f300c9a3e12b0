"""Frames/s of the training script against its collector backend and number of workers.

    python benchmarks/collection_scaling.py                       # local, multiprocess, ray; 1 and 2 workers
    python benchmarks/collection_scaling.py --workers 1 2 4 8 16  # on a machine with 16 cores

Each configuration runs ``qsm.py`` as a user does (its collector, replay buffer, loop and checkpoint) on
cheetah-run at widths 256, batch 256, eager updates, twice:

- ``collection``: ``optim.utd_ratio=0.001`` (one update per 1000 frames), what the collectors deliver;
- ``end to end``: ``optim.utd_ratio=1``, one update per frame (the authors' ratio), with the collection
  of every worker in step with the learner (sync) or running while it updates (async).

The rate is read from the run's own ``returns.csv``: frames over wall time between the first episode that
ends after the warm-up (``collector.init_random_frames`` random frames, the first compile-free batch) and the
last one, so start-up (Ray, processes, the first batch) is not counted; start-up is printed apart. Results:
``benchmarks/results/collection_scaling_<device>.txt`` and ``collection_scaling_<device>.png``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sota-implementations" / "qsm" / "qsm.py"
COMMON = [
    "env.domain=cheetah",
    "env.task=run",
    "env.max_episode_steps=250",  # an episode's end every 250 frames per environment: the clock's ticks
    "network.hidden_sizes=[256,256]",
    "collector.frames_per_batch=500",
    "collector.init_random_frames=1000",
    "compile.compile=false",
    "optim.fp32_matmuls=default",
    "logger.backend=",
    "eval.episodes=1",
    "checkpoint.save_replay_buffer=false",
]
MODES = {"collection": ("optim.utd_ratio=0.001", 12_000), "end to end": ("optim.utd_ratio=1", 4_000)}


def configurations(workers: list[int]) -> list[tuple[str, int, bool]]:
    """``(backend, workers, sync)``: one local collector, then each backend at each number of workers."""
    out = [("local", 1, True)]
    for backend in ("multiprocess", "ray"):
        out += [(backend, n, sync) for n in workers for sync in (True, False)]
    return out


def measure(backend: str, workers: int, sync: bool, mode: str, device: str) -> tuple[float, float]:
    """(steady frames/s, seconds from launch to exit) of one run of the script."""
    utd, frames = MODES[mode]
    with tempfile.TemporaryDirectory() as folder:
        overrides = [
            *COMMON,
            utd,
            f"device={device}",
            f"collector.total_frames={frames}",
            f"eval.interval={frames}",
            f"checkpoint.interval={frames}",
            f"collector.backend={backend}",
            f"collector.num_workers={workers}",
            f"collector.sync={str(sync).lower()}",
            f"hydra.run.dir={folder}",
        ]
        if backend == "ray":
            overrides.append(f"ray.num_cpus={max(workers, os.cpu_count() or 1)}")
        launched = time.perf_counter()
        done = subprocess.run([sys.executable, str(SCRIPT), *overrides], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{backend} x{workers} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        elapsed = time.perf_counter() - launched
        with open(Path(folder) / "returns.csv") as f:
            rows = [(int(r["frame"]), float(r["wall_time"])) for r in csv.DictReader(f) if r["train_return"]]
    after = [(f, t) for f, t in rows if f > 1000 + 500]  # past the random frames and the first policy batch
    (f0, t0), (f1, t1) = after[0], after[-1]
    return (f1 - f0) / (t1 - t0), elapsed


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, mode in zip(axes, MODES):
        local = [r for r in results if r["mode"] == mode and r["backend"] == "local"]
        if local:
            ax.axhline(local[0]["fps"], color="gray", linestyle=":", label="local (1 collector)")
        for backend in ("multiprocess", "ray"):
            for sync in (True, False):
                rows = [r for r in results if (r["mode"], r["backend"], r["sync"]) == (mode, backend, sync)]
                if rows:
                    label = f"{backend}, {'sync' if sync else 'async'}"
                    ax.plot([r["workers"] for r in rows], [r["fps"] for r in rows], "o-", label=label)
        ax.set_title(f"{mode} (utd {'1' if mode == 'end to end' else '0.001'})")
        ax.set_xlabel("workers")
        ax.set_ylabel("frames/s")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("qsm.py on cheetah-run, widths 256, eager updates")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--learner-threads", type=int, default=None, help="OMP_NUM_THREADS of the script's process")
    args = parser.parse_args()
    if args.learner_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.learner_threads)  # the runs inherit it (Ray sets its workers' own)
    results = []
    lines = [" ".join(["collection_scaling.py", *sys.argv[1:]])]
    lines.append(f"{'mode':<11} {'backend':<13} {'workers':>7} {'sync':<5} {'frames/s':>9} {'x local':>8} {'run s':>8}")
    for mode in args.modes:
        local = None
        for backend, workers, sync in configurations(args.workers):
            fps, startup = measure(backend, workers, sync, mode, args.device)
            local = local or fps
            results.append(dict(mode=mode, backend=backend, workers=workers, sync=sync, fps=fps))
            line = (
                f"{mode:<11} {backend:<13} {workers:>7} {'sync' if sync else 'async':<5} {fps:>9.1f} "
                f"{fps / local:>8.2f} {startup:>8.1f}"
            )
            print(line, flush=True)
            lines.append(line)
    out = ROOT / "benchmarks" / "results"
    (out / f"collection_scaling_{args.device}.txt").write_text("\n".join(lines) + "\n")
    plot(results, out / f"collection_scaling_{args.device}.png")


if __name__ == "__main__":
    main()
