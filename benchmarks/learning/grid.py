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
  vs_sac.md, vs_sac.csv            each QSM variant against the better SAC of the task (sac, TorchRL's
                                   recipe, or sac-alpha0.1, pytorch_sac's initial temperature: the higher
                                   final mean among those with the most seeds), with Welch's t over seeds
                                   and its two-sided p
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
    "qsm-consistent": [*QSM, "diffusion=consistent"],  # the noise-consistent target, learned temperature
    "sac": [BASELINES, "sac"],  # TorchRL's sota recipe: initial entropy coefficient 1.0
    "sac-alpha0.1": [BASELINES, "sac", "--alpha-init", "0.1"],  # pytorch_sac's initial coefficient
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


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's t-test of mean(a) - mean(b): ``(t, degrees of freedom, two-sided p)``; nan with fewer than 2 seeds."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return math.nan, math.nan, math.nan
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, incomplete_beta(df / 2, 0.5, df / (df + t * t))  # P(|T_df| > |t|)


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Numerical Recipes, betacf)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):
        return 1 - incomplete_beta(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)) / a
    c, d, f = 1.0, 0.0, 1.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + numerator * d
        d = 1 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1 + numerator / (c if abs(c) > 1e-300 else 1e-300)
        f *= c * d
        if abs(1 - c * d) < 1e-12:
            break
    return front * (f - 1)


def compare_with_sac(table: list[dict]) -> list[dict]:
    """Each QSM variant's final return against the better SAC of its task: the higher final mean over seeds, among
    the SAC variants with the most seeds (one whose seeds are still running is not a candidate yet: one lucky
    seed would otherwise become the baseline)."""
    rows = []
    for task in dict.fromkeys(row["task"] for row in table):
        of_task = [row for row in table if row["task"] == task]
        sacs = [row for row in of_task if row["algorithm"].startswith("sac")]
        if not sacs:
            continue
        most = max(row["seeds"] for row in sacs)
        best = max((row for row in sacs if row["seeds"] == most), key=lambda row: row["final"][0])
        for row in of_task:
            if row["algorithm"].startswith("qsm"):
                t, df, p = welch(row["finals"], best["finals"])
                rows.append(
                    {
                        "task": task,
                        "qsm": row["algorithm"],
                        "qsm_final": row["final"],
                        "sac": best["algorithm"],
                        "sac_final": best["final"],
                        "seeds": (row["seeds"], best["seeds"]),
                        "welch": (t, df, p),
                    }
                )
    return rows


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
                    "finals": final,
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
    write_vs_sac(out, compare_with_sac(table))


def write_vs_sac(out: Path, rows: list[dict]) -> None:
    """vs_sac.md and vs_sac.csv: each QSM variant against the better SAC of its task (compare_with_sac)."""

    def verdict(row):
        t, _, p = row["welch"]
        if math.isnan(p) or p >= 0.05:
            return "no significant difference"
        return "QSM higher" if t > 0 else "SAC higher"

    lines = [
        "| task | QSM variant | QSM final | better SAC | SAC final | seeds QSM, SAC | Welch t | df | p | at p < 0.05 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t, df, p = row["welch"]
        lines.append(
            f"| {row['task']} | {row['qsm']} | {row['qsm_final'][0]:.1f} +- {row['qsm_final'][1]:.1f} | {row['sac']} | "
            f"{row['sac_final'][0]:.1f} +- {row['sac_final'][1]:.1f} | {row['seeds'][0]}, {row['seeds'][1]} | "
            f"{t:.2f} | {df:.1f} | {p:.3f} | {verdict(row)} |"
        )
    (out / "vs_sac.md").write_text("\n".join(lines) + "\n")
    with open(out / "vs_sac.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["task", "qsm", "qsm_final_mean", "qsm_final_std", "sac", "sac_final_mean", "sac_final_std"]
            + ["qsm_seeds", "sac_seeds", "welch_t", "welch_df", "welch_p", "verdict"]
        )
        for row in rows:
            writer.writerow(
                [
                    row["task"],
                    row["qsm"],
                    *row["qsm_final"],
                    row["sac"],
                    *row["sac_final"],
                    *row["seeds"],
                    *row["welch"],
                    verdict(row),
                ]
            )


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
