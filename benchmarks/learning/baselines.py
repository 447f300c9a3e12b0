"""TorchRL's SAC and TD3, trained on the QSM script's factories and checkpoints, for the learning comparison.

    python benchmarks/learning/baselines.py sac env.domain=walker env.task=walk collector.total_frames=50000
    python benchmarks/learning/baselines.py td3 checkpoint.resume=outputs/<run>
    python benchmarks/learning/baselines.py sac --alpha-init 0.1 env.domain=finger env.task=spin  # pytorch_sac's

``--alpha-init`` is SAC's initial entropy coefficient: TorchRL's ``SACLoss`` default and sota recipe start at
1.0, pytorch_sac (Yarats et al., the published state-SAC reference on DMC) at 0.1; the grid runs both
(``sac`` and ``sac-alpha0.1``) and compares QSM with the better one on each task.

The overrides are the training script's (sota-implementations/qsm/config.yaml): the same
environments, collector, replay buffer, widths (``network.hidden_sizes``), batch, warm-up,
evaluation, checkpoints and results folder, and a loop in qsm.py's order (collect, store, the updates
owed, evaluation, checkpoint); only the algorithm differs. The agents are built as TorchRL's sota scripts
build them (sota-implementations/sac/utils.py, td3/utils.py in pytorch/rl): TorchRL's losses, actors and
target updaters, their optimizer settings, ReLU networks, and TD3's exploration and smoothing noises. The
``diffusion`` section is QSM's and is not read here. Both are evaluated deterministically (SAC at its mean,
TD3 without noise).
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import random
import sys
from pathlib import Path

if "DISPLAY" not in os.environ and "MUJOCO_GL" not in os.environ:  # as qsm.py does, before MuJoCo is imported
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "disable"

SCRIPT_DIR = Path(__file__).resolve().parents[2] / "sota-implementations" / "qsm"
sys.path.insert(0, str(SCRIPT_DIR))


import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType
from torchrl.modules import (
    AdditiveGaussianModule,
    MLP,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)
from torchrl.objectives import SACLoss, SoftUpdate, TD3Loss

from torchrl_qsm.run import RunGuard

from checkpoints import make_checkpointer, Progress, read_checkpoint, resume, save_checkpoint
from config import resolve_device, validate_config
from utils import (
    adam,
    check_finite_batch,
    check_finite_losses,
    EVAL_SEED_OFFSET,
    evaluate_policy,
    make_collector,
    make_eval_env,
    make_logger,
    make_replay_buffer,
    return_std,
    set_matmul_kernels,
    stream_seed,
    task_name,
)

DETERMINISTIC = ExplorationType.DETERMINISTIC  # both are evaluated at their mean / without noise
TD3_EXPLORATION_STD, TD3_POLICY_NOISE, TD3_NOISE_CLIP, TD3_POLICY_DELAY = 0.1, 0.2, 0.5, 2  # TorchRL's sota td3


def relu_mlp(cfg: DictConfig, in_features: int, out_features: int, device) -> MLP:
    return MLP(
        in_features, out_features, num_cells=list(cfg.network.hidden_sizes), activation_class=nn.ReLU, device=device
    )


def relu_critic(cfg: DictConfig, env: EnvBase, device) -> ValueOperator:
    obs_dim, action_dim = env.observation_spec_unbatched["observation"].shape[-1], env.action_spec_unbatched.shape[-1]
    return ValueOperator(relu_mlp(cfg, obs_dim + action_dim, 1, device), in_keys=["observation", "action"])


def sac(cfg: DictConfig, env: EnvBase, device: torch.device, alpha_init: float = 1.0) -> dict:
    """TorchRL's SAC sota agent: TanhNormal actor, twin critics, learned entropy coefficient from ``alpha_init``."""
    spec = env.action_spec_unbatched.to(device)
    obs_dim, action_dim = env.observation_spec_unbatched["observation"].shape[-1], spec.shape[-1]
    net = nn.Sequential(
        relu_mlp(cfg, obs_dim, 2 * action_dim, device),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        spec=spec,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
        default_interaction_type=InteractionType.RANDOM,
    )
    loss = SACLoss(
        actor,
        relu_critic(cfg, env, device),
        num_qvalue_nets=2,
        loss_function="l2",
        delay_actor=False,
        delay_qvalue=True,
        alpha_init=alpha_init,
    )
    loss.make_value_estimator(gamma=cfg.optim.gamma)
    updater = SoftUpdate(loss, tau=cfg.optim.tau)
    optimizers = {
        "actor_optim": adam(cfg, loss.actor_network_params.values(True, True)),
        "critic_optim": adam(cfg, loss.qvalue_network_params.values(True, True)),
        "alpha_optim": adam(cfg, [loss.log_alpha]),
    }

    def learn(batch: TensorDict) -> TensorDict:
        out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        updater.step()
        return out.detach()

    state = {"loss": loss, **optimizers, "target_updater": updater}
    return dict(policy=actor, exploration_policy=actor, learn=learn, state=state)


