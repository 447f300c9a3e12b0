"""The training script, run as a user runs it (subprocess, Hydra overrides), on a tiny budget."""

from __future__ import annotations

import ctypes.util
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from _helpers import (
    assert_results,
    BASELINES,
    read_checkpoint,
    read_returns,
    ROOT,
    run_script,
    SCRIPT_DIR,
    script_module,
    TINY,
)

pytestmark = pytest.mark.slow


def test_trains_on_dm_control_and_writes_the_results_folder(tmp_path):
    done = run_script(tmp_path)
    assert_results(tmp_path, final_frame=200)
    assert "[eval] frame 200: return" in done.stdout and "on the box edges" in done.stdout
    assert "frame/s" in done.stderr  # the tqdm progress bar
    assert "fp32 matmuls on cpu: mkl, torch's default (MKL)" in done.stdout  # TINY pins the default path


def test_fp32_matmuls_auto_prints_its_choice_and_writes_it_into_the_run_s_config(capsys):
    utils, cpu = script_module("utils"), torch.device("cpu")
    cfg = compose_config(*TINY, "optim.fp32_matmuls=auto")
    critic = utils.make_critic(cfg, utils.make_env("cartpole", "swingup"), cpu)
    choice = utils.set_matmul_kernels(cfg, cpu, critic)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fp32 matmuls on cpu: ")]
    assert choice.chosen.name in ("mkl", "onednn") and cfg.optim.fp32_matmuls == choice.chosen.name
    assert f"(optim.fp32_matmuls={choice.chosen.name} repeats this choice)" in line


def test_fp32_matmuls_auto_at_resume_takes_the_path_the_resumed_run_chose(capsys, tiny_run):
    # tiny_run ran on torch's default path (TINY pins it): a resume with auto repeats that, it does not measure again
    utils, cpu = script_module("utils"), torch.device("cpu")
    cfg = compose_config(*TINY, "optim.fp32_matmuls=auto", f"checkpoint.resume={tiny_run}")
    critic = utils.make_critic(cfg, utils.make_env("cartpole", "swingup"), cpu)
    choice = utils.set_matmul_kernels(cfg, cpu, critic)
    assert "optim.fp32_matmuls=auto: the resumed run's path, default" in capsys.readouterr().out
    assert cfg.optim.fp32_matmuls == "default" and choice.chosen.name == "mkl"


def test_torch_s_own_fp32_matmul_path_is_the_default_so_runs_repeat():
    assert compose_config().optim.fp32_matmuls == "default"


def test_a_pinned_fp32_matmul_path_that_rounds_is_refused(onednn_computes_in_bf16):
    utils, cpu = script_module("utils"), torch.device("cpu")
    critic = utils.make_critic(compose_config(*TINY), utils.make_env("cartpole", "swingup"), cpu)
    with pytest.raises(ValueError, match="optim.fp32_matmuls=onednn: on this machine .* it rounds"):
        utils.set_matmul_kernels(compose_config(*TINY, "optim.fp32_matmuls=onednn"), cpu, critic)
    pinned = utils.set_matmul_kernels(compose_config(*TINY, "optim.fp32_matmuls=mkl"), cpu, critic)
    assert pinned.chosen.name == "mkl"


@pytest.mark.parametrize("algorithm", ["sac", "td3"])
def test_torchrl_baselines_run_on_the_script_s_factories_and_checkpoints(tmp_path, algorithm):
    # benchmarks/learning/baselines.py: the same config, results folder and checkpoints, a loop in the same order
    done = run_script(tmp_path, script=[str(BASELINES), algorithm])
    assert_results(tmp_path, final_frame=200)
    assert f"{algorithm.upper()} on cartpole-swingup" in done.stdout
    saved = read_checkpoint(tmp_path)
    assert saved["config"]["algorithm"] == algorithm.upper() and saved["updates"] == 150
    if algorithm == "sac":  # a run resumes its own algorithm's checkpoints only
        other = run_script(
            tmp_path / "td3", f"checkpoint.resume={tmp_path}", script=[str(BASELINES), "td3"], check=False
        )
        assert other.returncode == 1 and "a SAC checkpoint; this run is TD3" in other.stderr, other.stderr[-2000:]


def test_the_script_folder_holds_qsm_only():
    sources = "".join(p.read_text() for p in SCRIPT_DIR.glob("*.py"))
    for other in ("SACLoss", "TD3Loss", "ProbabilisticActor", "TD3", "eval_exploration", "recompute_pointwise"):
        assert other not in sources, other


