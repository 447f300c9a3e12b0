"""A trained ``DiffusionActor`` to a file and back, and its sampler as a program that needs only torch.

Loading never runs code from a file. A saved actor is its weights (a state dict) and a record of plain
values (sizes, keys, bounds, schedule, network options) from which this library builds the actor again,
read with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only. A file that
pickles anything else (a module, or a call planted to run on loading) is refused with
:class:`UnsafeFileError` before any of it runs.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchrl.checkpoint import Checkpoint, CheckpointError, JSONCheckpointAdapter, StateDictCheckpointAdapter

ACTOR_FORMAT = "torchrl_qsm.actor/2"
EXPORT_METADATA = "torchrl_qsm.json"  # the exported program's extra file: its shapes and bounds
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class UnsafeFileError(ValueError):
    """A file that loading would run code from: it pickles Python objects, not only tensors and plain
    containers. ``globals`` names the functions and classes it pickles (read without running it). Nothing of
    the file was run."""

    def __init__(self, message: str, globals: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.globals = globals


class ActorFileError(ValueError):
    """A file that holds no actor this library can build: not an actor file, or a record it cannot use."""


def _pickled_globals(path: str | os.PathLike) -> list[str] | None:
    """The functions and classes a pickle (a ``torch.save`` zip or a bare pickle) names, read without running it;
    ``None`` if the file is not a pickle at all."""
    try:
        if zipfile.is_zipfile(path):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        names, strings = set(), []
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST"):
                    names.add(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
        return sorted(names)
    except Exception:  # not a pickle (or a damaged one)
        return None


def load_weights_only(path: str | os.PathLike, map_location=None):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    Raises :class:`UnsafeFileError` for a pickle that holds anything else, naming what it pickles, with the
    fix for a file of an earlier torchrl_qsm (which pickled whole modules). Other errors (a file that is no
    pickle, which torch cannot read at all) pass through unchanged.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _pickled_globals(path)
        if names is None:
            raise
        reason = (str(err).partition("WeightsUnpickler error:")[2].strip() or str(err)).splitlines()[0]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        what = f"it pickles {shown}" if names else f"torch's weights-only reader refused it: {reason}"
        message = (
            f"{path} was refused: loading it would run code from the file ({what}). torchrl_qsm reads weights "
            "only (tensors and plain containers, torch.load(weights_only=True)) and ran nothing of it."
        )
        if any(name.startswith("torchrl_qsm.") for name in names):
            message += (
                " It looks like a file of torchrl_qsm 0.1.0, which pickled whole modules; this version does not "
                "unpickle them. Fix: for a checkpoint of the training script, resume or evaluate it with the version "
                "that wrote it, or start a new run; for a file of save_actor that you trust, load it with that "
                "version and torch.save its actor.state_dict(), then with this version build the same "
                "DiffusionActor, load_state_dict() and save_actor() it."
            )
        raise UnsafeFileError(message, tuple(names)) from None


class WeightsOnlyStateDictAdapter(StateDictCheckpointAdapter):
    """``torchrl.checkpoint``'s state-dict adapter, writing ``state.pt`` (``torch.save`` of a state dict: tensors and
    plain containers) and reading only that, with :func:`load_weights_only`.

    TorchRL's own reader also accepts a tensordict folder in its place, and tensordict 0.14 unpickles the
    non-tensor fields of such a folder (``allow_pickle`` defaults to allowed, with a warning): a crafted
    checkpoint could run code through it. This one refuses anything but ``state.pt``.
    """

    def __init__(self) -> None:
        super().__init__(payload_format="torch")

    def load(self, component, path: Path, *, map_location, tensor_load_kwargs, args, kwargs) -> None:
        state_file = path / self.state_torch
        if not state_file.is_file() or state_file.is_symlink():
            raise UnsafeFileError(
                f"{path} holds no {self.state_torch}: torchrl_qsm reads a state dict only from a torch file, "
                "weights-only (other payloads, such as a tensordict folder, may unpickle), so it was refused."
            )
        component.load_state_dict(load_weights_only(state_file, map_location), *args, **kwargs)


def weights_only_checkpoint(**components) -> Checkpoint:
    """``torchrl.checkpoint.Checkpoint(**components)`` that reads no pickle: components with
    ``state_dict``/``load_state_dict`` through :class:`WeightsOnlyStateDictAdapter`, the others as JSON."""
    checkpoint = Checkpoint()
    for name, value in components.items():
        if callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
            checkpoint.register(name, value, adapter=WeightsOnlyStateDictAdapter())
        elif isinstance(value, (dict, list, str, int, float, bool)) or value is None:
            checkpoint.register(name, value, adapter=JSONCheckpointAdapter())
        else:
            raise TypeError(f"Checkpoint component {name!r}: a {type(value).__name__} is no state dict, nor JSON.")
    return checkpoint


def load_checkpoint_components(checkpoint: Checkpoint, path, components, map_location=None):
    """``checkpoint.load(path, components=...)``, with a refusal of :func:`load_weights_only` raised as itself
    (:class:`UnsafeFileError`) rather than inside TorchRL's ``CheckpointError``."""
    try:
        return checkpoint.load(path, components=components, map_location=map_location)
    except CheckpointError as err:
        if isinstance(err.__cause__, UnsafeFileError):
            raise err.__cause__ from None
        raise


