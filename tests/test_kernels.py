"""The fp32 matmul path (torchrl_qsm.kernels.choose_fp32_matmuls): chosen only when a numerical check against float64
proves it as accurate as torch's default on this machine, and then the update's numbers do not change."""

import time

import pytest
import torch
import torch.nn.functional as F

from torchrl_qsm import kernels, QSMLoss
from torchrl_qsm.kernels import choose_fp32_matmuls, matmul_shapes, PATHS

from _helpers import make_actor, make_batch, make_critic
from reference_qsm import ReferenceQSM

DEFAULT, ONEDNN = PATHS["cpu"]
SHAPES = [(64, 128, 128), (64, 23, 128)]


def test_a_path_that_rounds_is_refused_however_fast_it_is(onednn_computes_in_bf16, capsys):
    choice = choose_fp32_matmuls("cpu", SHAPES, min_speedup=0.0)  # any speed would do: accuracy decides

    assert choice.chosen == DEFAULT
    assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    assert choice.errors["onednn"] > 100 * choice.errors["mkl"]  # bfloat16's 8 bits against fp32's 24
    assert choice.accurate == ["mkl"]
    printed = capsys.readouterr().out
    assert "torch's default (MKL)" in printed and "onednn" in printed and "refused" in printed


def test_an_accurate_path_is_chosen_when_it_is_faster(monkeypatch):
    # Both the speed and the accuracy are stubbed, so the test holds on any CPU: oneDNN's fp32 path is exact on
    # CPUs without AMX and bf16 on those with it (the next test checks that real refusal where it happens).
    monkeypatch.setattr(kernels, "_error", lambda ops: 1e-7)
    linear = F.linear

    def slow_default(*args):  # the default path made slower than any real difference
        if torch.backends.mkldnn.matmul.fp32_precision == "ieee":
            time.sleep(2e-3)
        return linear(*args)

    monkeypatch.setattr(F, "linear", slow_default)
    choice = choose_fp32_matmuls("cpu", SHAPES, verbose=False)

    assert choice.chosen == ONEDNN and choice.accurate == ["mkl", "onednn"]
    assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    assert choice.errors["onednn"] <= choice.tolerance == 10 * choice.errors["mkl"]


@pytest.mark.skipif(not torch.cpu._is_amx_tile_supported(), reason="only CPUs with AMX round oneDNN's fp32 to bf16")
def test_on_a_cpu_with_amx_the_real_onednn_path_rounds_and_is_refused():
    choice = choose_fp32_matmuls("cpu", SHAPES, min_speedup=0.0, verbose=False)

    assert choice.errors["onednn"] > 100 * choice.errors["mkl"]
    assert choice.chosen == DEFAULT and choice.accurate == ["mkl"]


def test_the_choice_is_the_fastest_accurate_path_it_measured():
    choice = choose_fp32_matmuls("cpu", SHAPES, verbose=False)

    assert choice.chosen.name in choice.accurate
    faster = [name for name in choice.accurate if choice.seconds[name] * 1.03 < choice.seconds["mkl"]]
    assert choice.chosen.name == (min(faster, key=choice.seconds.get) if faster else "mkl")
    (flag,) = choice.chosen.settings.values()
    assert torch.backends.mkldnn.matmul.fp32_precision == flag


def test_the_check_needs_shapes_and_known_paths():
    with pytest.raises(ValueError, match="at least one"):
        choose_fp32_matmuls("cpu", [])
    with pytest.raises(ValueError, match="no matmul paths for device type 'meta'"):
        choose_fp32_matmuls("meta", SHAPES)


def test_matmul_shapes_lists_each_linear_layer_s_forward_and_backward_products():
    critic = make_critic(obs_dim=17, action_dim=6, width=512)

    shapes = matmul_shapes(critic, batch_size=256)

    assert shapes[:3] == [(256, 23, 512), (256, 512, 23), (512, 256, 23)]
    assert (256, 512, 512) in shapes and (256, 512, 1) in shapes and len(shapes) == len(set(shapes))


@pytest.mark.parametrize("path", [DEFAULT, ONEDNN], ids=lambda p: p.name)
def test_the_update_at_the_authors_widths_matches_the_reference_on_each_accurate_path(path):
    # Same weights, batch and seed; 512-wide networks and batch 256, as the authors train. Tolerance as in
    # test_reference_update.py: rtol 1e-4, atol 1e-5 (the same sums in different orders).
    if path.name not in choose_fp32_matmuls("cpu", [(256, 512, 512), (256, 23, 512)], verbose=False).accurate:
        pytest.skip(f"{path.name} rounds on this machine; the choice never takes it")
    path.apply()
    torch.manual_seed(0)
    actor = make_actor(obs_dim=17, action_dim=6, hidden_sizes=(512, 512))
    loss = QSMLoss(actor, make_critic(obs_dim=17, action_dim=6, width=512))
    loss.make_value_estimator(gamma=0.99)
    batch = make_batch((256,), obs_dim=17, action_dim=6)
    params = [p for p in loss.parameters() if p.requires_grad]

    torch.manual_seed(1)
    out = loss(batch.clone())
    grads = torch.autograd.grad(out["loss_actor"] + out["loss_qvalue"], params)
    torch.manual_seed(1)
    actor_ref, qvalue_ref = ReferenceQSM(loss, gamma=0.99).losses(batch.clone())
    ref_grads = torch.autograd.grad(actor_ref + qvalue_ref, params)

    torch.testing.assert_close(out["loss_actor"], actor_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss_qvalue"], qvalue_ref, rtol=1e-4, atol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)
