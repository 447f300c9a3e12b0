"""What a run leaves on disk and reads back: its folder, its checkpoint and the checkpoint's checksum.

- A run claims its folder (an advisory lock held for the life of the process), so two runs never
  write into one folder; a folder that holds another run is refused unless that run is resumed.
- A checkpoint is written to ``checkpoint.pt.tmp`` with its SHA-256 computed on the way, flushed to
  disk, then renamed over ``checkpoint.pt``, with the digest in ``checkpoint.pt.sha256`` beside it:
  a reader finds either the previous checkpoint or the new one, never a partial file, and the checksum
  file accepts whichever it finds. On a full disk the partial file is removed and the error says so.
- Reading verifies the digest and the contents before anything is loaded, and loads weights only
  (``torch.load(weights_only=True)``: tensors and plain containers): the actor is in it as a state dict
  and a record that the library builds it from (``torchrl_qsm.actor_state``), the RNG states as tensors,
  so that a checkpoint runs no code when it is read; one that would is refused (``UnsafeFileError``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from torchrl_qsm import UnsafeFileError
from torchrl_qsm.modules.saving import load_weights_only

CHECKPOINT = "checkpoint.pt"
FORMAT = "torchrl_qsm checkpoint 2"  # 2: weights only (1 pickled the actor module)
REQUIRED_KEYS = ("format", "config", "frames", "updates", "update_credit", "results", "rng", "wall_time", "schedule")
RUN_FILES = (CHECKPOINT, "returns.csv")


class CheckpointError(ValueError):
    """A file that cannot be resumed from: not a checkpoint, damaged, or without its checksum."""


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class _Hashing(io.RawIOBase):
    """A write-only file that hashes what passes through it."""

    def __init__(self, file, digest) -> None:
        self.file, self.digest = file, digest

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _accepted_digests(digest_file: Path) -> list[str]:
    if not digest_file.is_file():
        return []
    return [line.split()[0] for line in digest_file.read_text().splitlines() if line.split()]


def _write_digests(digest_file: Path, digests: list[str], name: str) -> None:
    tmp = digest_file.with_name(digest_file.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(f"{digest}  {name}\n" for digest in digests)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, digest_file)


def save_checkpoint(path: Path, state: dict) -> None:
    """Writes ``state`` and its checksum so that a process killed at any moment leaves a checkpoint that its
    checksum file accepts: the new digest is added to the accepted ones before the new file replaces the old,
    and the old digest is dropped after."""
    tmp, digest_file = path.with_name(path.name + ".tmp"), checksum_path(path)
    digest_tmp = digest_file.with_name(digest_file.name + ".tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            torch.save(state, _Hashing(f, digest))
            f.flush()
            os.fsync(f.fileno())
        new = digest.hexdigest()
        _write_digests(digest_file, [new, *_accepted_digests(digest_file)[:1]], path.name)  # new or old file
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        _write_digests(digest_file, [new], path.name)
        _fsync_dir(path.parent)
    except BaseException as err:
        for partial in (tmp, digest_tmp):
            partial.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device while writing the checkpoint {path}; the partial file was removed and the "
                f"previous checkpoint (if any) is unchanged. Free space on that disk, or set "
                f"checkpoint.save_replay_buffer=false to write smaller checkpoints",
            ) from err
        raise


def remove_stale_partials(folder: Path) -> list[Path]:
    """Deletes the ``*.tmp`` files an interrupted write left in ``folder`` (call while holding its lock)."""
    stale = sorted(folder.glob("*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | os.PathLike, device: torch.device) -> dict:
    """The checkpoint at ``path``, after checking its checksum and contents (``CheckpointError`` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint.resume={str(path)!r}: no such file.")
    digest_file = checksum_path(path)
    if not digest_file.is_file():
        raise CheckpointError(
            f"{path} has no checksum file beside it ({digest_file.name}), so it cannot be verified; a checkpoint "
            "written by qsm.py always has one (copy both files together)."
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() not in _accepted_digests(digest_file):
        raise CheckpointError(
            f"{path} does not match its checksum ({digest_file.name}): the file was changed or damaged after it "
            "was written. Resume from another checkpoint."
        )
    try:
        state = load_weights_only(path, map_location=device)
    except UnsafeFileError as err:
        if any(name.startswith("torchrl_qsm.") for name in err.globals):
            raise CheckpointError(
                f"{path} is a checkpoint of an earlier version of the script (format 'torchrl_qsm checkpoint 1'), "
                "which pickled the actor module: loading it would run code from the file, and this version loads "
                "weights only, so it was refused and nothing of it ran. Resume or evaluate it with the version that "
                "wrote it, or start a new run."
            ) from None
        raise
    except (EOFError, RuntimeError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a checkpoint that torch can read ({type(err).__name__}: {err}).") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        if isinstance(found, str) and found.startswith("torchrl_qsm checkpoint"):
            raise CheckpointError(
                f"{path} was written by another version of the script (format {found!r}; this one reads {FORMAT!r}). "
                "Resume or evaluate it with the version that wrote it, or start a new run."
            )
        raise CheckpointError(f"{path} is not a checkpoint written by the QSM training script ({FORMAT!r}).")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it was not written by this version of the script.")
    return state


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
        resuming_here = resume is not None and Path(resume).resolve().parent == folder.resolve()
        previous = [name for name in RUN_FILES if (folder / name).exists()]
        if previous and not resuming_here:
            self._lock.close()
            raise RuntimeError(
                f"{folder} holds another run ({', '.join(previous)}); resume it with "
                f"checkpoint.resume={folder / CHECKPOINT} or give this run another folder (hydra.run.dir=...)."
            )
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}\n")
        self._lock.flush()
        self.removed_partials = remove_stale_partials(folder)


def rng_state() -> dict:
    """The random states as tensors and plain values (NumPy's key array as an int64 tensor), weights-only loadable."""
    kind, key, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), position, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, key, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.cpu().numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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