def _activations() -> dict[str, type[nn.Module]]:
    """The activations a record may name: torch.nn's and the library's ``Mish``, by name."""
    from torchrl_qsm.diffusion.activations import Mish

    found = {
        f"torch.nn.{name}": cls
        for name, cls in vars(torch.nn.modules.activation).items()
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls is not nn.Module
    }
    return found | {"torchrl_qsm.Mish": Mish}


def _json_key(key):
    return list(key) if isinstance(key, tuple) else key


def _nested_key(key):
    return tuple(key) if isinstance(key, list) else key


def actor_record(actor: nn.Module) -> dict:
    """What rebuilds ``actor``, a :class:`~torchrl_qsm.DiffusionActor` with an :class:`~torchrl_qsm.EpsilonNetwork`,
    as plain values that JSON can hold: its sizes, keys, action bounds, noise schedule, sampler options and
    network options. Not its weights (:func:`actor_state` holds both); :func:`build_actor` reads it.

    Raises ``TypeError`` for an actor it cannot describe: another score network, an activation that is not
    torch.nn's or the library's, a lazy network that has not seen an observation yet.
    """
    from torchrl_qsm.diffusion.networks import EpsilonNetwork
    from torchrl_qsm.modules.actor import DiffusionActor

    if not isinstance(actor, DiffusionActor):
        raise TypeError(f"save_actor saves a torchrl_qsm DiffusionActor, got {type(actor).__name__}.")
    policy = actor.module
    network = policy.score_network
    if type(network) is not EpsilonNetwork:
        raise TypeError(
            "save_actor rebuilds the actor from a record, which knows torchrl_qsm's EpsilonNetwork only; this "
            f"actor's score network is a {type(network).__name__}. Save its state_dict() and rebuild it with your "
            "own code, or export_policy(actor, path) for a program that needs only torch."
        )
    options = dict(network.options)
    activation = options.pop("activation")
    name = next((name for name, cls in _activations().items() if cls is activation), None)
    if name is None:
        raise TypeError(
            f"save_actor records the activation by name; {activation.__module__}.{activation.__name__} is neither "
            "torch.nn's nor torchrl_qsm's Mish."
        )
    obs_dim = network.obs_dim
    if obs_dim is None:
        if isinstance(network.state_proj, nn.modules.lazy.LazyModuleMixin):
            raise TypeError("The actor's network has not seen an observation yet (obs_dim=None): run a forward first.")
        obs_dim = network.state_proj.in_features
    spec = actor.spec[actor.out_keys[0]]
    return {
        "action_dim": policy.action_dim,
        "obs_dim": obs_dim,
        "in_keys": [_json_key(key) for key in actor.in_keys],
        "out_keys": [_json_key(key) for key in actor.out_keys],
        "action_low": spec.space.low.tolist(),
        "action_high": spec.space.high.tolist(),
        "action_dtype": str(spec.dtype).removeprefix("torch."),
        "dtype": str(network.action_proj.weight.dtype).removeprefix("torch."),
        "schedule": {"kind": policy.schedule.kind, "num_steps": policy.num_steps, "options": policy.schedule.options},
        "clip_sample": policy.clip_sample,
        "temperature": policy.temperature,
        "network": {
            "class": "EpsilonNetwork",
            "activation": name,
            **{key: list(value) if isinstance(value, tuple) else value for key, value in options.items()},
        },
    }


