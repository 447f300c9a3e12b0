"""What a run leaves on disk and reads back: its folder and its checkpoints, through ``torchrl.checkpoint``.

- A run claims its folder (an advisory lock held for the life of the process), so two runs never
  write into one folder; a folder that holds another run is refused unless that run is resumed.
- Its checkpoints are ``torchrl.checkpoint.Checkpoint`` directories under ``checkpoints/``, one per
  frame count (``checkpoint-000000200000``), written by ``CheckpointRotation``: each is staged in a
  hidden folder and renamed into place, then all but the newest two are removed, so a process killed
  at any moment leaves at least one whole checkpoint, and the newest whole one is the one resumed.
- The components: the loss, optimizers, learning-rate schedule and target updater (state dicts), the
  replay buffer (optional), the RNG states (``GlobalRNGState``), ``trainer_state`` (counters, schedule
  and results as JSON), ``config`` (JSON), and for a diffusion actor its weights and ``actor_record``
  (JSON), what ``torchrl_qsm.load_actor`` and evaluate.py build it from. Each state dict is a
  ``state.pt`` read weights-only (``torchrl_qsm``'s ``WeightsOnlyStateDictAdapter``) and the rest is
  JSON: reading a checkpoint runs no code from it, and a crafted one is refused (``UnsafeFileError``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import zipfile
from collections.abc import Collection
from pathlib import Path

import torch
from torchrl.checkpoint import Checkpoint, CheckpointRotation
from torchrl.checkpoint import CheckpointError as TorchRLCheckpointError

from torchrl_qsm.modules.saving import load_checkpoint_components, weights_only_checkpoint

CHECKPOINTS = "checkpoints"  # the run folder's rotation of checkpoints
KEEP_LAST = 2
FORMAT = "torchrl_qsm checkpoint 3"  # trainer_state["format"]; 3: torchrl.checkpoint (1 and 2 were one .pt file)
JSON_COMPONENTS = ("config", "trainer_state", "actor_record")
RUN_FILES = (CHECKPOINTS, "returns.csv")


class CheckpointError(ValueError):
    """A path that cannot be resumed from: no checkpoint there, an earlier format, or a damaged one."""


def rotation(folder: Path) -> CheckpointRotation:
    """The run folder's checkpoints: the newest ``KEEP_LAST`` are kept."""
    return CheckpointRotation(Path(folder) / CHECKPOINTS, keep_last=KEEP_LAST)


def save_checkpoint(folder: Path, checkpoint: Checkpoint, step: int, components: Collection[str]) -> Path:
    """``checkpoint``'s ``components`` into the run folder's rotation at ``step``; a full disk is reported with the
    path (the staged files are removed, the previous checkpoints stay)."""
    try:
        return rotation(folder).save(checkpoint, step=step, components=components)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device while writing a checkpoint into {Path(folder) / CHECKPOINTS}; the partial "
                "files were removed and the previous checkpoints are unchanged. Free space on that disk, or set "
                "checkpoint.save_replay_buffer=false to write smaller checkpoints",
            ) from err
        raise


def remove_stale_partials(folder: Path) -> list[Path]:
    """Deletes what an interrupted write left in ``folder`` (call while holding its lock): ``*.tmp`` files, and the
    hidden staging, backup and deletion folders of ``torchrl.checkpoint`` in its rotation. A backup whose checkpoint
    is missing (a checkpoint of the same frame count replaced, killed between its two renames) is put back."""
    for backup in sorted((folder / CHECKPOINTS).glob(".checkpoint-*.backup-*")):
        target = backup.with_name(backup.name[1:].partition(".backup-")[0])
        if Checkpoint.is_checkpoint(backup) and not target.exists():
            os.replace(backup, target)
    stale = sorted(folder.glob("*.tmp")) + sorted((folder / CHECKPOINTS).glob(".*"))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def _old_format(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a checkpoint of an earlier version of the script (one checkpoint.pt file, formats 1 and 2); "
        "this version writes and reads torchrl.checkpoint folders (checkpoints/checkpoint-<frames>). Resume or "
        "evaluate it with the version that wrote it, or start a new run."
    )


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint that ``checkpoint.resume=PATH`` names: a checkpoint folder, or the newest whole one of a run
    folder (or of its ``checkpoints/``). ``CheckpointError`` names what is there otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint.resume={str(path)!r}: no such file or folder.")
    if Checkpoint.is_checkpoint(path):
        return path
    if path.is_file():
        if zipfile.is_zipfile(path) or path.suffix == ".pt":
            raise _old_format(path)
        raise CheckpointError(f"{path} is not a checkpoint of the QSM training script (a torchrl.checkpoint folder).")
    for folder in (path, path / CHECKPOINTS):
        if folder.is_dir():
            latest = CheckpointRotation(folder, keep_last=KEEP_LAST).latest()
            if latest is not None:
                return latest
    if (path / "checkpoint.pt").is_file():
        raise _old_format(path / "checkpoint.pt")
    raise CheckpointError(
        f"{path} holds no checkpoint of the QSM training script (a torchrl.checkpoint folder, or a run folder with "
        f"{CHECKPOINTS}/ holding one)."
    )


