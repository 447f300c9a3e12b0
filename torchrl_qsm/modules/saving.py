"""A trained ``DiffusionActor`` to a file and back, and its sampler as a program that needs only torch."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

ACTOR_FORMAT = "torchrl_qsm.actor/1"
EXPORT_METADATA = "torchrl_qsm.json"  # the exported program's extra file: its shapes and bounds


def actor_record(actor: nn.Module) -> dict:
    """What a file holds to give ``actor`` back (:func:`load_actor`): a CPU copy of the module, tagged.

    The training script puts one in each checkpoint (``checkpoint["actor"]``). The module is pickled, so
    it loads with this library (the same or a compatible version) installed; for a file that needs only
    torch, use :func:`export_policy`.
    """
    from torchrl_qsm import __version__

    return {"format": ACTOR_FORMAT, "torchrl_qsm": __version__, "actor": copy.deepcopy(actor).cpu()}


def save_actor(actor: nn.Module, path: str | os.PathLike) -> Path:
    """Writes :func:`actor_record` of ``actor`` to ``path`` (through a temporary file, renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(actor_record(actor), tmp)
    os.replace(tmp, path)
    return path


def load_actor(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The actor saved in ``path``: a file of :func:`save_actor`, or a checkpoint of the training script
    (``sota-implementations/qsm/qsm.py``), which holds one. Ready for ``env.rollout(steps, actor)``.

    The file is unpickled (``torch.load(weights_only=False)``): load only files you trust.
    """
    saved = torch.load(path, map_location=device, weights_only=False)
    record = saved.get("actor") if isinstance(saved, dict) and saved.get("format") != ACTOR_FORMAT else saved
    if not isinstance(record, dict) or record.get("format") != ACTOR_FORMAT:
        raise ValueError(
            f"{path} holds no torchrl_qsm actor: load_actor reads a file of torchrl_qsm.save_actor or a checkpoint "
            "of sota-implementations/qsm/qsm.py (checkpoints hold one since torchrl_qsm 0.1.0's export support)."
        )
    return record["actor"].to(device)


class SampledPolicy(nn.Module):
    """``(observation [B, obs_dim], noise [T + 1, B, A]) -> action [B, A]``: the chain's sample for that noise.

    ``noise[0]`` is the chain's start ``x_T`` and ``noise[1:]`` the noise of its steps, all ``N(0, I)``:
    draw ``torch.randn(T + 1, B, A)`` for a sample of the policy (the same draw the actor makes), or pass
    zeros for the noise-free chain from ``x_T = 0`` (the actor's ``DETERMINISTIC`` action, which injects
    no step noise: zeros are the same). Wraps a policy module with ``sample_from`` (``DiffusionPolicy``).
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(policy, "sample_from", None)):
            raise TypeError(
                f"{type(policy).__name__} has no sample_from(observation, noise); export_policy takes a "
                "torchrl_qsm DiffusionActor (or its DiffusionPolicy)."
            )
        self.policy = policy

    def forward(self, observation: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.policy.sample_from(observation, noise)


def export_policy(actor: nn.Module, path: str | os.PathLike) -> Path:
    """Writes the actor's sampler as a ``torch.export`` program (``.pt2``), any batch size.

    Load it where only torch is installed::

        program = torch.export.load("policy.pt2").module()
        action = program(observation, torch.randn(T + 1, B, A))   # observation [B, obs_dim] -> action [B, A]

    The sizes and bounds are in the program's extra file ``torchrl_qsm.json``
    (``torch.export.load(path, extra_files={"torchrl_qsm.json": ""})``).
    """
    policy = copy.deepcopy(getattr(actor, "module", actor)).cpu().eval()
    wrapper = SampledPolicy(policy)
    num_steps, action_dim = policy.num_steps, policy.action_dim
    obs_dim = policy.score_network.obs_dim
    batch = torch.export.Dim("batch", min=1)
    example = (torch.zeros(2, obs_dim), torch.zeros(num_steps + 1, 2, action_dim))
    with torch.no_grad():
        program = torch.export.export(
            wrapper, example, dynamic_shapes={"observation": {0: batch}, "noise": {1: batch}}, strict=False
        )
    low, high = policy.denormalize(-torch.ones(action_dim)), policy.denormalize(torch.ones(action_dim))
    metadata = {
        "observation": [None, obs_dim],
        "noise": [num_steps + 1, None, action_dim],
        "action": [None, action_dim],
        "num_steps": num_steps,
        "action_low": low.tolist(),
        "action_high": high.tolist(),
        "noise_meaning": "noise[0] = x_T, noise[1:] = each step's z_t, N(0, I); zeros: the noise-free chain",
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.export.save(program, tmp, extra_files={EXPORT_METADATA: json.dumps(metadata)})
    os.replace(tmp, path)
    return path
