"""The training script's configuration, one source per field, and what a resumed run may change.

Each group of fields is a dataclass (CleanRL's ``Args``, as Hydra structured configs): each field's default and
type, its meaning in the comment after it (``qsm.py --help`` prints them), and its checks in ``__post_init__``,
next to the fields. config.yaml only chooses the presets (diffusion/, env/) and sets Hydra's own options. Hydra
checks each field's type as it composes (``optim.batch_size=abc`` fails naming the field); :func:`validate_config`
refuses fields the schema does not have (a ``+key`` that nothing would read) and runs the checks
(``OmegaConf.to_object``), before anything is built.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
import math
import os
import re
import socket
import textwrap
from dataclasses import dataclass, field, fields, is_dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
from dm_control import suite
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from torch import nn

from torchrl_qsm import Mish
from torchrl_qsm.kernels import PATHS

FP32_MATMULS = dict.fromkeys(["auto", "default", *(path.name for paths in PATHS.values() for path in paths)])
# torch.compile's modes (null: "default" on CPU, "reduce-overhead" on CUDA). Inductor's GEMM autotuning (the
# max-autotune modes) fails to build the QSM update on CPU with torch 2.13 (benchmarks/README.md, "Against the
# authors' JAX code"), so they are refused there.
COMPILE_MODES = dict.fromkeys(["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
CPU_COMPILE_MODES = dict.fromkeys(["default", "reduce-overhead"])
# Names accepted by network.actor_activation / critic_activation: torch.nn's activations, with
# "Mish" meaning torchrl_qsm.Mish (torch's mish, in one-exponential form on CPU tensors).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: getattr(nn, name) for name in ("ReLU", "SiLU", "Tanh", "ELU", "GELU", "LeakyReLU", "Softplus")
} | {"Mish": Mish}
COLLECTOR_BACKENDS = dict.fromkeys(["local", "multiprocess", "ray"])
# logger.backend -> the package it needs, installed by the extra of the same name (pyproject.toml)
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Checked:
    """A group of fields whose checks (``__post_init__``) refuse a value naming the fields at fault."""

    def require(self, holds: bool, names: str, message: str) -> None:
        """Unless ``holds``: "<first of names> <message>; got <each of names>=<value>", each name prefixed by its
        group's (``QSMConfig``'s field; a dotted name reaches into a nested group)."""
        if not holds:
            group = {schema: f"{name}." for name, schema in groups(QSMConfig).items()}.get(type(self), "")
            got = ", ".join(f"{group}{name}={attrgetter(name)(self)!r}" for name in names.split())
            raise ValueError(f"{group}{names.split()[0]} {message}; got {got}.")


@dataclass
class EnvConfig(Checked):
    """The task (or a preset: env=quickstart, ...)"""

    library: str = "dm_control"  # dm_control | gymnasium (its MuJoCo tasks; pip install -e ".[gymnasium]")
    domain: str = "cheetah"  # a DeepMind Control domain (dm_control.suite), e.g. walker; not used by gymnasium
    task: str = "run"  # a task of that domain, e.g. run; with gymnasium its id, e.g. HalfCheetah-v5
    seed: int = 0  # seeds torch, numpy, the environments and the evaluation's environments
    max_episode_steps: int = 1000  # DMC episodes end (truncate) at 1000 steps
    frame_skip: int = 1  # action repeat; the paper uses none

    def __post_init__(self) -> None:
        check_task(self)
        self.require(self.seed >= 0, "seed", "must be >= 0")
        self.require(self.max_episode_steps >= 1, "max_episode_steps", "must be >= 1")
        self.require(self.frame_skip >= 1, "frame_skip", "must be >= 1")


@dataclass
class CollectorConfig(Checked):
    """What collects the frames"""

    total_frames: int = 1_000_000  # a multiple of frames_per_batch
    init_random_frames: int = 10_000  # uniformly random actions before the first update
    frames_per_batch: int = 1000  # frames per collector batch; the updates they earn follow each batch
    backend: str = "local"  # local: one collector in this process (TorchRL's Collector); multiprocess:
    # num_workers env processes (MultiSyncCollector / MultiAsyncCollector); ray: num_workers Ray actors, on this
    # machine or a cluster (RayCollector; pip install -e ".[ray]")
    num_workers: int = 1  # worker processes of multiprocess and ray (local: 1)
    envs_per_worker: int = 1  # environments each worker steps together (a SerialEnv: one policy call for all)
    sync: bool = True  # true: each batch holds every worker's share, collected with the latest weights;
    # false: each worker's batch as it comes, collecting while the learner updates

    def __post_init__(self) -> None:
        total, batch, whole = self.total_frames, self.frames_per_batch, "(a collector delivers whole batches)"
        self.require(total >= 1, "total_frames", "must be >= 1")
        self.require(batch >= 1, "frames_per_batch", "must be >= 1")
        self.require(batch <= total, "frames_per_batch total_frames", f"must not exceed collector.total_frames {whole}")
        self.require(
            total % batch == 0,
            "total_frames frames_per_batch",
            f"must be a multiple of collector.frames_per_batch {whole}",
        )
        self.require(
            0 <= self.init_random_frames <= total,
            "init_random_frames total_frames",
            "must be in [0, collector.total_frames]",
        )
        self.require(self.backend in COLLECTOR_BACKENDS, "backend", f"must be one of {list(COLLECTOR_BACKENDS)}")
        self.require(self.num_workers >= 1, "num_workers", "must be >= 1")
        self.require(self.envs_per_worker >= 1, "envs_per_worker", "must be >= 1")
        self.require(
            self.backend != "local" or self.num_workers == 1,
            "num_workers backend",
            "must be 1: collector.backend=local runs one collector in this process; for more workers choose "
            "collector.backend=multiprocess or ray",
        )
        # the frames one step of the collection adds to a batch: every worker's environments when the batch
        # gathers all workers (sync), one worker's when it is one worker's (async, local)
        step = self.envs_per_worker * (self.num_workers if self.sync and self.backend != "local" else 1)
        self.require(
            self.frames_per_batch % step == 0,
            "frames_per_batch num_workers envs_per_worker sync",
            f"must be a multiple of the {step} environments that step into each batch (sync: every worker's; "
            "async: one worker's)",
        )


@dataclass
class RayConfig(Checked):
    """collector.backend=ray (README, "On a cluster")"""

    address: str | None = None  # null: start a local Ray in this process, shut down at the end; auto: join the
    # cluster `ray start` runs on this machine; HOST:PORT: join that cluster's head
    num_cpus: int | None = None  # CPUs a local Ray offers (null: all of this machine's); ignored when joining
    cpus_per_worker: float = 1.0  # Ray resources each worker reserves
    gpus_per_worker: float = 0.0  # > 0: the workers act on their GPU

    def __post_init__(self) -> None:
        self.require(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", "must be >= 1 or null")
        self.require(self.cpus_per_worker >= 0, "cpus_per_worker", "must be >= 0")
        self.require(self.gpus_per_worker >= 0, "gpus_per_worker", "must be >= 0")


@dataclass
class ReplayBufferConfig(Checked):
    """The replay buffer"""

    size: int = 1_000_000  # transitions kept (oldest replaced first)
    device: str | None = None  # null: the training device
    prefetch: int = 0  # a prefetch thread slows torch ops on small CPUs (benchmarks/README)
    prb: bool = False  # prioritized replay (alpha 0.7, beta 0.5)

    def __post_init__(self) -> None:
        self.require(self.size >= 1, "size", "must be >= 1")
        self.require(self.prefetch >= 0, "prefetch", "must be >= 0")
        if self.device is not None:
            resolve_device(self.device, "replay_buffer.device")


@dataclass
class OptimConfig(Checked):
    """The updates"""

    lr: float = 3.0e-4  # Adam, actor and critics
    actor_lr_decay_updates: int = 2_000_000  # cosine decay of the actor lr to 0 over this many updates; 0: none
    batch_size: int = 256  # transitions per update
    utd_ratio: float = 1.0  # updates per collected frame
    gamma: float = 0.99  # the discount
    tau: float = 0.005  # target critics: theta' <- tau theta + (1 - tau) theta'
    fused_adam: bool = True  # one fused kernel per optimizer step (same numbers as the loop version)
    bf16_matmuls: bool = False  # matmuls in bfloat16 under autocast (schedule, losses, optimizer in fp32)
    fp32_matmuls: str = "default"  # default: torch's own fp32 matmul path (repeatable); auto: the fastest path
    # proven as accurate at start (torchrl_qsm.kernels, printed and written into the run's config); mkl | onednn
    # pins one

    def __post_init__(self) -> None:
        self.require(math.isfinite(self.lr) and self.lr > 0, "lr", "must be finite and > 0")
        self.require(self.actor_lr_decay_updates >= 0, "actor_lr_decay_updates", "must be >= 0 (0: no decay)")
        self.require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self.require(math.isfinite(self.utd_ratio) and self.utd_ratio > 0, "utd_ratio", "must be finite and > 0")
        self.require(0 < self.gamma <= 1, "gamma", "(the discount) must be in (0, 1]")
        self.require(0 < self.tau <= 1, "tau", "(the target critics' step) must be in (0, 1]")
        self.require(self.fp32_matmuls in FP32_MATMULS, "fp32_matmuls", f"must be one of {list(FP32_MATMULS)}")


@dataclass
class NetworkConfig(Checked):
    """The actor's eps-network and the twin critics"""

    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])  # actor and critics; the paper's text
    # says 256x256, the authors' code 512x512
    actor_activation: str = "Mish"  # a torch.nn activation name; Mish is torchrl_qsm.Mish (the authors')
    critic_activation: str = "ReLU"  # a torch.nn activation name for the twin critics
    layer_norm: bool = False  # LayerNorm before each hidden activation of the eps-network
    time_embedding: str = "fourier"  # fourier (learnable, the authors') | sinusoidal

    def __post_init__(self) -> None:
        sizes = self.hidden_sizes
        self.require(len(sizes) >= 1 and min(sizes) >= 1, "hidden_sizes", "must be one or more widths >= 1")
        for name in ("actor_activation", "critic_activation"):
            self.require(getattr(self, name) in ACTIVATIONS, name, f"must be one of {sorted(ACTIVATIONS)}")


