"""Each speed option keeps the numbers of the plain path (tolerances stated per test)."""

import io

import pytest
import torch
from omegaconf import OmegaConf
from torchrl.objectives import SoftUpdate

from torchrl_qsm import QSMLoss

from _helpers import make_actor, make_batch, make_critic, script_module

compile_update = script_module("utils").compile_update
COMPILE_CFG = OmegaConf.create({"compile": {"mode": None}})


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


class Learner:
    """A small loss with the script's two Adams and the actor's learning-rate decay (``utils.make_optimizers``:
    over 4 updates here, so the actor's rate changes at every step and parts from the critics'), and
    ``update``: the script's update (qsm.py's ``make_update``, one graph under compile), or with ``plain=True``
    the TorchRL loop's backward(),
    Optimizer.step() and soft update."""

    def __init__(self, fused: bool = True, plain: bool = False) -> None:
        torch.manual_seed(0)
        self.loss = QSMLoss(make_actor(hidden_sizes=(64, 64)), make_critic())
        self.loss.make_value_estimator(gamma=0.99)
        self.target_updater = SoftUpdate(self.loss, tau=0.005)
        optim = {"lr": 1e-3, "fused_adam": fused, "actor_lr_decay_updates": 4, "bf16_matmuls": False}
        cfg = OmegaConf.create({"optim": optim})
        *self.optimizers, self.schedule = script_module("utils").make_optimizers(cfg, self.loss)
        self.update = (
            self.plain_update
            if plain
            else script_module("qsm").make_update(
                cfg, torch.device("cpu"), self.loss, self.optimizers, self.target_updater, None
            )
        )

    def plain_update(self, batch):
        out = self.loss(batch)
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.target_updater.step()
        return out.detach()

    def run(self, batches, update=None, seed=3):
        """``update`` (default: this learner's) on each batch, the schedule stepped after each, as the script does."""
        metrics = []
        for i, batch in enumerate(batches):
            torch.manual_seed(seed + i)
            metrics.append((update or self.update)(batch.clone()))
            self.schedule.step()
        return metrics

    def states(self):
        """Every parameter and buffer (targets included), every optimizer's moments and step counts, the rates."""
        moments = [v for optimizer in self.optimizers for state in optimizer.state.values() for v in state.values()]
        rates = [group["lr"] for optimizer in self.optimizers for group in optimizer.param_groups]
        return [*self.loss.state_dict().values(), *moments, *rates]

    def load(self, other: "Learner") -> None:
        """``other``'s weights, optimizer states and schedule, saved and loaded as a checkpoint is."""
        buffer = io.BytesIO()
        torch.save(
            [other.loss.state_dict(), *(o.state_dict() for o in other.optimizers), other.schedule.state_dict()], buffer
        )
        buffer.seek(0)
        loss, *optimizers, schedule = torch.load(buffer)
        self.loss.load_state_dict(loss)
        for optimizer, state in zip(self.optimizers, optimizers, strict=True):
            optimizer.load_state_dict(state)
        self.schedule.load_state_dict(schedule)


def assert_same_run(got, expected, got_metrics, expected_metrics, rtol, atol):
    for a, b in zip(got_metrics, expected_metrics, strict=True):
        torch.testing.assert_close(a.to_dict(), b.to_dict(), rtol=rtol, atol=atol)
    for a, b in zip(got.states(), expected.states(), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("fused", [True, False])
def test_the_one_graph_update_takes_the_plain_updates_steps(fused):
    # autograd.grad + torch's functional Adam on the optimizers' own state, against backward() + Optimizer.step():
    # the same kernels in the same order, so the same numbers to float32 rounding (rtol 1e-5, atol 1e-6)
    batches = [make_batch((64,)) for _ in range(4)]
    ours, plain = Learner(fused), Learner(fused, plain=True)
    assert_same_run(ours, plain, ours.run(batches), plain.run(batches), rtol=1e-5, atol=1e-6)
    assert all(state["step"].item() == len(batches) for o in ours.optimizers for state in o.state.values())
    actor_lr, critic_lr = (o.param_groups[0]["lr"].item() for o in ours.optimizers)
    assert actor_lr < critic_lr == pytest.approx(1e-3)  # the decay reached the actor's steps, not the critics'


@pytest.mark.parametrize("fused", [True, False])
def test_after_a_resume_the_first_update_takes_the_plain_updates_step(fused):
    # a resumed run's first update finds Adam's state already there (loaded) and steps it functionally
    batches = [make_batch((64,)) for _ in range(4)]
    before = Learner(fused, plain=True)
    before.run(batches[:2])
    ours, plain = Learner(fused), Learner(fused, plain=True)
    ours.load(before)
    plain.load(before)
    assert_same_run(ours, plain, ours.run(batches[2:]), plain.run(batches[2:]), rtol=1e-5, atol=1e-6)


def test_after_its_first_call_the_update_traces_as_one_graph():
    # fullgraph=True fails on any graph break; the first call creates Adam's state through Optimizer.step
    learner = Learner()
    batch = make_batch((32,))
    learner.run([batch])
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        learner.run([batch], update=torch.compile(learner.update, fullgraph=True, backend="eager"))
    assert all(state["step"].item() == 2 for o in learner.optimizers for state in o.state.values())


def test_the_inductor_compiled_update_takes_the_eager_steps():
    # compile.compile=true runs the update through utils.compile_update: inductor, one graph, Adam fused into
    # its kernels, the backward recomputing pointwise results (the ReLU critics' masks) on CPU. fallback_random
    # makes inductor draw the eager random numbers; it fuses and reorders sums: rtol 1e-4, atol 1e-5. The
    # actor's learning rate changes between the calls: the compiled graph reads it, it does not bake it in.
    batches = [make_batch((64,)) for _ in range(3)]
    with torch._inductor.config.patch(fallback_random=True):
        eager = Learner()
        eager_metrics = eager.run(batches)
        compiled = Learner()
        compiled_metrics = compiled.run(
            batches, update=compile_update(compiled.update, COMPILE_CFG, torch.device("cpu"))
        )
    assert_same_run(compiled, eager, compiled_metrics, eager_metrics, rtol=1e-4, atol=1e-5)
