"""QSMLoss: the TorchRL loss contract (TD3's test checklist) and the paper's two regressions."""

import re

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Unbounded
from torchrl.data.postprocs import MultiStep
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ValueOperator
from torchrl.objectives import SoftUpdate, ValueEstimators

from torchrl_qsm import CurvatureAlpha, NonFiniteError, QSMLoss

from _helpers import (
    ACTION_DIM,
    box,
    exact_posterior_noise,
    make_actor,
    make_batch,
    make_critic,
    OBS_DIM,
    pin_critics,
)


def make_loss(**kwargs):
    actor_kwargs = kwargs.pop("actor_kwargs", {})
    return QSMLoss(make_actor(**actor_kwargs), kwargs.pop("critic", None) or make_critic(), **kwargs)


def grads(params):
    """The gradients of the trainable entries (the params also hold buffers: schedule, bounds)."""
    return {k: v.grad for k, v in params.items(True, True) if v.requires_grad}


# --- the two regressions, written out by hand --------------------------------------------------
def test_actor_loss_regresses_eps_on_minus_alpha_mean_critic_gradient_at_the_noised_action():
    loss = make_loss(alpha=3.0)
    data = make_batch((16,))
    module = loss.actor_network.module
    t, eps = torch.randint(0, module.num_steps, (16,)), torch.randn(16, ACTION_DIM)
    actual, _ = loss.actor_loss(data, t=t, noise=eps)

    alpha_bar = module.alphas_cumprod[t].unsqueeze(-1)
    noised = alpha_bar.sqrt() * data["action"] + (1 - alpha_bar).sqrt() * eps  # the box is [-1, 1]
    noised = noised.detach().requires_grad_()
    per_critic = []
    for params in loss.qvalue_network_params.detach().unbind(0):
        with params.to_module(loss.qvalue_network):
            per_critic.append(
                loss.qvalue_network(TensorDict(observation=data["observation"], action=noised))["state_action_value"]
            )
    (g,) = torch.autograd.grad(torch.stack(per_critic).mean(0).sum(), noised)
    eps_pred = module.score_network(torch.cat([noised, data["observation"], t.float().unsqueeze(-1)], -1))
    expected = (eps_pred - (-3.0 * g)).pow(2).mean()
    torch.testing.assert_close(actual, expected)


def constant_eps_network(loss: QSMLoss, value: float) -> None:
    """Makes the actor's eps-network output ``value`` everywhere (its last layer: zero weights, bias ``value``)."""
    last = [m for m in loss.actor_network.module.score_network.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)