def test_trains_with_two_collector_processes_of_two_environments_each(tmp_path):
    run_script(
        tmp_path,
        "collector.backend=multiprocess",
        "collector.num_workers=2",
        "collector.envs_per_worker=2",
        "collector.frames_per_batch=20",
    )
    assert_results(tmp_path, final_frame=200)


def test_resume_restores_weights_optimizers_and_replay_buffer_exactly_and_continues(tmp_path, tiny_run):
    first, again, longer = tiny_run, tmp_path / "again", tmp_path / "longer"
    saved = read_checkpoint(first)
    assert saved["frames"] == 200 and saved["updates"] == 150

    # resuming with nothing left to do must write back exactly what it loaded
    done = run_script(again, f"checkpoint.resume={first}")
    assert "Resumed from" in done.stdout and "at frame 200 (150 updates)" in done.stdout
    assert "restored exactly: networks, target networks, optimizers" in done.stdout
    reloaded = read_checkpoint(again)
    for component in ("loss", "actor_optim", "critic_optim", "actor_lr_schedule", "target_updater"):
        assert_state_equal(saved["state"][component], reloaded["state"][component], component)
    # the storage is allocated for replay_buffer.size rows; the first 200 hold data, the rest is uninitialised
    stored, restored = saved["replay_buffer"], reloaded["replay_buffer"]
    assert_state_equal(rows_of(stored, 200), rows_of(restored, 200), "storage")
    for part in ("_writer", "_sampler"):
        assert_state_equal(stored[part], restored[part], part)
    assert reloaded["results"] == saved["results"] and reloaded["update_credit"] == saved["update_credit"]

    # and resuming to 2N starts at N with the first run's data, then finishes
    done = run_script(longer, f"checkpoint.resume={first}", "collector.total_frames=400")
    assert "at frame 200" in done.stdout
    final = read_checkpoint(longer)
    assert final["frames"] == 400 and final["updates"] == 350
    assert_state_equal(rows_of(saved["replay_buffer"], 200), rows_of(final["replay_buffer"], 200), "buffer prefix")
    rows = read_returns(longer)
    assert rows[: len(saved["results"])] == [{k: str(v) for k, v in r.items()} for r in saved["results"]]
    assert max(int(r["frame"]) for r in rows) == 400


