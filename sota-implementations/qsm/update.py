"""Adam's step on gradients given as tensors, so that ``torch.compile`` captures qsm.py's update whole: both
losses, their gradients (``torch.autograd.grad``), one Adam step per optimizer and the target critics' soft update.

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

from collections.abc import Sequence

import torch
from torch.optim.adam import adam as functional_adam


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


def adam_steps(optimizers: Sequence[torch.optim.Adam], grads: Sequence[torch.Tensor]) -> None:
    """One Adam step of each optimizer with ``grads`` (one per parameter, the optimizers' parameters in order).

    The first step of an optimizer goes through ``.grad`` and ``Optimizer.step()``, which creates Adam's state
    the way torch does (eager: the update's first call, before it compiles); later steps are :func:`adam_step`.
    """
    grads = iter(grads)
    with torch.no_grad():
        for optimizer in optimizers:
            own = [next(grads) for group in optimizer.param_groups for _ in group["params"]]
            if len(optimizer.state) == 0:
                params = [p for group in optimizer.param_groups for p in group["params"]]
                for param, grad in zip(params, own, strict=True):  # laid out as backward() lays them (adam_step)
                    param.grad = grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                adam_step(optimizer, own)
    if not torch.compiler.is_compiling() and any(
        p.device.type == "cuda" for o in optimizers for g in o.param_groups for p in g["params"]
    ):
        mark_state_static(optimizers)


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