class Parabola(nn.Module):
    """Q(s, a) = -|a|^2, with a parameter, as QSMLoss expects of a critic."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, observation, action):
        return -action.pow(2).sum(-1, keepdim=True) + 0 * self.unused


def test_q_weighted_actor_loss_regresses_eps_on_the_posterior_noise_of_pi_proportional_to_exp_alpha_q():
    # 1-D action, Q = -a^2, alpha 50: pi ~ exp(-50 a^2) on [-1, 1]. With an eps-network that
    # outputs a constant c, the per-sample loss is (c - target)^2, so (L(-1) - L(+1)) / 4 is the loss's target;
    # with 4096 candidates it is the exact posterior noise E[xi | a_t] within Monte-Carlo error, at every step.
    critic = ValueOperator(Parabola(), in_keys=["observation", "action"])
    loss = make_loss(
        actor_kwargs=dict(obs_dim=1, action_dim=1),
        critic=critic,
        alpha=50.0,
        score_target="q_weighted",
        num_candidates=4096,
        reduction="none",
    )
    pin_critics(loss, critic)
    n = 64
    data = TensorDict(observation=torch.zeros(n, 1), action=box(1).rand((n,)), batch_size=[n])
    t = torch.arange(n) % 5
    noise = torch.randn(n, 1)
    losses = {}
    for c in (-1.0, 1.0):
        constant_eps_network(loss, c)
        torch.manual_seed(7)  # the same candidates for both
        losses[c], _ = loss.actor_loss(data, t=t, noise=noise)
    target = (losses[-1.0] - losses[1.0]) / 4
    alpha_bar = loss.actor_network.module.alphas_cumprod[t]
    x_t = alpha_bar.sqrt() * data["action"].squeeze(-1) + (1 - alpha_bar).sqrt() * noise.squeeze(-1)
    exact = torch.stack([exact_posterior_noise(x_t[i : i + 1], alpha_bar[i], lambda a: -50 * a**2) for i in range(n)])
    torch.testing.assert_close(target.double(), exact.squeeze(-1), atol=0.05, rtol=0)


def test_q_weighted_with_a_learned_alpha_is_trained_through_loss_alpha_only():
    loss = make_loss(score_target="q_weighted", alpha="auto")
    out = loss(make_batch((64,)))
    assert {"loss_alpha", "policy_spread"} <= set(out.keys()) and "grad_q_norm" not in out.keys()
    assert set(out.keys()) == set(loss.out_keys)

    out["loss_actor"].backward(retain_graph=True)
    assert loss.log_alpha.grad is None  # the eps target uses alpha detached
    assert all(g is None for g in grads(loss.qvalue_network_params).values())
    out["loss_alpha"].backward()
    assert loss.log_alpha.grad is not None and loss.log_alpha.grad.item() != 0
    assert all(g is None for g in grads(loss.qvalue_network_params).values())
    # the spread is measured, not moved: calling the loss again leaves alpha where it was
    before = loss.alpha.clone()
    loss(make_batch((64,)))
    assert loss.alpha == before


def test_loss_alpha_raises_alpha_when_the_policy_is_broader_than_the_target_and_lowers_it_when_narrower():
    loss = make_loss(score_target="q_weighted", alpha="auto", target_spread=0.1)
    for spread, sign in ((0.3, -1), (0.03, 1)):  # d loss / d log_alpha: negative -> gradient descent raises alpha
        loss.log_alpha.grad = None
        loss.alpha_loss(torch.tensor(spread)).backward()
        assert torch.sign(loss.log_alpha.grad).item() == sign


def test_the_learned_alpha_is_a_parameter_saved_with_the_loss():
    loss = make_loss(score_target="q_weighted", alpha="auto", alpha_init=3.0)
    assert loss.alpha.item() == pytest.approx(3.0)
    assert any(p is loss.log_alpha for p in loss.parameters())
    with torch.no_grad():
        loss.log_alpha.fill_(1.5)
    restored = make_loss(score_target="q_weighted", alpha="auto")
    restored.load_state_dict(loss.state_dict())
    assert restored.alpha.item() == pytest.approx(torch.tensor(1.5).exp().item())


def test_the_first_critic_alone_is_the_target_s_critic_with_critic_reduction_first():
    # TD3's actor reads its first critic only; here it halves the critic work of the q_weighted candidates
    data = make_batch((16,))
    t, eps = torch.randint(0, 5, (16,)), torch.randn(16, ACTION_DIM)
    first = make_loss(alpha=3.0, critic_reduction="first")
    alone = make_loss(alpha=3.0, num_qvalue_nets=1)
    with torch.no_grad():
        alone.actor_network_params.copy_(first.actor_network_params)
        alone.qvalue_network_params.copy_(first.qvalue_network_params[:1])
    torch.testing.assert_close(first.actor_loss(data, t=t, noise=eps)[0], alone.actor_loss(data, t=t, noise=eps)[0])
    torch.testing.assert_close(first.state_action_value(data), alone.state_action_value(data))


def test_the_scaled_gradient_target_is_minus_sigma_t_alpha_g():
    data = make_batch((16,))
    t, eps = torch.randint(0, 5, (16,)), torch.randn(16, ACTION_DIM)
    plain = make_loss(alpha=3.0, reduction="none")
    scaled = make_loss(alpha=3.0, reduction="none", score_target="scaled_gradient")
    scaled.load_state_dict(plain.state_dict())
    for loss in (plain, scaled):
        constant_eps_network(loss, 0.0)
    # with eps_theta = 0 each per-sample loss is mean(target^2): the scaled one is sigma_t^2 times the plain one
    sigma2 = 1 - plain.actor_network.module.alphas_cumprod[t]
    torch.testing.assert_close(
        scaled.actor_loss(data, t=t, noise=eps)[0], sigma2 * plain.actor_loss(data, t=t, noise=eps)[0]
    )


def test_qvalue_loss_regresses_both_critics_on_the_min_target_at_a_fresh_chain_sample():
    loss = make_loss(policy_noise=0.0).make_value_estimator(gamma=0.9)
    data = make_batch((16,))
    data["next", "terminated"][:4] = True
    torch.manual_seed(11)
    actual, _ = loss.qvalue_loss(data)

    torch.manual_seed(11)  # replay the loss's only draw (policy_noise is 0): the chain sample at s' (RANDOM mode)
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        next_action = loss.actor_network(data["next"].select("observation").clone())["action"]
    q_next, q_now = [], []
    for online, target in zip(loss.qvalue_network_params.unbind(0), loss.target_qvalue_network_params.unbind(0)):
        with target.to_module(loss.qvalue_network):
            q_next.append(
                loss.qvalue_network(TensorDict(observation=data["next", "observation"], action=next_action))[
                    "state_action_value"
                ]
            )
        with online.to_module(loss.qvalue_network):
            q_now.append(loss.qvalue_network(data.select("observation", "action").clone())["state_action_value"])
    y = data["next", "reward"] + 0.9 * (~data["next", "terminated"]) * torch.stack(q_next).min(0).values
    expected = sum((q - y).pow(2) for q in q_now).mean()
    torch.testing.assert_close(actual, expected)


def test_next_actions_come_from_a_random_chain_even_though_losses_default_to_deterministic():
    loss = make_loss(policy_noise=0.0)
    data = make_batch()
    first = loss.qvalue_loss(data)[1]["next_state_value"]
    second = loss.qvalue_loss(data)[1]["next_state_value"]
    assert first != second


def test_next_actions_are_clipped_to_the_bounds():
    loss = make_loss(policy_noise=5.0, actor_kwargs={"bound": 2.0}, critic=make_critic())
    data = make_batch((64,), bound=2.0)
    with torch.no_grad():
        next_action = loss._next_action(data["next"])
    assert next_action.abs().max().item() == pytest.approx(2.0)


# --- options ------------------------------------------------------------------------------------
def test_grad_at_clean_and_min_of_critics_change_the_target():
    data = make_batch((16,))
    torch.manual_seed(0)
    base = make_loss()
    state = base.state_dict()
    values = {}
    for name, options in {"default": {}, "clean": {"grad_at": "clean"}, "min": {"critic_reduction": "min"}}.items():
        loss = make_loss(**options)
        loss.load_state_dict(state)
        torch.manual_seed(1)
        values[name] = loss.actor_loss(data)[0]
    assert len({round(v.item(), 6) for v in values.values()}) == 3


class Scaled(nn.Module):
    def __init__(self, critic, scale):
        super().__init__()
        self.critic, self.scale = critic, scale

    def forward(self, observation, action):
        return self.scale * self.critic(torch.cat([observation, action], -1))


def test_normalized_gradient_makes_the_actor_target_independent_of_the_critic_scale():
    data = make_batch((32,))
    actor = make_actor()
    net = make_critic().module
    losses = {}
    for scale in (1.0, 100.0):
        for normalize in (False, True):
            critic = ValueOperator(Scaled(net, scale), in_keys=["observation", "action"])
            loss = QSMLoss(actor, critic, alpha=1.0, normalize_grad=normalize)
            pin_critics(loss, critic)
            torch.manual_seed(3)
            losses[scale, normalize] = loss.actor_loss(data)[0].item()
    assert losses[1.0, True] == pytest.approx(losses[100.0, True], rel=1e-4)
    assert losses[100.0, False] > 10 * losses[1.0, False]


# --- alpha="auto" --------------------------------------------------------------------------------
class QuadraticCritic(nn.Module):
    """Q = -scale |a - a*|^2: curvature 2 * scale along every direction of the action."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.optimum = nn.Parameter(torch.full((ACTION_DIM,), 0.3))
        self.scale = scale

    def forward(self, observation, action):
        return -self.scale * (action - self.optimum).pow(2).sum(-1, keepdim=True)