@dataclass
class DiffusionConfig(Checked):
    """The sampler and the loss (or a preset: diffusion=auto, ...); the library checks them"""

    num_steps: int = 5  # T, the number of denoising steps
    schedule: str = "vp"  # the noise schedule: vp (the authors') | cosine | linear
    score_target: str = "gradient"  # the eps target: gradient (the paper's -alpha grad_a Q) | q_weighted (the
    # posterior noise of pi ~ exp(alpha Q) on the box, diffusion=consistent) | scaled_gradient (-sigma_t alpha
    # grad_a Q)
    alpha: Any = 50.0  # the inverse temperature of pi ~ exp(alpha Q), the scale of grad_a Q (the authors' M_q);
    # auto: gradient: set from the critic's curvature (diffusion=auto); q_weighted: learned
    alpha_curvature: float = 1.5  # gradient, alpha=auto: holds alpha x the critic's action curvature at this value
    num_candidates: int = 16  # q_weighted: K noise candidates per sample, each one critic evaluation
    target_spread: float = 0.1  # q_weighted, alpha=auto: the policy's spread (std in the [-1, 1] box) alpha is
    # learned to hold
    alpha_init: float = 1.0  # q_weighted, alpha=auto: the first alpha
    alpha_lr: float = 1.0e-3  # q_weighted, alpha=auto: Adam's learning rate for log_alpha
    temperature: float = 1.0  # scale of the chain's injected noise
    exploration_std: float = 0.1  # N(0, 0.1^2) added to collected actions, clipped to the bounds
    policy_noise: float = 0.1  # smoothing noise on the next action of the TD target
    grad_at: str = "noised"  # noised (the authors') | clean (Algorithm 1 as written)
    critic_reduction: str = "mean"  # mean | min over the two critics for grad_a Q
    normalize_grad: bool = False  # true: the eps target is -alpha * g / mean|g| (diffusion=robust)

    def __post_init__(self) -> None:  # (the library checks the others when it builds the actor and the loss)
        std = self.exploration_std
        self.require(math.isfinite(std) and std >= 0, "exploration_std", "must be finite and >= 0")


