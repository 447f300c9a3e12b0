"""QSM learns against fixed analytic critics (only the actor is trained).

Why these alphas: at QSM's fixed point the eps-network outputs ``-alpha grad_a Q``, and each step of
the authors' T = 5 clipped sampler multiplies a deviation from the optimum by about
``(1 - c_t alpha kappa) / sqrt(alpha_t)`` with ``c_t`` in 0.44..0.84 and ``kappa`` the curvature of
Q in the action. Both critics below have ``kappa = 2`` at their maxima, so ``alpha = 1`` is in the
stable range (the factor stays below 1 in size), while ``alpha = 50`` makes the chain oscillate
and the clipping leaves every sample on the edges of the box (README, "The sampler's edge
collapse"). The last test pins that documented collapse.

Measured with the exact fixed point (no network), T = 5, 20k samples: quadratic critic, alpha 1:
mean |a - a*| 0.07; alpha 2: 41% of components on the edges; alpha 5 and 50: all of them.
"""

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator

from torchrl_qsm import CurvatureAlpha, QSMLoss

from _helpers import box, DoubleWellCritic, make_actor, pin_critics, QuadraticCritic

pytestmark = pytest.mark.slow


def train_actor(
    loss: QSMLoss, obs_dim: int, action_dim: int, steps: int = 800, lr: float = 1e-3, one_state: bool = False
) -> None:
    """Adam on ``loss.actor_loss`` alone; states ~ N(0, I) (or the zero state), replay actions uniform in the box.
    With ``alpha="auto"`` (the gradient target) each measured curvature is committed by ``CurvatureAlpha``."""
    params = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    alpha_updater = CurvatureAlpha(loss) if loss.auto_alpha else None
    batch = 256
    for _ in range(steps):
        obs = torch.zeros(batch, obs_dim) if one_state else torch.randn(batch, obs_dim)
        data = TensorDict(observation=obs, action=box(action_dim).rand((batch,)), batch_size=[batch])
        loss_actor, metrics = loss.actor_loss(data)
        optimizer.zero_grad()
        loss_actor.backward()
        optimizer.step()
        if alpha_updater is not None:
            alpha_updater.step(metrics["action_curvature"])


def sample(actor, observation):
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        return actor(TensorDict(observation=observation, batch_size=observation.shape[:1]))["action"]


def quadratic_setup(alpha, obs_dim=3, action_dim=2):
    critic = QuadraticCritic(obs_dim, action_dim)
    actor = make_actor(obs_dim, action_dim, hidden_sizes=(64, 64))
    value_operator = ValueOperator(critic, in_keys=["observation", "action"])
    loss = QSMLoss(actor, value_operator, alpha=alpha)
    pin_critics(loss, value_operator)
    return actor, critic, loss


def reference_chain(denoise, x_T, T):
    """The authors' T-step sampler written out (their diffusion.py), independent of the library's schedule code."""
    betas = [1 - math.exp(-0.1 / T - 0.5 * 9.9 * (2 * t - 1) / T**2) for t in range(1, T + 1)]
    alpha_bars = [math.prod(1 - b for b in betas[: t + 1]) for t in range(T)]
    x = x_T
    for t in reversed(range(T)):
        x = (x - betas[t] / math.sqrt(1 - alpha_bars[t]) * denoise(x)) / math.sqrt(1 - betas[t])
        if t > 0:
            x = x + math.sqrt(betas[t]) * torch.randn_like(x)
        x = x.clamp(-1, 1)
    return x


def test_actions_concentrate_at_the_optimum_of_a_quadratic_critic_as_the_exact_fixed_point_does():
    actor, critic, loss = quadratic_setup(alpha=1.0)
    train_actor(loss, obs_dim=3, action_dim=2)
    obs = torch.randn(4000, 3)
    optimum = critic.optimum(obs).detach()
    error = sample(actor, obs) - optimum
    # the fixed point eps = -alpha grad_a Q = 2 alpha (x - a*), run through the authors' sampler
    reference = reference_chain(lambda x: 2.0 * (x - optimum), torch.randn_like(optimum), T=5) - optimum
    # measured: trained mean |a - a*| 0.070, std 0.084; reference 0.068, 0.080. An untrained chain
    # gives ~0.9, a uniform policy ~0.5, a flipped target sign ~1.0, a cosine schedule in place of vp 0.16.
    assert error.abs().mean().item() < 0.1
    assert error.mean(0).abs().max().item() < 0.03
    assert error.std().item() == pytest.approx(reference.std().item(), rel=0.25)
    assert error.abs().mean().item() == pytest.approx(reference.abs().mean().item(), rel=0.25)