def auto_loss(critic_module, **kwargs):
    critic = ValueOperator(critic_module, in_keys=["observation", "action"])
    loss = QSMLoss(make_actor(), critic, alpha="auto", **kwargs)
    pin_critics(loss, critic)
    return loss


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_auto_alpha_measures_the_critic_curvature_and_holds_alpha_times_curvature(scale):
    loss = auto_loss(QuadraticCritic(scale))
    data = make_batch((32,))
    t, eps = torch.randint(0, 5, (32,)), torch.randn(32, ACTION_DIM)
    actual, metrics = loss.actor_loss(data, t=t, noise=eps)
    # the secant of a quadratic is exact: kappa = 2 scale in one batch, and the call uses the alpha it gives
    assert metrics["action_curvature"].item() == pytest.approx(2 * scale, rel=1e-4)
    assert metrics["alpha"].item() == pytest.approx(1.5 / (2 * scale), rel=1e-4)
    fixed = QSMLoss(loss.actor_network, loss.qvalue_network, alpha=1.5 / (2 * scale))
    fixed.load_state_dict({k: v for k, v in loss.state_dict().items() if k in fixed.state_dict()})
    torch.testing.assert_close(actual, fixed.actor_loss(data, t=t, noise=eps)[0], rtol=1e-4, atol=1e-6)
    # the loss wrote nothing: the measurement is committed by CurvatureAlpha (the EMA is bias-corrected)
    assert loss.alpha.item() == 1.0 and loss.curvature_weight.item() == 0.0
    CurvatureAlpha(loss).step(metrics["action_curvature"])
    assert loss.action_curvature.item() == pytest.approx(2 * scale, rel=1e-4)
    assert loss.alpha == metrics["alpha"]