class UpdateCounter:
    """TD3's update count (its actor delay), checkpointed with the agent."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def td3(cfg: DictConfig, env: EnvBase, device: torch.device) -> dict:
    """TorchRL's TD3 sota agent: tanh actor with target, twin critics, actor and targets every 2nd update."""
    spec = env.action_spec_unbatched.to(device)
    obs_dim, action_dim = env.observation_spec_unbatched["observation"].shape[-1], spec.shape[-1]
    actor = TensorDictSequential(
        TensorDictModule(relu_mlp(cfg, obs_dim, action_dim, device), in_keys=["observation"], out_keys=["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )
    noise = AdditiveGaussianModule(spec, sigma_init=TD3_EXPLORATION_STD, sigma_end=TD3_EXPLORATION_STD, device=device)
    loss = TD3Loss(
        actor,
        relu_critic(cfg, env, device),
        action_spec=spec,
        num_qvalue_nets=2,
        loss_function="l2",
        delay_actor=True,
        delay_qvalue=True,
        policy_noise=TD3_POLICY_NOISE,
        noise_clip=TD3_NOISE_CLIP,
    )
    loss.make_value_estimator(gamma=cfg.optim.gamma)
    updater = SoftUpdate(loss, tau=cfg.optim.tau)
    actor_optim = adam(cfg, loss.actor_network_params.values(True, True))
    critic_optim = adam(cfg, loss.qvalue_network_params.values(True, True))
    counter = UpdateCounter()

    def learn(batch: TensorDict) -> TensorDict:
        loss_qvalue, metrics = loss.value_loss(batch)
        loss_qvalue.backward()
        critic_optim.step()
        critic_optim.zero_grad(set_to_none=True)
        out = TensorDict(loss_qvalue=loss_qvalue.detach(), pred_value=metrics["pred_value"].mean())
        counter.count += 1
        if counter.count % TD3_POLICY_DELAY == 0:
            loss_actor, _ = loss.actor_loss(batch)
            loss_actor.backward()
            actor_optim.step()
            actor_optim.zero_grad(set_to_none=True)
            updater.step()
            out["loss_actor"] = loss_actor.detach()
        return out

    state = {
        "loss": loss,
        "actor_optim": actor_optim,
        "critic_optim": critic_optim,
        "target_updater": updater,
        "counter": counter,
    }
    return dict(policy=actor, exploration_policy=TensorDictSequential(actor, noise), learn=learn, state=state)


# Each builds an agent: ``policy`` (evaluated), ``exploration_policy``, ``learn`` (one update: a replay batch -> its
# metrics) and ``state`` (what a checkpoint holds, by name).
BASELINES = {"sac": sac, "td3": td3}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("algorithm", choices=sorted(BASELINES))
    parser.add_argument("overrides", nargs="*", help="overrides of sota-implementations/qsm/config.yaml")
    parser.add_argument("--alpha-init", type=float, default=1.0, help="SAC's initial entropy coefficient")
    args = parser.parse_intermixed_args(argv)
    if args.algorithm != "sac" and args.alpha_init != 1.0:
        parser.error("--alpha-init is SAC's; TD3 has no entropy coefficient")
    with initialize_config_dir(config_dir=str(SCRIPT_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides, return_hydra_config=True)
    folder, name = Path(cfg.hydra.run.dir), args.algorithm.upper()
    with open_dict(cfg):
        del cfg["hydra"]
    validate_config(cfg)
    with open_dict(cfg):
        cfg.algorithm = name  # in the checkpoint's config: a run resumes only its own algorithm's checkpoints
    if cfg.checkpoint.resume:
        saved = read_checkpoint(cfg.checkpoint.resume, components=("config",))["config"].get("algorithm", "QSM")
        if saved != name:
            raise SystemExit(f"checkpoint.resume={cfg.checkpoint.resume}: a {saved} checkpoint; this run is {name}.")
    device = resolve_device(cfg.device)
    with RunGuard(folder, resume=cfg.checkpoint.resume) as guard:
        print(f"{name} on {task_name(cfg)}, device {device}; results in {folder}", flush=True)
        torch.manual_seed(cfg.env.seed)
        np.random.seed(cfg.env.seed)
        random.seed(cfg.env.seed)
        logger = make_logger(cfg, folder, name=name)
        eval_env = make_eval_env(cfg, logger)
        options = {"alpha_init": args.alpha_init} if args.algorithm == "sac" else {}
        agent = BASELINES[args.algorithm](cfg, eval_env, device, **options)
        policy, exploration_policy, learn, state = (
            agent[k] for k in ("policy", "exploration_policy", "learn", "state")
        )
        set_matmul_kernels(cfg, device, state["loss"].actor_network, state["loss"].qvalue_network)
        OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
        replay_buffer = make_replay_buffer(cfg, device)
        progress = Progress(cfg, folder)
        checkpointer = make_checkpointer(progress, replay_buffer, None, state)
        if cfg.checkpoint.resume:
            resume(checkpointer, progress, replay_buffer, device)
        eval_env.set_seed(stream_seed(cfg.env.seed + EVAL_SEED_OFFSET, progress.frames))

        def updates_owed() -> list[TensorDict]:
            guard.phase, metrics, first = "updates", [], progress.updates
            while progress.update_credit >= 1 and not guard.stop_requested:
                metrics.append(learn(replay_buffer.sample()))
                progress.update_credit, progress.updates = progress.update_credit - 1, progress.updates + 1
            check_finite_losses(metrics, first)
            return metrics

        def due_work() -> None:
            if progress.eval_due():
                guard.phase = "evaluation"
                returns, edges = evaluate_policy(eval_env, policy, cfg.env.max_episode_steps, DETERMINISTIC)
                row = dict(
                    eval_return=returns.mean().item(), eval_return_std=return_std(returns), eval_edge_fraction=edges
                )
                progress.results.add(frame=progress.frames, wall_time=progress.wall_time(), **row)
                progress.last_eval = progress.frames
                print(f"[eval] frame {progress.frames}: return {row['eval_return']:.1f}", flush=True)
            if progress.checkpoint_due():
                guard.phase = "checkpoint writing"
                guard.last_checkpoint = str(save_checkpoint(checkpointer, progress, state))

        if progress.frames >= progress.update_start:
            updates_owed()
        if not guard.stop_requested:
            due_work()
        if progress.frames < cfg.collector.total_frames and not guard.stop_requested:
            with guard.signals_ignored():
                collector = make_collector(cfg, exploration_policy, device, progress.frames)
            try:
                for batch in collector:
                    guard.phase = "collection"
                    check_finite_batch(batch, progress.frames)
                    replay_buffer.extend(batch.reshape(-1))
                    progress.collected(batch.numel())
                    if progress.frames >= progress.update_start and updates_owed():
                        collector.update_policy_weights_()
                    progress.record_episodes(batch)
                    if not guard.stop_requested:
                        due_work()
                    if guard.stop_requested:
                        break
            finally:
                collector.shutdown()
        path = save_checkpoint(checkpointer, progress, state)
    if guard.stop_requested:
        print(f"Stopped at frame {progress.frames}; checkpoint written to {path}", flush=True)
        sys.exit(guard.exit_code)
    progress.results.plot(f"{name} {task_name(cfg)}")
    print(f"Done: {progress.frames} frames, {progress.updates} updates. Results: {folder}", flush=True)


if __name__ == "__main__":
    main()
