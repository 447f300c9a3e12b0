"""Offline-to-online: pretrain a DiffusionActor with TorchRL's DiffusionBCLoss, then fine-tune it with QSM.

1. Demonstrations: ``--demo-frames`` transitions of DMC cartpole-balance from a scripted controller
   (``u = clip(5 sin(theta) + theta_dot + 0.5 x + x_dot)``, return 1000 alone) with N(0, 0.3^2) noise.
2. Behaviour cloning: ``--bc-updates`` steps of TorchRL's ``DiffusionBCLoss`` on them.
3. Online fine-tuning with ``QSMLoss``, the replay buffer starting with the demonstrations, twice:
   - ``naive``: the authors' recipe as is (alpha 50, actor updates from the first step);
   - ``guarded``: ``--critic-warmup`` critic-only updates first, and the data-score target
     (``QSMLoss(data_score=True)``, alpha ``--guard-alpha``, default 1): the eps-network regresses
     on ``eps - sigma_t alpha g``, the score of the replayed actions (demonstrations first) tilted by
     exp(alpha Q), so the policy leaves the demonstrations only where Q says so.
     ``--guard-normalize`` divides g by its batch mean magnitude; off by default, because it fixes the
     tilt's size at alpha whatever the critic says: on cartpole-balance, where |grad_a Q| ~ 0.3 near
     the demonstrations, alpha 1 normalised over-tilts a good policy (docs/offline_to_online.txt).
   A pretrained denoiser can collapse on the first QSM updates when alpha * grad_a Q is orders of
   magnitude off the unit-variance noise it was trained to predict; the two runs show whether it does.

Prints the eval return (stochastic chain sample, 10 episodes) of the controller, the BC policy, and
each fine-tuned policy, plus each policy's share of action components on the box edges.

    python examples/offline_to_online.py                         # ~20 min on a 2-core CPU
    python examples/offline_to_online.py --demo-frames 2000 --bc-updates 200 --online-frames 2000
"""

from __future__ import annotations