def test_calling_the_auto_loss_twice_moves_nothing():
    loss = auto_loss(QuadraticCritic(1.0))
    data = make_batch((32,))
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    first, second = loss(data.clone()), loss(data.clone())
    assert first["alpha"].item() == pytest.approx(second["alpha"].item(), rel=1e-4)  # each from its own measurement
    assert all(torch.equal(v, loss.state_dict()[k]) for k, v in state.items())


def test_curvature_alpha_needs_a_loss_with_the_curvature_rule():
    with pytest.raises(ValueError, match="CurvatureAlpha steps QSMLoss\\(alpha='auto', score_target='gradient'\\)"):
        CurvatureAlpha(make_loss(alpha=3.0))


def test_auto_alpha_follows_a_changing_critic_at_the_ema_rate():
    loss = auto_loss(QuadraticCritic(1.0))
    updater = CurvatureAlpha(loss)
    data = make_batch((32,))
    updater.step(loss.actor_loss(data)[1]["action_curvature"])  # curvature 2
    loss.qvalue_network.module.scale = 3.0  # curvature 6 from now on
    for _ in range(100):
        updater.step(loss.actor_loss(data)[1]["action_curvature"])
    # an EMA of rate 0.01 that started at 0, divided by its weight 1 - 0.99^calls (Adam's correction)
    weight = 1 - 0.99**101
    expected = (0.99**100 * 0.01 * 2 + (1 - 0.99**100) * 6) / weight
    assert loss.action_curvature.item() == pytest.approx(expected, rel=1e-3)
    assert loss.alpha.item() == pytest.approx(1.5 / expected, rel=1e-3)


def test_auto_alpha_on_a_flat_critic_stays_finite_at_its_upper_bound():
    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(ACTION_DIM))

        def forward(self, observation, action):
            return (action * self.w).sum(-1, keepdim=True)

    loss = auto_loss(Linear())
    out = loss(make_batch((16,)))
    CurvatureAlpha(loss).step(out["action_curvature"])
    assert loss.action_curvature.item() == pytest.approx(0.0, abs=1e-4)
    assert out["alpha"].item() == pytest.approx(QSMLoss.ALPHA_BOUNDS[1]) and loss.alpha == out["alpha"]
    assert torch.isfinite(out["loss_actor"])


def test_auto_alpha_state_is_saved_and_restored_with_the_loss():
    loss = auto_loss(QuadraticCritic(4.0))
    CurvatureAlpha(loss).step(loss.actor_loss(make_batch((16,)))[1]["action_curvature"])
    state = loss.state_dict()
    assert {"curvature_sum", "curvature_weight"} <= set(state)
    restored = auto_loss(QuadraticCritic(4.0))
    restored.load_state_dict(state)
    assert restored.alpha == loss.alpha and restored.action_curvature == loss.action_curvature
    assert set(loss(make_batch((16,))).keys()) == set(loss.out_keys)


def test_a_fixed_alpha_is_reported_and_keeps_no_auto_state():
    loss = make_loss(alpha=7.0)
    out = loss(make_batch((8,)))
    assert out["alpha"].item() == 7.0 and "action_curvature" not in out.keys()
    assert not {"log_alpha", "curvature_sum"} & set(loss.state_dict())