def test_samples_cover_both_maxima_of_a_two_mode_critic():
    # Q(a) = -(a^2 - 0.25)^2 at one state: maxima at a = -0.5 and +0.5, curvature 2 there (the paper's
    # Figure 4 claim). T = 20, not 5: at T = 5, alpha 1 x curvature 2 sits at the edge of the stable
    # range, and the small errors of a trained network then tip some seeds into the edge collapse or
    # into one mode (measured at 800 steps, lr 1e-3: 2 of 3 seeds collapsed to the edges); at T = 20 the
    # margin is about 5x. The exact fixed point puts 33% / 32% of the samples within 0.2 of each maximum.
    # Trained, 8 seeds: the smaller mode held 0.25-0.42 within 0.25 of its maximum.
    actor = make_actor(obs_dim=2, action_dim=1, hidden_sizes=(64, 64), num_steps=20)
    critic = ValueOperator(DoubleWellCritic(m=0.5, c=1.0), in_keys=["observation", "action"])
    loss = QSMLoss(actor, critic, alpha=1.0)
    train_actor(loss, obs_dim=2, action_dim=1, steps=1200, lr=3e-3, one_state=True)
    action = sample(actor, torch.zeros(4000, 2)).squeeze(-1)
    near_plus = ((action - 0.5).abs() < 0.25).float().mean().item()
    near_minus = ((action + 0.5).abs() < 0.25).float().mean().item()
    assert near_plus > 0.15 and near_minus > 0.15
    assert near_plus + near_minus > 0.55
    assert (action.abs() > 0.999).float().mean().item() < 0.02


def test_large_alpha_drives_the_faithful_chain_to_the_box_edges():
    # the documented failure of the authors' recipe: alpha 50 x curvature 2 is far beyond the stable range
    actor, critic, loss = quadratic_setup(alpha=50.0)
    train_actor(loss, obs_dim=3, action_dim=2, steps=300)
    action = sample(actor, torch.randn(4000, 3))
    assert (action.abs() > 0.999).float().mean().item() > 0.9