@dataclass
class EvalConfig(Checked):
    """The evaluations (also evaluate.py's)"""

    interval: int = 10_000  # frames between evaluations
    episodes: int = 10  # episodes per evaluation, stepped together
    mode: str = "stochastic"  # stochastic: a chain sample without exploration noise (the authors');
    # deterministic: zero latent
    best_of_n: int = 1  # N > 1: also evaluate the best of N chain samples as the critics rank them
    # (eval_best_of_n_* in returns.csv, next to the plain evaluation); 1: off
    video: bool = False  # needs MuJoCo offscreen rendering (MUJOCO_GL=egl or osmesa)

    def __post_init__(self) -> None:
        self.require(self.interval >= 1, "interval", "must be >= 1")
        self.require(self.episodes >= 1, "episodes", "must be >= 1")
        self.require(self.mode in ("stochastic", "deterministic"), "mode", "must be 'stochastic' or 'deterministic'")
        self.require(self.best_of_n >= 1, "best_of_n", "must be >= 1 (1: no best-of-N evaluation)")
        self.require(
            self.best_of_n == 1 or self.mode == "stochastic",
            "best_of_n mode",
            "> 1 ranks N chain samples, which eval.mode=deterministic makes one sample: use eval.mode=stochastic",
        )


@dataclass
class LoggerConfig(Checked):
    """The logger; the results folder is written regardless"""

    backend: str | None = "csv"  # csv | tensorboard | wandb | mlflow | "" (none)
    exp_name: str = "qsm"  # the experiment's name in the logger
    project_name: str = "torchrl_qsm"  # wandb's project
    mode: str = "online"  # wandb's mode: online | offline | disabled
    video_format: str = "mp4"  # eval videos: mp4 (needs torchcodec) | pt

    def __post_init__(self) -> None:
        backends = ["csv", *LOGGER_PACKAGES]
        self.require(not self.backend or self.backend in backends, "backend", f"must be one of {backends} or empty")
        package = LOGGER_PACKAGES.get(self.backend or "")
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"logger.backend={self.backend!r} needs the {package} package, which is not installed: "
                f'pip install -e ".[{self.backend}]" (or choose logger.backend=csv).'
            )


