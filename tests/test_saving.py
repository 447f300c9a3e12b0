"""A trained actor out of the library: ``save_actor``/``load_actor``, the ``torch.export`` program that needs
only torch, and ``evaluate.py`` on a checkpoint of the training script (README, "After training")."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_qsm import export_policy, load_actor, save_actor

from _helpers import make_actor, OBS_DIM, ROOT, SCRIPT_DIR, script_module

T, A = 5, 3


@pytest.fixture
def actor():
    return make_actor(bound=2.0)


def actions_of(actor, observation: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        return actor(TensorDict(observation=observation, batch_size=observation.shape[:1]))["action"]


def test_save_and_load_give_back_an_actor_with_the_same_actions(actor, tmp_path):
    path = save_actor(actor, tmp_path / "actor.pt")
    again = load_actor(path)
    observation = torch.randn(9, OBS_DIM)
    assert torch.equal(actions_of(actor, observation, seed=3), actions_of(again, observation, seed=3))


def test_load_actor_refuses_a_file_without_an_actor_naming_what_it_reads(tmp_path):
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(
        ValueError, match="holds no torchrl_qsm actor: load_actor reads a file of torchrl_qsm.save_actor"
    ):
        load_actor(tmp_path / "other.pt")


@pytest.mark.parametrize("batch", [1, 7])
def test_the_exported_program_gives_the_actor_s_actions_for_the_same_noise(actor, tmp_path, batch):
    program = torch.export.load(export_policy(actor, tmp_path / "policy.pt2")).module()
    observation = torch.randn(batch, OBS_DIM)
    expected = actions_of(actor, observation, seed=11)
    torch.manual_seed(11)
    noise = torch.randn(T + 1, batch, A)  # the actor's own draw: x_T, then each step's noise
    action = program(observation, noise)
    torch.testing.assert_close(action, expected, rtol=1e-5, atol=1e-6)
    assert (action.abs() <= 2.0).all()  # inside the action bounds
    zeros = program(observation, torch.zeros(T + 1, batch, A))  # the noise-free chain: DETERMINISTIC
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        deterministic = actor(TensorDict(observation=observation, batch_size=[batch]))["action"]
    torch.testing.assert_close(zeros, deterministic, rtol=1e-5, atol=1e-6)


def test_the_exported_program_loads_and_runs_with_torch_alone(actor, tmp_path):
    path = export_policy(actor, tmp_path / "policy.pt2")
    code = f"""
import json, sys, torch
extra = {{"torchrl_qsm.json": ""}}
program = torch.export.load({str(path)!r}, extra_files=extra).module()
meta = json.loads(extra["torchrl_qsm.json"])
action = program(torch.randn(4, meta["observation"][1]), torch.randn(meta["noise"][0], 4, meta["action"][1]))
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("torchrl", "tensordict", "torchrl_qsm"))
print(json.dumps({{"shape": list(action.shape), "meta": meta, "imported": ours}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["shape"] == [4, A] and result["imported"] == []
    assert result["meta"]["num_steps"] == T and result["meta"]["action_high"] == [2.0] * A


def run_evaluate(*options: str) -> subprocess.CompletedProcess:
    """evaluate.py as a user runs it."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "evaluate.py"), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_evaluate_py_rebuilds_the_run_from_its_checkpoint_and_exports_it(tiny_run, tmp_path):
    checkpoint = tiny_run / "checkpoint.pt"
    done = run_evaluate(f"checkpoint={checkpoint}", "eval.episodes=3", f"output={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cartpole-swingup, QSM at frame 200: return" in done.stdout and "over 3 episodes" in done.stdout
    with open(tmp_path / "returns.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    # the exported program acts like the checkpoint's actor, which load_actor gives back
    actor, program = load_actor(checkpoint), torch.export.load(tmp_path / "policy.pt2").module()
    observation = torch.randn(2, 5)
    expected = actions_of(actor, observation, seed=0)
    torch.manual_seed(0)
    torch.testing.assert_close(program(observation, torch.randn(T + 1, 2, 1)), expected, rtol=1e-5, atol=1e-6)


def test_evaluate_py_best_of_n_ranks_with_the_checkpoint_s_critics_on_the_same_episodes(tiny_run, tmp_path):
    done = run_evaluate(
        f"checkpoint={tiny_run / 'checkpoint.pt'}",
        "eval.episodes=2",
        "eval.best_of_n=4",
        "export=false",
        f"output={tmp_path}",
    )
    assert "QSM at frame 200: return" in done.stdout  # the plain evaluation, always
    assert "QSM at frame 200 (best of 4 samples, critic-ranked): return" in done.stdout
    with open(tmp_path / "returns.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["return"] and row["best_of_n_return"] for row in rows)


def test_a_checkpoint_older_than_a_config_field_gets_today_s_default_for_it(tiny_run):
    config = script_module("config")
    saved = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    del saved["config"]["diffusion"]["alpha_curvature"], saved["config"]["eval"]["best_of_n"]  # fields it predates
    cfg = config.saved_config(saved)
    assert cfg.diffusion.alpha_curvature == 1.5 and cfg.eval.best_of_n == 1
    assert cfg.collector.total_frames == 200 and cfg.network.hidden_sizes == [32, 32]  # the checkpoint's own values
    assert "algorithm" not in cfg


def test_load_actor_reads_the_trained_weights_from_a_checkpoint_of_the_script(tiny_run):
    saved = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    trained = TensorDict(saved["state"]["loss"]).unflatten_keys(".")["actor_network_params"]
    actor = load_actor(tiny_run / "checkpoint.pt")
    assert (TensorDict.from_module(actor).detach() == trained).all()


def test_evaluate_py_names_an_unknown_option():
    done = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "evaluate.py"), "checkpoint=x.pt", "eval.episode=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "unknown option(s) ['eval.episode']" in done.stderr
