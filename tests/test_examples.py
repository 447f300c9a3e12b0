"""Tiny versions of the examples under examples/, run as a user runs them."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import gridworld

pytestmark = pytest.mark.slow


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_gridworld_soft_policy_iteration_is_the_boltzmann_update_and_lower_alpha_means_higher_entropy():
    next_state, reward = gridworld.transitions(5, (2, 4))
    history = gridworld.soft_policy_iteration(2.0, next_state, reward, gamma=0.9, iterations=3)
    policy, q = history[1]
    expected = np.exp(2.0 * history[0][1]) / np.exp(2.0 * history[0][1]).sum(1, keepdims=True)
    np.testing.assert_allclose(policy, expected, rtol=1e-10)
    entropies = [
        gridworld.entropy(gridworld.soft_policy_iteration(alpha, next_state, reward, 0.9, 30)[-1][0])
        for alpha in (0.5, 1, 2, 5)
    ]
    assert all(a > b for a, b in zip(entropies, entropies[1:]))


def test_gridworld_script_writes_its_figure(tmp_path):
    out = run_example("gridworld.py", "--size", "5", "--iterations", "10", "--out", str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").is_file() and "converged policy entropy" in out


def test_multimodal_bandit_runs_and_reports_mode_shares(tmp_path):
    out = run_example("multimodal_bandit.py", "--updates", "30", "--samples", "200", "--out", str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").is_file()
    assert re.search(r"QSM: near -0.5 \d+%, near \+0.5 \d+%", out) and "SAC:" in out


def test_mixing_losses_times_the_three_recipes():
    out = run_example("mixing_losses.py", "--updates", "2", "--rounds", "1", "--num-steps", "3", "--width", "32")
    for recipe in ("qsm", "diffusion-ql", "qsm+bc"):
        assert re.search(rf"\s3 {re.escape(recipe)}\s+\d+\.\d+\s+\d+\.\d+", out), recipe


def test_offline_to_online_runs_end_to_end():
    out = run_example(
        "offline_to_online.py",
        "--demo-frames",
        "500",
        "--bc-updates",
        "10",
        "--online-frames",
        "100",
        "--critic-warmup",
        "5",
        "--episodes",
        "1",
    )
    assert "after behaviour cloning" in out
    assert "naive QSM: return" in out and "guarded QSM: return" in out
