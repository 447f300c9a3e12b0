"""Factories of the QSM training script, each taking ``cfg``.

The shape of TorchRL's sota-implementations/sac/utils.py.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl._utils import compile_with_warmup, seed_generator, timeit
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer, TensorDictReplayBuffer
from torchrl.envs import (
    CatTensors,
    Compose,
    DMControlEnv,
    DoubleToFloat,
    EnvBase,
    GymEnv,
    InitTracker,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import AdditiveGaussianModule, MLP, ValueOperator
from torchrl.objectives import SoftUpdate
from torchrl.record import VideoRecorder
from torchrl.record.loggers import CSVLogger, generate_exp_name, get_logger

from torchrl_qsm import DiffusionActor, edge_fraction, EpsilonNetwork, NonFiniteError, QSMLoss
from torchrl_qsm.diagnostics import first_non_finite
from torchrl_qsm.kernels import choose_fp32_matmuls, matmul_path, matmul_shapes, MatmulChoice

from checkpoints import read_checkpoint
from config import ACTIVATIONS, ray_token_refused


# --- environments ----------------------------------------------------------------------------------
def make_env(
    domain: str,
    task: str,
    frame_skip: int = 1,
    max_episode_steps: int = 1000,
    from_pixels: bool = False,
    seed: int | None = None,
    library: str = "dm_control",
) -> EnvBase:
    """The task with a flat float32 ``observation``, step counter, episode reward and init tracker.

    ``library="dm_control"``: the DMC ``domain``/``task`` (``DMControlEnv``, its observations concatenated);
    ``"gymnasium"``: the Gymnasium id ``task`` (``GymEnv``; ``domain`` is not used), whose terminations
    (a fallen Hopper) and truncations TorchRL keeps apart in ``terminated`` and ``truncated``. ``seed`` seeds
    the task before its first reset, so the first episode is repeatable too.
    """
    if library == "gymnasium":
        env = GymEnv(task, frame_skip=frame_skip, from_pixels=from_pixels, pixels_only=False)
        transforms = []
    else:
        env = DMControlEnv(domain, task, frame_skip=frame_skip, from_pixels=from_pixels, pixels_only=False)
        observation_keys = [key for key in env.observation_spec.keys() if key != "pixels"]
        transforms = [CatTensors(in_keys=observation_keys, out_key="observation")]
    if seed is not None:
        env.set_seed(seed)
    return TransformedEnv(
        env, Compose(*transforms, InitTracker(), StepCounter(max_episode_steps), DoubleToFloat(), RewardSum())
    )


def env_maker(cfg: DictConfig, seed: int | None = None, from_pixels: bool = False) -> functools.partial:
    """A picklable constructor of the configured task (sent to collector processes)."""
    e = cfg.env
    return functools.partial(
        make_env, e.domain, e.task, e.frame_skip, e.max_episode_steps, from_pixels, seed, library=e.library
    )


def task_name(cfg: DictConfig) -> str:
    """``cheetah-run`` (DMC) or ``HalfCheetah-v5`` (Gymnasium), for titles and messages."""
    return cfg.env.task if cfg.env.library == "gymnasium" else f"{cfg.env.domain}-{cfg.env.task}"


def rendering_available(cfg: DictConfig) -> bool:
    try:
        env = env_maker(cfg, from_pixels=True)()
        env.reset()
        env.close()
        return True
    except Exception as err:  # no GL backend: glfw without a display, no egl/osmesa
        warnings.warn(
            f"eval.video=true but MuJoCo cannot render offscreen here ({type(err).__name__}: {err}); "
            "set MUJOCO_GL=egl (GPU) or MUJOCO_GL=osmesa (CPU) to record videos. Continuing without video.",
            stacklevel=2,
        )
        return False


def make_eval_env(cfg: DictConfig, logger=None) -> EnvBase:
    """``eval.episodes`` copies of the task stepped together (one actor batch per step), physics on CPU.

    Seeded by the training loop before each evaluation (from ``env.seed`` and the frame count), which knows
    whether the run is resumed.
    """
    video = bool(cfg.eval.video) and logger is not None and rendering_available(cfg)
    env = SerialEnv(cfg.eval.episodes, env_maker(cfg, from_pixels=video), device="cpu")
    if video:
        env = TransformedEnv(env, VideoRecorder(logger, tag="eval/video", in_keys=["pixels"]))
    return env


def stream_seed(seed: int, frames: int) -> int:
    """The seed of the environments from frame ``frames`` on: ``seed`` itself for a new run, and for a run
    resumed at a later frame a seed drawn from ``(seed, frames)``, so its episodes are new (not the first
    run's again) and the same for every resume from that checkpoint."""
    if frames == 0:
        return seed
    return int(np.random.SeedSequence([seed, frames]).generate_state(1)[0])


# --- the agent -------------------------------------------------------------------------------------
def make_qsm_agent(cfg: DictConfig, env: EnvBase, device: torch.device) -> tuple[DiffusionActor, TensorDictModule]:
    """The diffusion actor and, for collection, the actor followed by the paper's N(0, std^2) noise."""
    action_spec = env.action_spec_unbatched.to(device)
    obs_dim = env.observation_spec_unbatched["observation"].shape[-1]
    action_dim = action_spec.shape[-1]
    net, d = cfg.network, cfg.diffusion
    eps_network = EpsilonNetwork(
        action_dim,
        obs_dim,
        num_steps=d.num_steps,
        hidden_sizes=tuple(net.hidden_sizes),
        activation=ACTIVATIONS[net.actor_activation],
        layer_norm=net.layer_norm,
        time_embedding=net.time_embedding,
    )
    actor = DiffusionActor(
        action_dim, obs_dim, eps_network, d.num_steps, spec=action_spec, schedule=d.schedule, temperature=d.temperature
    ).to(device)
    exploration = AdditiveGaussianModule(
        action_spec, sigma_init=d.exploration_std, sigma_end=d.exploration_std, device=device
    )
    return actor, TensorDictSequential(actor, exploration)


def make_critic(cfg: DictConfig, env: EnvBase, device: torch.device) -> ValueOperator:
    """``Q(s, a)``: an MLP over ``[observation, action]`` (QSMLoss copies it into the twin critics)."""
    obs_dim = env.observation_spec_unbatched["observation"].shape[-1]
    action_dim = env.action_spec_unbatched.shape[-1]
    net = MLP(
        obs_dim + action_dim,
        1,
        num_cells=list(cfg.network.hidden_sizes),
        activation_class=ACTIVATIONS[cfg.network.critic_activation],
        device=device,
    )
    return ValueOperator(net, in_keys=["observation", "action"])


def make_loss_module(cfg: DictConfig, actor: DiffusionActor, critic: ValueOperator) -> tuple[QSMLoss, SoftUpdate]:
    d = cfg.diffusion
    loss = QSMLoss(
        actor,
        critic,
        score_target=d.score_target,
        alpha=d.alpha,
        alpha_curvature=d.alpha_curvature,
        num_candidates=d.num_candidates,
        target_spread=d.target_spread,
        alpha_init=d.alpha_init,
        grad_at=d.grad_at,
        critic_reduction=d.critic_reduction,
        normalize_grad=d.normalize_grad,
        policy_noise=d.policy_noise,
    )
    loss.make_value_estimator(gamma=cfg.optim.gamma)
    return loss, SoftUpdate(loss, tau=cfg.optim.tau)


def adam(cfg: DictConfig, params, lr: float | None = None) -> torch.optim.Adam:
    """Adam over the trainable entries, at ``lr`` (default ``optim.lr``).

    The learning rate is a tensor, so schedulers update it in place and a compiled update does not
    recompile when it changes; on CUDA the step is capturable, so the update can run as a CUDA graph.
    """
    params = [p for p in params if p.requires_grad]
    device = params[0].device
    return torch.optim.Adam(
        params,
        lr=torch.tensor(cfg.optim.lr if lr is None else lr, device=device),
        fused=cfg.optim.fused_adam or None,
        capturable=device.type == "cuda",
    )


def cosine_decay(horizon: int, step: int) -> float:
    """``0.5 (1 + cos(pi min(step, horizon) / horizon))``: 1 -> 0 over ``horizon`` steps (1 if horizon is 0)."""
    if horizon <= 0:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, horizon) / horizon))


