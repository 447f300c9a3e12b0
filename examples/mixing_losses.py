"""One DiffusionActor, three ways to train it, and what each costs per update.

- ``qsm``: QSMLoss. The eps-network is evaluated once per sample at a noised replay action and
  regressed on -alpha grad_a Q: one forward and one backward of the eps-network, whatever T is.
- ``diffusion-ql``: TorchRL's TD3Loss on the same actor, i.e. maximise Q(s, pi(s)) by
  back-propagating through the whole T-step chain (Diffusion-QL style; TD3's target actor runs the
  chain again for the TD target). Cost and memory grow with T, and gradients pass through T
  compositions of the network and the clipping.
- ``qsm+bc``: QSMLoss's actor term plus ``bc_weight`` x TorchRL's DiffusionBCLoss on the batch's
  actions (for offline-to-online use): one more eps-network forward and backward.

    python examples/mixing_losses.py                 # DMC cheetah-run shapes, widths 256, T = 5 and 20
    python examples/mixing_losses.py --updates 3 --num-steps 5   # a quick check

Prints ms per update (median over rounds, round-robin in one process) and the ratio to QSM.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import DiffusionBCLoss, SoftUpdate, TD3Loss

from torchrl_qsm import DiffusionActor, QSMLoss

OBS_DIM, ACTION_DIM, BATCH = 17, 6, 256
SPEC = Bounded(-torch.ones(ACTION_DIM), torch.ones(ACTION_DIM), (ACTION_DIM,))


def batch() -> TensorDict:
    return TensorDict(
        {
            "observation": torch.randn(BATCH, OBS_DIM),
            "action": SPEC.rand((BATCH,)),
            ("next", "observation"): torch.randn(BATCH, OBS_DIM),
            ("next", "reward"): torch.randn(BATCH, 1),
            ("next", "done"): torch.zeros(BATCH, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(BATCH, 1, dtype=torch.bool),
        },
        [BATCH],
    )


def critic(width: int) -> ValueOperator:
    return ValueOperator(MLP(OBS_DIM + ACTION_DIM, 1, num_cells=[width, width]), in_keys=["observation", "action"])


def make_update(name: str, num_steps: int, width: int, bc_weight: float):
    """``update(batch) -> float`` (the actor's loss) for one training recipe."""
    actor = DiffusionActor(ACTION_DIM, OBS_DIM, num_steps=num_steps, spec=SPEC, hidden_sizes=(width, width))
    if name == "diffusion-ql":
        loss = TD3Loss(actor, critic(width), action_spec=SPEC, loss_function="l2")
    else:
        loss = QSMLoss(actor, critic(width))
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    bc = DiffusionBCLoss(actor) if name == "qsm+bc" else None
    optimizer = torch.optim.Adam([p for p in loss.parameters() if p.requires_grad], lr=3e-4)

    def update(data: TensorDict) -> float:
        out = loss(data)
        total = out["loss_actor"] + out["loss_qvalue"]
        if bc is not None:
            total = total + bc_weight * bc(data)["loss_diffusion_bc"]
        total.backward()
        optimizer.step()
        optimizer.zero_grad()
        updater.step()
        return out["loss_actor"].item()

    return update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-steps", type=int, nargs="+", default=[5, 20], help="T of the chain")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--updates", type=int, default=30, help="updates per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bc-weight", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = [batch() for _ in range(args.updates)]
    print(
        f"widths {args.width}, batch {BATCH}, {torch.get_num_threads()} threads; "
        f"ms per update (median of {args.rounds} rounds)"
    )
    print(f"{'T':>3} {'recipe':<14}{'ms/update':>10}{'x QSM':>8}")
    for num_steps in args.num_steps:
        updates = {
            name: make_update(name, num_steps, args.width, args.bc_weight) for name in ("qsm", "diffusion-ql", "qsm+bc")
        }
        times = {name: [] for name in updates}
        for _ in range(args.rounds):
            for name, update in updates.items():
                start = time.perf_counter()
                for b in data:
                    update(b.clone())
                times[name].append((time.perf_counter() - start) / len(data))
        qsm = statistics.median(times["qsm"])
        for name, t in times.items():
            print(f"{num_steps:>3} {name:<14}{1e3 * statistics.median(t):>10.2f}{statistics.median(t) / qsm:>8.2f}")


if __name__ == "__main__":
    main()
