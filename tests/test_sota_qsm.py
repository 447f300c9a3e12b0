"""The training script, run as a user runs it (subprocess, Hydra overrides), on a tiny budget."""
from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchrl.data import Bounded

from _helpers import SCRIPT_DIR, script_module

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "env=cartpole_swingup",
    "collector.total_frames=200",
    "collector.init_random_frames=100",
    "collector.frames_per_batch=50",
    "optim.batch_size=16",
    "replay_buffer.size=1000",
    "network.hidden_sizes=[32,32]",
    "eval.interval=100",
    "eval.episodes=2",
    "env.max_episode_steps=50",
    "checkpoint.interval=100",
]

pytestmark = pytest.mark.slow


def run_script(folder: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "qsm.py"), *TINY, *overrides, f"hydra.run.dir={folder}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"qsm.py failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def read_returns(folder: Path) -> list[dict]:
    with open(folder / "returns.csv") as f:
        return list(csv.DictReader(f))


def assert_results(folder: Path, final_frame: int) -> None:
    for name in ("config.yaml", "returns.csv", "learning_curve.png", "checkpoint.pt"):
        assert (folder / name).is_file(), name
    rows = read_returns(folder)
    evals = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    trains = [float(r["train_return"]) for r in rows if r["train_return"]]
    assert evals and trains and all(math.isfinite(v) for v in evals + trains)
    assert 0 <= float(rows[-1]["eval_edge_fraction"]) <= 1
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["frames"] == final_frame


def test_trains_on_dm_control_and_writes_the_results_folder(tmp_path):
    done = run_script(tmp_path)
    assert_results(tmp_path, final_frame=200)
    assert "[eval] frame 200: return" in done.stdout and "on the box edges" in done.stdout
    assert "frame/s" in done.stderr  # the tqdm progress bar


@pytest.mark.parametrize("algorithm", ["sac", "td3"])
def test_runs_torchrl_baselines_through_the_same_loop(tmp_path, algorithm):
    done = run_script(tmp_path, f"algorithm={algorithm}")
    assert_results(tmp_path, final_frame=200)
    assert done.stdout.startswith(algorithm.upper()) or f"{algorithm.upper()} on cartpole-swingup" in done.stdout


def test_trains_with_two_collector_processes(tmp_path):
    run_script(tmp_path, "collector.num_envs=2")
    assert_results(tmp_path, final_frame=200)


def test_resume_restores_weights_optimizers_and_replay_buffer_exactly_and_continues(tmp_path):
    first, again, longer = tmp_path / "first", tmp_path / "again", tmp_path / "longer"
    run_script(first)
    saved = torch.load(first / "checkpoint.pt", weights_only=False)
    assert saved["frames"] == 200 and saved["updates"] == 150

    # resuming with nothing left to do must write back exactly what it loaded
    done = run_script(again, f"checkpoint.resume={first / 'checkpoint.pt'}")
    assert "Resumed from" in done.stdout and "at frame 200 (150 updates)" in done.stdout
    reloaded = torch.load(again / "checkpoint.pt", weights_only=False)
    for component in ("loss", "actor_optim", "critic_optim", "scheduler", "target_updater"):
        assert_state_equal(saved[component], reloaded[component], component)
    # the storage is allocated for replay_buffer.size rows; the first 200 hold data, the rest is uninitialised
    stored, restored = saved["replay_buffer"], reloaded["replay_buffer"]
    assert_state_equal(rows_of(stored, 200), rows_of(restored, 200), "storage")
    for part in ("_writer", "_sampler"):
        assert_state_equal(stored[part], restored[part], part)
    assert reloaded["results"] == saved["results"] and reloaded["update_credit"] == saved["update_credit"]

    # and resuming to 2N starts at N with the first run's data, then finishes
    done = run_script(longer, f"checkpoint.resume={first / 'checkpoint.pt'}", "collector.total_frames=400")
    assert "at frame 200" in done.stdout
    final = torch.load(longer / "checkpoint.pt", weights_only=False)
    assert final["frames"] == 400 and final["updates"] == 350
    assert_state_equal(rows_of(saved["replay_buffer"], 200), rows_of(final["replay_buffer"], 200), "buffer prefix")
    rows = read_returns(longer)
    assert rows[: len(saved["results"])] == [{k: str(v) for k, v in r.items()} for r in saved["results"]]
    assert max(int(r["frame"]) for r in rows) == 400


def rows_of(replay_buffer_state: dict, n: int) -> dict:
    """The first ``n`` stored transitions, from a replay buffer's state_dict."""
    return {key: value[:n] for key, value in replay_buffer_state["_storage"]["_storage"].items()}