def actor_state(actor: nn.Module) -> dict:
    """What a file of :func:`save_actor` holds to give ``actor`` back (:func:`load_actor`): the format tag, its
    :func:`actor_record` and its weights (a CPU state dict). The training script's checkpoints hold the same two
    as ``torchrl.checkpoint`` components (``actor_record``, ``actor``)."""
    from torchrl_qsm import __version__

    return {
        "format": ACTOR_FORMAT,
        "torchrl_qsm": __version__,
        "record": actor_record(actor),
        "state_dict": {name: value.detach().cpu().clone() for name, value in actor.state_dict().items()},
    }


def _dtype(name: object) -> torch.dtype:
    if name not in _FLOAT_DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {_FLOAT_DTYPES}")
    return getattr(torch, name)


def build_actor(record: Mapping) -> nn.Module:
    """A new :class:`~torchrl_qsm.DiffusionActor` (fresh weights, on the CPU) from an :func:`actor_record`.

    Only the library's constructors run, with the record's values; the activation is looked up by name among
    torch.nn's and the library's. Raises :class:`ActorFileError` naming what in the record is wrong.
    """
    from torchrl.data import Bounded

    from torchrl_qsm.diffusion.networks import EpsilonNetwork
    from torchrl_qsm.diffusion.schedules import NoiseSchedule
    from torchrl_qsm.modules.actor import DiffusionActor

    try:
        network = dict(record["network"])
        if network.pop("class") != "EpsilonNetwork":
            raise ValueError("the network is not an EpsilonNetwork")
        activation = network.pop("activation")
        if activation not in _activations():
            raise ValueError(f"the activation {activation!r} is neither torch.nn's nor torchrl_qsm's")
        schedule = record["schedule"]
        kind, num_steps, schedule_options = schedule["kind"], schedule["num_steps"], dict(schedule["options"])
        action_dim, obs_dim = record["action_dim"], record["obs_dim"]
        action_dtype = _dtype(record["action_dtype"])
        low = torch.tensor(record["action_low"], dtype=action_dtype)
        high = torch.tensor(record["action_high"], dtype=action_dtype)
        eps_network = EpsilonNetwork(
            action_dim,
            obs_dim,
            num_steps=num_steps,
            activation=_activations()[activation],
            **{key: tuple(value) if isinstance(value, list) else value for key, value in network.items()},
        )
        actor = DiffusionActor(
            action_dim,
            obs_dim,
            eps_network,
            num_steps,
            in_keys=[_nested_key(key) for key in record["in_keys"]],
            out_keys=[_nested_key(key) for key in record["out_keys"]],
            spec=Bounded(low, high, (action_dim,), dtype=action_dtype),
            schedule=kind,
            clip_sample=record["clip_sample"],
            temperature=record["temperature"],
        )
        if schedule_options:  # e.g. the linear schedule's betas
            actor.module.schedule = NoiseSchedule(num_steps, kind, **schedule_options)
        dtype = _dtype(record["dtype"])
        return actor if dtype == torch.float32 else actor.to(dtype)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ActorFileError(f"The actor record cannot be built ({type(err).__name__}: {err}).") from None


