"""Gymnasium's MuJoCo tasks (``env.library=gymnasium``, presets ``env=hopper`` ...): they train, evaluate and
export like a DMC task, with their terminations kept apart from truncations (README, "The training script")."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType

from _helpers import assert_results, read_checkpoint, ROOT, run_script, SCRIPT_DIR, script_module
from test_sota_qsm import compose_config

pytest.importorskip("gymnasium", reason="the gymnasium extra: pip install -e '.[gymnasium]' (CI installs it)")


def test_hopper_trains_evaluates_and_exports_like_a_dmc_task_and_stores_its_falls_as_terminations(tmp_path):
    run = tmp_path / "run"
    done = run_script(run, "env=hopper", "env.task=Hopper-v5")  # (TINY names cartpole) 50-step episodes, 200 frames
    assert "QSM on Hopper-v5" in done.stdout
    assert_results(run, final_frame=200)
    stored = read_checkpoint(run)["replay_buffer"]["_storage"]["_storage"]
    terminated, truncated = stored["next.terminated"][:200], stored["next.truncated"][:200]
    assert terminated.any(), "a random Hopper falls within 200 frames: a termination"
    assert not (terminated & truncated).any()

    evaluated = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "evaluate.py"), f"checkpoint={run}", f"output={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Hopper-v5, QSM at frame 200: return" in evaluated.stdout
    assert (tmp_path / "returns.csv").is_file() and (tmp_path / "policy.pt2").is_file()


def test_an_episode_that_ends_early_counts_up_to_its_end_only():
    # two environments stepped together for 4 steps: the first terminates at step 2 and restarts
    rewards = torch.tensor([[1.0, 2.0, 10.0, 10.0], [1.0, 1.0, 1.0, 1.0]])
    dones = torch.tensor([[False, True, False, False], [False, False, False, True]])
    actions = torch.tensor([[[1.0], [0.0], [1.0], [1.0]], [[0.0], [0.0], [0.0], [-1.0]]])
    rollout = TensorDict(
        {"action": actions, ("next", "reward"): rewards.unsqueeze(-1), ("next", "done"): dones.unsqueeze(-1)},
        batch_size=[2, 4],
    )
    box = Bounded(-torch.ones(1), torch.ones(1), (1,))
    env = SimpleNamespace(action_spec_unbatched=box, rollout=lambda *args, **kwargs: rollout)
    returns, edges = script_module("utils").evaluate_policy(env, None, 4, ExplorationType.RANDOM)
    assert returns.tolist() == [3.0, 4.0]
    assert edges == pytest.approx(2 / 6)  # the first episode's 2 actions and the second's 4: 1.0 and -1.0 on edges


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["env.library=gymnasium", "env.task=Hoper-v5"],
            r"env.task='Hoper-v5' is not a Gymnasium task \(did you mean Hopper-v5\?\)",
        ),
        (["env.library=mujoco"], "env.library must be dm_control or gymnasium"),
    ],
)
def test_a_bad_gymnasium_task_is_refused_naming_it(overrides, message):
    with pytest.raises(ValueError, match=message):
        script_module("config").validate_config(compose_config(*overrides))


def test_a_missing_gymnasium_names_its_install_command(monkeypatch):
    config = script_module("config")
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None if name == "gymnasium" else real(name))
    with pytest.raises(ValueError, match=r'needs Gymnasium, which is not installed: pip install -e ".\[gymnasium\]"'):
        config.validate_config(compose_config("env=halfcheetah"))