def assert_state_equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor) or hasattr(a, "keys") and hasattr(a, "batch_size"):
        assert (a == b).all(), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_state_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.domain=cheetah", "env.task=fly"], "env.domain='cheetah' env.task='fly' is not a DeepMind Control task"),
        (["diffusion.alpha=0"], "diffusion.alpha .* must be > 0; got diffusion.alpha=0"),
        (["diffusion.alpha=-3"], "diffusion.alpha"),
        (["diffusion.num_steps=0"], "diffusion.num_steps .* must be an integer >= 1; got diffusion.num_steps=0"),
        (["optim.batch_size=512", "replay_buffer.size=256"], "optim.batch_size must not exceed replay_buffer.size"),
        (["collector.init_random_frames=2000", "collector.total_frames=1000"], "init_random_frames must not exceed"),
        (["device=cuda:7"] if not torch.cuda.is_available() else ["device=cuda:999"], "device='cuda"),
        (["eval.mode=greedy"], "eval.mode must be"),
        (["algorithm=ppo"], "algorithm must be one of"),
    ],
)
def test_bad_configuration_is_refused_naming_the_field(overrides, message):
    validate_config = script_module("utils").validate_config
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config(*overrides))


def test_bad_configuration_fails_before_training(tmp_path):
    done = run_script(tmp_path, "diffusion.alpha=-1", check=False)
    assert done.returncode != 0
    assert "diffusion.alpha (the scale of grad_a Q) must be > 0" in done.stderr
    assert not (tmp_path / "returns.csv").exists()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (SCRIPT_DIR / "env").glob("*.yaml")))
def test_every_preset_is_a_valid_configuration(preset):
    validate_config = script_module("utils").validate_config
    cfg = compose_config(f"env={preset}")
    validate_config(cfg)
    if preset in ("quadruped_walk", "humanoid_walk"):
        assert cfg.diffusion.alpha == 120


def test_compile_options_train_with_a_compiled_update_and_a_compiled_acting_policy(tmp_path):
    # compile.compile wraps the update in torch.compile; compile.policy is the Collector's compile_policy.
    run_script(tmp_path, "compile.compile=true", "compile.policy=true")
    assert_results(tmp_path, final_frame=200)
    make_td3_agent, make_collector = script_module("agents").make_td3_agent, script_module("utils").make_collector
    spec = Bounded(-torch.ones(1), torch.ones(1), (1,))
    policy = make_td3_agent(5, spec, hidden_sizes=(8,)).exploration_policy
    for flag in (False, True):
        cfg = compose_config(*TINY, f"compile.policy={str(flag).lower()}")
        collector = make_collector(cfg, policy, total_frames=50, init_random_frames=0, device=torch.device("cpu"))
        assert bool(collector.compiled_policy) is flag
        collector.shutdown()


def test_ctrl_c_writes_a_checkpoint_before_exiting(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    overrides = [*TINY, "collector.total_frames=100000", "eval.interval=100000", f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT_DIR / "qsm.py"), *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = ""
    while not re.search(r"updates=[1-9]", output):  # training has started
        char = process.stdout.read(1)
        assert char, f"the script ended early:\n{output[-3000:]}"
        output += char
    process.send_signal(subprocess.signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, (output + rest)[-3000:]
    assert "checkpoint written to" in rest
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert 0 < saved["frames"] < 100000 and saved["updates"] > 0


def test_eval_videos_are_recorded_where_mujoco_renders(tmp_path):
    done = run_script(tmp_path, "eval.video=true", "logger.backend=csv")
    assert_results(tmp_path, final_frame=200)
    videos = [p for p in tmp_path.rglob("*") if "video" in str(p.relative_to(tmp_path)) and p.is_file()]
    assert videos or "cannot render offscreen" in done.stderr, done.stderr[-2000:]


def test_without_a_gl_backend_videos_are_skipped_with_a_warning():
    snippet = (
        "import sys; sys.path.insert(0, sys.argv[1]); from omegaconf import OmegaConf; from utils import "
        "rendering_available; print(rendering_available(OmegaConf.create({'env': {'domain': 'cartpole', "
        "'task': 'swingup'}})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", snippet, str(SCRIPT_DIR)], env=dict(os.environ, MUJOCO_GL="disable"),
        capture_output=True, text=True, timeout=300,
    )
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    assert "MuJoCo cannot render offscreen here" in done.stderr and "Continuing without video" in done.stderr