class StateOf:
    """A checkpoint component for ``target``'s state dict, loaded through ``load`` (default ``load_state_dict``)."""

    def __init__(self, target, save=None, load=None) -> None:
        self.target = target
        self._save = save or (lambda: target.state_dict())
        self._load = load or (lambda state: target.load_state_dict(state))

    def state_dict(self) -> dict:
        return self._save()

    def load_state_dict(self, state: dict) -> None:
        self._load(state)


class Captured:
    """A component that keeps the state dict it is given (to read a checkpoint without the objects it restores)."""

    state = None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def read_checkpoint(path: str | os.PathLike, components: Collection[str] | None = None) -> dict:
    """A checkpoint's components as plain values (``components``, default all): the ``trainer_state`` entries at the
    top (``frames``, ``updates``, ``results``, ...), ``config``, ``actor_record``, and the state dicts under
    ``state`` (``replay_buffer``, ``rng`` and ``actor`` at the top). For evaluate.py, tools and tests."""
    path = find_checkpoint(path)
    try:
        saved = Checkpoint.manifest(path)["components"]
    except TorchRLCheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if "trainer_state" not in saved and (components is None or "trainer_state" in components):
        raise CheckpointError(f"{path} is a TorchRL checkpoint, but not one of the QSM script (no trainer_state).")
    names = [name for name in saved if components is None or name in components]
    values = {name: ({} if name in JSON_COMPONENTS else Captured()) for name in names}
    try:
        load_checkpoint_components(weights_only_checkpoint(**values), path, names, map_location="cpu")
    except (TorchRLCheckpointError, OSError, KeyError) as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}).") from None
    out = dict(values.pop("trainer_state", {}))
    if out and out.get("format") != FORMAT:
        raise CheckpointError(f"{path} was written in format {out.get('format')!r}; this script reads {FORMAT!r}.")
    out.update({name: values.pop(name) for name in JSON_COMPONENTS if name in values})
    for name in ("replay_buffer", "rng", "actor"):
        if name in values:
            out[name] = values.pop(name).state
    out["state"] = {name: value.state for name, value in values.items()}
    out["path"] = path
    return out


class RunFolder:
    """Holds the lock of a run's folder for as long as the process lives (released by the OS at exit)."""

    def __init__(self, folder: Path, resume: str | None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(folder / ".lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            owner = self._lock.read().strip() or "another process"
            self._lock.close()
            raise RuntimeError(
                f"{folder} is in use by another run ({owner}); give this one another folder (hydra.run.dir=...)."
            ) from None
        here = folder.resolve()
        resuming_here = resume is not None and here in (Path(resume).resolve(), *Path(resume).resolve().parents)
        previous = [name for name in RUN_FILES if (folder / name).exists()]
        if previous and not resuming_here:
            self._lock.close()
            raise RuntimeError(
                f"{folder} holds another run ({', '.join(previous)}); resume it with "
                f"checkpoint.resume={folder} or give this run another folder (hydra.run.dir=...)."
            )
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}\n")
        self._lock.flush()
        self.removed_partials = remove_stale_partials(folder)


# A prioritized sampler's state holds its segment trees, C++ objects that only pickle: in a checkpoint they are
# their leaf values (float64 tensors), written back into the sampler's own trees when loaded.
_TREES = ("_sum_tree", "_min_tree")


def replay_buffer_state(buffer) -> dict:
    """``buffer.state_dict()`` with tensors and plain values only."""
    state = buffer.state_dict()
    sampler = state.get("_sampler")
    if isinstance(sampler, dict) and any(name in sampler for name in _TREES):
        capacity = buffer.sampler._max_capacity
        state["_sampler"] = dict(sampler) | {
            name: torch.tensor([sampler[name][i] for i in range(capacity)], dtype=torch.float64)
            for name in _TREES
            if name in sampler
        }
    return state


def load_replay_buffer_state(buffer, state: dict) -> None:
    """The inverse of :func:`replay_buffer_state`."""
    sampler = state.get("_sampler")
    if isinstance(sampler, dict) and any(torch.is_tensor(sampler.get(name)) for name in _TREES):
        trees = {}
        for name in _TREES:
            if torch.is_tensor(sampler.get(name)):
                tree = getattr(buffer.sampler, name)
                for i, value in enumerate(sampler[name].tolist()):
                    tree[i] = value
                trees[name] = tree
        state = dict(state) | {"_sampler": dict(sampler) | trees}
    buffer.load_state_dict(state)