def actor_from_state(state: Mapping, device: torch.device | str = "cpu") -> nn.Module:
    """The actor of an :func:`actor_state` (a file's or a checkpoint's ``"actor"``): built from its record by
    :func:`build_actor`, its weights loaded (strictly), on ``device``."""
    if not isinstance(state, Mapping) or state.get("format") != ACTOR_FORMAT:
        found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise ActorFileError(f"This is not a torchrl_qsm actor of format {ACTOR_FORMAT!r} (found {found!r}).")
    actor = build_actor(state["record"])
    try:
        actor.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise ActorFileError(f"The actor's weights do not fit its record: {err}") from None
    return actor.to(device)


def save_actor(actor: nn.Module, path: str | os.PathLike) -> Path:
    """Writes :func:`actor_state` of ``actor`` to ``path`` (through a temporary file, renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(actor_state(actor), tmp)
    os.replace(tmp, path)
    return path


def _checkpoint_actor(path: Path) -> nn.Module:
    """The actor of a ``torchrl.checkpoint`` checkpoint with ``actor_record`` (JSON) and ``actor`` (state dict)
    components, as the training script writes them; a folder of rotated checkpoints gives its newest."""
    from torchrl.checkpoint import CheckpointRotation

    if not Checkpoint.is_checkpoint(path):
        latest = [CheckpointRotation(d, keep_last=1).latest() for d in (path, path / "checkpoints") if d.is_dir()]
        path = next((found for found in latest if found is not None), path)
    if not Checkpoint.is_checkpoint(path) or "actor_record" not in Checkpoint.manifest(path)["components"]:
        raise ActorFileError(
            f"{path} holds no torchrl_qsm actor: load_actor reads a file of torchrl_qsm.save_actor, a checkpoint of "
            "sota-implementations/qsm/qsm.py, or a run folder of it (its newest checkpoint)."
        )
    record: dict = {}
    try:
        load_checkpoint_components(weights_only_checkpoint(actor_record=record), path, ["actor_record"])
        actor = build_actor(record)
        load_checkpoint_components(weights_only_checkpoint(actor=actor), path, ["actor"])
    except (CheckpointError, OSError) as err:
        raise ActorFileError(f"{path}: the actor cannot be read ({err}).") from None
    return actor


def load_actor(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """The actor saved in ``path``: a file of :func:`save_actor`, or a checkpoint of the training script
    (``sota-implementations/qsm/qsm.py``; a ``torchrl.checkpoint`` folder, or its run folder for the newest
    one), which holds one. Ready for ``env.rollout(steps, actor)``.

    Runs no code from the file: tensors are read weights-only, the record as plain values, and the actor is
    built by this library from the record. A file that pickles Python objects is refused with
    :class:`UnsafeFileError`; one that holds no actor, with :class:`ActorFileError`.
    """
    if Path(path).is_dir():
        return _checkpoint_actor(Path(path)).to(device)
    try:
        saved = load_weights_only(path, map_location="cpu")
    except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ActorFileError(f"{path} is not a file that torch can read ({type(err).__name__}: {err}).") from None
    state = saved.get("actor") if isinstance(saved, dict) and "record" not in saved else saved
    if not isinstance(state, dict) or state.get("format") != ACTOR_FORMAT:
        raise ActorFileError(
            f"{path} holds no torchrl_qsm actor: load_actor reads a file of torchrl_qsm.save_actor or a checkpoint "
            f"of sota-implementations/qsm/qsm.py (format {ACTOR_FORMAT!r})."
        )
    try:
        return actor_from_state(state, device)
    except ActorFileError as err:
        raise ActorFileError(f"{path}: {err}") from None


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
