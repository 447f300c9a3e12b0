"""Multimodality (the paper's Figure 4): QSM against TorchRL's SAC on a bandit with two equal optima.

One state, a 1-D action in [-1, 1] and the reward ``r(a) = -16 (a^2 - 0.25)^2``: two equal maxima, at
a = -0.5 and a = +0.5, and a dip of -1 between them. Both agents learn from the same data, uniformly
random actions (episodes of one step, so Q = r), so that only the policy class differs; the script
plots a histogram of actions each policy samples at the state and reports the share of samples near
each maximum.

    python examples/multimodal_bandit.py --out docs/multimodal_bandit.png

QSM's fixed point is pi(a) ~ exp(alpha Q(a)): two modes. SAC's tanh-Gaussian has one mode; it has to
pick a side or sit between. The QSM agent uses the normalised target (``normalize_grad``, README
"The sampler's edge collapse"): the reward's curvature is 8 at its maxima, where the faithful target
with alpha 50 would drive the chain to the edges of the box. T = 20: with 5 steps the trained chain
sits at the edge of its stable range on this reward (tests/test_learning.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_qsm import DiffusionActor, QSMLoss

SPEC = Bounded(-torch.ones(1), torch.ones(1), (1,))
MAXIMA = (-0.5, 0.5)


def reward(action: torch.Tensor) -> torch.Tensor:
    return -16 * (action.pow(2) - 0.25).pow(2)


def critic() -> ValueOperator:
    return ValueOperator(MLP(2, 1, num_cells=[64, 64]), in_keys=["observation", "action"])


def qsm_agent(num_steps: int, alpha: float):
    actor = DiffusionActor(1, 1, num_steps=num_steps, spec=SPEC, hidden_sizes=(64, 64))
    return actor, QSMLoss(actor, critic(), alpha=alpha, normalize_grad=True)


def sac_agent():
    net = nn.Sequential(MLP(1, 2, num_cells=[64, 64]), NormalParamExtractor())
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        spec=SPEC,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
        default_interaction_type=InteractionType.RANDOM,
    )
    return actor, SACLoss(actor, critic(), num_qvalue_nets=2)


def sample(actor, n: int) -> torch.Tensor:
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        return actor(TensorDict(observation=torch.zeros(n, 1), batch_size=[n]))["action"].squeeze(-1)


def train(loss, updates: int, batch: int = 256) -> None:
    """One update per batch of fresh uniformly random actions and their rewards."""
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    optimizer = torch.optim.Adam([p for p in loss.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(updates):
        action = SPEC.rand((batch,))
        data = TensorDict(
            {
                "observation": torch.zeros(batch, 1),
                "action": action,
                ("next", "observation"): torch.zeros(batch, 1),
                ("next", "reward"): reward(action),
                ("next", "done"): torch.ones(batch, 1, dtype=torch.bool),
                ("next", "terminated"): torch.ones(batch, 1, dtype=torch.bool),
            },
            [batch],
        )
        out = loss(data)
        sum(value for key, value in out.items() if key.startswith("loss_")).backward()
        optimizer.step()
        optimizer.zero_grad()
        updater.step()


def mode_shares(action: torch.Tensor, width: float = 0.25) -> dict[str, float]:
    shares = {f"near {m:+.1f}": ((action - m).abs() < width).float().mean().item() for m in MAXIMA}
    shares["on the edges"] = (action.abs() > 0.999).float().mean().item()
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--num-steps", type=int, default=20, help="T of the QSM chain")
    parser.add_argument("--alpha", type=float, default=1.0, help="QSM's target magnitude (normalised)")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/multimodal_bandit.png")
    args = parser.parse_args()

    results = {}
    for name, make in (("QSM", lambda: qsm_agent(args.num_steps, args.alpha)), ("SAC", sac_agent)):
        torch.manual_seed(args.seed)
        actor, loss = make()
        train(loss, args.updates)
        results[name] = sample(actor, args.samples)
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in mode_shares(results[name]).items())
        print(f"{name}: {shares}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    grid = torch.linspace(-1, 1, 201)
    for ax, (name, action) in zip(axes, results.items()):
        ax.hist(action.numpy(), bins=80, range=(-1, 1), density=True, alpha=0.7, label=f"{name} samples")
        twin = ax.twinx()
        twin.plot(grid, reward(grid), color="black", label="reward")
        twin.set_yticks([])
        ax.set_title(f"{name}: actions at the state ({len(action)} samples)")
        ax.set_xlabel("action")
    axes[0].set_ylabel("density")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