# --- the TD3 checklist --------------------------------------------------------------------------
def test_each_loss_reaches_only_its_own_parameters_and_targets_get_none():
    loss = make_loss()
    data = make_batch()
    loss_actor, _ = loss.actor_loss(data)
    loss_actor.backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads(loss.actor_network_params).values())
    assert all(g is None for g in grads(loss.qvalue_network_params).values())
    loss.zero_grad(set_to_none=True)

    loss_qvalue, _ = loss.qvalue_loss(data)
    loss_qvalue.backward()
    assert all(g is None for g in grads(loss.actor_network_params).values())
    assert all(g is not None and g.abs().sum() > 0 for g in grads(loss.qvalue_network_params).values())
    assert all(not p.requires_grad and p.grad is None for p in loss.target_qvalue_network_params.values(True, True))


def test_no_duplicated_parameters_and_loss_params_are_the_actor_s():
    actor = make_actor()
    loss = QSMLoss(actor, make_critic())
    names = [n for n, _ in loss.named_parameters()]
    assert len(names) == len(set(names))
    # an optimizer step on the loss's parameters is a step on the collector's actor
    trainable = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in actor.parameters()}


def test_input_is_left_untouched_except_the_td_error():
    loss = make_loss()
    data = make_batch((8,))
    before = data.clone()
    loss(data)
    assert set(data.keys(True, True)) == set(before.keys(True, True)) | {"td_error"}
    assert (data.exclude("td_error") == before).all()
    assert data["td_error"].shape == (8,) and (data["td_error"] >= 0).all()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("batch", [(8,), (2, 4)])
def test_reduction_shapes(reduction, batch):
    out = make_loss(reduction=reduction)(make_batch(batch))
    expected = batch if reduction == "none" else ()
    assert out["loss_actor"].shape == out["loss_qvalue"].shape == expected


def test_mean_and_sum_reductions_agree():
    data = make_batch((8,))
    loss = make_loss()
    state = loss.state_dict()
    summed = make_loss(reduction="sum")
    summed.load_state_dict(state)
    torch.manual_seed(2)
    mean = loss(data.clone())
    torch.manual_seed(2)
    total = summed(data.clone())
    torch.testing.assert_close(total["loss_actor"], 8 * mean["loss_actor"])
    torch.testing.assert_close(total["loss_qvalue"], 8 * mean["loss_qvalue"])


def test_vmap_and_python_loop_over_critics_agree():
    data = make_batch((8,))
    looped = make_loss(deactivate_vmap=True)
    vmapped = make_loss()
    vmapped.load_state_dict(looped.state_dict())
    torch.manual_seed(4)
    a = looped(data.clone())
    torch.manual_seed(4)
    b = vmapped(data.clone())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_critics_need_and_get_different_vmap_randomness():
    loss = make_loss(critic=make_critic(dropout=0.1))
    assert loss.vmap_randomness == "different"
    loss(make_batch())