class ScaledCritic(torch.nn.Module):
    def __init__(self, critic: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.critic, self.scale = critic, scale

    def forward(self, observation, action):
        return self.scale * self.critic(observation, action)


def scaled_quadratic_setup(scale: float, **loss_options):
    critic = QuadraticCritic(3, 2)
    actor = make_actor(3, 2, hidden_sizes=(64, 64))
    value_operator = ValueOperator(ScaledCritic(critic, scale), in_keys=["observation", "action"])
    loss = QSMLoss(actor, value_operator, **loss_options)
    pin_critics(loss, value_operator)
    return actor, critic, loss


def test_normalized_target_finds_the_optimum_where_the_faithful_chain_collapses():
    # Q = -100 ||a - a*||^2 (curvature 200): the faithful target with alpha 1 puts every sample on the
    # edges; eps target = -lambda g / mean|g| does not depend on the critic's scale, so the chain sees
    # the same field as for curvature 2 (effective alpha x curvature ~ lambda / E|a_t - a*| ~ 1).
    # Measured: faithful 96% of components on the edges; normalized, lambda 1: mean |a - a*| 0.23,
    # lambda 2: 0.13, identical for scales 1 and 100, no edges.
    results = {}
    for name, options in {"faithful": {"alpha": 1.0}, "normalized": {"alpha": 2.0, "normalize_grad": True}}.items():
        torch.manual_seed(0)
        actor, critic, loss = scaled_quadratic_setup(100.0, **options)
        train_actor(loss, obs_dim=3, action_dim=2)
        obs = torch.randn(4000, 3)
        action = sample(actor, obs)
        results[name] = (
            (action - critic.optimum(obs)).abs().mean().item(),
            (action.abs() > 0.999).float().mean().item(),
        )
    assert results["faithful"][1] > 0.9
    assert results["normalized"][0] < 0.2 and results["normalized"][1] < 0.02


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_auto_alpha_finds_the_optimum_at_curvature_2_and_200_where_the_faithful_chain_collapses(scale):
    # the faithful chain puts every sample on the edges at alpha 50 x curvature 2 and at alpha 1 x
    # curvature 200 (the two tests above); alpha="auto" measures the curvature and holds alpha x
    # curvature at 1.5, so both critics give the same chain as the exact fixed point at 1.5. Measured:
    # alpha 0.75 / 0.0075, mean |a - a*| 0.188 for both scales (the exact fixed point: 0.175), no edges.
    torch.manual_seed(0)
    actor, critic, loss = scaled_quadratic_setup(scale, alpha="auto")
    train_actor(loss, obs_dim=3, action_dim=2)
    assert loss.alpha.item() * 2 * scale == pytest.approx(1.5, rel=1e-3)
    obs = torch.randn(4000, 3)
    optimum = critic.optimum(obs).detach()
    error = sample(actor, obs) - optimum
    reference = reference_chain(lambda x: 1.5 * (x - optimum), torch.randn_like(optimum), T=5) - optimum
    assert error.abs().mean().item() == pytest.approx(reference.abs().mean().item(), rel=0.25)
    assert ((error + optimum).abs() > 0.999).float().mean().item() < 0.02


def bandit_batch(reward, batch: int) -> TensorDict:
    """One state (zeros), uniform 1-D actions, ``reward(action)``, every step terminal: the critics learn Q = r."""
    action = box(1).rand((batch,))
    obs = torch.zeros(batch, 2)
    return TensorDict(
        {
            "observation": obs,
            "action": action,
            ("next", "observation"): obs,
            ("next", "reward"): reward(action),
            ("next", "done"): torch.ones(batch, 1, dtype=torch.bool),
            ("next", "terminated"): torch.ones(batch, 1, dtype=torch.bool),
        },
        [batch],
    )


def double_well_reward(action: torch.Tensor) -> torch.Tensor:
    """Two equal peaks, at a = -0.5 and +0.5, curvature 8 there; the reward falls towards the box edges."""
    return -4 * (action.pow(2) - 0.25).pow(2)


@pytest.mark.parametrize("alpha, updates", [("auto", 1200), (50.0, 300)])
def test_a_two_peak_bandit_learned_from_rewards(alpha, updates):
    # One state, one action dim, reward double_well_reward(a), every step terminal: the critics learn
    # Q = r from uniform replay actions while the actor learns from them (the full QSMLoss, T = 5).
    # Measured, auto, 2 seeds at 1200 updates: 18-25% / 26-35% of the samples within 0.25 of each
    # peak, none on the edges, alpha ~0.24 (curvature ~6); alpha 50 puts every sample on the edges
    # (300 updates are enough for that).
    torch.manual_seed(0)
    actor = make_actor(obs_dim=2, action_dim=1, hidden_sizes=(64, 64))
    critic = ValueOperator(MLP(3, 1, num_cells=[64, 64]), in_keys=["observation", "action"])
    loss = QSMLoss(actor, critic, alpha=alpha, delay_qvalue=False)
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-3)
    alpha_updater = CurvatureAlpha(loss) if alpha == "auto" else None
    batch = 256
    for _ in range(updates):
        out = loss(bandit_batch(double_well_reward, batch))
        optimizer.zero_grad()
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        optimizer.step()
        if alpha_updater is not None:
            alpha_updater.step(out["action_curvature"])
    action = sample(actor, torch.zeros(4000, 2)).squeeze(-1)
    near = [((action - peak).abs() < 0.25).float().mean().item() for peak in (-0.5, 0.5)]
    edges = (action.abs() > 0.999).float().mean().item()
    if alpha == "auto":
        assert min(near) > 0.12 and sum(near) > 0.4 and edges < 0.02
    else:
        assert edges > 0.9


# --- the noise-consistent target (QSMLoss(score_target="q_weighted")) --------------------------------------------
def edges_of(action: torch.Tensor) -> float:
    return (action.abs() > 0.999).float().mean().item()


