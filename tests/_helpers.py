"""Shared builders for the tests: small actors, critics, replay-like batches and runs of the training
script (the shape of TorchRL's test/_utils_internal.py)."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import math
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ValueOperator

from torchrl_qsm import DiffusionActor

OBS_DIM, ACTION_DIM = 5, 3
SCRIPT_DIR = Path(__file__).resolve().parents[1] / "sota-implementations" / "qsm"
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "env.domain=cartpole",
    "env.task=swingup",
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
    "compile.compile=false",  # the tests that compile say so
    "optim.fp32_matmuls=default",  # runs that must repeat each other bit for bit pin the kernels
]

BASELINES = ROOT / "benchmarks" / "learning" / "baselines.py"


# What only a process of its own shows: another script, collector processes and Ray (their workers import the
# script's modules) and torch.compile (its caches would carry over from one run to the next in one process).
OWN_PROCESS = ("collector.backend=", "ray.", "compile.compile=true", "compile.compile=null", "compile.policy=true")


def run_script(
    folder: Path,
    *overrides: str,
    check: bool = True,
    script: list[str] | None = None,
    tiny: bool = True,
    own_process: bool | None = None,
) -> subprocess.CompletedProcess:
    """The script as a user runs it, on the TINY budget (unless ``tiny=False``) plus ``overrides``.

    In this process, through ``qsm.main``'s two steps (``validate_config``, then ``qsm.train`` into ``folder``) on
    one thread, as a subprocess would run it, with its output, errors and exit code captured alike; in a
    process of its own (``python qsm.py ...``) where ``own_process`` says so or the run needs one (``OWN_PROCESS``).
    """
    overrides = [*(TINY if tiny else []), *overrides]
    if own_process is None:
        own_process = script is not None or any(o.startswith(OWN_PROCESS) for o in overrides)
    if own_process:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        command = [sys.executable, *(script or [str(SCRIPT_DIR / "qsm.py")]), *overrides, f"hydra.run.dir={folder}"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    else:
        done = run_in_process(folder, overrides)
    if check and done.returncode != 0:
        raise AssertionError(f"qsm.py failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def run_in_process(folder: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    from hydra import compose, initialize_config_dir  # noqa: PLC0415

    config, qsm = script_module("config"), script_module("qsm")
    stdout, stderr, code, threads = io.StringIO(), io.StringIO(), 0, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.3"):
                    cfg = compose("config", overrides=overrides)
                config.validate_config(cfg)
                qsm.train(cfg, Path(folder))
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["qsm.py", *overrides], code, stdout.getvalue(), stderr.getvalue())


def read_returns(folder: Path) -> list[dict]:
    with open(folder / "returns.csv") as f:
        return list(csv.DictReader(f))


def assert_results(folder: Path, final_frame: int) -> None:
    for name in ("config.yaml", "returns.csv", "learning_curve.png"):
        assert (folder / name).is_file(), name
    assert (folder / "checkpoints").is_dir()
    rows = read_returns(folder)
    evals = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    trains = [float(r["train_return"]) for r in rows if r["train_return"]]
    assert evals and trains and all(math.isfinite(v) for v in evals + trains)
    assert 0 <= float(rows[-1]["eval_edge_fraction"]) <= 1
    assert read_checkpoint(folder)["frames"] == final_frame


def read_checkpoint(path: Path, components=None) -> dict:
    """The newest checkpoint of a run folder (or one checkpoint folder) as plain values: ``frames``, ``updates``,
    ``results``, ``config``, ``state`` (the state dicts), ``replay_buffer`` (``checkpoints.read_checkpoint``)."""
    return script_module("checkpoints").read_checkpoint(path, components)


def script_module(name: str) -> ModuleType:
    """A module of the training script's folder (``utils``, ``config``, ``qsm``), imported without leaving the
    folder on ``sys.path``, where its ``utils`` would shadow any other."""
    sys.path.insert(0, str(SCRIPT_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPT_DIR))


def box(action_dim: int = ACTION_DIM, bound: float = 1.0) -> Bounded:
    return Bounded(-bound * torch.ones(action_dim), bound * torch.ones(action_dim), (action_dim,))


def make_actor(obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, bound: float = 1.0, **kwargs) -> DiffusionActor:
    kwargs.setdefault("hidden_sizes", (32, 32))
    return DiffusionActor(action_dim, obs_dim, spec=box(action_dim, bound), **kwargs)


def make_critic(
    obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, dropout: float | None = None, width: int = 32
) -> ValueOperator:
    return ValueOperator(
        MLP(obs_dim + action_dim, 1, num_cells=[width, width], dropout=dropout), in_keys=["observation", "action"]
    )


def make_batch(batch=(8,), obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM, bound: float = 1.0) -> TensorDict:
    batch = torch.Size(batch)
    return TensorDict(
        {
            "observation": torch.randn(*batch, obs_dim),
            "action": box(action_dim, bound).rand(batch),
            ("next", "observation"): torch.randn(*batch, obs_dim),
            ("next", "reward"): torch.randn(*batch, 1),
            ("next", "done"): torch.zeros(*batch, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(*batch, 1, dtype=torch.bool),
        },
        batch,
    )


class QuadraticCritic(nn.Module):
    """Q(s, a) = -||a - a*(s)||^2 with a*(s) = 0.6 tanh(W s): curvature 2 in every action dim."""

    def __init__(self, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        self.optimum_map = nn.Linear(obs_dim, action_dim, bias=False)
        with torch.no_grad():
            self.optimum_map.weight.normal_(std=0.3)

    def optimum(self, observation: torch.Tensor) -> torch.Tensor:
        return 0.6 * torch.tanh(self.optimum_map(observation))

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return -(action - self.optimum(observation)).pow(2).sum(-1, keepdim=True)


class DoubleWellCritic(nn.Module):
    """Q(s, a) = -c (a^2 - m^2)^2 in one action dim: two equal maxima at a = +-m, whatever s."""

    def __init__(self, m: float = 0.5, c: float = 1.0) -> None:
        super().__init__()
        self.m, self.c = m, c
        self.unused = nn.Parameter(torch.zeros(()))  # a critic with parameters, as QSMLoss expects

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return -self.c * (action.pow(2) - self.m**2).pow(2).sum(-1, keepdim=True) + 0 * self.unused


def pin_critics(loss, critic: TensorDictModule) -> None:
    """Make every critic copy of ``loss`` the given critic (``convert_to_functional`` re-draws them)."""
    params = TensorDict.from_module(critic).data
    loss.qvalue_network_params.data.copy_(params.expand(loss.num_qvalue_nets))
    loss.target_qvalue_network_params.data.copy_(params.expand(loss.num_qvalue_nets))


def copy_run(run: Path, folder: Path) -> Path:
    """A copy of a finished run's folder, to resume or damage without touching the original."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns(".lock"))
    return folder


def exact_posterior_noise(x_t: torch.Tensor, alpha_bar: torch.Tensor, log_policy) -> torch.Tensor:
    """``E[xi | x_t]`` for a 1-D policy ``pi ~ exp(log_policy)`` on ``[-1, 1]``, by quadrature on 4001 points:
    ``(x_t - sqrt(abar) E[a0 | x_t]) / sigma`` with ``p(a0 | x_t) ~ N(x_t; sqrt(abar) a0, sigma^2) pi(a0)``."""
    grid = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    x_t, alpha_bar = x_t.double(), torch.as_tensor(alpha_bar, dtype=torch.float64)
    sigma = (1 - alpha_bar).sqrt()
    log_post = -0.5 * (x_t[:, None] - alpha_bar.sqrt() * grid) ** 2 / sigma**2 + log_policy(grid)
    a0 = (torch.softmax(log_post, dim=1) * grid).sum(1)
    return (x_t - alpha_bar.sqrt() * a0) / sigma
