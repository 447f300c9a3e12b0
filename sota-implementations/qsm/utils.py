"""Factories and helpers of the QSM training script (the shape of TorchRL's sota-implementations/sac/utils.py)."""
from __future__ import annotations

import csv
import functools
import importlib.util
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from dm_control import suite
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer, TensorDictReplayBuffer
from torchrl.envs import (
    CatTensors,
    Compose,
    DMControlEnv,
    DoubleToFloat,
    EnvBase,
    InitTracker,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType
from torchrl.record import VideoRecorder
from torchrl.record.loggers import CSVLogger, generate_exp_name, get_logger

from agents import Agent, ALGORITHMS, make_qsm_agent, make_sac_agent, make_td3_agent


# --- configuration ---------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine (use device=auto or cpu).")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r}: MPS is not available on this machine.")
    return device


def validate_config(cfg: DictConfig) -> None:
    """Fails before anything is built, naming the field at fault."""
    if (cfg.env.domain, cfg.env.task) not in suite.ALL_TASKS:
        raise ValueError(
            f"env.domain={cfg.env.domain!r} env.task={cfg.env.task!r} is not a DeepMind Control task; "
            f"presets: {sorted(p.stem for p in (Path(__file__).parent / 'env').glob('*.yaml'))}."
        )
    d, c = cfg.diffusion, cfg.collector
    checks = [  # (holds, the fields at fault, what must hold)
        (cfg.algorithm in ALGORITHMS, ["algorithm"], f"algorithm must be one of {ALGORITHMS}"),
        (d.alpha > 0, ["diffusion.alpha"], "diffusion.alpha (the scale of grad_a Q) must be > 0"),
        (isinstance(d.num_steps, int) and d.num_steps >= 1, ["diffusion.num_steps"], "diffusion.num_steps (T) must be an integer >= 1"),
        (cfg.optim.batch_size <= cfg.replay_buffer.size, ["optim.batch_size", "replay_buffer.size"], "optim.batch_size must not exceed replay_buffer.size"),
        (c.init_random_frames <= c.total_frames, ["collector.init_random_frames", "collector.total_frames"], "collector.init_random_frames must not exceed collector.total_frames"),
        (c.frames_per_batch >= 1 and c.total_frames >= 1, ["collector.frames_per_batch", "collector.total_frames"], "collector.frames_per_batch and collector.total_frames must be >= 1"),
        (c.num_envs >= 1, ["collector.num_envs"], "collector.num_envs must be >= 1"),
        (cfg.optim.utd_ratio > 0, ["optim.utd_ratio"], "optim.utd_ratio must be > 0"),
        (cfg.eval.mode in ("stochastic", "deterministic"), ["eval.mode"], "eval.mode must be 'stochastic' or 'deterministic'"),
        (cfg.eval.interval >= 1 and cfg.eval.episodes >= 1, ["eval.interval", "eval.episodes"], "eval.interval and eval.episodes must be >= 1"),
    ]
    for holds, fields, message in checks:
        if not holds:
            raise ValueError(f"{message}; got {', '.join(f'{f}={OmegaConf.select(cfg, f)!r}' for f in fields)}.")
    resolve_device(cfg.device)


# --- logging ---------------------------------------------------------------------------------------
def make_logger(cfg: DictConfig, folder: Path):
    """A TorchRL logger writing under ``folder/logs`` (``None`` when ``logger.backend`` is empty)."""
    if not cfg.logger.backend:
        return None
    log_dir, exp_name = str(folder / "logs"), generate_exp_name("QSM", cfg.logger.exp_name)
    if cfg.logger.backend == "csv":  # built directly: get_logger fixes the CSV video format to mp4
        video_format = cfg.logger.video_format
        if cfg.eval.video and video_format == "mp4" and importlib.util.find_spec("torchcodec") is None:
            warnings.warn("mp4 videos need torchcodec (pip install 'torchcodec>=0.10.0'); saving videos as .pt tensors.")
            video_format = "pt"
        return CSVLogger(exp_name, log_dir=log_dir, video_format=video_format)
    kwargs = {}
    if cfg.logger.backend == "wandb":
        kwargs["wandb_kwargs"] = {
            "mode": cfg.logger.mode,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "project": cfg.logger.project_name,
        }
    return get_logger(cfg.logger.backend, logger_name=log_dir, experiment_name=exp_name, **kwargs)


# --- environments ----------------------------------------------------------------------------------
def make_env(domain: str, task: str, frame_skip: int = 1, max_episode_steps: int = 1000, from_pixels: bool = False) -> EnvBase:
    """A DMC task with flat float32 observations, step counter, episode reward and init tracker."""
    env = DMControlEnv(domain, task, frame_skip=frame_skip, from_pixels=from_pixels, pixels_only=False)
    observation_keys = [key for key in env.observation_spec.keys() if key != "pixels"]
    return TransformedEnv(
        env,
        Compose(
            CatTensors(in_keys=observation_keys, out_key="observation"),
            InitTracker(),
            StepCounter(max_episode_steps),
            DoubleToFloat(),
            RewardSum(),
        ),
    )


def env_maker(cfg: DictConfig, from_pixels: bool = False) -> functools.partial:
    """A picklable constructor of the configured task (sent to collector processes)."""
    return functools.partial(
        make_env, cfg.env.domain, cfg.env.task, cfg.env.frame_skip, cfg.env.max_episode_steps, from_pixels
    )


def rendering_available(cfg: DictConfig) -> bool:
    try:
        env = DMControlEnv(cfg.env.domain, cfg.env.task, from_pixels=True, pixels_only=False)
        env.reset()
        env.close()
        return True
    except Exception as err:  # no GL backend: glfw without a display, no egl/osmesa
        warnings.warn(
            f"eval.video=true but MuJoCo cannot render offscreen here ({type(err).__name__}: {err}); "
            "set MUJOCO_GL=egl (GPU) or MUJOCO_GL=osmesa (CPU) to record videos. Continuing without video."
        )
        return False


def make_eval_env(cfg: DictConfig, logger=None) -> EnvBase:
    """``eval.episodes`` copies of the task stepped together, so the actor sees one batch per step."""
    video = bool(cfg.eval.video) and logger is not None and rendering_available(cfg)
    env = SerialEnv(cfg.eval.episodes, env_maker(cfg, from_pixels=video), device="cpu")  # physics on CPU
    if video:
        env = TransformedEnv(env, VideoRecorder(logger, tag="eval/video", in_keys=["pixels"]))
    env.set_seed(cfg.env.seed + 10_000)
    return env


# --- agent ---------------------------------------------------------------------------------------
def make_agent(cfg: DictConfig, env: EnvBase, device: torch.device) -> Agent:
    """The configured algorithm (``algorithm``: qsm, or TorchRL's sac / td3 as baselines)."""
    action_spec = env.action_spec_unbatched.to(device)
    obs_dim = env.observation_spec_unbatched["observation"].shape[-1]
    common = dict(
        hidden_sizes=tuple(cfg.network.hidden_sizes), gamma=cfg.optim.gamma, tau=cfg.optim.tau, lr=cfg.optim.lr,
        fused_adam=cfg.optim.fused_adam, device=device,
    )
    if cfg.algorithm == "sac":
        return make_sac_agent(obs_dim, action_spec, **common)
    if cfg.algorithm == "td3":
        return make_td3_agent(obs_dim, action_spec, exploration_std=cfg.diffusion.exploration_std, **common)
    net, d = cfg.network, cfg.diffusion
    return make_qsm_agent(
        obs_dim,
        action_spec,
        actor_activation=getattr(nn, net.actor_activation) if net.actor_activation else None,
        critic_activation=getattr(nn, net.critic_activation),
        layer_norm=net.layer_norm,
        time_embedding=net.time_embedding,
        num_steps=d.num_steps,
        schedule=d.schedule,
        temperature=d.temperature,
        alpha=d.alpha,
        grad_at=d.grad_at,
        critic_reduction=d.critic_reduction,
        normalize_grad=d.normalize_grad,
        policy_noise=d.policy_noise,
        exploration_std=d.exploration_std,
        actor_lr_decay_updates=cfg.optim.actor_lr_decay_updates,
        bf16_matmuls=cfg.optim.bf16_matmuls,
        **common,
    )


# --- data ------------------------------------------------------------------------------------------
def make_collector(cfg: DictConfig, policy, total_frames: int, init_random_frames: int, device: torch.device):
    """One env in-process (``Collector``), or ``num_envs`` env processes (Multi{Sync,Async}Collector)."""
    kwargs = dict(
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=total_frames,
        init_random_frames=init_random_frames,
        env_device="cpu",
        policy_device=device,
        storing_device=device,
        exploration_type=ExplorationType.RANDOM,
        compile_policy=bool(cfg.compile.policy),
    )
    n = cfg.collector.num_envs
    if n == 1:
        collector = Collector(env_maker(cfg)(), policy, **kwargs)
    else:
        cls = MultiSyncCollector if cfg.collector.sync else MultiAsyncCollector
        collector = cls([env_maker(cfg)] * n, policy, **kwargs)
    collector.set_seed(cfg.env.seed)
    return collector


def make_replay_buffer(cfg: DictConfig, device: torch.device):
    storage = LazyTensorStorage(cfg.replay_buffer.size, device=cfg.replay_buffer.device or device)
    common = dict(storage=storage, batch_size=cfg.optim.batch_size, prefetch=cfg.replay_buffer.prefetch or None)
    if cfg.replay_buffer.prb:
        return TensorDictPrioritizedReplayBuffer(alpha=0.7, beta=0.5, **common)
    return TensorDictReplayBuffer(**common)


def mean_metrics(metrics: list) -> dict[str, float]:
    """The mean of each metric over the updates of one collection batch (keys may vary between updates)."""
    keys = dict.fromkeys(key for m in metrics for key in m.keys())
    return {key: torch.stack([m[key] for m in metrics if key in m.keys()]).float().mean().item() for key in keys}


# --- results ---------------------------------------------------------------------------------------
RESULT_FIELDS = ["frame", "wall_time", "train_return", "eval_return", "eval_return_std", "eval_edge_fraction"]


class Results:
    """Train and eval returns by frame: ``returns.csv`` (rewritten atomically) and ``learning_curve.png``."""

    def __init__(self, folder: Path, rows: list[dict] | None = None) -> None:
        self.folder = folder
        self.rows = list(rows or [])

    def add(self, **row) -> None:
        self.rows.append({field: row.get(field, "") for field in RESULT_FIELDS})
        tmp = self.folder / "returns.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, RESULT_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.folder / "returns.csv")

    def plot(self, title: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            points = [(r["frame"], r[key]) for r in self.rows if r[key] != ""]
            return [p[0] for p in points], [p[1] for p in points]

        fig, ax = plt.subplots(figsize=(6, 4))
        frames, train = series("train_return")
        ax.plot(frames, train, ".", alpha=0.4, label="train episodes")
        frames, evals = series("eval_return")
        _, spread = series("eval_return_std")
        ax.errorbar(frames, evals, yerr=spread, marker="o", capsize=3, label="eval (mean +- std)")
        ax.set_xlabel("environment frames")
        ax.set_ylabel("episode return")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.folder / "learning_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# --- checkpoints -----------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Writes ``state`` to a temporary file next to ``path``, then renames it: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, device: torch.device) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint.resume={str(path)!r}: no such file.")
    return torch.load(path, map_location=device, weights_only=False)
