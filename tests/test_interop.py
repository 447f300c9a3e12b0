"""Our actor inside TorchRL's tools, and TorchRL's actor inside our loss."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import Composite
from torchrl.modules import DiffusionActor as TorchRLDiffusionActor
from torchrl.modules import SafeModule
from torchrl.objectives import DiffusionBCLoss, SoftUpdate

from torchrl_qsm import DiffusionActor, QSMLoss

from _helpers import ACTION_DIM, box, make_actor, make_batch, make_critic, OBS_DIM, script_module


def test_torchrl_diffusion_bc_loss_trains_our_actor():
    actor = make_actor(bound=2.0, hidden_sizes=(64, 64))
    loss = DiffusionBCLoss(actor)
    data = TensorDict(observation=torch.randn(128, OBS_DIM), action=box(bound=2.0).rand((128,)), batch_size=[128])
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-3)
    values = []
    for step in range(60):
        torch.manual_seed(step % 4)  # a fixed set of (t, eps) draws, so the trend is not noise
        value = loss(data)["loss_diffusion_bc"]
        optimizer.zero_grad()
        value.backward()
        if step == 0:
            trainable = [p for p in actor.parameters()]
            assert all(p.grad is not None for p in trainable)
        optimizer.step()
        values.append(value.item())
    assert sum(values[-4:]) < 0.7 * sum(values[:4])


def test_qsm_loss_trains_torchrl_s_own_diffusion_actor():
    actor = TorchRLDiffusionActor(ACTION_DIM, OBS_DIM, num_steps=5, spec=box())
    loss = QSMLoss(actor, make_critic())  # bounds from the actor's spec
    SoftUpdate(loss, tau=0.005)
    out = loss(make_batch((16,)))
    (out["loss_actor"] + out["loss_qvalue"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    # TorchRL's actor has no bounds: the loss clips next actions with its own
    spec_free = TorchRLDiffusionActor(ACTION_DIM, OBS_DIM, num_steps=5)
    loss = QSMLoss(spec_free, make_critic(), bounds=(-0.5, 0.5))
    with torch.no_grad():
        assert loss._next_action(make_batch((64,))["next"]).abs().max() <= 0.5
    with pytest.raises(ValueError, match="needs the action bounds"):
        QSMLoss(spec_free, make_critic())


@pytest.mark.slow
def test_our_actor_collects_on_dm_control_cheetah_run():
    env = script_module("utils").make_env("cheetah", "run")  # the training script's DMC env
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_spec = env.action_spec
    actor = DiffusionActor(action_spec.shape[-1], obs_dim, spec=action_spec, hidden_sizes=(32, 32))
    collector = Collector(env, actor, frames_per_batch=50, total_frames=100)
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2 and batches[0].numel() == 50
    action = batches[0]["action"]
    assert action.shape == (50, 6) and action_spec.is_in(action)
    assert torch.isfinite(batches[0]["next", "reward"]).all()


class LinearGaussianPolicy(torch.nn.Module):
    """A diffusion policy written from the contract alone (no torchrl_qsm class): eps = W [x_t, s, t]."""

    num_steps = 3

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(ACTION_DIM + OBS_DIM + 1, ACTION_DIM)
        self.register_buffer("alphas_cumprod", torch.tensor([0.9, 0.5, 0.1]))
        self.calls = []

    def normalize(self, action):
        return action

    def denormalize(self, x):
        return x

    def add_noise(self, action, t, noise=None):
        noise = torch.randn_like(action) if noise is None else noise
        alpha_bar = self.alphas_cumprod[t].unsqueeze(-1)
        return alpha_bar.sqrt() * action + (1 - alpha_bar).sqrt() * noise, noise

    def predict_noise(self, x_t, observation, t):
        self.calls.append("predict_noise")
        return self.net(torch.cat([x_t, observation, t.float().unsqueeze(-1)], -1))

    def denoiser(self, observation):
        return lambda x_t, t: self.net(torch.cat([x_t, observation, torch.full_like(x_t[..., :1], t)], -1))

    def forward(self, observation):
        x = torch.randn(*observation.shape[:-1], ACTION_DIM)
        denoise = self.denoiser(observation)
        for t in reversed(range(self.num_steps)):
            x = (x - 0.1 * denoise(x, t)).clamp(-1, 1)
        return x


def test_qsm_loss_trains_any_module_that_offers_the_diffusion_policy_contract():
    policy = LinearGaussianPolicy()
    actor = SafeModule(policy, in_keys=["observation"], out_keys=["action"], spec=Composite(action=box()))
    loss = QSMLoss(actor, make_critic())
    SoftUpdate(loss, tau=0.005)
    out = loss(make_batch((16,)))
    (out["loss_actor"] + out["loss_qvalue"]).backward()
    assert policy.calls == ["predict_noise", "predict_noise"]  # the first-call size probe, then the loss
    assert policy.net.weight.grad is not None and policy.net.weight.grad.abs().sum() > 0


def test_qsm_loss_settles_the_contract_once_when_built(monkeypatch):
    import torchrl_qsm.objectives.qsm as qsm

    resolved = []
    resolve = qsm.diffusion_policy
    monkeypatch.setattr(qsm, "diffusion_policy", lambda module: resolved.append(module) or resolve(module))
    actor = TorchRLDiffusionActor(ACTION_DIM, OBS_DIM, num_steps=5, spec=box())
    loss = QSMLoss(actor, make_critic())
    SoftUpdate(loss, tau=0.005)
    for _ in range(2):
        loss(make_batch((8,)))
    assert resolved == [actor.module]
