"""The paper's gridworld reduction (Figure 2): QSM's fixed point as soft policy iteration.

QSM matched to ``Psi = alpha grad_a Q`` has the stationary policy ``pi(a|s) ~ exp(alpha Q(s, a))``
(paper eq. 20); on a finite MDP that is the update (eq. 21)::

    pi'(a|s) = exp(alpha Q^pi(s, a)) / sum_a' exp(alpha Q^pi(s, a'))

iterated with exact policy evaluation. On a single-goal gridworld this script plots the values and
mean moves of two iterates for alpha = 2, and the entropy of the converged policy for several
alpha (lower alpha, higher entropy).

    python examples/gridworld.py --out docs/gridworld.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])  # up, down, left, right


def transitions(size: int, goal: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``next_state[s, a]`` and ``reward[s, a]``: walls keep the agent in place; the goal is absorbing
    and pays 1 for every step that ends there."""
    n = size * size
    next_state = np.zeros((n, len(MOVES)), dtype=int)
    reward = np.zeros((n, len(MOVES)))
    goal_index = goal[0] * size + goal[1]
    for s in range(n):
        row, col = divmod(s, size)
        for a, (dr, dc) in enumerate(MOVES):
            r, c = min(max(row + dr, 0), size - 1), min(max(col + dc, 0), size - 1)
            next_state[s, a] = s if s == goal_index else r * size + c
            reward[s, a] = 1.0 if next_state[s, a] == goal_index else 0.0
    return next_state, reward


def evaluate(policy: np.ndarray, next_state: np.ndarray, reward: np.ndarray, gamma: float) -> np.ndarray:
    """``Q^pi`` exactly: solve ``V = r_pi + gamma P_pi V``, then ``Q = r + gamma V[next]``."""
    n = policy.shape[0]
    transition = np.zeros((n, n))
    for a in range(len(MOVES)):
        transition[np.arange(n), next_state[:, a]] += policy[:, a]
    value = np.linalg.solve(np.eye(n) - gamma * transition, (policy * reward).sum(1))
    return reward + gamma * value[next_state]


def soft_policy_iteration(alpha: float, next_state, reward, gamma: float, iterations: int) -> list[tuple]:
    """``[(policy, Q), ...]`` from the uniform policy, ``iterations`` updates of eq. 21."""
    policy = np.full(next_state.shape, 1.0 / len(MOVES))
    history = []
    for _ in range(iterations):
        q = evaluate(policy, next_state, reward, gamma)
        history.append((policy, q))
        logits = alpha * q
        policy = np.exp(logits - logits.max(1, keepdims=True))
        policy /= policy.sum(1, keepdims=True)
    return history


def entropy(policy: np.ndarray) -> float:
    """Mean over states of the policy's entropy (nats)."""
    return float(-(policy * np.log(np.clip(policy, 1e-12, None))).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1, 2, 5, 10, 20, 50])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--out", default="docs/gridworld.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    goal = (args.size // 2, args.size - 1)
    next_state, reward = transitions(args.size, goal)
    history = soft_policy_iteration(2.0, next_state, reward, args.gamma, args.iterations)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, k in zip(axes[:2], (1, 2)):
        policy, q = history[k]
        value = (policy * q).sum(1).reshape(args.size, args.size)
        ax.imshow(value, cmap="viridis")
        rows, cols = np.divmod(np.arange(args.size**2), args.size)
        # arrows: expected move under the policy (its mean direction)
        drift = policy @ MOVES
        ax.quiver(cols, rows, drift[:, 1], -drift[:, 0], color="white")
        ax.plot(goal[1], goal[0], "r*", markersize=15)
        ax.set_title(f"iterate {k} (alpha = 2): V^pi and mean move")
        ax.set_xticks([])
        ax.set_yticks([])
    entropies = []
    for alpha in args.alphas:
        converged, _ = soft_policy_iteration(alpha, next_state, reward, args.gamma, args.iterations)[-1]
        entropies.append(entropy(converged))
    axes[2].semilogx(args.alphas, entropies, "o-")
    axes[2].axhline(np.log(len(MOVES)), color="gray", linestyle="--", label="uniform policy")
    axes[2].set_xlabel("alpha")
    axes[2].set_ylabel("entropy of the converged policy (nats)")
    axes[2].set_title("lower alpha, higher entropy")
    axes[2].legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    for alpha, h in zip(args.alphas, entropies):
        print(f"alpha {alpha:>5}: converged policy entropy {h:.3f} nats")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
