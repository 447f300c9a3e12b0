"""One QSM update as one function that ``torch.compile`` captures whole: both losses, their gradients, one
Adam step per optimizer and the target critics' soft update.

The plain TorchRL update (``loss.backward()``, ``optimizer.step()``, ``zero_grad()``, ``updater.step()``)
splits under ``torch.compile`` into about 14 graphs: dynamo breaks at ``backward()`` and, on purpose, around
every ``Optimizer.step`` (pytorch/pytorch#104053), and each graph boundary costs a guard check and Python
between kernels. Here the gradients come from ``torch.autograd.grad`` (traced with dynamo's
``trace_autograd_ops``, which ``utils.compile_update`` turns on) and each optimizer's step runs as torch's
functional ``torch.optim.adam.adam`` on the optimizer's own state, so the whole update is one graph and
inductor fuses Adam's elementwise work into its kernels. The optimizers stay ``torch.optim.Adam`` objects:
their state (moments, step counts, learning rate) is what checkpoints save and restore, and the numbers are
Adam's (``tests/test_fast_paths.py`` compares the two paths step by step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch.optim.adam import adam as functional_adam
from torchrl.objectives import LossModule, SoftUpdate

from torchrl_qsm import CurvatureAlpha


def adam_step(optimizer: torch.optim.Adam, grads: Sequence[torch.Tensor]) -> None:
    """``optimizer.step()`` with ``grads`` (one per parameter, in ``param_groups`` order) in place of ``.grad``.

    Fused (``fused=True``) where the optimizer is and the call is eager; under ``torch.compile`` the
    single-tensor form, which inductor fuses (torch's fused kernel is opaque to the compiler). The fused CPU
    kernel reads a gradient as if it had its parameter's strides (torch 2.13: a transposed gradient gives a
    wrong step), so gradients are first laid out as their parameters, as ``.grad`` accumulation does. The
    state must exist: torch's Adam creates it at its first ``step()``.
    """
    grads = iter(grads)
    for group in optimizer.param_groups:
        fused = bool(group["fused"]) and not torch.compiler.is_compiling()
        params = group["params"]
        state = [optimizer.state[p] for p in params]
        group_grads = [next(grads) for _ in params]
        if fused:
            group_grads = [
                g if g.stride() == p.stride() else torch.empty_like(p).copy_(g) for p, g in zip(params, group_grads)
            ]
        functional_adam(
            params,
            group_grads,
            [s["exp_avg"] for s in state],
            [s["exp_avg_sq"] for s in state],
            [s["max_exp_avg_sq"] for s in state] if group["amsgrad"] else [],
            [s["step"] for s in state],
            foreach=False,
            fused=fused,
            capturable=group["capturable"],
            differentiable=False,
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )


def make_update(
    loss: LossModule,
    optimizers: Sequence[torch.optim.Adam],
    target_updater: SoftUpdate,
    bf16_matmuls: bool = False,
    alpha_updater: CurvatureAlpha | None = None,
) -> Callable[[TensorDictBase], TensorDict]:
    """``update(batch) -> metrics``: one step on the sum of ``loss``'s ``loss_*`` outputs (detached metrics out).

    ``alpha_updater`` (``alpha=auto`` with the gradient target) commits the curvature the loss measured, after
    the target update, as the target updater steps the target critics.

    ``bf16_matmuls``: the loss runs under bfloat16 autocast (matmuls in bf16; the schedule, the losses'
    reductions and the optimizer stay fp32). The first call is the plain update (``backward()`` and
    ``Optimizer.step()``), which creates Adam's state the way torch's Adam does; once every optimizer has
    its state, the gradients come from ``torch.autograd.grad`` and the steps from :func:`adam_step`.
    """
    params = [p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]]
    device_type = params[0].device.type

    def losses(batch: TensorDictBase) -> tuple[torch.Tensor, TensorDict]:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16_matmuls):
            out = loss(batch)
        total = sum(value for key, value in out.items() if key.startswith("loss_"))
        return total, out.detach()  # detached before the gradients: a traced autograd.grad must not share them

    def update(batch: TensorDictBase) -> TensorDict:
        total, metrics = losses(batch)
        if any(len(optimizer.state) == 0 for optimizer in optimizers):
            total.backward()
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            grads = torch.autograd.grad(total, params)
            with torch.no_grad():
                start = 0
                for optimizer in optimizers:
                    count = sum(len(group["params"]) for group in optimizer.param_groups)
                    adam_step(optimizer, grads[start : start + count])
                    start += count
        if device_type == "cuda" and not torch.compiler.is_compiling():
            mark_state_static(optimizers)
        target_updater.step()
        if alpha_updater is not None:
            alpha_updater.step(metrics["action_curvature"])
        return metrics

    return update


def mark_state_static(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Marks every optimizer state tensor as a static input for ``torch.compile``.

    A CUDA graph replays fixed addresses: inductor skips CUDA graphs for a graph that writes to an input it
    does not know to be static ("mutated inputs"). Dynamo marks an optimizer's state static when it traces
    ``Optimizer.step`` (``torch/_dynamo/variables/optimizer.py``); :func:`adam_step` bypasses that, so the
    eager calls before compiling (the first update, or the first after a resume) mark it here.
    """
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    torch._dynamo.mark_static_address(value)
