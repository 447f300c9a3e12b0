"""DiffusionActor: a TorchRL TensorDictModule sampling a clipped DDPM chain inside the action spec."""

import copy
import pickle

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import AdditiveGaussianModule

from torchrl_qsm import DiffusionActor, DiffusionPolicy
from torchrl_qsm.contract import diffusion_policy

from _helpers import ACTION_DIM, box, make_actor, OBS_DIM


def observations(batch):
    return TensorDict(observation=torch.randn(*batch, OBS_DIM), batch_size=batch)


@pytest.mark.parametrize("batch", [(), (7,), (2, 3)])
def test_any_leading_batch_shape(batch):
    actor = make_actor()
    assert actor(observations(batch))["action"].shape == (*batch, ACTION_DIM)


@pytest.mark.parametrize("bound", [1.0, 2.0])
def test_actions_fill_the_spec_box_and_stay_inside(bound):
    actor = make_actor(bound=bound)
    action = actor(observations((4096,)))["action"]
    assert action.abs().max() <= bound
    # an untrained chain spreads over the whole box, edges included: the mapping reaches the bounds
    assert action.abs().max().item() == pytest.approx(bound)


def test_asymmetric_bounds_map_the_chain_box_affinely():
    spec = Bounded(torch.tensor([0.0, -3.0]), torch.tensor([1.0, 5.0]), (2,))
    actor = DiffusionActor(2, OBS_DIM, spec=spec, hidden_sizes=(16,))
    policy = actor.module
    corners = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(policy.denormalize(corners), torch.tensor([[0.0, -3.0], [1.0, 5.0], [0.5, 1.0]]))
    torch.testing.assert_close(policy.normalize(policy.denormalize(corners)), corners)
    action = actor(observations((2048,)))["action"]
    assert spec.is_in(action)


def test_random_exploration_samples_differ():
    actor = make_actor()
    td = observations((16,))
    with set_exploration_type(ExplorationType.RANDOM):
        a, b = actor(td.clone())["action"], actor(td.clone())["action"]
    assert not torch.allclose(a, b)


def test_deterministic_exploration_is_the_noise_free_chain_from_a_zero_latent():
    actor = make_actor()
    td = observations((16,))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a, b = actor(td.clone())["action"], actor(td.clone())["action"]
    torch.testing.assert_close(a, b)
    policy: DiffusionPolicy = actor.module
    x = torch.zeros(16, ACTION_DIM)
    denoise = policy.denoiser(td["observation"])
    for t in reversed(range(policy.num_steps)):
        alpha, alpha_bar = policy.alphas[t], policy.alphas_cumprod[t]
        x = (x - (1 - alpha) / (1 - alpha_bar).sqrt() * denoise(x, t)) / alpha.sqrt()
        x = x.clamp(-1, 1)
    torch.testing.assert_close(a, policy.denormalize(x))


def test_temperature_zero_removes_step_noise_but_keeps_the_random_latent():
    actor = make_actor(temperature=0.0)
    td = observations((16,))
    torch.manual_seed(3)
    a = actor(td.clone())["action"]
    torch.manual_seed(3)
    b = actor(td.clone())["action"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, actor(td.clone())["action"])


def test_module_offers_the_torchrl_diffusion_actor_contract():
    actor = make_actor(num_steps=7, bound=2.0)
    module = actor.module
    assert module.num_steps == 7
    assert module.alphas_cumprod.shape == (7,)
    action = box(bound=2.0).rand((10,))
    t = torch.randint(0, 7, (10,))
    noised, eps = module.add_noise(action, t)
    assert noised.shape == eps.shape == action.shape
    ab = module.alphas_cumprod[t].unsqueeze(-1)
    torch.testing.assert_close(noised, ab.sqrt() * action / 2 + (1 - ab).sqrt() * eps)  # in the [-1, 1] box
    x = torch.cat([noised, torch.randn(10, OBS_DIM), t.float().unsqueeze(-1)], -1)
    assert module.score_network(x).shape == (10, ACTION_DIM)


