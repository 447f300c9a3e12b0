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


def test_the_inductor_compiled_update_gives_the_eager_losses_and_gradients():
    # compile.compile=true runs the update through utils.compile_update: inductor, with the backward
    # recomputing pointwise results (the ReLU critics' masks) instead of saving them on CPU. fallback_random
    # makes inductor draw the eager random numbers; it fuses and reorders sums: rtol 1e-4, atol 1e-5.
    loss = make_loss()
    params = [p for p in loss.parameters() if p.requires_grad]
    batch = make_batch((64,))

    def update(batch):
        out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        return out.detach()

    runs = []
    with torch._inductor.config.patch(fallback_random=True):
        for step in (update, compile_update(update, COMPILE_CFG, torch.device("cpu"), warmup=0)):
            torch.manual_seed(3)
            out = step(batch.clone())
            runs.append((out, [p.grad for p in params]))
            loss.zero_grad(set_to_none=True)
    (eager, eager_grads), (compiled, compiled_grads) = runs
    assert all(grad is not None for grad in eager_grads + compiled_grads)
    for key in ("loss_actor", "loss_qvalue"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
