"""The learning grid (benchmarks/learning/grid.py) resumes across machines: committed CSVs count as done."""

import argparse
import csv
import importlib.util
import subprocess

import pytest

from _helpers import ROOT

spec = importlib.util.spec_from_file_location("grid", ROOT / "benchmarks" / "learning" / "grid.py")
grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grid)


def write_csv(path, evaluations, best_of_n=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["frame", "wall_time", "train_return", "eval_return", "eval_return_std", "eval_edge_fraction"]
    fields += ["eval_best_of_n_return"] if best_of_n else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for frame, value in evaluations:
            row = dict(frame=frame, wall_time=frame / 100, train_return="", eval_return=value)
            row.update(eval_return_std=1.0, eval_edge_fraction=0.25)
            writer.writerow({**row, **({"eval_best_of_n_return": value + 10} if best_of_n else {})})


def grid_args(tmp_path, **overrides):
    args = dict(out=str(tmp_path / "results"), runs=str(tmp_path / "runs"), frames=20_000, device="cpu", jobs=1)
    args.update(commit=True, set=[], init_random_frames=10_000, eval_interval=10_000, eval_episodes=10)
    args.update(checkpoint_interval=10_000)
    (tmp_path / "results").mkdir(exist_ok=True)  # as grid.py's main does
    return argparse.Namespace(**{**args, **overrides})


def test_a_run_whose_committed_csv_reached_the_budget_is_skipped_and_a_short_one_is_not(tmp_path, monkeypatch):
    args = grid_args(tmp_path)
    write_csv(tmp_path / "results" / "cartpole_balance" / "qsm_seed0.csv", [(10_000, 1.0), (20_000, 2.0)])
    write_csv(tmp_path / "results" / "cartpole_balance" / "qsm_seed1.csv", [(10_000, 1.0)])  # stopped part-way
    launched = []
    monkeypatch.setattr(grid.subprocess, "call", lambda command, **_: launched.append(command) or 1)
    assert grid.launch(args, "qsm", "cartpole_balance", 0)[0] == "cartpole_balance qsm seed 0: done before"
    assert not launched
    grid.launch(args, "qsm", "cartpole_balance", 1)
    (command,) = launched
    assert "env.domain=cartpole" in command and "env.task=balance" in command and "env.seed=1" in command


def test_each_finished_run_s_csv_is_committed_alone(tmp_path, monkeypatch):
    repo = tmp_path
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "other.txt").write_text("staged, not committed with the CSV")
    subprocess.run([*git[:3], "add", "other.txt"], check=True)
    for who in ("AUTHOR", "COMMITTER"):  # the commit grid.py makes needs an identity on a clean machine
        monkeypatch.setenv(f"GIT_{who}_NAME", "t")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "t@t")
    args = grid_args(tmp_path)

    def run(command, cwd, env, stdout, stderr):  # a run that writes its returns.csv and succeeds
        write_csv(tmp_path / "runs" / "walker_run" / "qsm-auto_seed2" / "returns.csv", [(10_000, 5.0), (20_000, 7.0)])
        return 0

    monkeypatch.setattr(grid.subprocess, "call", run)
    grid.launch(args, "qsm-auto", "walker_run", 2)
    log = subprocess.run([*git, "log", "--name-only", "--format=%s"], capture_output=True, text=True).stdout
    assert log.splitlines()[0].startswith("Learning grid: walker_run qsm-auto seed 2, 20000 frames")
    assert "results/walker_run/qsm-auto_seed2.csv" in log and "other.txt" not in log
    status = subprocess.run([*git, "status", "--short"], capture_output=True, text=True).stdout
    assert "A  other.txt" in status  # still staged, as it was


def test_the_summary_covers_every_task_at_its_own_budget(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    for seed in (0, 1):
        write_csv(
            out / "cartpole_balance" / f"qsm-auto_seed{seed}.csv", [(10_000, 500.0), (20_000, 800.0 + seed)], True
        )
        write_csv(out / "walker_run" / f"sac_seed{seed}.csv", [(25_000, 100.0), (50_000, 200.0 + seed)])
    write_csv(out / "walker_run" / "sac_seed2.csv", [(25_000, 100.0)])  # short of its task's budget: left out
    grid.summarize(grid_args(tmp_path, frames=50_000))
    summary = (out / "summary.md").read_text()
    assert "| cartpole_balance | qsm-auto | 2 | 20000 | 800.5 +- 0.7 |" in summary
    assert "| 0.25 / 0.25 | 810.5 +- 0.7 (2 seeds) |" in summary
    assert "| walker_run | sac | 2 | 50000 | 200.5 +- 0.7 |" in summary
    assert (out / "cartpole_balance.png").is_file() and (out / "walker_run.png").is_file()


def test_welch_s_t_matches_its_definition_and_a_known_p_value():
    # the Welch-Satterthwaite test of two seed sets; p checked against scipy.stats.ttest_ind(equal_var=False)
    t, df, p = grid.welch([648.0, 620.0, 670.0], [401.0, 340.0, 460.0])
    assert (t, df, p) == pytest.approx((6.5437, 2.6771, 0.010210), rel=1e-4)
    assert grid.welch([1.0], [2.0, 3.0])[2] != grid.welch([1.0], [2.0, 3.0])[2]  # nan with one seed


def test_each_qsm_variant_is_compared_with_the_better_sac_of_its_task(tmp_path):
    out = tmp_path / "results"
    for algorithm, finals in {"qsm": (300, 310, 320), "sac": (100, 110, 120), "sac-alpha0.1": (290, 300, 310)}.items():
        for seed, final in enumerate(finals):
            write_csv(out / "finger_spin" / f"{algorithm}_seed{seed}.csv", [(50_000, float(final))])
    grid.summarize(grid_args(tmp_path, frames=50_000))
    rows = list(csv.DictReader(open(out / "vs_sac.csv")))
    assert [(r["task"], r["qsm"], r["sac"]) for r in rows] == [("finger_spin", "qsm", "sac-alpha0.1")]
    assert float(rows[0]["welch_p"]) > 0.05 and rows[0]["verdict"] == "no significant difference"
    assert (
        "| finger_spin | qsm | 310.0 +- 10.0 | sac-alpha0.1 | 300.0 +- 10.0 | 3, 3 |" in (out / "vs_sac.md").read_text()
    )


def test_a_sac_variant_whose_seeds_are_still_running_is_not_the_baseline_yet(tmp_path):
    out = tmp_path / "results"
    finals = {"qsm": (300, 310, 320), "sac": (100, 110, 120), "sac-alpha0.1": (400,)}
    for algorithm, values in finals.items():
        for seed, final in enumerate(values):
            write_csv(out / "finger_spin" / f"{algorithm}_seed{seed}.csv", [(50_000, float(final))])
    grid.summarize(grid_args(tmp_path, frames=50_000))
    rows = list(csv.DictReader(open(out / "vs_sac.csv")))
    assert [(r["qsm"], r["sac"]) for r in rows] == [("qsm", "sac")]
