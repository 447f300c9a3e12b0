"""``BestOfNActor``: N samples of a stochastic actor, the one a critic ranks highest."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase


class BestOfNActor(TensorDictModuleBase):
    """Draws ``num_samples`` actions per state from ``actor`` and keeps the one ``critic`` ranks highest.

    ``a = argmax_{a_1..a_N ~ pi(.|s)} Q(s, a_i)``: a greedier policy than one chain sample, with no
    training of its own (the critic's ranking of the diffusion policy's samples; cf. the
    "best-of-N" action selection of diffusion-policy RL methods such as IDQL). It reads and writes
    the actor's keys, so it drops in wherever the actor does (a rollout, an evaluation); the
    actor's exploration type applies to each sample (``RANDOM`` for a chain sample: under
    ``DETERMINISTIC`` the N samples coincide).

    Args:
        actor: a ``TensorDictModule`` with one in_key (the observation) and one out_key (the action).
        critic: ``Q(s, a)``: a callable from a tensordict holding the actor's in_key and out_key to a
            tensor ``[*B, 1]``, e.g. :meth:`QSMLoss.state_action_value
            <torchrl_qsm.QSMLoss.state_action_value>` or ``lambda td: value_operator(td)["state_action_value"]``.
        num_samples: ``N >= 1``.
    """

    def __init__(
        self, actor: TensorDictModule, critic: Callable[[TensorDictBase], torch.Tensor], num_samples: int
    ) -> None:
        super().__init__()
        if len(actor.in_keys) != 1 or len(actor.out_keys) != 1:
            raise TypeError(
                f"BestOfNActor needs an actor with one in_key and one out_key, got in_keys={actor.in_keys}, "
                f"out_keys={actor.out_keys}."
            )
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.actor, self.critic, self.num_samples = actor, critic, num_samples
        self.in_keys, self.out_keys = list(actor.in_keys), list(actor.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        (obs_key,), (action_key,) = self.in_keys, self.out_keys
        observation = tensordict.get(obs_key)
        batch = tensordict.batch_size
        samples = tensordict.empty().select().expand(self.num_samples, *batch).clone()  # [N, *B], no entries
        samples.set(obs_key, observation.expand(self.num_samples, *observation.shape))
        samples = self.actor(samples)
        q = self.critic(samples)  # [N, *B, 1]
        actions = samples.get(action_key)  # [N, *B, A]
        best = q.argmax(0, keepdim=True).expand(1, *actions.shape[1:])
        return tensordict.set(action_key, actions.gather(0, best).squeeze(0))
