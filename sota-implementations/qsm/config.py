"""The training script's configuration: its schema (every field and its type), the checks the library
cannot make, and what a resumed run may change.

The values live in config.yaml and the presets under diffusion/ and env/; this module holds no
defaults. Hydra checks each field's type against the schema (``optim.batch_size=abc`` fails naming
the field); :func:`validate_config` refuses fields the schema does not have (a ``+key`` that nothing
would read) and values out of range, before anything is built.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import socket
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from dm_control import suite
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, MISSING, OmegaConf
from torch import nn

from torchrl_qsm import Mish
from torchrl_qsm.kernels import PATHS

FP32_MATMULS = dict.fromkeys(["auto", "default", *(path.name for paths in PATHS.values() for path in paths)])
# torch.compile's modes (null: "default" on CPU, "reduce-overhead" on CUDA). Inductor's GEMM autotuning (the
# max-autotune modes) fails to build the QSM update on CPU with torch 2.13 (benchmarks/README.md, "Against the
# authors' JAX code"), so they are refused there.
COMPILE_MODES = dict.fromkeys(["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
CPU_COMPILE_MODES = dict.fromkeys(["default", "reduce-overhead"])


@dataclass
class EnvConfig:
    library: str = MISSING
    domain: str = MISSING
    task: str = MISSING
    seed: int = MISSING
    max_episode_steps: int = MISSING
    frame_skip: int = MISSING


@dataclass
class CollectorConfig:
    total_frames: int = MISSING
    init_random_frames: int = MISSING
    frames_per_batch: int = MISSING
    backend: str = MISSING
    num_workers: int = MISSING
    envs_per_worker: int = MISSING
    sync: bool = MISSING


@dataclass
class RayConfig:
    address: str | None = MISSING
    num_cpus: int | None = MISSING
    cpus_per_worker: float = MISSING
    gpus_per_worker: float = MISSING


@dataclass
class ReplayBufferConfig:
    size: int = MISSING
    device: str | None = MISSING
    prefetch: int = MISSING
    prb: bool = MISSING


@dataclass
class OptimConfig:
    lr: float = MISSING
    actor_lr_decay_updates: int = MISSING
    batch_size: int = MISSING
    utd_ratio: float = MISSING
    gamma: float = MISSING
    tau: float = MISSING
    fused_adam: bool = MISSING
    bf16_matmuls: bool = MISSING
    fp32_matmuls: str = MISSING


@dataclass
class NetworkConfig:
    hidden_sizes: list[int] = MISSING
    actor_activation: str = MISSING
    critic_activation: str = MISSING
    layer_norm: bool = MISSING
    time_embedding: str = MISSING


@dataclass
class DiffusionConfig:
    num_steps: int = MISSING
    schedule: str = MISSING
    score_target: str = MISSING
    alpha: Any = MISSING  # a number or "auto"
    alpha_curvature: float = MISSING
    num_candidates: int = MISSING
    target_spread: float = MISSING
    alpha_init: float = MISSING
    alpha_lr: float = MISSING
    temperature: float = MISSING
    exploration_std: float = MISSING
    policy_noise: float = MISSING
    grad_at: str = MISSING
    critic_reduction: str = MISSING
    normalize_grad: bool = MISSING


@dataclass
class EvalConfig:
    interval: int = MISSING
    episodes: int = MISSING
    mode: str = MISSING
    best_of_n: int = MISSING
    video: bool = MISSING


@dataclass
class LoggerConfig:
    backend: str | None = MISSING
    exp_name: str = MISSING
    project_name: str = MISSING
    mode: str = MISSING
    video_format: str = MISSING


@dataclass
class CompileConfig:
    compile: bool | None = MISSING
    mode: str | None = MISSING
    recompute_pointwise: bool | None = MISSING
    policy: bool = MISSING


@dataclass
class CheckpointConfig:
    interval: int = MISSING
    save_replay_buffer: bool = MISSING
    resume: str | None = MISSING


@dataclass
class QSMConfig:
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
    device: str = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


ConfigStore.instance().store(name="qsm_schema", node=QSMConfig)

# Names accepted by network.actor_activation / critic_activation: torch.nn's activations, with
# "Mish" meaning torchrl_qsm.Mish (torch's mish, in one-exponential form on CPU tensors).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: getattr(nn, name) for name in ("ReLU", "SiLU", "Tanh", "ELU", "GELU", "LeakyReLU", "Softplus")
} | {"Mish": Mish}
COLLECTOR_BACKENDS = dict.fromkeys(["local", "multiprocess", "ray"])
# logger.backend -> the package it needs, installed by the extra of the same name (pyproject.toml)
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

# Fields a resumed run must keep: the shapes of the networks, the replay buffer and the data, and
# what the saved weights mean; and diffusion.alpha between auto and a number (_structural). Every
# other field may change at resume (printed).
STRUCTURAL_FIELDS = (
    "algorithm",
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


def check_compile_mode(compile_cfg: DictConfig, device: torch.device) -> None:
    """``compile.mode`` is one of torch.compile's modes, and on CPU one that builds the update."""
    mode = compile_cfg.mode
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile.mode must be null or one of {list(COMPILE_MODES)}; got compile.mode={mode!r}.")
    if device.type == "cpu" and compile_cfg.compile is not False and mode not in (None, *CPU_COMPILE_MODES):
        raise ValueError(
            f"compile.mode={mode!r} on CPU: inductor's C++ GEMM templates, which this mode autotunes, fail to build "
            "the QSM update with torch 2.13 (an AssertionError in cpp_gemm_template at the first compiled update), "
            "and in a first look they were no faster than MKL; use compile.mode=null (or default)."
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


def unknown_fields(cfg: DictConfig, schema: type = QSMConfig, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``cfg`` that ``schema`` does not have (``hydra`` excluded)."""
    known = {f.name: f.type for f in fields(schema)}
    nested = {f.name: f.default_factory for f in fields(schema) if f.default_factory is not MISSING}
    out = []
    for key in cfg.keys():
        if prefix == "" and key == "hydra":
            continue
        if key not in known:
            out.append(prefix + str(key))
        elif key in nested and is_dataclass(nested[key]):
            out += unknown_fields(cfg[key], nested[key], f"{prefix}{key}.")
    return out


def schema_fields(schema: type = QSMConfig, prefix: str = "") -> list[str]:
    out = []
    for f in fields(schema):
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            out += schema_fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def validate_config(cfg: DictConfig, schema: type = QSMConfig) -> None:
    """Fails before anything is built, naming the field at fault and what would be right.

    The library checks its own arguments (alpha, T, the schedule, noise scales) when the actor and
    the loss are built; this checks what only the script knows.
    """
    extra = unknown_fields(cfg, schema)
    if extra:
        hints = []
        for name in extra:
            close = difflib.get_close_matches(name, schema_fields(schema), n=1)
            hints.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ValueError(
            f"Unknown configuration field(s): {', '.join(hints)}. Nothing reads them, so they would be ignored; "
            "remove them (the fields are listed in config.yaml)."
        )
    check_task(cfg.env)
    c, o, n = cfg.collector, cfg.optim, cfg.network
    checks = [  # (holds, the fields at fault, what must hold)
        (cfg.env.seed >= 0, ["env.seed"], "env.seed must be >= 0"),
        (cfg.env.max_episode_steps >= 1, ["env.max_episode_steps"], "env.max_episode_steps must be >= 1"),
        (cfg.env.frame_skip >= 1, ["env.frame_skip"], "env.frame_skip must be >= 1"),
        (
            c.frames_per_batch >= 1 and c.total_frames >= 1,
            ["collector.frames_per_batch", "collector.total_frames"],
            "both must be >= 1",
        ),
        (
            c.frames_per_batch <= c.total_frames,
            ["collector.frames_per_batch", "collector.total_frames"],
            "collector.frames_per_batch must not exceed collector.total_frames "
            "(a collector always delivers whole batches)",
        ),
        (
            c.total_frames % c.frames_per_batch == 0,
            ["collector.total_frames", "collector.frames_per_batch"],
            "collector.total_frames must be a multiple of collector.frames_per_batch "
            "(whole batches; the collector would round it up)",
        ),
        (
            0 <= c.init_random_frames <= c.total_frames,
            ["collector.init_random_frames", "collector.total_frames"],
            "collector.init_random_frames must be in [0, collector.total_frames]",
        ),
        (
            c.backend in COLLECTOR_BACKENDS,
            ["collector.backend"],
            f"collector.backend must be one of {list(COLLECTOR_BACKENDS)}",
        ),
        (
            c.num_workers >= 1 and c.envs_per_worker >= 1,
            ["collector.num_workers", "collector.envs_per_worker"],
            "both must be >= 1",
        ),
        (
            c.backend != "local" or c.num_workers == 1,
            ["collector.num_workers", "collector.backend"],
            "collector.backend=local runs one collector in this process; for more workers choose "
            "collector.backend=multiprocess or ray",
        ),
        (
            c.frames_per_batch % max(frames_per_step(cfg), 1) == 0,  # (0 workers: refused above)
            ["collector.frames_per_batch", "collector.num_workers", "collector.envs_per_worker", "collector.sync"],
            f"collector.frames_per_batch must be a multiple of the {frames_per_step(cfg)} environments that step "
            "into each batch (sync: every worker's; async: one worker's)",
        ),
        (
            cfg.ray.cpus_per_worker >= 0 and cfg.ray.gpus_per_worker >= 0 and (cfg.ray.num_cpus or 1) >= 1,
            ["ray.cpus_per_worker", "ray.gpus_per_worker", "ray.num_cpus"],
            "Ray resources must be >= 0 (ray.num_cpus >= 1 or null)",
        ),
        (cfg.replay_buffer.size >= 1, ["replay_buffer.size"], "replay_buffer.size must be >= 1"),
        (cfg.replay_buffer.prefetch >= 0, ["replay_buffer.prefetch"], "replay_buffer.prefetch must be >= 0"),
        (o.batch_size >= 1, ["optim.batch_size"], "optim.batch_size must be >= 1"),
        (
            o.batch_size <= cfg.replay_buffer.size,
            ["optim.batch_size", "replay_buffer.size"],
            "optim.batch_size must not exceed replay_buffer.size",
        ),
        (math.isfinite(o.lr) and o.lr > 0, ["optim.lr"], "optim.lr must be finite and > 0"),
        (
            math.isfinite(o.utd_ratio) and o.utd_ratio > 0,
            ["optim.utd_ratio"],
            "optim.utd_ratio (updates per frame) must be finite and > 0",
        ),
        (0 < o.gamma <= 1, ["optim.gamma"], "optim.gamma (the discount) must be in (0, 1]"),
        (0 < o.tau <= 1, ["optim.tau"], "optim.tau (the target critics' step) must be in (0, 1]"),
        (
            o.fp32_matmuls in FP32_MATMULS,
            ["optim.fp32_matmuls"],
            f"optim.fp32_matmuls must be one of {list(FP32_MATMULS)}",
        ),
        (
            o.actor_lr_decay_updates >= 0,
            ["optim.actor_lr_decay_updates"],
            "optim.actor_lr_decay_updates must be >= 0 (0: no decay)",
        ),
        (
            len(n.hidden_sizes) >= 1 and min(n.hidden_sizes) >= 1,
            ["network.hidden_sizes"],
            "network.hidden_sizes needs at least one width >= 1",
        ),
        (
            n.actor_activation in ACTIVATIONS,
            ["network.actor_activation"],
            f"network.actor_activation must be one of {sorted(ACTIVATIONS)}",
        ),
        (
            n.critic_activation in ACTIVATIONS,
            ["network.critic_activation"],
            f"network.critic_activation must be one of {sorted(ACTIVATIONS)}",
        ),
        (
            math.isfinite(cfg.diffusion.exploration_std) and cfg.diffusion.exploration_std >= 0,
            ["diffusion.exploration_std"],
            "diffusion.exploration_std must be finite and >= 0",
        ),
        (
            cfg.eval.mode in ("stochastic", "deterministic"),
            ["eval.mode"],
            "eval.mode must be 'stochastic' or 'deterministic'",
        ),
        (
            cfg.eval.interval >= 1 and cfg.eval.episodes >= 1,
            ["eval.interval", "eval.episodes"],
            "eval.interval and eval.episodes must be >= 1",
        ),
        (cfg.eval.best_of_n >= 1, ["eval.best_of_n"], "eval.best_of_n must be >= 1 (1: no best-of-N evaluation)"),
        (
            cfg.eval.best_of_n == 1 or cfg.eval.mode == "stochastic",
            ["eval.best_of_n", "eval.mode"],
            "eval.best_of_n > 1 ranks N chain samples, which eval.mode=deterministic makes one sample: "
            "use eval.mode=stochastic",
        ),
        (
            cfg.checkpoint.interval >= 1,
            ["checkpoint.interval"],
            "checkpoint.interval (frames between checkpoints) must be >= 1",
        ),
        (
            not cfg.logger.backend or cfg.logger.backend in ("csv", *LOGGER_PACKAGES),
            ["logger.backend"],
            f"logger.backend must be one of {['csv', *LOGGER_PACKAGES]} or empty",
        ),
    ]
    for holds, names, message in checks:
        if not holds:
            raise ValueError(f"{message}; got {', '.join(f'{f}={OmegaConf.select(cfg, f)!r}' for f in names)}.")
    package = LOGGER_PACKAGES.get(cfg.logger.backend or "")
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(
            f"logger.backend={cfg.logger.backend!r} needs the {package} package, which is not installed: "
            f'pip install -e ".[{cfg.logger.backend}]" (or choose logger.backend=csv).'
        )
    if c.backend == "ray":
        check_ray(cfg.ray)
    check_compile_mode(cfg.compile, resolve_device(cfg.device))
    if cfg.replay_buffer.device is not None:
        resolve_device(cfg.replay_buffer.device, "replay_buffer.device")


def check_task(env: DictConfig) -> None:
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


def options_help() -> str:
    """``qsm.py --help``: config.yaml as written (each field with its comment) and each preset's first comment.

    Hydra's own page prints the composed config without its comments; this text goes into its help template
    (``hydra.help.template``), so ``$`` is doubled for ``string.Template``.
    """
    folder = Path(__file__).parent
    config = (folder / "config.yaml").read_text()
    config = config[: config.index("\nhydra:")]  # the options; Hydra's own are under --hydra-help
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
        "Options (config.yaml; every field can be set on the command line):\n\n" + config + "\n\n"
        "diffusion: (the default preset, diffusion/faithful.yaml)\n"
        + "".join(f"  {line}\n" for line in (folder / "diffusion" / "faithful.yaml").read_text().splitlines()[2:])
        + "\n"
        "Hydra's own options: --hydra-help. Configuration as composed: --cfg job.\n"
    )
    return text.replace("$", "$$")


def frames_per_step(cfg: DictConfig) -> int:
    """Frames one step of the collection adds to a batch: every worker's environments when the batch
    gathers all workers (sync), one worker's when it is one worker's (async, local)."""
    c = cfg.collector
    return c.envs_per_worker * (c.num_workers if c.sync and c.backend != "local" else 1)


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


def check_ray(ray_cfg: DictConfig, timeout: float = 5.0) -> None:
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
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent), version_base="1.3"):
        defaults = OmegaConf.to_container(compose("config"), resolve=False)
    defaults.pop("hydra", None)
    return OmegaConf.merge(OmegaConf.create(defaults), {k: v for k, v in saved["config"].items() if k != "algorithm"})


# The resolvers config.yaml uses: unique default run folders (the process id), named after the task; --help.
OmegaConf.register_new_resolver("qsm_pid", os.getpid, replace=True)
OmegaConf.register_new_resolver(
    "qsm_task_folder",
    lambda library, domain, task: task if library == "gymnasium" else f"{domain}_{task}",
    replace=True,
)
OmegaConf.register_new_resolver("qsm_help", options_help, replace=True)