@pytest.mark.parametrize("alpha_kappa", [100, 10_000])
def test_the_noise_consistent_target_concentrates_at_an_interior_optimum_where_the_gradient_target_collapses(
    alpha_kappa,
):
    # Q = -scale ||a - a*(s)||^2 (curvature 2 scale), alpha 1: pi ~ exp(alpha Q) has std 0.1 (alpha kappa 100) or
    # 0.01 (10000) around an interior optimum. Measured, 16 candidates, 800 steps: mean |a - a*| 0.135 / 0.133, no
    # edges (64 candidates at 1500 steps: 0.066); the gradient target at the same alpha puts every sample on the
    # edges. The exact posterior noise through the same sampler gives 0.02 / 0.001: the rest is the estimate at the
    # cleanest step, where few candidates carry the weight, and the network.
    scale = alpha_kappa / 2
    obs = torch.randn(4000, 3)
    results = {}
    for target, steps in (("q_weighted", 800), ("gradient", 300)):
        torch.manual_seed(0)
        actor, critic, loss = scaled_quadratic_setup(scale, alpha=1.0, score_target=target)
        train_actor(loss, obs_dim=3, action_dim=2, steps=steps)
        action = sample(actor, obs)
        results[target] = ((action - critic.optimum(obs)).abs().mean().item(), edges_of(action))
    assert results["q_weighted"][0] < 0.2 and results["q_weighted"][1] < 0.01
    assert results["gradient"][1] > 0.9


def two_bumps_reward(action: torch.Tensor) -> torch.Tensor:
    """Two narrow peaks of height 1 at a = -0.7 and +0.7 (width 0.1), zero elsewhere."""
    return torch.exp(-((action - 0.7) ** 2) / 0.02) + torch.exp(-((action + 0.7) ** 2) / 0.02)


def test_the_noise_consistent_target_keeps_both_peaks_of_a_bandit_learned_from_rewards():
    # One state, a 1-D action, reward two_bumps_reward, every step terminal: the critics learn Q = r from uniform
    # replay actions while the actor learns (the full QSMLoss, T = 5, alpha 50, one optimizer over every
    # parameter on the sum of the loss_* outputs). Measured, seed 0, 3000 updates: 0.38 / 0.34 of the samples
    # within 0.25 of the peaks, no edges (64 candidates: 0.36 / 0.37); the gradient target: every sample on the
    # edges; the exact posterior noise through the same sampler: 0.39 / 0.39.
    torch.manual_seed(0)
    actor = make_actor(obs_dim=2, action_dim=1, hidden_sizes=(64, 64))
    critic = ValueOperator(MLP(3, 1, num_cells=[64, 64]), in_keys=["observation", "action"])
    loss = QSMLoss(actor, critic, alpha=50.0, score_target="q_weighted", delay_qvalue=False)
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-3)
    batch = 256
    for _ in range(1500):
        out = loss(bandit_batch(two_bumps_reward, batch))
        optimizer.zero_grad()
        sum(value for key, value in out.items() if key.startswith("loss_")).backward()
        optimizer.step()
    action = sample(actor, torch.zeros(4000, 2)).squeeze(-1)
    near = [((action - peak).abs() < 0.25).float().mean().item() for peak in (-0.7, 0.7)]
    assert min(near) >= 0.3
    assert edges_of(action) <= 0.02


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_the_learned_temperature_gives_the_same_policy_whatever_the_critic_s_scale(scale):
    # alpha="auto" with the noise-consistent target learns log_alpha through loss_alpha until the spread of
    # pi ~ exp(alpha Q) at the last step is target_spread (0.1): for a quadratic critic of curvature 2 scale that
    # is alpha kappa ~ 100 (std 1 / sqrt(alpha kappa)), so alpha ends 100 times smaller for a critic 100 times
    # larger. Measured, 1000 steps (log_alpha at lr 1e-2): alpha 52 / 0.53, alpha kappa 104 / 106, mean
    # |a - a*| 0.13 for both, no edges.
    torch.manual_seed(0)
    actor, critic, loss = scaled_quadratic_setup(scale, alpha="auto", score_target="q_weighted")
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-3)
    alpha_optim = torch.optim.Adam([loss.log_alpha], lr=1e-2)
    for _ in range(1000):
        data = TensorDict(observation=torch.randn(256, 3), action=box(2).rand((256,)), batch_size=[256])
        loss_actor, metrics = loss.actor_loss(data)
        actor_optim.zero_grad()
        alpha_optim.zero_grad()
        (loss_actor + loss.alpha_loss(metrics["policy_spread"])).backward()
        actor_optim.step()
        alpha_optim.step()
    assert 60 < loss.alpha.item() * 2 * scale < 160
    obs = torch.randn(4000, 3)
    action = sample(actor, obs)
    assert (action - critic.optimum(obs)).abs().mean().item() < 0.2
    assert edges_of(action) < 0.01