def test_state_dict_round_trip():
    loss = make_loss()
    other = make_loss()
    other.load_state_dict(loss.state_dict())
    for (k, a), (_, b) in zip(loss.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_reset_parameters_recursive_resets_weights_and_targets():
    loss = make_loss()
    SoftUpdate(loss, tau=0.005)
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(1000)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.reset_parameters_recursive()
    after = loss.state_dict()
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert any(k.startswith("actor_network_params") for k in changed)
    assert any(k.startswith("qvalue_network_params") for k in changed)
    assert any(k.startswith("target_qvalue_network_params") for k in changed)


def test_set_keys_renames_every_input():
    loss = make_loss()
    loss.set_keys(action="act", reward="rew", done="finished", terminated="ended", state_action_value="q")
    loss.qvalue_network.in_keys[:] = ["observation", "act"]
    loss.qvalue_network.out_keys[:] = ["q"]
    data = make_batch()
    data.rename_key_("action", "act")
    data.rename_key_(("next", "reward"), ("next", "rew"))
    data.rename_key_(("next", "done"), ("next", "finished"))
    data.rename_key_(("next", "terminated"), ("next", "ended"))
    out = loss(data)
    assert torch.isfinite(out["loss_actor"]) and torch.isfinite(out["loss_qvalue"])
    assert loss.value_estimator.tensor_keys.reward == "rew"
    assert loss.value_estimator.tensor_keys.value == "q"
    with pytest.raises(ValueError):
        loss.set_keys(not_a_key="x")


def test_call_without_tensordict_and_select_out_keys():
    loss = make_loss()
    data = make_batch()
    kwargs = {"_".join(k) if isinstance(k, tuple) else k: data.get(k) for k in loss.in_keys}
    loss.select_out_keys("loss_actor", "loss_qvalue")
    loss_actor, loss_qvalue = loss(**kwargs)
    assert loss_actor.shape == loss_qvalue.shape == ()


@pytest.mark.parametrize("estimator", [ValueEstimators.TD0, ValueEstimators.TD1, ValueEstimators.TDLambda])
def test_value_estimators(estimator):
    loss = make_loss()
    loss.make_value_estimator(estimator, gamma=0.9)
    data = make_batch((2, 6))  # [env, time] for the multi-step estimators
    data.names = [None, "time"]
    data["next", "done"][:, -1] = True
    assert torch.isfinite(loss(data)["loss_qvalue"])


@pytest.mark.parametrize("estimator", [ValueEstimators.GAE, ValueEstimators.VTrace])
def test_unsupported_value_estimators_raise(estimator):
    with pytest.raises(NotImplementedError):
        make_loss().make_value_estimator(estimator)


def test_multistep_data_with_n1_equals_plain_data():
    loss = make_loss().make_value_estimator(gamma=0.9)
    data = make_batch((2, 5))
    data.names = [None, "time"]
    data["next", "done"][:, -1] = True
    data["observation"][:, 1:] = data["next", "observation"][:, :-1]
    stepped = MultiStep(gamma=0.9, n_steps=1)(data.clone())
    torch.manual_seed(0)
    plain = loss.qvalue_loss(data.clone())[0]
    torch.manual_seed(0)
    multi = loss.qvalue_loss(stepped)[0]
    torch.testing.assert_close(plain, multi)
    assert torch.isfinite(loss.qvalue_loss(MultiStep(gamma=0.9, n_steps=3)(data.clone()))[0])


def test_soft_update_moves_targets_and_nothing_else_does():
    loss = make_loss()
    updater = SoftUpdate(loss, tau=0.5)
    target_before = loss.target_qvalue_network_params.clone()
    with torch.no_grad():
        loss.qvalue_network_params.apply_(lambda p: p.add_(1.0))
    loss(make_batch())
    assert (loss.target_qvalue_network_params == target_before).all()
    updater.step()
    expected = target_before.apply(lambda t, o: 0.5 * t + 0.5 * o, loss.qvalue_network_params.data)
    torch.testing.assert_close(loss.target_qvalue_network_params.data.to_dict(), expected.to_dict())


def test_target_network_warning_without_updater():
    loss = make_loss()
    with pytest.warns(UserWarning, match="No target network updater"):
        loss(make_batch())


def test_priority_weights_weigh_each_sample():
    data = make_batch((8,))
    loss = make_loss()
    no_weights = make_loss(use_prioritized_weights=False)
    no_weights.load_state_dict(loss.state_dict())
    torch.manual_seed(5)
    plain = loss(data.clone())
    weighted_data = data.clone()
    weighted_data["priority_weight"] = torch.linspace(0, 2, 8)
    torch.manual_seed(5)
    weighted = loss(weighted_data)
    assert weighted["loss_qvalue"] != plain["loss_qvalue"]
    assert weighted["loss_actor"] != plain["loss_actor"]
    torch.manual_seed(5)
    torch.testing.assert_close(no_weights(weighted_data.clone())["loss_qvalue"], plain["loss_qvalue"])


def test_metrics_are_detached_scalars():
    loss = make_loss()
    out = loss(make_batch())
    assert set(out.keys()) == set(loss.out_keys)
    for key in loss.out_keys[2:]:
        assert out[key].shape == () and not out[key].requires_grad, key


# --- bad input ----------------------------------------------------------------------------------
def test_missing_keys_are_named():
    loss = make_loss()
    with pytest.raises(KeyError, match=r"qvalue_loss needs the key \('next', 'reward'\)"):
        loss(make_batch().exclude(("next", "reward")))
    with pytest.raises(KeyError, match="actor_loss needs the key 'observation'"):
        loss.actor_loss(make_batch().exclude("observation"))


def test_action_size_disagreements_are_refused():
    with pytest.raises(ValueError, match="action_dim=3 disagrees with the action spec"):
        QSMLoss(make_actor(), make_critic(), action_spec=box(4))
    with pytest.raises(ValueError, match="has 4 dims but the action bounds have 3"):
        make_loss()(make_batch(action_dim=4))
    # on the first call, one transition through the critic names a critic built for other sizes
    with pytest.raises(
        ValueError, match=r"the critic fails on one transition .*'action': \(3,\).* an action of 3 dims.*mat1 and mat2"
    ):
        make_loss(critic=make_critic(action_dim=4))(make_batch())


def test_observations_of_the_wrong_size_or_dtype_are_named_with_the_fix():
    with pytest.raises(ValueError, match="obs_dim=5, got size 6"):
        make_loss().actor_loss(make_batch(obs_dim=6))
    data = make_batch()
    data["observation"] = data["observation"].double()
    with pytest.raises(
        TypeError, match="'observation' is torch.float64 but the networks' parameters are torch.float32.*DoubleToFloat"
    ):
        make_loss()(data)


class Interrupting(nn.Module):
    """A critic that raises what it is given, as a Ctrl-C or an out-of-memory error would arrive mid-update."""

    def __init__(self, error):
        super().__init__()
        self.error, self.weight = error, nn.Parameter(torch.zeros(1))

    def forward(self, observation, action):
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("CUDA out of memory"), SystemExit(143)])
@pytest.mark.parametrize("which", ["actor_loss", "qvalue_loss"])
def test_exceptions_pass_through_the_loss_unchanged(error, which):
    # tensordict's to_module context turns a BaseException into "Converting a tensordict to boolean
    # value is not permitted"; the loss must neither let that happen nor rewrap any error
    loss = make_loss(critic=ValueOperator(Interrupting(error), in_keys=["observation", "action"]))
    loss._inputs_checked.update({"actor_loss", "qvalue_loss"})  # let the error arrive in the loss itself
    before = dict(TensorDict.from_module(loss.actor_network).items(True, True))
    with pytest.raises(type(error)) as caught:
        getattr(loss, which)(make_batch())
    assert caught.value is error
    # and the actor's own tensors are back in place, as after a normal call
    assert all(value is before[key] for key, value in TensorDict.from_module(loss.actor_network).items(True, True))