def test_optimizer_settings_changed_at_resume_are_the_ones_the_resumed_run_uses(tmp_path, tiny_run):
    # torch's optimizers and schedules load their learning rates (and Adam its fused flag) from a state dict
    # too; the run's config wins (Adam's moments and step counts, and the schedule's position, still come
    # from the checkpoint)
    saved = read_checkpoint(tiny_run)
    done = run_script(
        tmp_path,
        f"checkpoint.resume={tiny_run}",
        "collector.total_frames=250",
        "optim.lr=1e-4",
        "optim.actor_lr_decay_updates=1000",
        "optim.fused_adam=false",
    )
    assert "optim.lr: 0.0003 -> 0.0001" in done.stdout
    assert "optim.fused_adam: True -> False" in done.stdout
    final = read_checkpoint(tmp_path)
    updates = final["updates"]
    assert updates > saved["updates"]
    (critic,) = final["state"]["critic_optim"]["param_groups"]
    (actor,) = final["state"]["actor_optim"]["param_groups"]
    assert float(critic["lr"]) == pytest.approx(1e-4)
    assert float(actor["lr"]) == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * updates / 1000)))
    assert final["state"]["actor_lr_schedule"]["base_lrs"] == [pytest.approx(1e-4)]
    assert not critic["fused"] and not actor["fused"]
    assert all(
        group["fused"] for optim in ("critic_optim", "actor_optim") for group in saved["state"][optim]["param_groups"]
    )
    steps = {int(s["step"]) for s in final["state"]["critic_optim"]["state"].values()}
    assert steps == {updates}  # the moments went on from the checkpoint's, not from a fresh optimizer


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
    script_module("config")  # registers the schema
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.domain=cheetah", "env.task=fly"], "env.domain='cheetah' env.task='fly' is not a DeepMind Control task"),
        (["optim.batch_size=512", "replay_buffer.size=256"], "optim.batch_size must not exceed replay_buffer.size"),
        (["collector.init_random_frames=2000", "collector.total_frames=1000"], "init_random_frames must be in"),
        (["device=cuda:7"] if not torch.cuda.is_available() else ["device=cuda:999"], "device='cuda.*no such device"),
        (["eval.mode=greedy"], "eval.mode must be"),
        (["checkpoint.interval=0"], "checkpoint.interval .* must be >= 1; got checkpoint.interval=0"),
        (["optim.batch_size=0"], "optim.batch_size must be >= 1"),
        (["optim.lr=0"], "optim.lr must be finite and > 0; got optim.lr=0"),
        (["optim.lr=-1e-3"], "optim.lr must be finite and > 0"),
        (["optim.gamma=1.5"], r"optim.gamma .* must be in \(0, 1\]; got optim.gamma=1.5"),
        (["optim.gamma=0"], "optim.gamma"),
        (["env.seed=-1"], "env.seed must be >= 0"),
        (["env.max_episode_steps=0"], "env.max_episode_steps must be >= 1"),
        (
            ["replay_buffer.device=cuda:5"] if not torch.cuda.is_available() else ["replay_buffer.device=cuda:999"],
            "replay_buffer.device=",
        ),
        (["replay_buffer.device=gpu"], "replay_buffer.device='gpu' is not a device name"),
        (["network.actor_activation=Swish"], r"network.actor_activation must be one of \[.*'Mish'"),
        (
            ["collector.frames_per_batch=1000", "collector.total_frames=400", "collector.init_random_frames=0"],
            "must not exceed collector.total_frames",
        ),
        (
            ["collector.frames_per_batch=300", "collector.total_frames=1000"],
            "must be a multiple of collector.frames_per_batch",
        ),
        (["+optim.lr_decay=0.5"], r"Unknown configuration field\(s\): optim.lr_decay \(did you mean optim.lr"),
        (["+diffusion.alfa=1"], r"diffusion.alfa \(did you mean diffusion.alpha\?\)"),
        (["logger.backend=neptune"], "logger.backend must be one of"),
        (["diffusion.exploration_std=nan"], "diffusion.exploration_std must be finite"),
        (["collector.backend=slurm"], r"collector.backend must be one of \['local', 'multiprocess', 'ray'\]"),
        (["collector.num_workers=4"], "collector.backend=local runs one collector in this process"),
        (["+collector.num_envs=4"], r"collector.num_envs \(did you mean collector.num_workers\?\)"),
        (
            ["collector.backend=multiprocess", "collector.num_workers=3", "collector.frames_per_batch=1000"],
            "collector.frames_per_batch must be a multiple of the 3 environments that step into each batch",
        ),
        (["collector.envs_per_worker=0"], "collector.envs_per_worker must be >= 1; got collector.envs_per_worker=0"),
        (["collector.frames_per_batch=0"], "collector.frames_per_batch must be >= 1; got collector.frames_per_batch=0"),
        (["ray.cpus_per_worker=-1"], r"ray.cpus_per_worker must be >= 0; got ray.cpus_per_worker=-1.0"),
        (["eval.best_of_n=4", "eval.mode=deterministic"], "eval.best_of_n > 1 .* use eval.mode=stochastic"),
        (["optim.fp32_matmuls=fast"], r"optim.fp32_matmuls must be one of \['auto', 'default', 'mkl', 'onednn'"),
        (["compile.mode=fastest"], r"compile.mode must be null or one of \['default', 'reduce-overhead'"),
        (["device=cpu", "compile.mode=max-autotune"], "compile.mode on CPU: .* use compile.mode=null.*'max-autotune'"),
        (["device=cpu", "compile.compile=true", "compile.mode=max-autotune-no-cudagraphs"], "on CPU"),
    ],
)
def test_bad_configuration_is_refused_naming_the_field(overrides, message):
    validate_config = script_module("config").validate_config
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config(*overrides))


def test_a_missing_logger_package_names_its_install_command(monkeypatch):
    config = script_module("config")
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(
        ValueError, match=r'needs the wandb package, which is not installed: pip install -e ".\[wandb\]"'
    ):
        config.validate_config(compose_config("logger.backend=wandb"))