import argparse

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import (
    CatTensors,
    Compose,
    DMControlEnv,
    DoubleToFloat,
    InitTracker,
    RewardSum,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import AdditiveGaussianModule, MLP, ValueOperator
from torchrl.objectives import DiffusionBCLoss, SoftUpdate

from torchrl_qsm import DiffusionActor, edge_fraction, QSMLoss


def make_env(seed: int = 0):
    env = DMControlEnv("cartpole", "balance")
    env = TransformedEnv(
        env,
        Compose(
            CatTensors(in_keys=["position", "velocity"], out_key="observation"),
            DoubleToFloat(),
            InitTracker(),
            StepCounter(),
            RewardSum(),
        ),
    )
    env.set_seed(seed)
    return env


class ScriptedController(TensorDictModuleBase):
    """A linear balance controller on (x, cos, sin, x_dot, theta_dot) plus Gaussian noise."""

    in_keys = ["observation"]
    out_keys = ["action"]

    def __init__(self, noise: float) -> None:
        super().__init__()
        self.noise = noise
        self.register_buffer("gains", torch.tensor([0.5, 0.0, 5.0, 1.0, 1.0]))

    def forward(self, tensordict):
        obs = tensordict["observation"]
        action = (obs * self.gains).sum(-1, keepdim=True)
        action = action + self.noise * torch.randn_like(action)
        return tensordict.set("action", action.clamp(-1, 1))


def evaluate(env, policy, episodes: int = 10) -> tuple[float, float]:
    """Mean return of a stochastic sample (no exploration noise) over ``episodes``, and the edge fraction."""
    returns, edges = [], []
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        for _ in range(episodes):
            rollout = env.rollout(1000, policy)
            returns.append(rollout["next", "reward"].sum().item())
            edges.append(edge_fraction(rollout["action"], -torch.ones(1), torch.ones(1)).item())
    return sum(returns) / episodes, sum(edges) / episodes


def fine_tune(actor, demos: TensorDict, args, *, guarded: bool, spec) -> float:
    """Online QSM from the pretrained ``actor``, the replay buffer starting with ``demos``.

    Returns the mean |grad_a Q| over the actor updates (the critic's action-gradient scale).
    """
    obs_dim = demos["observation"].shape[-1]
    critic = ValueOperator(MLP(obs_dim + 1, 1, num_cells=[256, 256]), in_keys=["observation", "action"])
    loss = QSMLoss(
        actor,
        critic,
        alpha=args.guard_alpha if guarded else 50.0,
        normalize_grad=guarded and args.guard_normalize,
        data_score=guarded,
    )
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    actor_optim = torch.optim.Adam(actor.parameters(), lr=3e-4)
    critic_optim = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=3e-4)
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(len(demos) + args.online_frames), batch_size=256)
    buffer.extend(demos)

    grad_norms = []

    def update(train_actor: bool) -> None:
        if train_actor:
            out = loss(buffer.sample())
            (out["loss_qvalue"] + out["loss_actor"]).backward()
            grad_norms.append(out["grad_q_norm"])
        else:
            loss.qvalue_loss(buffer.sample())[0].backward()
        critic_optim.step()
        if train_actor:
            actor_optim.step()
        actor_optim.zero_grad()
        critic_optim.zero_grad()
        updater.step()

    for _ in range(args.critic_warmup if guarded else 0):
        update(train_actor=False)
    policy = TensorDictSequential(actor, AdditiveGaussianModule(spec, sigma_init=0.1, sigma_end=0.1))
    batch = min(500, args.online_frames)  # a larger batch than the budget would collect (and train on) more
    collector = Collector(make_env(args.seed + 1), policy, frames_per_batch=batch, total_frames=args.online_frames)
    for batch in collector:
        buffer.extend(batch.reshape(-1))
        for _ in range(batch.numel()):
            update(train_actor=True)
        collector.update_policy_weights_()
    collector.shutdown()
    return torch.stack(grad_norms).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-frames", type=int, default=10_000)
    parser.add_argument("--demo-noise", type=float, default=0.3)
    parser.add_argument("--bc-updates", type=int, default=3_000)
    parser.add_argument("--online-frames", type=int, default=10_000)
    parser.add_argument("--critic-warmup", type=int, default=2_000)
    parser.add_argument("--variants", nargs="+", default=["naive", "guarded"], choices=["naive", "guarded"])
    parser.add_argument("--guard-alpha", type=float, default=1.0, help="alpha of the guarded variant")
    parser.add_argument(
        "--guard-normalize",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="divide grad_a Q by its batch mean magnitude in the guarded variant",
    )
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    env = make_env(args.seed)
    spec = env.action_spec
    obs_dim = env.observation_spec["observation"].shape[-1]
    controller = ScriptedController(args.demo_noise)
    demos = Collector(
        make_env(args.seed + 2), controller, frames_per_batch=args.demo_frames, total_frames=args.demo_frames
    )
    demos = next(iter(demos)).reshape(-1)
    print(f"scripted controller (noise {args.demo_noise}): return {evaluate(env, controller, args.episodes)[0]:.1f}")

    actor = DiffusionActor(1, obs_dim, spec=spec)
    bc = DiffusionBCLoss(actor)
    optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    for _ in range(args.bc_updates):
        index = torch.randint(len(demos), (256,))
        bc(demos[index])["loss_diffusion_bc"].backward()
        optimizer.step()
        optimizer.zero_grad()
    pretrained = actor.state_dict()
    score, edges = evaluate(env, actor, args.episodes)
    print(f"after behaviour cloning ({args.bc_updates} updates): return {score:.1f}, edge fraction {edges:.2f}")

    for name in args.variants:
        guarded = name == "guarded"
        actor.load_state_dict(pretrained)
        grad_scale = fine_tune(actor, demos, args, guarded=guarded, spec=spec)
        score, edges = evaluate(env, actor, args.episodes)
        print(
            f"after {args.online_frames} online frames, {name} QSM: return {score:.1f}, edge fraction {edges:.2f}, "
            f"mean |grad_a Q| {grad_scale:.3g}"
        )


if __name__ == "__main__":
    main()