@pytest.mark.parametrize(
    "key, value",
    [
        (("next", "reward"), float("nan")),
        ("observation", float("inf")),
        ("action", float("nan")),
        (("next", "observation"), -float("inf")),
    ],
)
def test_a_non_finite_input_is_named_before_any_weight_is_touched(key, value):
    loss = make_loss()
    data = make_batch((8,))
    data[key][5, 0] = value
    with pytest.raises(NonFiniteError, match=rf"the input {re.escape(repr(key))} holds {value} at index \[5, 0\]"):
        loss(data)


def test_a_non_finite_weight_is_named_through_the_loss_it_breaks():
    loss = make_loss()
    with torch.no_grad():
        loss.target_qvalue_network_params["module", "0", "weight"][0, 0, 0] = float("nan")
    with pytest.raises(
        NonFiniteError, match=r"loss_qvalue is nan because target_qvalue_network_params\[\('module', '0', 'weight'\)\]"
    ):
        loss(make_batch())


def test_the_finite_check_can_be_turned_off():
    loss = make_loss(check_finite=False)
    data = make_batch()
    data["next", "reward"][0] = float("nan")
    assert loss(data)["loss_qvalue"].isnan()


def test_bad_options_are_refused_with_their_names():
    with pytest.raises(ValueError, match="alpha .* must be 'auto' or a finite number > 0, got 0.0"):
        make_loss(alpha=0.0)
    for bad in (-1.0, float("inf"), float("nan"), "Auto"):
        with pytest.raises(ValueError, match="alpha"):
            make_loss(alpha=bad)
    with pytest.raises(ValueError, match="alpha='auto' .* excludes normalize_grad=True"):
        make_loss(alpha="auto", normalize_grad=True)
    with pytest.raises(ValueError, match="alpha_curvature .* must be > 0"):
        make_loss(alpha="auto", alpha_curvature=0.0)
    with pytest.raises(ValueError, match="curvature_samples must be >= 1"):
        make_loss(alpha="auto", curvature_samples=0)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="policy_noise must be finite and >= 0"):
            make_loss(policy_noise=bad)
    with pytest.raises(ValueError, match="Unknown grad_at 'sideways'"):
        make_loss(grad_at="sideways")
    with pytest.raises(ValueError, match="Unknown critic_reduction 'max'"):
        make_loss(critic_reduction="max")
    with pytest.raises(ValueError, match="Unknown loss_function"):
        make_loss(loss_function="huber")
    with pytest.raises(ValueError, match="Unknown reduction"):
        make_loss(reduction="avg")
    with pytest.raises(TypeError):
        make_loss(temperature=2.0)  # not an option of the loss
    with pytest.raises(ValueError, match="Unknown score_target 'exact'"):
        make_loss(score_target="exact")
    with pytest.raises(ValueError, match="normalize_grad .* score_target='q_weighted' excludes it"):
        make_loss(score_target="q_weighted", normalize_grad=True)
    with pytest.raises(ValueError, match="data_score .* score_target='q_weighted' excludes it"):
        make_loss(score_target="q_weighted", data_score=True)
    with pytest.raises(ValueError, match="give score_target='scaled_gradient' a number"):
        make_loss(score_target="scaled_gradient", alpha="auto")
    with pytest.raises(ValueError, match="num_candidates .* must be >= 2, got 1"):
        make_loss(score_target="q_weighted", num_candidates=1)
    for name in ("target_spread", "alpha_init"):
        with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
            make_loss(score_target="q_weighted", alpha="auto", **{name: 0.0})
    with pytest.raises(ValueError, match="target_spread=0.6 is not below sigma_0 / sqrt\\(alpha_bar_0\\) = 0.49"):
        make_loss(score_target="q_weighted", alpha="auto", target_spread=0.6)