def test_a_field_of_the_wrong_type_is_refused_by_the_schema():
    with pytest.raises(Exception, match="optim.batch_size"):
        compose_config("optim.batch_size=abc")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["diffusion.alpha=-1"], "alpha (the scale of grad_a Q) must be 'auto' or a finite number > 0, got -1"),
        (["diffusion.alpha=inf"], "alpha (the scale of grad_a Q) must be 'auto' or a finite number > 0, got inf"),
        (["diffusion.alpha=Auto"], "must be 'auto' or a finite number > 0, got 'Auto'"),
        (["diffusion.policy_noise=nan"], "policy_noise must be finite and >= 0, got nan"),
        (["diffusion.num_steps=0"], "num_steps (T) must be an integer >= 1, got 0"),
        (["diffusion.schedule=quadratic"], "Unknown noise schedule 'quadratic'"),
    ],
)
def test_bad_library_options_fail_before_training_with_the_library_s_message(tmp_path, overrides, message):
    # the library checks its own arguments; the script's factories build the actor and the loss first
    config, utils = script_module("config"), script_module("utils")
    cfg = compose_config(*TINY, *overrides)
    config.validate_config(cfg)
    env = utils.make_env("cartpole", "swingup")
    with pytest.raises(ValueError) as caught:
        actor, _ = utils.make_qsm_agent(cfg, env, torch.device("cpu"))
        utils.make_loss_module(cfg, actor, utils.make_critic(cfg, env, torch.device("cpu")))
    assert message in str(caught.value)


def test_bad_configuration_fails_before_training(tmp_path):
    done = run_script(tmp_path, "diffusion.alpha=-1", check=False)
    assert done.returncode != 0
    assert "alpha (the scale of grad_a Q) must be 'auto' or a finite number > 0" in done.stderr
    assert not (tmp_path / "returns.csv").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (SCRIPT_DIR / "env").glob("*.yaml")))
def test_every_preset_is_a_valid_configuration(preset):
    script_module("config").validate_config(compose_config(f"env={preset}"))


@pytest.mark.parametrize(
    "overrides, alpha, normalize_grad",
    [
        ([], 50.0, False),
        (["env=humanoid_walk"], 120.0, False),  # the authors' alpha for this task (diffusion/faithful_120)
        (["env=quadruped_walk"], 120.0, False),
        (["env=humanoid_walk", "diffusion=robust"], 1.0, True),  # a named diffusion preset replaces the task's
        (["diffusion=robust", "env=humanoid_walk"], 1.0, True),  # in either order
        (["env=humanoid_walk", "diffusion.alpha=80"], 80.0, False),  # a field beats every preset
        (["env=quickstart", "diffusion=robust"], 1.0, True),
    ],
)
def test_combined_presets_give_what_the_docs_say(overrides, alpha, normalize_grad):
    cfg = compose_config(*overrides)
    assert (cfg.diffusion.alpha, cfg.diffusion.normalize_grad) == (alpha, normalize_grad)


def test_the_faithful_preset_states_the_library_defaults():
    # each default lives in the library; the schema (DiffusionConfig) writes the same values out for users to read
    import inspect

    from torchrl_qsm import DiffusionActor, EpsilonNetwork, QSMLoss

    preset = compose_config().diffusion
    defaults = {
        **{k: v.default for k, v in inspect.signature(QSMLoss).parameters.items()},
        **{k: v.default for k, v in inspect.signature(DiffusionActor).parameters.items()},
    }
    for name in (
        "score_target",
        "alpha",
        "alpha_curvature",
        "num_candidates",
        "target_spread",
        "alpha_init",
        "grad_at",
        "critic_reduction",
        "normalize_grad",
        "policy_noise",
        "num_steps",
        "temperature",
    ):
        assert preset[name] == defaults[name], name
    assert (
        preset.schedule == "vp"
        and inspect.signature(EpsilonNetwork).parameters["num_steps"].default == preset.num_steps
    )


def test_compile_options_train_with_a_compiled_update_and_a_compiled_acting_policy(tmp_path):
    # compile.compile wraps the update in torch.compile; compile.policy is the Collector's compile_policy.
    # (with optim.bf16_matmuls too: the update's autocast runs under the compiled update; with the
    # noise-consistent target and its learned alpha, whose Adam the one-graph update steps, and the best-of-N
    # evaluation; one evaluation episode, whose spread is 0, not torch's nan)
    done = run_script(
        tmp_path,
        "eval.episodes=1",
        "compile.compile=true",
        "compile.policy=true",
        "optim.bf16_matmuls=true",
        "diffusion=consistent",
        "eval.best_of_n=3",
        "logger.backend=csv",
    )
    assert_results(tmp_path, final_frame=200)
    # the two warnings tensordict raises while dynamo traces the update are known to be harmless, and filtered
    assert "inline_inbuilt_nn_modules" not in done.stderr and "lock_() inside a compiled graph" not in done.stderr
    evaluations = [row for row in read_returns(tmp_path) if row["eval_return"]]
    assert all(row["eval_best_of_n_return"] and row["eval_best_of_n_edge_fraction"] for row in evaluations)
    assert all(float(row["eval_return_std"]) == float(row["eval_best_of_n_return_std"]) == 0.0 for row in evaluations)
    (alpha_log,) = tmp_path.glob("logs/*/scalars/train/alpha.csv")
    alphas = [float(line.split(",")[1]) for line in alpha_log.read_text().split()]
    assert len(set(alphas)) == len(alphas) and all(0 < a < 1e4 for a in alphas)  # it moves, inside its bounds
    utils = script_module("utils")
    for flag in (False, True):
        cfg = compose_config(*TINY, f"compile.policy={str(flag).lower()}")
        _, policy = utils.make_qsm_agent(cfg, utils.make_env("cartpole", "swingup"), torch.device("cpu"))
        collector = utils.make_collector(cfg, policy, torch.device("cpu"), frames=150)
        assert bool(collector.compiled_policy) is flag
        collector.shutdown()


