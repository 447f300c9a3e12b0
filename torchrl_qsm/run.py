"""What every entry point that trains needs around its loop: a run folder it alone writes into, and a stop that
waits for a safe point.

    with RunGuard(folder, resume=cfg.checkpoint.resume) as guard:
        for batch in collector:
            guard.phase = "updates"
            ...
            if guard.stop_requested:
                break
        path = save_checkpoint(...)
        guard.last_checkpoint = f"frame {frames}, {path}"
    if guard.stop_requested:
        sys.exit(guard.exit_code)  # 130 after SIGINT, 143 after SIGTERM

- The folder is locked for the life of the guard (an advisory ``fcntl`` lock, released by the OS if the process
  dies), so two runs never write into one folder; a folder that already holds a run (``run_files``) is refused
  unless this run resumes it.
- The partial files an interrupted write left (``*.tmp`` in the folder, and the hidden staging, backup and
  deletion folders ``torchrl.checkpoint.CheckpointRotation`` leaves in ``checkpoints``) are removed, and a backup
  whose checkpoint is missing is put back: :attr:`RunGuard.removed_partials` lists them.
- SIGINT and SIGTERM set :attr:`RunGuard.stop_requested`; the loop stops at its next safe point. A second signal
  aborts at once (``os._exit(128 + signal)``), without a checkpoint. TorchRL's ``Trainer.request_stop`` is the
  same idea without the signal handlers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from torchrl.checkpoint import Checkpoint

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunGuard:
    """Claims ``folder`` for one run and turns SIGINT/SIGTERM into a stop request, for the ``with`` block.

    Args:
        folder: the run's folder (created if missing).
        resume: the checkpoint or run folder the run resumes from, if any: a folder that holds a run is
            claimed only when ``resume`` lies in it.
        run_files: what marks a folder as holding a run.
        checkpoints: the folder, inside ``folder``, of the run's ``CheckpointRotation``.

    :attr:`phase` (what the loop is doing) and :attr:`last_checkpoint` are the loop's to set; the messages of a
    signal and of an error name them.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        resume: str | os.PathLike | None = None,
        run_files: Sequence[str] = ("checkpoints", "returns.csv"),
        checkpoints: str = "checkpoints",
    ) -> None:
        self.folder, self.resume, self.run_files = Path(folder), resume, tuple(run_files)
        self.checkpoints = self.folder / checkpoints
        self.phase, self.last_checkpoint = "startup", "none"
        self.received: int | None = None
        self.removed_partials: list[Path] = []
        self._previous: dict[int, object] = {}
        self._lock = None

    @property
    def stop_requested(self) -> bool:
        return self.received is not None

    @property
    def exit_code(self) -> int:
        """``128 + signal``, the shell's convention: 130 after SIGINT, 143 after SIGTERM."""
        return 128 + int(self.received)

    def __enter__(self) -> RunGuard:
        self._claim()
        self.removed_partials = remove_stale_partials(self.folder, self.checkpoints)
        self._install()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._restore()
        if error is not None and not isinstance(error, SystemExit):
            print(
                f"\nStopped by an error during {self.phase}; no checkpoint written "
                f"(the last one: {self.last_checkpoint}).",
                flush=True,
            )
        if self._lock is not None:
            self._lock.close()

    @contextlib.contextmanager
    def signals_ignored(self) -> Iterator[None]:
        """Ignores the stop signals in the block: processes started there (collector workers) inherit that, and
        leave stopping to this one."""
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        try:
            yield
        finally:
            self._install()

    def _claim(self) -> None:
        import fcntl  # POSIX; imported here so that the rest of the library imports on Windows

        self.folder.mkdir(parents=True, exist_ok=True)
        lock = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            lock.close()
            raise RuntimeError(
                f"{self.folder} is in use by another run ({owner}); give this one another folder (hydra.run.dir=...)."
            ) from None
        here = self.folder.resolve()
        resume = Path(self.resume).resolve() if self.resume else None
        previous = [name for name in self.run_files if (self.folder / name).exists()]
        if previous and (resume is None or here not in (resume, *resume.parents)):
            lock.close()
            raise RuntimeError(
                f"{self.folder} holds another run ({', '.join(previous)}); resume it with "
                f"checkpoint.resume={self.folder} or give this run another folder (hydra.run.dir=...)."
            )
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _install(self) -> None:
        for number in STOP_SIGNALS:
            self._previous.setdefault(number, signal.getsignal(number))
            signal.signal(number, self._handle)

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            print(f"\n{name} again: aborting now, without a checkpoint (the last one: {self.last_checkpoint}).")
            sys.stdout.flush()
            os._exit(128 + number)
        self.received = number
        print(
            f"\n{name} received during {self.phase}: stopping once it is done, with a checkpoint "
            f"(send {name} again to abort at once, without one).",
            flush=True,
        )


def remove_stale_partials(folder: Path, checkpoints: Path) -> list[Path]:
    """Deletes what an interrupted write left (call while holding the folder's lock): ``*.tmp`` files in
    ``folder``, and the hidden staging, backup and deletion folders of ``torchrl.checkpoint`` in ``checkpoints``.
    A backup whose checkpoint is missing (a checkpoint of the same step replaced, killed between its two renames)
    is put back."""
    for backup in sorted(checkpoints.glob(".checkpoint-*.backup-*")):
        target = backup.with_name(backup.name[1:].partition(".backup-")[0])
        if Checkpoint.is_checkpoint(backup) and not target.exists():
            os.replace(backup, target)
    stale = sorted(folder.glob("*.tmp")) + sorted(checkpoints.glob(".*"))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