@dataclass
class CompileConfig(Checked):
    """torch.compile"""

    compile: bool | None = None  # torch.compile the update. null: on where torch.compile can build it (a C++
    # compiler on CPU, triton on CUDA); it pays for its compile time early (benchmarks/README.md)
    mode: str | None = None  # null: "default" on CPU, "reduce-overhead" on CUDA; max-autotune(-no-cudagraphs):
    # CUDA only (with torch 2.13 inductor fails to build the update with it on CPU)
    policy: bool = False  # torch.compile the collector's policy (acting; the Collector's compile_policy)

    def __post_init__(self) -> None:
        self.require(self.mode in (None, *COMPILE_MODES), "mode", f"must be null or one of {list(COMPILE_MODES)}")


@dataclass
class CheckpointConfig(Checked):
    """Checkpoints and resuming"""

    interval: int = 100_000  # frames between checkpoints (torchrl.checkpoint folders; the newest two are kept)
    save_replay_buffer: bool = True  # the replay buffer in each checkpoint (exact resume; large files)
    resume: str | None = None  # a run folder (its newest checkpoint) or a checkpoint folder to continue from

    def __post_init__(self) -> None:
        self.require(self.interval >= 1, "interval", "(frames between checkpoints) must be >= 1")


@dataclass
class QSMConfig(Checked):
    """qsm.py's configuration; the checks across groups follow each group's own"""

    env: EnvConfig = field(default_factory=EnvConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    replay_buffer: ReplayBufferConfig = field(default_factory=ReplayBufferConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    device: str = "auto"  # auto: cuda if available, else cpu
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        fits = self.optim.batch_size <= self.replay_buffer.size
        self.require(fits, "optim.batch_size replay_buffer.size", "must not exceed replay_buffer.size")
        if self.collector.backend == "ray":
            check_ray(self.ray)
        mode = self.compile.mode
        if resolve_device(self.device).type == "cpu" and self.compile.compile is not False:
            self.require(
                mode in (None, *CPU_COMPILE_MODES),
                "compile.mode",
                "on CPU: inductor's C++ GEMM templates, which this mode autotunes, fail to build the QSM update with "
                "torch 2.13 (an AssertionError in cpp_gemm_template at the first compiled update), and in a first "
                "look they were no faster than MKL; use compile.mode=null (or default)",
            )


# Fields a resumed run must keep: the shapes of the networks, the replay buffer and the data, and
# what the saved weights mean; and diffusion.alpha between auto and a number (_structural). Every
# other field may change at resume (printed).
STRUCTURAL_FIELDS = (
    "env.library",
    "env.domain",
    "env.task",
    "env.frame_skip",
    "network",
    "diffusion.num_steps",
    "diffusion.schedule",
    "diffusion.score_target",
    "replay_buffer.size",
    "replay_buffer.prb",
)


def resolve_device(name: str, field_name: str = "device") -> torch.device:
    """``auto`` -> cuda if available else cpu; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{field_name}={name!r} is not a device name ({err}); use auto, cpu or cuda[:N].") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(device.type, lambda: True)
    if not available() or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{field_name}={name!r}: this machine has no such device (use {field_name}=auto or cpu).")
    return device


def groups(schema: type) -> dict[str, type]:
    """The fields of ``schema`` that are groups of fields (dataclasses), by name."""
    return {f.name: f.default_factory for f in fields(schema) if is_dataclass(f.default_factory)}


def schema_fields(schema: type = QSMConfig, prefix: str = "") -> list[str]:
    """The dotted name of every field of ``schema``."""
    nested = groups(schema)
    return [
        name
        for f in fields(schema)
        for name in (schema_fields(nested[f.name], f"{prefix}{f.name}.") if f.name in nested else [prefix + f.name])
    ]


def validate_config(cfg: DictConfig, schema: type = QSMConfig) -> Any:
    """Fails before anything is built, naming the field at fault and what would be right; returns the checked
    ``schema`` object (``cfg`` stays as it is, a DictConfig the run may still change).

    The library checks its own arguments (alpha, T, the schedule, noise scales) when the actor and
    the loss are built; the checks here are what only the script knows.
    """
    known = schema_fields(schema)
    extra = [name for name in flatten(OmegaConf.to_container(cfg)) if name not in known]
    if extra:
        hints = []
        for name in extra:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ValueError(
            f"Unknown configuration field(s): {', '.join(hints)}. Nothing reads them, so they would be ignored; "
            "remove them (--help lists the fields)."
        )
    return OmegaConf.to_object(OmegaConf.merge(schema, cfg))


def check_task(env: EnvConfig) -> None:
    """``env.library`` is known and has the task: a DMC ``env.domain``/``env.task``, or a Gymnasium id ``env.task``."""
    if env.library == "dm_control":
        if (env.domain, env.task) not in suite.ALL_TASKS:
            raise ValueError(
                f"env.domain={env.domain!r} env.task={env.task!r} is not a DeepMind Control task; "
                f"tasks: {', '.join(f'{d}/{t}' for d, t in suite.ALL_TASKS)}."
            )
        return
    if env.library != "gymnasium":
        raise ValueError(f"env.library must be dm_control or gymnasium; got env.library={env.library!r}.")
    if importlib.util.find_spec("gymnasium") is None:
        raise ValueError(
            'env.library=gymnasium needs Gymnasium, which is not installed: pip install -e ".[gymnasium]" '
            "(it brings Gymnasium's MuJoCo tasks, on the mujoco dm_control uses)."
        )
    import gymnasium

    if env.task not in gymnasium.registry:
        mujoco = sorted(name for name in gymnasium.registry if name.endswith("-v5"))
        close = difflib.get_close_matches(env.task, list(gymnasium.registry), n=1)
        raise ValueError(
            f"env.task={env.task!r} is not a Gymnasium task"
            + (f" (did you mean {close[0]}?)" if close else "")
            + f"; its MuJoCo tasks: {', '.join(mujoco)}."
        )


def field_docs(schema: type) -> dict[str, str]:
    """Each field's comment in ``schema``'s source: the one after the field and the comment lines under it."""
    docs: dict[str, str] = {}
    name = None
    for line in inspect.getsource(schema).splitlines():
        if match := re.fullmatch(r"    (\w+): [^#]*#\s*(.*)", line):
            name, docs[match[1]] = match[1], match[2]
        elif name and (match := re.fullmatch(r"    # (.*)", line)):
            docs[name] += " " + match[1]
        else:
            name = None
    return docs


def describe(schema: type, values: dict | None = None, indent: str = "") -> list[str]:
    """``schema``'s fields as ``name: default  # comment`` (or ``values``), a group's fields indented under it."""
    values = OmegaConf.to_container(OmegaConf.structured(schema)) if values is None else values
    docs, nested, lines = field_docs(schema), groups(schema), []
    for name, value in values.items():
        if name in nested:
            doc = docs.get(name) or nested[name].__doc__
            lines += [f"{indent}{name}:  # {doc}", *describe(nested[name], value, indent + "  ")]
        else:
            text = f"{indent}{name}: {value if isinstance(value, str) else json.dumps(value)}"
            lines.append(f"{text:<32}  # " + f"\n{' ' * 34}# ".join(textwrap.wrap(docs[name], 84)))
    return lines


def options_help() -> str:
    """``qsm.py --help``: every field with its default and its comment, and each preset's first sentence.

    Hydra's own page prints the composed config without comments; this text goes into its help template
    (``hydra.help.template``), so ``$`` is doubled for ``string.Template``.
    """
    folder = Path(__file__).parent
    presets = []
    for group in ("diffusion", "env"):
        for path in sorted((folder / group).glob("*.yaml")):
            lines = [line for line in path.read_text().splitlines() if line.startswith("#") and "@package" not in line]
            summary = " ".join(line.lstrip("# ") for line in lines).split(". ")[0].rstrip(".") + "."
            presets.append(f"  {group}={path.stem}: {summary}")
    text = (
        "qsm.py: Q-score matching (QSM) on DeepMind Control, TorchRL-style.\n\n"
        "Usage: python sota-implementations/qsm/qsm.py [group=preset] [field=value ...]\n"
        "  e.g. python sota-implementations/qsm/qsm.py env=quickstart\n"
        "       python sota-implementations/qsm/qsm.py env.domain=walker env.task=run diffusion.alpha=80\n\n"
        "Presets (a config group each):\n" + "\n".join(presets) + "\n\n"
        "Options (config.py; every field can be set on the command line; the defaults are the authors' recipe):\n\n"
        + "\n".join(describe(QSMConfig))
        + "\n\nHydra's own options: --hydra-help. Configuration as composed: --cfg job.\n"
    )
    return text.replace("$", "$$")


def ray_token_refused(address: str | None, reason: str) -> str:
    """The error of a cluster joined without its authentication token (none here, or another), with the fix."""
    mode = os.environ.get("RAY_AUTH_MODE")
    return (
        f"ray.address={address!r}: this run cannot join the cluster without its token ({reason}). Ray >= 2.59 starts a "
        "cluster with token authentication when its head node has a token (~/.ray/auth_token, which any local "
        "Ray run writes): set RAY_AUTH_MODE=token where the script runs, as on every node, with the cluster's "
        "token in ~/.ray/auth_token, in the file that RAY_AUTH_TOKEN_PATH names, or in RAY_AUTH_TOKEN "
        f'(here RAY_AUTH_MODE is {"unset" if mode is None else repr(mode)}; README, "On a cluster").'
    )


def check_ray(ray_cfg: RayConfig | DictConfig, timeout: float = 5.0) -> None:
    """Ray is installed and ``ray.address`` names a cluster that answers and accepts this process's
    authentication token (``ray.init`` itself waits minutes for an address where nothing listens, and retries
    a refused token for 20 s before an error that does not say why)."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError(
            'collector.backend=ray needs Ray, which is not installed: pip install -e ".[ray]" '
            "(or choose collector.backend=local or multiprocess)."
        )
    address = ray_cfg.address
    if address is None or address == "auto":
        return  # a local Ray; "auto" is checked by ray.init itself, which fails at once without a cluster
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"ray.address={address!r} is not an address: use null (a local Ray), auto (the cluster `ray start` "
            "runs on this machine) or HOST:PORT of the cluster's head (ray://HOST:PORT for Ray Client)."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(
            f"ray.address={address!r}: no Ray cluster answers there ({err}). Start one with `ray start --head` "
            "on that machine (it prints the address to join), or use ray.address=null for a Ray inside this run."
        ) from None
    if address.startswith("ray://"):
        return  # Ray Client: its server, not the cluster's GCS, answers there
    from ray._raylet import GcsClient  # what ray.init connects with: it sends the token as ray.init would
    from ray.exceptions import AuthenticationError, RpcError

    try:
        GcsClient(address=address)
    except AuthenticationError as err:
        raise ValueError(ray_token_refused(address, err.message)) from None
    except RpcError as err:  # something answers there, but not a Ray head (after Ray's 40 s of retries)
        raise ValueError(f"ray.address={address!r}: no Ray cluster answers there ({err}).") from None


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists stay values)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + str(key)] = value
    return out