def test_a_custom_score_network_takes_the_concatenated_layout_and_gets_the_whole_contract():
    net = torch.nn.Linear(ACTION_DIM + OBS_DIM + 1, ACTION_DIM)
    actor = DiffusionActor(ACTION_DIM, score_network=net, spec=box())
    assert actor(observations((4,)))["action"].shape == (4, ACTION_DIM)
    policy = actor.module
    assert diffusion_policy(policy) is policy  # it offers the whole contract itself
    x_t, obs, t = torch.randn(6, ACTION_DIM), torch.randn(6, OBS_DIM), torch.randint(0, 5, (6,))
    by_contract = policy.predict_noise(x_t, obs, t)
    torch.testing.assert_close(by_contract, net(torch.cat([x_t, obs, t.float().unsqueeze(-1)], -1)))
    torch.testing.assert_close(policy.denoiser(obs)(x_t, 3), net(torch.cat([x_t, obs, torch.full((6, 1), 3.0)], -1)))


def test_a_network_s_own_predict_noise_and_denoiser_are_used_whatever_its_class():
    # any network offering num_steps, predict_noise and denoiser is called through them
    calls = []

    class Recorded(torch.nn.Linear):
        num_steps = 5

        def predict_noise(self, x_t, observation, t):
            calls.append("predict_noise")
            return self(torch.cat([x_t, observation, t.float().unsqueeze(-1)], -1))

        def denoiser(self, observation):
            calls.append("denoiser")
            return lambda x_t, t: self(torch.cat([x_t, observation, torch.full_like(x_t[..., :1], t)], -1))

    actor = DiffusionActor(ACTION_DIM, score_network=Recorded(ACTION_DIM + OBS_DIM + 1, ACTION_DIM), spec=box())
    actor(observations((4,)))
    actor.module.predict_noise(torch.randn(2, ACTION_DIM), torch.randn(2, OBS_DIM), torch.zeros(2, dtype=torch.long))
    assert calls == ["denoiser", "predict_noise"]


def test_how_the_network_is_called_is_settled_when_the_actor_is_built():
    # a plain network is asked for the step-conditioned members once, at construction, not at every call
    asked = []

    class Plain(torch.nn.Linear):
        def __getattr__(self, name):
            if name in ("num_steps", "predict_noise", "denoiser"):
                asked.append(name)
            return super().__getattr__(name)

    actor = DiffusionActor(ACTION_DIM, score_network=Plain(ACTION_DIM + OBS_DIM + 1, ACTION_DIM), spec=box())
    assert asked
    asked.clear()
    actor(observations((4,)))
    actor.module.predict_noise(torch.randn(2, ACTION_DIM), torch.randn(2, OBS_DIM), torch.zeros(2, dtype=torch.long))
    assert asked == []


def test_code_written_for_torchrl_s_diffusion_actor_runs_unchanged():
    from torchrl.modules import DiffusionActor as TorchRLDiffusionActor

    # TorchRL's docstring example: obs_dim is inferred from the first observation
    actor = DiffusionActor(action_dim=2, num_steps=10)
    assert actor(TensorDict({"observation": torch.randn(4, 3)}, batch_size=[4]))["action"].shape == (4, 2)
    # the whole positional head of TorchRL's signature, then its keyword spec
    head = (2, 3, None, 10, 1e-4, 0.02, ["obs"], ["act"])
    spec = Bounded(-torch.ones(2), torch.ones(2), (2,))
    ours, theirs = DiffusionActor(*head, spec=spec), TorchRLDiffusionActor(*head, spec=spec)
    assert ours.in_keys == theirs.in_keys == ["obs"] and ours.out_keys == theirs.out_keys == ["act"]
    torch.testing.assert_close(ours.module.betas, theirs.module.betas)  # beta_start/end: TorchRL's linear schedule
    assert ours.module.num_steps == theirs.module.num_steps == 10
    td = TensorDict(obs=torch.randn(5, 3), batch_size=[5])
    assert ours(td.clone())["act"].shape == theirs(td.clone())["act"].shape == (5, 2)
    # TorchRL's module contract, as DiffusionBCLoss uses it
    t = torch.randint(0, 10, (5,))
    noisy, eps = ours.module.add_noise(spec.rand((5,)), t)
    assert ours.module.score_network(torch.cat([noisy, td["obs"], t.float().unsqueeze(-1)], -1)).shape == (5, 2)


def test_custom_keys():
    actor = DiffusionActor(ACTION_DIM, OBS_DIM, in_keys=[("agent", "obs")], out_keys=[("agent", "act")], spec=box())
    td = TensorDict({("agent", "obs"): torch.randn(4, OBS_DIM)}, [4])
    assert actor(td)["agent", "act"].shape == (4, ACTION_DIM)
    assert isinstance(actor.spec, Composite) and ("agent", "act") in actor.spec.keys(True)


