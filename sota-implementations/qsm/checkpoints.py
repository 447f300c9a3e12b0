"""What a run leaves on disk and reads back: its folder, its checkpoint and the checkpoint's checksum.

- A run claims its folder (an advisory lock held for the life of the process), so two runs never
  write into one folder; a folder that holds another run is refused unless that run is resumed.
- A checkpoint is written to ``checkpoint.pt.tmp`` with its SHA-256 computed on the way, flushed to
  disk, then renamed over ``checkpoint.pt``, with the digest in ``checkpoint.pt.sha256`` beside it:
  a reader finds either the previous checkpoint or the new one, never a partial file, and the checksum
  file accepts whichever it finds. On a full disk the partial file is removed and the error says so.
- Reading verifies the digest and the contents before anything is loaded.
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

CHECKPOINT = "checkpoint.pt"
FORMAT = "torchrl_qsm checkpoint 1"
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
        state = torch.load(path, map_location=device, weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a checkpoint that torch can read ({type(err).__name__}: {err}).") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
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
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
