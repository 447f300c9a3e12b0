"""Each speed option keeps the numbers of the plain path (tolerances stated per test)."""

import pytest
import torch
from omegaconf import OmegaConf
from torchrl.objectives import SoftUpdate

from torchrl_qsm import QSMLoss

from _helpers import make_actor, make_batch, make_critic, script_module

compile_update = script_module("utils").compile_update
COMPILE_CFG = OmegaConf.create({"compile": {"mode": None, "recompute_pointwise": None}})


def make_loss(**kwargs):
    loss = QSMLoss(make_actor(hidden_sizes=(64, 64)), make_critic(), **kwargs)
    loss.make_value_estimator(gamma=0.99)
    SoftUpdate(loss, tau=0.005)
    return loss


def test_the_whole_loss_traces_as_one_graph_and_gives_the_eager_numbers():
    # fullgraph=True fails on any graph break: the chain, torch.func.grad through the vmapped
    # critics and the value estimator all trace; the eager backend checks the trace cheaply.
    loss = make_loss()
    batch = make_batch((32,))
    torch.manual_seed(1)
    eager = loss(batch.clone())
    torch.manual_seed(1)
    traced = torch.compile(loss, fullgraph=True, backend="eager")(batch.clone())
    for key in ("loss_actor", "loss_qvalue"):
        torch.testing.assert_close(traced[key], eager[key], rtol=1e-5, atol=1e-6)


def test_bf16_matmuls_keep_the_losses_within_two_percent():
    # bfloat16 has 8 bits of mantissa; the schedule, the losses' reductions and the optimizer stay fp32
    loss = make_loss()
    batch = make_batch((256,))
    torch.manual_seed(2)
    fp32 = loss(batch.clone())
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss(batch.clone())
    for key in ("loss_actor", "loss_qvalue"):
        assert bf16[key].dtype == torch.float32
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=0.02), key


def test_fused_adam_takes_the_same_steps_as_the_loop_adam():
    # optim.fused_adam, through the script's own optimizer factory
    adam = script_module("utils").adam
    batch = make_batch((64,))
    losses = []
    for fused in (False, True):
        torch.manual_seed(0)
        loss = make_loss()
        params = [p for p in loss.parameters() if p.requires_grad]
        optimizer = adam(OmegaConf.create({"optim": {"lr": 1e-3, "fused_adam": fused}}), params)
        assert bool(optimizer.defaults["fused"]) is fused
        for step in range(3):
            torch.manual_seed(10 + step)
            out = loss(batch.clone())
            (out["loss_actor"] + out["loss_qvalue"]).backward()
            optimizer.step()
            optimizer.zero_grad()
        losses.append(params)
    for plain, fused in zip(*losses):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def make_learner(fused: bool = True):
    """A small loss, its two Adams as the script makes them, and its one-graph update (update.py)."""
    torch.manual_seed(0)
    loss = QSMLoss(make_actor(hidden_sizes=(64, 64)), make_critic())
    loss.make_value_estimator(gamma=0.99)
    target_updater = SoftUpdate(loss, tau=0.005)
    cfg = OmegaConf.create({"optim": {"lr": 1e-3, "fused_adam": fused}})
    adam = script_module("utils").adam
    optimizers = [
        adam(cfg, loss.actor_network_params.values(True, True)),
        adam(cfg, loss.qvalue_network_params.values(True, True)),
    ]
    return loss, optimizers, script_module("update").make_update(loss, optimizers, target_updater)


def plain_update(loss, optimizers):
    """The TorchRL loop's update: backward, each optimizer's step, the target soft update."""
    target_updater = SoftUpdate(loss, tau=0.005)

    def update(batch):
        out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        target_updater.step()
        return out.detach()

    return update


def states(loss, optimizers):
    """Every parameter and buffer (targets included) and every optimizer's moments and step counts."""
    moments = [value for optimizer in optimizers for state in optimizer.state.values() for value in state.values()]
    return [*loss.state_dict().values(), *moments]


def run(update, batches, seed=3):
    metrics = []
    for i, batch in enumerate(batches):
        torch.manual_seed(seed + i)
        metrics.append(update(batch.clone()))
    return metrics


@pytest.mark.parametrize("fused", [True, False])
def test_the_one_graph_update_takes_the_plain_updates_steps(fused):
    # autograd.grad + torch's functional Adam on the optimizers' own state, against backward() + Optimizer.step():
    # the same kernels in the same order, so the same numbers to float32 rounding (rtol 1e-5, atol 1e-6)
    batches = [make_batch((64,)) for _ in range(4)]
    loss, optimizers, update = make_learner(fused)
    ours = run(update, batches)
    reference_loss, reference_optimizers, _ = make_learner(fused)
    plain = run(plain_update(reference_loss, reference_optimizers), batches)
    for got, expected in zip(ours, plain, strict=True):
        torch.testing.assert_close(got.to_dict(), expected.to_dict(), rtol=1e-5, atol=1e-6)
    for got, expected in zip(states(loss, optimizers), states(reference_loss, reference_optimizers), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert all(state["step"].item() == len(batches) for o in optimizers for state in o.state.values())


def test_after_its_first_call_the_update_traces_as_one_graph():
    # fullgraph=True fails on any graph break; the first call creates Adam's state through Optimizer.step
    loss, optimizers, update = make_learner()
    batch = make_batch((32,))
    update(batch.clone())
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch.compile(update, fullgraph=True, backend="eager")(batch.clone())
    assert all(state["step"].item() == 2 for o in optimizers for state in o.state.values())


def test_the_inductor_compiled_update_takes_the_eager_steps():
    # compile.compile=true runs the update through utils.compile_update: inductor, one graph, Adam fused into
    # its kernels, the backward recomputing pointwise results (the ReLU critics' masks) on CPU. fallback_random
    # makes inductor draw the eager random numbers; it fuses and reorders sums: rtol 1e-4, atol 1e-5.
    batches = [make_batch((64,)) for _ in range(3)]
    with torch._inductor.config.patch(fallback_random=True):
        eager_loss, eager_optimizers, eager_update = make_learner()
        eager = run(eager_update, batches)
        loss, optimizers, update = make_learner()
        compiled = run(compile_update(update, COMPILE_CFG, torch.device("cpu")), batches)
    for got, expected in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got.to_dict(), expected.to_dict(), rtol=1e-4, atol=1e-5)
    for got, expected in zip(states(loss, optimizers), states(eager_loss, eager_optimizers), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
