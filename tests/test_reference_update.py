"""The library's (fast) QSM update against a straightforward eager one written from the paper (reference_qsm.py).

Same weights, batch and seed: the losses and every gradient must agree to float32 rounding
(rtol 1e-4, atol 1e-5: the two compute the same sums in different orders).
"""

import pytest
import torch

from torchrl_qsm import QSMLoss

from _helpers import make_actor, make_batch, make_critic
from reference_qsm import ReferenceQSM


def trainable(loss):
    return {
        **{("actor",) + k: v for k, v in loss.actor_network_params.items(True, True) if v.requires_grad},
        **{("critic",) + k: v for k, v in loss.qvalue_network_params.items(True, True)},
    }


@pytest.mark.parametrize("bound", [1.0, 2.0])
@pytest.mark.parametrize("deactivate_vmap", [False, True])
def test_fast_update_matches_the_reference_losses_and_gradients(bound, deactivate_vmap):
    loss = QSMLoss(make_actor(bound=bound), make_critic(), alpha=5.0, deactivate_vmap=deactivate_vmap)
    loss.make_value_estimator(gamma=0.97)
    batch = make_batch((64,), bound=bound)
    batch["next", "terminated"][::5] = True
    params = trainable(loss)

    torch.manual_seed(123)
    out = loss(batch.clone())
    fast = {"actor": out["loss_actor"], "qvalue": out["loss_qvalue"]}
    fast_grads = {
        k: g for k, g in zip(params, torch.autograd.grad(fast["actor"] + fast["qvalue"], list(params.values())))
    }

    torch.manual_seed(123)
    actor_ref, qvalue_ref = ReferenceQSM(loss, gamma=0.97).losses(batch.clone())
    ref_grads = {k: g for k, g in zip(params, torch.autograd.grad(actor_ref + qvalue_ref, list(params.values())))}

    torch.testing.assert_close(fast["actor"], actor_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast["qvalue"], qvalue_ref, rtol=1e-4, atol=1e-5)
    for key in params:
        torch.testing.assert_close(fast_grads[key], ref_grads[key], rtol=1e-4, atol=1e-5, msg=str(key))