def test_paper_exploration_composes_with_additive_gaussian_and_is_off_in_evaluation():
    actor = make_actor(bound=1.0)
    policy = TensorDictSequential(actor, AdditiveGaussianModule(box(), sigma_init=0.1, sigma_end=0.1))
    td = observations((4096,))
    with set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(5)
        bare = actor(td.clone())["action"]
        torch.manual_seed(5)
        explored = policy(td.clone())["action"]
    assert box().is_in(explored)
    inside = bare.abs() < 0.5  # away from the edges, the noise is not clipped
    assert (explored - bare)[inside].std().item() == pytest.approx(0.1, rel=0.1)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(policy(td.clone())["action"], actor(td.clone())["action"])


def test_actor_pickles_and_deep_copies():
    actor = make_actor()
    for clone in (pickle.loads(pickle.dumps(actor)), copy.deepcopy(actor)):
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = observations((3,))
            torch.testing.assert_close(clone(td.clone())["action"], actor(td.clone())["action"])


def test_schedule_and_bounds_are_buffers_that_travel_with_the_weights():
    actor = make_actor(bound=2.0)
    names = dict(actor.named_buffers())
    assert {"module.action_loc", "module.action_scale", "module.schedule.alphas_cumprod"} <= set(names)


def test_bad_specs_and_sizes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="must be Bounded, got Unbounded"):
        DiffusionActor(ACTION_DIM, OBS_DIM, spec=Unbounded(ACTION_DIM))
    with pytest.raises(ValueError, match="action_dim=4 disagrees with the action spec"):
        DiffusionActor(4, OBS_DIM, spec=box())
    inf = Bounded(-torch.ones(ACTION_DIM), torch.full((ACTION_DIM,), float("inf")), (ACTION_DIM,))
    with pytest.raises(ValueError, match="finite"):
        DiffusionActor(ACTION_DIM, OBS_DIM, spec=inf)
    with pytest.raises(ValueError, match="num_steps"):
        DiffusionActor(ACTION_DIM, OBS_DIM, num_steps=0)
    with pytest.raises(ValueError, match="one observation"):
        DiffusionActor(ACTION_DIM, OBS_DIM, in_keys=["a", "b"])
    with pytest.raises(ValueError, match="temperature .* finite"):
        DiffusionActor(ACTION_DIM, OBS_DIM, temperature=float("nan"))
    with pytest.raises(ValueError, match="beta_start set the linear schedule; schedule='vp' takes none"):
        DiffusionActor(ACTION_DIM, OBS_DIM, beta_start=1e-3, schedule="vp")


def test_no_spec_means_the_unit_box():
    actor = DiffusionActor(ACTION_DIM, OBS_DIM)
    torch.testing.assert_close(actor.spec["action"].space.high, torch.ones(ACTION_DIM))


@pytest.mark.parametrize("mode", [ExplorationType.DETERMINISTIC, ExplorationType.RANDOM])
def test_sampler_traces_as_one_graph(mode):
    # fullgraph=True fails on any graph break (data-dependent branch, .item(), ...); the eager
    # backend checks the trace without paying for code generation.
    policy = make_actor().module
    obs = torch.randn(8, OBS_DIM)
    compiled = torch.compile(policy, fullgraph=True, backend="eager")
    with set_exploration_type(mode):
        torch.manual_seed(0)
        expected = policy(obs)
        torch.manual_seed(0)
        torch.testing.assert_close(compiled(obs), expected, rtol=1e-4, atol=1e-5)


def test_gradients_flow_through_the_whole_chain_to_every_parameter():
    # what a Diffusion-QL style loss (e.g. TorchRL's TD3Loss on this actor) back-propagates through
    actor = make_actor()
    with set_exploration_type(ExplorationType.RANDOM):
        actor(observations((16,)))["action"].pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())


def test_sample_chain_and_its_log_probability_give_a_policy_gradient():
    actor = make_actor(num_steps=4)
    policy = actor.module
    obs = torch.randn(32, OBS_DIM)
    with set_exploration_type(ExplorationType.RANDOM):
        action, chain = policy.sample_chain(obs)
    assert action.shape == (32, ACTION_DIM) and chain.shape == (5, 32, ACTION_DIM)
    torch.testing.assert_close(policy.normalize(action), chain[-1].clamp(-1, 1))
    log_prob = policy.chain_log_prob(obs, chain)
    assert log_prob.shape == (32,) and torch.isfinite(log_prob).all()
    (-(log_prob * torch.randn(32)).mean()).backward()  # a REINFORCE-style surrogate
    assert all(p.grad is not None for p in actor.module.score_network.body.parameters())