def _structural(key: str, old: object, new: object) -> bool:
    if key == "diffusion.alpha":  # alpha=auto holds state (its curvature estimate) that a fixed alpha has not
        return (old == "auto") != (new == "auto")
    return any(key == s or key.startswith(s + ".") for s in STRUCTURAL_FIELDS)


def compare_for_resume(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """The fields that differ between a checkpoint's config and this run's, as ``(field, saved, now)``.

    Raises ``ValueError`` naming every structural field that differs (see ``STRUCTURAL_FIELDS``).
    """
    before, after = flatten(saved), flatten(current)
    changed = [
        (key, before.get(key, "<absent>"), after.get(key, "<absent>")) for key in sorted(before.keys() | after.keys())
    ]
    changed = [(key, old, new) for key, old, new in changed if old != new and key != "checkpoint.resume"]
    structural = [(key, old, new) for key, old, new in changed if _structural(key, old, new)]
    if structural:
        raise ValueError(
            "The checkpoint cannot be resumed with this configuration: "
            + "; ".join(f"{key} was {old!r} in the checkpoint, now {new!r}" for key, old, new in structural)
            + ". These fields shape the networks, the replay buffer or the data; resume with the saved values "
            "(the checkpoint's config.yaml) or start a new run."
        )
    return changed


def saved_config(saved: dict) -> DictConfig:
    """A checkpoint's config (``algorithm`` aside), completed with today's defaults for the fields it
    predates, so that a checkpoint older than a field still loads."""
    defaults = OmegaConf.to_container(OmegaConf.structured(QSMConfig))
    return OmegaConf.merge(defaults, {k: v for k, v in saved["config"].items() if k != "algorithm"})


# The resolvers config.yaml uses (unique default run folders: the process id; named after the task; --help), and
# the schema, whose groups' checks run once here, on the defaults.
OmegaConf.register_new_resolver("qsm_pid", os.getpid, replace=True)
OmegaConf.register_new_resolver(
    "qsm_task_folder",
    lambda library, domain, task: task if library == "gymnasium" else f"{domain}_{task}",
    replace=True,
)
OmegaConf.register_new_resolver("qsm_help", options_help, replace=True)
ConfigStore.instance().store(name="qsm_schema", node=QSMConfig)