def make_optimizers(
    cfg: DictConfig, loss: QSMLoss
) -> tuple[torch.optim.Adam, torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam for the actor and for the critics, and the actor's cosine learning-rate decay (the authors')."""
    actor_optim = adam(cfg, loss.actor_network_params.values(True, True))
    critic_optim = adam(cfg, loss.qvalue_network_params.values(True, True))
    decay = functools.partial(cosine_decay, cfg.optim.actor_lr_decay_updates)
    return actor_optim, critic_optim, torch.optim.lr_scheduler.LambdaLR(actor_optim, decay)


def make_alpha_optimizer(cfg: DictConfig, loss: QSMLoss) -> torch.optim.Adam | None:
    """Adam for ``log_alpha`` (``diffusion.alpha_lr``) where the loss learns it (``q_weighted`` with ``alpha=auto``)."""
    return adam(cfg, [loss.log_alpha], lr=cfg.diffusion.alpha_lr) if loss.learn_alpha else None


def set_matmul_kernels(cfg: DictConfig, device: torch.device, *networks: torch.nn.Module) -> MatmulChoice:
    """The fp32 matmul path for the GEMMs of ``networks`` at the batch size, checked against float64 and printed.

    ``optim.fp32_matmuls=default`` (the default) keeps torch's own path, so a run repeats itself. ``auto``: the
    fastest path as accurate as torch's default (``choose_fp32_matmuls``); where two paths are close in speed,
    two starts may choose differently, and runs with the same seed then differ by rounding, so the choice is
    written into ``cfg`` (the run's config.yaml names the path it ran on), and a resume with ``auto`` takes the
    path of the run it resumes. A path's name pins it; it is still checked, and refused if it rounds here.
    """
    shapes = matmul_shapes(*networks, batch_size=cfg.optim.batch_size)
    name = cfg.optim.fp32_matmuls
    if name == "auto" and cfg.checkpoint.resume:  # the path the resumed run chose: a resume repeats it
        name = read_checkpoint(cfg.checkpoint.resume, components=("config",))["config"]["optim"]["fp32_matmuls"]
        print(f"optim.fp32_matmuls=auto: the resumed run's path, {name}", flush=True)
        with open_dict(cfg):
            cfg.optim.fp32_matmuls = name
    if name == "auto":
        choice = choose_fp32_matmuls(device, shapes, verbose=False)
        print(f"{choice} (optim.fp32_matmuls={choice.chosen.name} repeats this choice)", flush=True)
        with open_dict(cfg):
            cfg.optim.fp32_matmuls = choice.chosen.name
        return choice
    path, default = matmul_path(device, name), matmul_path(device, "default")
    paths = [default] if path == default else [default, path]
    choice = choose_fp32_matmuls(device, shapes, paths=paths, min_speedup=0.0, verbose=False)
    if choice.chosen != path:
        raise ValueError(
            f"optim.fp32_matmuls={name}: on this machine that path computes fp32 matmuls with error "
            f"{choice.errors[path.name]:.1e} against float64, above the tolerance {choice.tolerance:.1e} (10x torch's "
            "default path): it rounds. Use optim.fp32_matmuls=auto or default; bf16 is optim.bf16_matmuls=true."
        )
    print(choice, flush=True)
    return choice


def compile_enabled(cfg: DictConfig, device: torch.device) -> tuple[bool, str]:
    """Whether the update runs under ``torch.compile``, and why: ``compile.compile``, or where it is ``null``,
    whether inductor can build code for ``device`` (a C++ compiler on CPU, triton on CUDA).

    On by default because it pays for itself within a few thousand updates (benchmarks/README.md, "Compiling
    by default", has the measured gain and compile time).
    """
    if cfg.compile.compile is not None:
        return bool(cfg.compile.compile), f"compile.compile={str(cfg.compile.compile).lower()}"
    if device.type == "cpu":
        compilers = [name for name in (os.environ.get("CXX"), "g++", "c++", "clang++") if name]
        found = next((name for name in compilers if shutil.which(name)), None)
        if found is None:
            return False, (
                "compile.compile=null and no C++ compiler for torch.compile on CPU (looked for "
                f"{', '.join(compilers)}); install one (e.g. g++) for faster updates, or set compile.compile=false"
            )
        return True, f"compile.compile=null and the C++ compiler {found} is here"
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return False, "compile.compile=null and triton, which torch.compile needs on CUDA, is not installed"
        return True, "compile.compile=null and triton is here"
    return False, f"compile.compile=null: not measured on {device.type}"


def compile_update(
    update: Callable[[TensorDict], TensorDict], cfg: DictConfig, device: torch.device, warmup: int = 1
) -> Callable[[TensorDict], TensorDict]:
    """``update`` under ``torch.compile``, after ``warmup`` eager calls (as TorchRL's sota scripts do).

    Dynamo traces ``torch.autograd.grad`` here (its ``trace_autograd_ops``, read when the update compiles), so
    the update of qsm.py compiles to one graph, Adam's steps included (update.py).
    """
    mode = cfg.compile.mode or ("reduce-overhead" if device.type == "cuda" else "default")
    quiet_known_compile_warnings()
    compiled = compile_with_warmup(update, mode=mode, warmup=warmup)

    def run(batch: TensorDict) -> TensorDict:
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return compiled(batch)

    return run


def quiet_known_compile_warnings() -> None:
    """Silences the two warnings tensordict 0.14.3 raises, harmlessly, while dynamo traces the update.

    - A ``FutureWarning``: tensordict reads ``torch._dynamo.config.inline_inbuilt_nn_modules``, which torch 2.13
      deprecated (it is always on, and reading it does nothing).
    - A ``UserWarning``: ``to_module`` locks the parameters' TensorDict inside the graph, where tensordict skips
      its check that no child is unlocked under a locked parent; nothing in the update unlocks one.

    Matched by message and by the module that warns, so any other warning still shows.
    """
    for category, message in (
        (FutureWarning, r"torch\._dynamo\.config\.inline_inbuilt_nn_modules is deprecated"),
        (UserWarning, r"Using lock_\(\) inside a compiled graph"),
    ):
        warnings.filterwarnings("ignore", message=message, category=category, module=r"tensordict\.utils")


# --- data ------------------------------------------------------------------------------------------
def seed_chain(seed: int, n: int) -> list[int]:
    """``seed`` and the next ``n - 1`` seeds of TorchRL's seed chain (``seed_generator``)."""
    seeds = [seed]
    for _ in range(n - 1):
        seeds.append(seed_generator(seeds[-1]))
    return seeds


def worker_env_maker(cfg: DictConfig, seeds: list[int]) -> Callable[[], EnvBase]:
    """A picklable constructor of one worker's environments: the task, or ``len(seeds)`` copies of it
    stepped together (``SerialEnv``: one policy call for all), each seeded before its first reset."""
    if len(seeds) == 1:
        return env_maker(cfg, seeds[0])
    return functools.partial(SerialEnv, len(seeds), [env_maker(cfg, s) for s in seeds])


def describe_collection(cfg: DictConfig) -> str:
    """One line on how the run collects, e.g. ``ray, 2 workers x 1 environment, sync; a local Ray of 2 CPUs``."""
    c, r = cfg.collector, cfg.ray
    envs = f"{c.envs_per_worker} environment{'s' if c.envs_per_worker > 1 else ''}"
    if c.backend == "local":
        return f"local, one collector of {envs} in this process"
    line = f"{c.backend}, {c.num_workers} workers x {envs}, {'sync' if c.sync else 'async'}"
    if c.backend == "ray":
        line += f"; a local Ray of {r.num_cpus or os.cpu_count()} CPUs" if r.address is None else f"; joins {r.address}"
    return line


def make_collector(cfg: DictConfig, policy, device: torch.device, frames: int = 0):
    """The collector of ``collector.backend`` for what is left of the run after ``frames`` (a resumed run's): the
    rest of ``collector.total_frames`` and of the random warm-up, each of its environments seeded before its
    first reset: ``stream_seed(env.seed, frames)``, then TorchRL's seed chain for the next.

    - ``local``: TorchRL's ``Collector`` in this process;
    - ``multiprocess``: ``num_workers`` env processes, ``MultiSyncCollector`` (sync) or ``MultiAsyncCollector``;
    - ``ray``: ``num_workers`` Ray actors, each a ``Collector`` (``RayCollector``), which sends each worker the
      policy's weights after each of its batches (``update_after_each_batch``).
    """
    c = cfg.collector
    n, seed = c.envs_per_worker, stream_seed(cfg.env.seed, frames)
    seeds = seed_chain(seed, c.num_workers * n)
    makers = [worker_env_maker(cfg, seeds[i * n : (i + 1) * n]) for i in range(c.num_workers)]
    kwargs = dict(
        frames_per_batch=c.frames_per_batch,
        total_frames=c.total_frames - frames,
        init_random_frames=max(0, c.init_random_frames - frames),
        exploration_type=ExplorationType.RANDOM,
    )
    if c.backend == "ray":
        collector = make_ray_collector(cfg, makers, policy, **kwargs)
    else:
        kwargs.update(
            env_device="cpu", policy_device=device, storing_device=device, compile_policy=bool(cfg.compile.policy)
        )
        if c.backend == "local":
            return Collector(makers[0](), policy, **kwargs)
        cls = MultiSyncCollector if c.sync else MultiAsyncCollector
        collector = cls(makers, policy, **kwargs)
    collector.set_seed(seed)  # the same chain again, for each worker's torch and numpy generators
    return collector


@contextlib.contextmanager
def joining(address: str | None):
    """Names ``ray.address`` in the error of a Ray that could not be joined, and the fix of a refused token."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        raise ConnectionError(ray_token_refused(address, err.message)) from None
    except ConnectionError as err:
        raise ConnectionError(
            f"ray.address={address!r}: {err} Start a cluster with `ray start --head`, or use ray.address=null "
            "for a Ray inside this run."
        ) from err


def make_ray_collector(cfg: DictConfig, makers: list[Callable[[], EnvBase]], policy, **kwargs):
    """TorchRL's ``RayCollector`` over ``makers``, one Ray actor each, inside the Ray of ``ray.address``.

    ``ray.address=null`` starts a Ray in this process, which the collector's ``shutdown`` stops; otherwise the
    run joins a running cluster (and ``shutdown`` leaves it running). The workers act on CPU, or on their GPU
    where ``ray.gpus_per_worker > 0``; their batches come back on CPU. The script's modules are sent to the
    workers by value, so a cluster's nodes need the library installed, not this folder. Worker logs stay in
    Ray's session folder (``/tmp/ray/session_latest/logs``); a worker's error reaches this process with its
    traceback.
    """
    import ray
    from torchrl.collectors.distributed import RayCollector

    r = cfg.ray
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # env_maker's module, not on the workers' path
    init = {"address": r.address, "log_to_driver": False}
    if r.address is None:
        init.update(num_cpus=r.num_cpus, include_dashboard=False)
    worker_device = "cuda" if r.gpus_per_worker > 0 else "cpu"
    with warnings.catch_warnings(), joining(r.address):
        # each worker collects init_random_frames / num_workers random frames first, in either mode
        warnings.filterwarnings("ignore", message="async distributed data collection with init_random_frames")
        collector = RayCollector(
            makers,
            policy,
            collector_class=Collector,
            collector_kwargs=dict(
                env_device="cpu",
                policy_device=worker_device,
                storing_device="cpu",
                compile_policy=bool(cfg.compile.policy),
            ),
            remote_configs=dict(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker),
            ray_init_config=init,
            sync=cfg.collector.sync,
            update_after_each_batch=True,
            **kwargs,
        )
    collector.update_policy_weights_()  # connects the weight transport; the workers start from these weights
    return collector


def make_replay_buffer(cfg: DictConfig, device: torch.device):
    storage = LazyTensorStorage(cfg.replay_buffer.size, device=cfg.replay_buffer.device or device)
    common = dict(storage=storage, batch_size=cfg.optim.batch_size, prefetch=cfg.replay_buffer.prefetch or None)
    if cfg.replay_buffer.prb:
        return TensorDictPrioritizedReplayBuffer(alpha=0.7, beta=0.5, **common)
    return TensorDictReplayBuffer(**common)


# --- the loop's checks, evaluation and results ----------------------------------------------------
EVAL_SEED_OFFSET = 10_000  # the evaluation environments' seed stream: env.seed + EVAL_SEED_OFFSET


def check_finite_batch(batch: TensorDictBase, first_frame: int) -> None:
    """Raises NonFiniteError naming the key and the frame of the first non-finite value of a collected batch."""
    flat = batch.reshape(-1)
    for key, value in flat.items(True, True):
        index = first_non_finite(value)
        if index is not None:
            row = index[0]
            raise NonFiniteError(
                f"The collected data holds a non-finite {key!r} ({value[row].flatten().tolist()}) at frame "
                f"{first_frame + row + 1}; it was not stored. The environment (or its transforms) produced it: "
                "check the task's observations and rewards."
            )


def check_finite_losses(metrics: list[TensorDictBase], first_update: int) -> None:
    """One device sync per collector batch: the ``loss_*`` outputs of each of the batch's updates must be finite."""
    if not metrics:
        return
    totals = torch.stack([sum(v.float() for k, v in m.items() if k.startswith("loss_")) for m in metrics])
    found = first_non_finite(totals)
    if found is None:
        return
    index = found[0]
    values = {key: value.item() for key, value in metrics[index].items() if key.startswith("loss_")}
    raise NonFiniteError(
        f"Update {first_update + index + 1} gave non-finite losses {values}: the weights may be non-finite from "
        "then on. No checkpoint was written; lower optim.lr, or look for extreme rewards."
    )


def evaluate_policy(
    env: EnvBase, policy: Callable, max_steps: int, exploration: ExplorationType
) -> tuple[torch.Tensor, float]:
    """One episode in each of ``env``'s environments (a batch, stepped together) under ``exploration``, no
    gradients: the episodes' returns ``[E]`` and the share of action components on the box edges.

    The batch steps ``max_steps`` times (a DMC episode's length); an episode that ends sooner (a Gymnasium
    termination) counts up to its end, and what its environment does after its reset is left out.
    """
    spec = env.action_spec_unbatched
    with set_exploration_type(exploration), torch.no_grad():
        rollout = env.rollout(max_steps, policy, auto_cast_to_device=True, break_when_any_done=False)
    # tensor by tensor: TensorDict.cpu() would show tensordict's type memo a new type, and the compiled update
    # guards on that memo's size (a 10-20 s recompile after the first evaluation; benchmarks/README.md)
    done = rollout["next", "done"].squeeze(-1).long().cpu()  # [E, steps]
    in_episode = (done.cumsum(-1) - done) == 0  # every step up to and including the first end
    returns = (rollout["next", "reward"].squeeze(-1).cpu() * in_episode).sum(-1)
    edges = edge_fraction(rollout["action"].cpu()[in_episode], spec.space.low.cpu(), spec.space.high.cpu())
    return returns, edges.item()


def return_std(returns: torch.Tensor) -> float:
    """The episodes' standard deviation; 0 for one episode (``eval.episodes=1``), where torch's would be nan."""
    return returns.std().item() if returns.numel() > 1 else 0.0


def log_metrics(logger, metrics: list[TensorDictBase], frames: int, train_return: float) -> None:
    """The mean of each of the updates' outputs, the last training return and ``timeit``'s timings, at ``frames``."""
    if logger is None:
        return
    scalars = {"train/return": train_return}
    for key in dict.fromkeys(key for m in metrics for key in m.keys()):
        scalars[f"train/{key}"] = torch.stack([m[key] for m in metrics if key in m.keys()]).float().mean().item()
    scalars.update(timeit.todict(prefix="time"))
    for key, value in scalars.items():
        logger.log_scalar(key, value, step=frames)


# --- logging ---------------------------------------------------------------------------------------
def make_logger(cfg: DictConfig, folder: Path, name: str = "QSM"):
    """A TorchRL logger writing under ``folder/logs`` (``None`` when ``logger.backend`` is empty)."""
    if not cfg.logger.backend:
        return None
    log_dir, exp_name = str(folder / "logs"), generate_exp_name(name, cfg.logger.exp_name)
    if cfg.logger.backend == "csv":  # built directly: get_logger fixes the CSV video format to mp4
        video_format = cfg.logger.video_format
        if cfg.eval.video and video_format == "mp4" and importlib.util.find_spec("torchcodec") is None:
            warnings.warn(
                "mp4 videos need torchcodec (pip install 'torchcodec>=0.10.0'); saving videos as .pt tensors.",
                stacklevel=2,
            )
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