def test_compile_by_default_where_torch_compile_can_build(monkeypatch):
    # compile.compile=null (the default): on where inductor finds a C++ compiler (CPU) or triton (CUDA)
    utils, cpu = script_module("utils"), torch.device("cpu")
    cfg = compose_config()
    assert cfg.compile.compile is None
    monkeypatch.setenv("CXX", "my-c++")
    monkeypatch.setattr(utils.shutil, "which", lambda name: "/opt/bin/my-c++" if name == "my-c++" else None)
    assert utils.compile_enabled(cfg, cpu) == (True, "compile.compile=null and the C++ compiler my-c++ is here")

    monkeypatch.setattr(utils.shutil, "which", lambda name: None)
    enabled, why = utils.compile_enabled(cfg, cpu)
    assert not enabled and "no C++ compiler" in why and "my-c++, g++, c++, clang++" in why
    assert "compile.compile=false" in why

    for flag in (True, False):  # an explicit setting is taken as it is
        assert utils.compile_enabled(compose_config(f"compile.compile={str(flag).lower()}"), cpu)[0] is flag


RENDERS = (
    "import sys; sys.path.insert(0, sys.argv[1]); from omegaconf import OmegaConf; from utils import "
    "rendering_available; print(rendering_available(OmegaConf.create({'env': {'domain': 'cartpole', "
    "'task': 'swingup'}})))"
)


def rendering_check(mujoco_gl: str) -> subprocess.CompletedProcess:
    """utils.rendering_available in a fresh process whose MuJoCo renders through ``mujoco_gl``."""
    return subprocess.run(
        [sys.executable, "-c", RENDERS, str(SCRIPT_DIR)],
        env=dict(os.environ, MUJOCO_GL=mujoco_gl),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_eval_videos_are_recorded_where_mujoco_renders(tmp_path):
    # the script's own choice of backend (qsm.py: EGL where its library exists)
    backend = os.environ.get("MUJOCO_GL") or ("egl" if ctypes.util.find_library("EGL") else "disable")
    if rendering_check(backend).stdout.strip() != "True":
        pytest.skip(f"MuJoCo cannot render offscreen here (MUJOCO_GL={backend}); the next test covers that case")
    run_script(tmp_path, "eval.video=true", "logger.backend=csv")
    assert_results(tmp_path, final_frame=200)
    assert [p for p in tmp_path.rglob("*") if "video" in str(p.relative_to(tmp_path)) and p.is_file()]


def test_without_a_gl_backend_videos_are_skipped_with_a_warning():
    done = rendering_check("disable")
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    assert "MuJoCo cannot render offscreen here" in done.stderr and "Continuing without video" in done.stderr


def test_help_explains_every_option_with_its_comment():
    done = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "qsm.py"), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sections, section = {}, None
    for line in done.stdout.splitlines():
        if re.match(r"^\w+:", line):
            section = line.split(":")[0]
            sections.setdefault(section, [])
        if section:
            sections[section].append(line)
    for name in script_module("config").schema_fields():
        group, _, leaf = name.rpartition(".")
        lines = sections.get(group, []) if group else sections.get(leaf, [])
        pattern = rf"^\s*{leaf}: .*#\s*\S" if group else rf"^{leaf}: .*#\s*\S"
        assert any(re.match(pattern, line) for line in lines), f"--help does not explain {name}"
    assert "diffusion=robust:" in done.stdout and "env=quickstart:" in done.stdout  # the presets, each in a line
