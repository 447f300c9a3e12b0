"""A straightforward eager QSM update, written with plain torch ops from the paper's Algorithm 1 and the
authors' code (Alescontrela/score_matching_rl, ``jaxrl5/agents/score_matching/score_matching_learner.py``).

It serves two purposes:

- an independent statement of the mathematics: ``tests/test_reference_update.py`` checks that
  :class:`~torchrl_qsm.QSMLoss` gives the same losses and gradients on the same batch and seed;
- the baseline "straightforward eager update" of ``benchmarks/update_speed.py`` (a Python loop over
  critics, ``torch.autograd.grad``, the eps-network called on ``cat([a_t, s, t])`` at every step).

It reads the weights of a ``QSMLoss`` (so both start identical) but shares no code path with it
beyond the eps-network's forward.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from torchrl_qsm import QSMLoss


def _critic_params(params) -> list[dict[str, torch.Tensor]]:
    """Per-critic ``{name: tensor}`` for ``functional_call`` on the critic's inner module."""
    flat = params.flatten_keys(".")
    return [{key.removeprefix("module."): value[i] for key, value in flat.items()} for i in range(flat.batch_size[0])]


class ReferenceQSM:
    """``losses(batch)`` returns ``(loss_actor, loss_qvalue)`` as Algorithm 1 and the authors' code state them.

    Draws random numbers in the same order as ``QSMLoss.forward`` (critic step: the chain's latent and
    step noises, then the smoothing noise; actor step: ``t``, then ``eps``), so that both agree on a seed.
    """

    def __init__(self, loss: QSMLoss, gamma: float = 0.99) -> None:
        self.loss = loss
        self.policy = loss.actor_network.module
        self.critic = loss.qvalue_network.module
        self.gamma = gamma

    def q(self, params: dict, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return functional_call(self.critic, params, (torch.cat([observation, action], -1),))

    def chain_sample(self, observation: torch.Tensor) -> torch.Tensor:
        policy, schedule = self.policy, self.policy.schedule
        T = policy.num_steps
        noise = torch.randn(T + 1, *observation.shape[:-1], policy.action_dim, device=observation.device)
        x = noise[0]
        for t in reversed(range(T)):
            step = torch.full_like(observation[..., :1], t)
            eps = policy.score_network(torch.cat([x, observation, step], -1))
            alpha_t, alpha_bar_t = schedule.alphas[t], schedule.alphas_cumprod[t]
            x = (x - (1 - alpha_t) / (1 - alpha_bar_t).sqrt() * eps) / alpha_t.sqrt()
            if t > 0:
                x = x + schedule.betas[t].sqrt() * policy.temperature * noise[t + 1]
            x = x.clamp(-1, 1)
        return policy.denormalize(x)

    def losses(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        loss, policy = self.loss, self.policy
        observation, action = batch["observation"], batch["action"]
        reward, terminated = batch["next", "reward"], batch["next", "terminated"].float()
        online = _critic_params(loss.qvalue_network_params)
        target = _critic_params(loss.target_qvalue_network_params)

        # critics: y = r + gamma (1 - terminated) min_i Q'_i(s', a'), a' a fresh chain sample + noise
        with torch.no_grad():
            next_action = self.chain_sample(batch["next", "observation"])
            next_action = next_action + torch.randn_like(next_action) * loss.policy_noise
            next_action = torch.maximum(torch.minimum(next_action, loss.max_action), loss.min_action)
            next_q = torch.stack([self.q(p, batch["next", "observation"], next_action) for p in target]).min(0).values
            y = reward + self.gamma * (1 - terminated) * next_q
        loss_qvalue = sum(((self.q(p, observation, action) - y) ** 2).mean() for p in online)

        # actor: eps_theta(a_t, s, t) regressed on -alpha * mean_i grad_a Q_i(s, a_t)
        t = torch.randint(0, policy.num_steps, action.shape[:-1], device=action.device)
        alpha_bar = policy.schedule.alphas_cumprod[t].unsqueeze(-1)
        x0 = policy.normalize(action)
        noised = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * torch.randn_like(x0)
        x = noised.detach().requires_grad_()
        detached = [{k: v.detach() for k, v in p.items()} for p in online]
        q_mean = torch.stack([self.q(p, observation, policy.denormalize(x)) for p in detached]).mean(0)
        (grad_q,) = torch.autograd.grad(q_mean.sum(), x)
        eps_pred = policy.score_network(torch.cat([noised, observation, t.float().unsqueeze(-1)], -1))
        loss_actor = ((eps_pred + loss.alpha * grad_q) ** 2).mean()
        return loss_actor, loss_qvalue
