"""Time features and the eps-network: shapes, options, and one set of weights for both call paths."""

import pytest
import torch
from torch import nn

from torchrl_qsm import EpsilonNetwork, FourierFeatures, Mish, SinusoidalFeatures

A, OBS = 3, 5


@pytest.mark.parametrize("features", [FourierFeatures(16), SinusoidalFeatures(16)])
def test_time_features_shape_and_distinct_steps(features):
    f = features(torch.arange(5.0))
    assert f.shape == (5, 16)
    assert torch.cdist(f, f).add(torch.eye(5)).min() > 1e-3  # every step has its own features


def test_fourier_features_are_learnable_and_sinusoidal_are_fixed():
    assert [p.shape for p in FourierFeatures(16).parameters()] == [(8,)]
    assert list(SinusoidalFeatures(16).parameters()) == []


@pytest.mark.parametrize("batch", [(), (7,), (2, 3)])
def test_eps_network_maps_the_torchrl_layout_to_an_action(batch):
    net = EpsilonNetwork(A, OBS, hidden_sizes=(16, 16))
    x = torch.cat([torch.randn(*batch, A), torch.randn(*batch, OBS), torch.randint(0, 5, (*batch, 1)).float()], -1)
    assert net(x).shape == (*batch, A)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"layer_norm": True},
        {"activation": nn.ReLU, "time_embedding": "sinusoidal"},
        {"hidden_sizes": (8,), "cond_sizes": (4,)},
        {"hidden_sizes": (8, 8, 8), "time_dim": 6},
    ],
)
def test_chain_path_equals_the_contract_path(options):
    # denoiser(s)(x, t) must be eps_theta(cat([x, s, t])): same weights, same numbers.
    net = EpsilonNetwork(A, OBS, num_steps=5, **options)
    obs, x = torch.randn(4, OBS), torch.randn(4, A)
    denoise = net.denoiser(obs)
    for t in range(5):
        full = net(torch.cat([x, obs, torch.full((4, 1), float(t))], -1))
        torch.testing.assert_close(denoise(x, t), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"layer_norm": True}, {"time_embedding": "sinusoidal", "cond_sizes": (4,)}])
@pytest.mark.parametrize("batch", [(64,), (4, 16)])
def test_per_step_time_table_equals_the_contract_path_in_values_and_gradients(options, batch):
    # predict_noise(a_t, s, t) computes the time term once per step and gathers it: the numbers of
    # eps_theta(cat([a_t, s, t])) per sample, and the same gradients for every parameter.
    net = EpsilonNetwork(A, OBS, num_steps=5, **options)
    x, obs, t = torch.randn(*batch, A), torch.randn(*batch, OBS), torch.randint(0, 5, batch)
    target = torch.randn(*batch, A)
    table = net.predict_noise(x, obs, t)
    full = net(torch.cat([x, obs, t.float().unsqueeze(-1)], -1))
    torch.testing.assert_close(table, full, rtol=1e-5, atol=1e-6)
    params = [p for p in net.parameters()]
    grads_table = torch.autograd.grad((table - target).pow(2).sum(), params)
    grads_full = torch.autograd.grad((full - target).pow(2).sum(), params)
    for (name, _), g_table, g_full in zip(net.named_parameters(), grads_table, grads_full):
        torch.testing.assert_close(g_table, g_full, rtol=1e-4, atol=1e-5, msg=name)


def test_the_first_layer_is_drawn_as_one_dense_layer_over_the_concatenation():
    # the authors' eps-network has one dense layer over [a_t, s, cond]: the three projections are
    # its blocks, drawn from the same random stream, in the same order (so seeds keep their meaning)
    torch.manual_seed(3)
    net = EpsilonNetwork(A, OBS, hidden_sizes=(16, 16), cond_sizes=(8, 8), time_dim=4)
    torch.manual_seed(3)
    FourierFeatures(4)
    nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8))  # the conditioning MLP
    whole = nn.Linear(A + OBS + 8, 16)
    weight = torch.cat([net.action_proj.weight, net.state_proj.weight, net.time_proj.weight], 1)
    torch.testing.assert_close(weight, whole.weight, rtol=0, atol=0)
    torch.testing.assert_close(net.state_proj.bias, whole.bias, rtol=0, atol=0)
    assert net.action_proj.bias is None and net.time_proj.bias is None
    # re-drawn (TorchRL's reset_parameters_recursive), each block keeps the whole layer's range
    for block in (net.action_proj, net.state_proj, net.time_proj):
        block.reset_parameters()
        assert block.weight.abs().max() <= 1 / (A + OBS + 8) ** 0.5


def test_a_network_built_for_another_number_of_steps_is_refused():
    from torchrl_qsm import DiffusionActor

    with pytest.raises(ValueError, match="built for num_steps=5 denoising steps but the schedule has 10"):
        DiffusionActor(A, OBS, EpsilonNetwork(A, OBS, num_steps=5), num_steps=10)


def test_an_observation_of_the_wrong_size_or_dtype_is_named():
    net = EpsilonNetwork(A, OBS)
    with pytest.raises(ValueError, match=r"obs_dim=5, got size 6 .*CatTensors"):
        net.denoiser(torch.randn(2, OBS + 1))
    with pytest.raises(TypeError, match="torch.float64.*DoubleToFloat"):
        net.predict_noise(torch.randn(2, A), torch.randn(2, OBS, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


def test_layer_norm_and_depth_options_shape_the_network():
    net = EpsilonNetwork(A, OBS, hidden_sizes=(8, 8, 8), layer_norm=True)
    assert sum(isinstance(m, nn.LayerNorm) for m in net.modules()) == 3
    assert sum(isinstance(m, nn.Linear) for m in net.body.modules()) == 3


def test_wrong_input_size_names_the_layout():
    net = EpsilonNetwork(A, OBS)
    with pytest.raises(ValueError, match=r"cat\(\[noisy_action \(3\), observation \(5\), t \(1\)\]\)"):
        net(torch.randn(2, A + OBS))


def test_mish_matches_torch_mish_to_float32_rounding():
    x = torch.linspace(-100, 100, 200_001, dtype=torch.float64)  # large enough for the one-exponential form
    reference = torch.nn.functional.mish(x)
    ours = Mish()(x.float()).double()
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)
    xg = x.float().requires_grad_()
    Mish()(xg).sum().backward()
    xr = x.clone().requires_grad_()
    torch.nn.functional.mish(xr).sum().backward()
    torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=1e-5, atol=1e-6)


def test_eps_network_uses_mish_by_default():
    net = EpsilonNetwork(A, OBS)
    assert isinstance(net.input_activation[-1], Mish)
