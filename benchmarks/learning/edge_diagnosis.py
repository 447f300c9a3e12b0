"""Why a QSM policy's actions sit on the box edges: the chain, or the critic?

    python benchmarks/learning/edge_diagnosis.py outputs/learning/cheetah_run/qsm-auto_seed0   # its newest checkpoint

Loads a checkpoint of qsm.py (its actor and its critics), runs the actor for ``--episodes`` evaluation
episodes of ``--steps`` steps, and at the visited states asks the critics about each action component that
the chain put on an edge: is ``Q`` higher there than ``--inward`` further inside the box, the rest of the
action unchanged? A chain that oscillates to the edges (README, "The sampler's edge collapse") puts
components there whatever Q says; a chain that follows a critic whose maximum lies outside the box puts
them where Q is higher at the edge. Prints the edge fraction, the share of edge components the critics
prefer, the gain in Q of the edge over the inside, and the checkpoint's alpha (and curvature estimate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "sota-implementations" / "qsm"))
from torchrl_qsm import load_actor

from checkpoints import read_checkpoint
from config import saved_config
from utils import make_critic, make_eval_env, make_loss_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--inward", type=float, default=0.2, help="how far inside (in the [-1, 1] box) to compare")
    args = parser.parse_args()
    saved = read_checkpoint(args.checkpoint, components=("config", "trainer_state", "loss"))
    cfg = saved_config(saved)
    cfg.eval.episodes, cfg.eval.video = args.episodes, False
    actor = load_actor(args.checkpoint)
    env = make_eval_env(cfg)
    env.set_seed(0)
    loss, _ = make_loss_module(cfg, actor, make_critic(cfg, env, torch.device("cpu")))
    loss.load_state_dict(saved["state"]["loss"])
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        rollout = env.rollout(args.steps, actor, break_when_any_done=False)
    observation, action = rollout["observation"].reshape(-1, rollout["observation"].shape[-1]), rollout["action"]
    action = action.reshape(-1, action.shape[-1])
    low, high = env.action_spec_unbatched.space.low, env.action_spec_unbatched.space.high
    x = (action - (high + low) / 2) / ((high - low) / 2)  # the chain's [-1, 1] coordinates
    on_edge = x.abs() > 0.999

    def q(x_):
        a = (high + low) / 2 + x_ * (high - low) / 2
        return loss.state_action_value(TensorDict(observation=observation, action=a, batch_size=[len(a)])).squeeze(-1)

    q_here = q(x)
    prefer, gains = [], []
    for dim in range(x.shape[-1]):
        rows = on_edge[:, dim]
        if not rows.any():
            continue
        inside = x.clone()
        inside[:, dim] -= args.inward * x[:, dim].sign()
        gain = (q_here - q(inside))[rows]
        prefer.append((gain > 0).float())
        gains.append(gain)
    prefer, gains = torch.cat(prefer), torch.cat(gains)
    scale = q_here.abs().mean()
    print(
        f"{args.checkpoint}: frame {saved['frames']}, {len(x)} states; {100 * on_edge.float().mean():.0f}% of action "
        f"components on the edges; the critics prefer the edge to {args.inward} inside for "
        f"{100 * prefer.mean():.0f}% of them (median gain {gains.median():.3g}, |Q| {scale:.3g}: "
        f"{100 * gains.median() / scale:.2g}% of it)"
    )
    state = saved["state"]["loss"]
    if "log_alpha" in state:
        kappa = state["curvature_sum"] / state["curvature_weight"]
        print(f"alpha {state['log_alpha'].exp():.3g} (auto), curvature estimate {kappa:.3g}")
    else:
        print(f"alpha {cfg.diffusion.alpha} (fixed)")


if __name__ == "__main__":
    main()
