"""The learning comparison: {algorithm} x {task} x {seed} at a frame budget, one command.

    python benchmarks/learning/grid.py --frames 50000 --jobs 2                  # this CPU
    python benchmarks/learning/grid.py --frames 1000000 --jobs 8 --device cuda  # a GPU machine
    python benchmarks/learning/grid.py --summarize-only                         # tables and plots again
    python benchmarks/learning/grid.py --tasks HalfCheetah-v5 Walker2d-v5        # Gymnasium ids work too
    python benchmarks/learning/grid.py --tasks cartpole_balance --frames 20000 --commit  # commit each CSV

Every run is ``sota-implementations/qsm/qsm.py`` for QSM, ``benchmarks/learning/baselines.py`` for
TorchRL's SAC and TD3: one loop for every algorithm (the script's ``loop.train``: same environments,
collector, replay buffer, widths, batch, warm-up and evaluation; only the algorithm differs), each run
its own process. ``--jobs`` runs go in parallel; on a CPU each gets one thread.

Resumable across machines: a run is skipped when its CSV under ``--out`` (the committed results)
reaches the budget, or its run folder holds a finished run; a run that stopped part-way resumes
from its checkpoint when its folder is still there (run folders are not committed, so on another
machine it starts again). ``--commit`` commits each run's CSV as soon as the run ends, so a grid
split over sessions or machines loses at most the runs in flight.

Writes under ``--out`` (default benchmarks/results/learning):
  <task>/<algorithm>_seed<k>.csv   each run's returns.csv: frame, wall_time, train_return, eval_return,
                                   eval_return_std, eval_edge_fraction (and eval_best_of_n_* with
                                   --set eval.best_of_n=N)
  summary.md, summary.csv          final and area-under-curve eval return per algorithm and task
                                   (mean and std over seeds), edge fraction (mean over evaluations
                                   and final), final best-of-N return, wall time per run: every
                                   task folder under --out, each at its own budget (its longest run)
  <task>.png                       eval return against frames, mean over seeds with a +-std band
  commands.txt                     the exact command of every run
Run folders (checkpoints, logs) go to ``--runs`` (default outputs/learning, not committed).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QSM = [str(ROOT / "sota-implementations" / "qsm" / "qsm.py")]
BASELINES = str(ROOT / "benchmarks" / "learning" / "baselines.py")
ALGORITHMS = {  # the script and its first arguments
    "qsm": QSM,  # the authors' recipe (the default preset)
    "qsm-robust": [*QSM, "diffusion=robust"],
    "qsm-auto": [*QSM, "diffusion=auto"],
    "sac": [BASELINES, "sac"],
    "td3": [BASELINES, "td3"],
}
TASKS = ("cheetah_run", "walker_walk", "cartpole_swingup")


def task_overrides(task: str) -> list[str]:
    """``cheetah_run`` -> the DMC domain and task; a Gymnasium id (``HalfCheetah-v5``) -> env.library=gymnasium."""
    if "-v" in task:
        return ["env.library=gymnasium", f"env.task={task}"]
    domain, name = task.split("_", 1)
    return [f"env.domain={domain}", f"env.task={name}"]


def run_overrides(args, algorithm: str, task: str, seed: int, folder: Path) -> list[str]:
    overrides = [
        *task_overrides(task),
        f"env.seed={seed}",
        f"collector.total_frames={args.frames}",
        f"collector.init_random_frames={args.init_random_frames}",
        f"replay_buffer.size={min(args.frames, 1_000_000)}",
        f"eval.interval={args.eval_interval}",
        f"eval.episodes={args.eval_episodes}",
        f"checkpoint.interval={args.checkpoint_interval}",
        "checkpoint.save_replay_buffer=true",
        f"device={args.device}",
        "logger.backend=",
        f"hydra.run.dir={folder}",
        *args.set,
    ]
    if has_checkpoint(folder):
        overrides.append(f"checkpoint.resume={folder}")  # its newest checkpoint
    return overrides


def has_checkpoint(folder: Path) -> bool:
    """Whether a run folder holds a checkpoint to resume (``checkpoints/checkpoint-<frames>``)."""
    return any((folder / "checkpoints").glob("checkpoint-*"))


def finished(folder: Path, frames: int) -> bool:
    rows = read_rows(folder / "returns.csv")
    return bool(rows) and (folder / "learning_curve.png").is_file() and max(int(r["frame"]) for r in rows) >= frames


def reached(csv_path: Path, frames: int) -> bool:
    """Whether a results CSV holds an evaluation at ``frames`` or later (a run that reached its budget)."""
    curve = eval_curve(read_rows(csv_path))
    return bool(curve) and curve[-1][0] >= frames


def results_csv(args, algorithm: str, task: str, seed: int) -> Path:
    return Path(args.out) / task / f"{algorithm}_seed{seed}.csv"


def commit(path: Path, message: str) -> None:
    """``git commit`` of this one file (``--only``: whatever else is staged stays staged); a failure is printed."""
    repo = subprocess.run(
        ["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"], capture_output=True, text=True
    ).stdout.strip()
    for command in (
        ["git", "-C", repo, "add", str(path)],
        ["git", "-C", repo, "commit", "-q", "-m", message, "--only", str(path)],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"not committed ({shlex.join(command)}): {done.stderr.strip()}", flush=True)
            return


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def launch(args, algorithm: str, task: str, seed: int) -> tuple[str, int, float]:
    folder = Path(args.runs) / task / f"{algorithm}_seed{seed}"
    if reached(results_csv(args, algorithm, task, seed), args.frames) or finished(folder, args.frames):
        return f"{task} {algorithm} seed {seed}: done before", 0, 0.0
    if folder.is_dir() and not has_checkpoint(folder):
        shutil.rmtree(folder)  # a run stopped before its first checkpoint: nothing to resume, start again
    command = [sys.executable, *ALGORITHMS[algorithm], *run_overrides(args, algorithm, task, seed, folder)]
    with open(Path(args.out) / "commands.txt", "a") as log:
        log.write(shlex.join(command) + "\n")
    # every run uses this checkout's torchrl_qsm, whatever is (or is not) installed
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
    if args.jobs > 1 and args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # two torch processes on two cores otherwise fight (benchmarks/README.md)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(folder.parent / f"{folder.name}.log", "w") as output:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    minutes = (time.time() - start) / 60
    if collect(args, algorithm, task, seed) and args.commit and code == 0:
        frames = eval_curve(read_rows(results_csv(args, algorithm, task, seed)))[-1][0]
        commit(
            results_csv(args, algorithm, task, seed),
            f"Learning grid: {task} {algorithm} seed {seed}, {frames} frames ({minutes:.0f} min on {args.device})",
        )
    return f"{task} {algorithm} seed {seed}: exit {code}", code, minutes * 60


def collect(args, algorithm: str, task: str, seed: int) -> bool:
    """Copies the run's returns.csv next to the summary; whether there was one."""
    source = Path(args.runs) / task / f"{algorithm}_seed{seed}" / "returns.csv"
    if not source.is_file():
        return False
    target = results_csv(args, algorithm, task, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return True


def eval_curve(rows: list[dict]) -> list[tuple[int, float, float]]:
    """``(frame, eval return, edge fraction)`` of each evaluation."""
    return [
        (int(r["frame"]), float(r["eval_return"]), float(r["eval_edge_fraction"])) for r in rows if r["eval_return"]
    ]


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(args) -> None:
    """summary.md / summary.csv and one PNG per task, from the CSVs under --out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    table = []
    folders = {path.parent.name for path in out.glob("*/*_seed*.csv")}
    tasks = [t for t in TASKS if t in folders] + sorted(folders - set(TASKS))
    for task in tasks:
        found = {path.name.rsplit("_seed", 1)[0]: None for path in sorted((out / task).glob("*_seed*.csv"))}
        algorithms = [a for a in ALGORITHMS if a in found] + [a for a in found if a not in ALGORITHMS]
        runs_of = {
            a: [(rows, eval_curve(rows)) for rows in map(read_rows, sorted((out / task).glob(f"{a}_seed*.csv")))]
            for a in algorithms
        }
        budget = max((c[-1][0] for runs in runs_of.values() for _, c in runs if c), default=0)  # its longest run
        fig, ax = plt.subplots(figsize=(6, 4))
        for algorithm in algorithms:
            runs = [(rows, curve) for rows, curve in runs_of[algorithm] if curve and curve[-1][0] >= budget]
            if not runs:  # only runs that reached the task's budget count
                continue
            curves = [curve for _, curve in runs]
            walls = [float(rows[-1]["wall_time"]) for rows, _ in runs]
            final = [c[-1][1] for c in curves]
            # area under the eval curve, normalised by the frames it spans: the mean return over training
            auc = [statistics.fmean(point[1] for point in c) for c in curves]
            edges = [statistics.fmean(point[2] for point in c) for c in curves]
            # eval.best_of_n runs: the critic-ranked evaluation at the final frame, where the run has one
            best = [
                float(rows[-1]["eval_best_of_n_return"]) for rows, _ in runs if rows[-1].get("eval_best_of_n_return")
            ]
            table.append(
                {
                    "task": task,
                    "algorithm": algorithm,
                    "seeds": len(curves),
                    "frames": max(c[-1][0] for c in curves),
                    "final": mean_std(final),
                    "auc": mean_std(auc),
                    "edge_fraction": mean_std(edges),
                    "final_edge_fraction": mean_std([c[-1][2] for c in curves]),
                    "best_of_n": (*mean_std(best), len(best)),
                    "wall_minutes": statistics.fmean(walls) / 60,
                }
            )
            length = min(len(c) for c in curves)
            frames = [p[0] for p in curves[0][:length]]
            stats = [mean_std([c[i][1] for c in curves]) for i in range(length)]
            mean = [m for m, _ in stats]
            ax.plot(frames, mean, marker="o", label=f"{algorithm} ({len(curves)} seeds)")
            ax.fill_between(frames, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2)
        ax.set_title(task.replace("_", "-"))
        ax.set_xlabel("environment frames")
        ax.set_ylabel("eval return (mean +- std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{task}.png", dpi=100)
        plt.close(fig)

    def fmt(pair):
        return f"{pair[0]:.1f} +- {pair[1]:.1f}"

    def fmt_best(best):
        return f"{fmt(best)} ({best[2]} seeds)" if best[2] else "-"

    lines = [
        "| task | algorithm | seeds | frames | final eval return | mean eval return (AUC) | edge fraction "
        "(mean / final) | final best-of-N return | minutes per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['task']} | {row['algorithm']} | {row['seeds']} | {row['frames']} | {fmt(row['final'])} | "
            f"{fmt(row['auc'])} | {row['edge_fraction'][0]:.2f} / {row['final_edge_fraction'][0]:.2f} | "
            f"{fmt_best(row['best_of_n'])} | {row['wall_minutes']:.0f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "task",
                "algorithm",
                "seeds",
                "frames",
                "final_mean",
                "final_std",
                "auc_mean",
                "auc_std",
                "edge_fraction",
                "final_edge_fraction",
                "best_of_n_final_mean",
                "best_of_n_final_std",
                "best_of_n_seeds",
                "wall_minutes",
            ]
        )
        for r in table:
            writer.writerow(
                [
                    r["task"],
                    r["algorithm"],
                    r["seeds"],
                    r["frames"],
                    *r["final"],
                    *r["auc"],
                    r["edge_fraction"][0],
                    r["final_edge_fraction"][0],
                    *r["best_of_n"],
                    r["wall_minutes"],
                ]
            )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=["qsm", "sac", "td3"], choices=sorted(ALGORITHMS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--init-random-frames", type=int, default=10_000)
    parser.add_argument("--eval-interval", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learning"))
    parser.add_argument("--runs", default=str(ROOT / "outputs" / "learning"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--commit", action="store_true", help="git commit each run's CSV under --out as it ends")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        # interleave algorithms so that a partial grid already compares them
        runs = [(a, t, s) for s in args.seeds for t in args.tasks for a in args.algorithms]
        with ThreadPoolExecutor(args.jobs) as pool:
            for message, _, seconds in pool.map(lambda run: launch(args, *run), runs):
                print(f"{message} ({seconds / 60:.1f} min)", flush=True)
    summarize(args)


if __name__ == "__main__":
    main()