def test_unbounded_spec_and_missing_bounds_are_refused():
    with pytest.raises(ValueError, match="must be Bounded"):
        QSMLoss(make_actor(), make_critic(), action_spec=Unbounded(ACTION_DIM))
    with pytest.raises(ValueError, match="not both"):
        QSMLoss(make_actor(), make_critic(), action_spec=box(), bounds=(-1, 1))
    with pytest.raises(ValueError, match="finite"):
        QSMLoss(make_actor(), make_critic(), bounds=(-1, float("inf")))


def test_actor_without_the_diffusion_contract_is_refused():
    plain = TensorDictModule(nn.Linear(OBS_DIM, ACTION_DIM), in_keys=["observation"], out_keys=["action"])
    with pytest.raises(
        TypeError,
        match=r"Linear is not a diffusion policy: it lacks "
        r"\['num_steps', 'alphas_cumprod', 'add_noise', 'score_network'\]",
    ):
        QSMLoss(plain, make_critic(), bounds=(-1, 1))


class ConstantCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(1))

    def forward(self, observation, action):
        return self.value.expand(*action.shape[:-1], 1) + 0 * action.sum(-1, keepdim=True)


def test_data_score_target_is_the_noise_tilted_by_the_critic_and_reduces_to_diffusion_bc():
    from torchrl.objectives import DiffusionBCLoss

    data = make_batch((32,))
    actor = make_actor()
    # with grad_a Q = 0 the target is the drawn noise: QSM's actor loss is DiffusionBCLoss on the same draws
    flat = QSMLoss(actor, ValueOperator(ConstantCritic(), in_keys=["observation", "action"]), data_score=True)
    torch.manual_seed(3)  # DiffusionBCLoss draws t, then eps: replayed, as it takes no explicit draws
    t = torch.randint(0, actor.module.num_steps, (32,))
    eps = torch.randn(32, ACTION_DIM)
    qsm_value = flat.actor_loss(data.clone(), t=t, noise=eps)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(qsm_value, DiffusionBCLoss(actor)(data.clone())["loss_diffusion_bc"])

    # with a critic: eps_target = eps - sigma_t * alpha * g, written out
    critic = make_critic()
    loss = QSMLoss(actor, critic, alpha=2.0, data_score=True)
    pin_critics(loss, critic)
    actual = loss.actor_loss(data.clone(), t=t, noise=eps)[0]
    module = actor.module
    alpha_bar = module.alphas_cumprod[t].unsqueeze(-1)
    noised = (alpha_bar.sqrt() * data["action"] + (1 - alpha_bar).sqrt() * eps).requires_grad_()
    (g,) = torch.autograd.grad(
        critic(data.select("observation").set("action", noised))["state_action_value"].sum(), noised
    )
    sigma = (1 - alpha_bar).sqrt()
    eps_pred = module.score_network(torch.cat([noised.detach(), data["observation"], t.float().unsqueeze(-1)], -1))
    torch.testing.assert_close(actual, (eps_pred - (eps - sigma * 2.0 * g)).pow(2).mean())
