"""BestOfNActor: N samples of the actor, the one the critic ranks highest (eval.best_of_n)."""

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ValueOperator

from torchrl_qsm import BestOfNActor, QSMLoss

from _helpers import ACTION_DIM, make_actor, make_critic, OBS_DIM


class FavoursPositiveActions(nn.Module):
    def forward(self, observation, action):
        return action.sum(-1, keepdim=True)


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_best_of_n_keeps_the_sample_the_critic_ranks_highest(batch):
    actor = make_actor()
    critic = ValueOperator(FavoursPositiveActions(), in_keys=["observation", "action"])
    best = BestOfNActor(actor, lambda td: critic(td)["state_action_value"], num_samples=64)
    observation = torch.randn(*batch, OBS_DIM)
    with set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(0)
        out = best(TensorDict(observation=observation, batch_size=batch))
        torch.manual_seed(0)  # the same 64 chain samples, drawn as one batch of [64, *batch]
        samples = actor(TensorDict(observation=observation.expand(64, *observation.shape), batch_size=[64, *batch]))
    expected = (
        samples["action"]
        .gather(
            0, samples["action"].sum(-1, keepdim=True).argmax(0, keepdim=True).expand(1, *samples["action"].shape[1:])
        )
        .squeeze(0)
    )
    assert out["action"].shape == (*batch, ACTION_DIM)
    torch.testing.assert_close(out["action"], expected)
    assert (out["action"].sum(-1) > samples["action"].sum(-1).quantile(0.9, dim=0)).all()


def test_best_of_n_ranks_with_the_loss_critics_and_refuses_bad_options():
    loss = QSMLoss(make_actor(), make_critic())
    best = BestOfNActor(loss.actor_network, loss.state_action_value, num_samples=3)
    assert best.in_keys == ["observation"] and best.out_keys == ["action"]
    data = TensorDict(observation=torch.randn(5, OBS_DIM), batch_size=[5])
    with set_exploration_type(ExplorationType.RANDOM):
        assert best(data)["action"].shape == (5, ACTION_DIM)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        BestOfNActor(loss.actor_network, loss.state_action_value, num_samples=0)
