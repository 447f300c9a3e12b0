"""What a run leaves on disk and reads back: its checkpoints, through ``torchrl.checkpoint``, and the
counters they continue (the run's folder itself is claimed by ``torchrl_qsm.run.RunGuard``).

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

import csv
import errno
import os
import time
import zipfile
from collections.abc import Collection
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torchrl.checkpoint import Checkpoint, CheckpointRotation, GlobalRNGState
from torchrl.checkpoint import CheckpointError as TorchRLCheckpointError

from torchrl_qsm import actor_record, DiffusionActor, NonFiniteError
from torchrl_qsm.modules.saving import load_checkpoint_components, weights_only_checkpoint

from config import compare_for_resume

CHECKPOINTS = "checkpoints"  # the run folder's rotation of checkpoints
KEEP_LAST = 2
FORMAT = "torchrl_qsm checkpoint 3"  # trainer_state["format"]; 3: torchrl.checkpoint (1 and 2 were one .pt file)
JSON_COMPONENTS = ("config", "trainer_state", "actor_record")


class CheckpointError(ValueError):
    """A path that cannot be resumed from: no checkpoint there, an earlier format, or a damaged one."""


def rotation(folder: Path) -> CheckpointRotation:
    """The run folder's checkpoints: the newest ``KEEP_LAST`` are kept."""
    return CheckpointRotation(Path(folder) / CHECKPOINTS, keep_last=KEEP_LAST)


RESULT_FIELDS = [
    "frame",
    "wall_time",
    "train_return",
    "eval_return",
    "eval_return_std",
    "eval_edge_fraction",
    "eval_best_of_n_return",  # eval.best_of_n > 1: the critic-ranked policy's evaluation, next to the plain one
    "eval_best_of_n_return_std",
    "eval_best_of_n_edge_fraction",
]


class Results:
    """Train and eval returns by frame: ``returns.csv`` (rewritten atomically) and ``learning_curve.png``."""

    def __init__(self, folder: Path, rows: list[dict] | None = None) -> None:
        self.folder = folder
        self.rows = list(rows or [])

    def add(self, **row) -> None:
        self.rows.append({field: row.get(field, "") for field in RESULT_FIELDS})
        tmp = self.folder / "returns.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, RESULT_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.folder / "returns.csv")

    def plot(self, title: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            points = [(r["frame"], r[key]) for r in self.rows if r.get(key, "") != ""]
            return [p[0] for p in points], [p[1] for p in points]

        fig, ax = plt.subplots(figsize=(6, 4))
        frames, train = series("train_return")
        ax.plot(frames, train, ".", alpha=0.4, label="train episodes")
        frames, evals = series("eval_return")
        _, spread = series("eval_return_std")
        ax.errorbar(frames, evals, yerr=spread, marker="o", capsize=3, label="eval (mean +- std)")
        frames, evals = series("eval_best_of_n_return")
        if frames:
            _, spread = series("eval_best_of_n_return_std")
            ax.errorbar(frames, evals, yerr=spread, marker="s", capsize=3, label="eval, best of N (mean +- std)")
        ax.set_xlabel("environment frames")
        ax.set_ylabel("episode return")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.folder / "learning_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


class Progress:
    """The loop's counters, its schedule and its results: what a checkpoint's ``trainer_state`` (JSON) holds.

    ``update_credit`` is the number of updates owed: ``optim.utd_ratio`` per frame collected from
    ``update_start`` on (``collector.init_random_frames``), spent one whole update at a time, so a run stopped
    between a collector batch and its updates owes them at resume. ``next_eval``/``next_checkpoint`` are the
    frames at which the next evaluation and checkpoint are due.
    """

    def __init__(self, cfg: DictConfig, folder: Path) -> None:
        self.cfg, self.folder = cfg, folder
        self.frames, self.updates, self.update_credit, self.wall_offset = 0, 0, 0.0, 0.0
        self.update_start = cfg.collector.init_random_frames
        self.next_eval, self.next_checkpoint, self.last_eval = cfg.eval.interval, cfg.checkpoint.interval, -1
        self.results, self.last_train = Results(folder), float("nan")
        self.started = time.perf_counter()
        self.saved: tuple[tuple[int, int], Path] | None = None  # (frames, updates) of the newest checkpoint, its path
        self.trainer_state: dict = {}  # the checkpoint's JSON component, filled from state_dict() when one is written

    def collected(self, frames: int) -> None:
        self.frames += frames
        if self.frames >= self.update_start:
            self.update_credit += frames * self.cfg.optim.utd_ratio

    def record_episodes(self, batch: TensorDictBase) -> None:
        """The returns of the episodes that ended in ``batch``, into ``returns.csv``."""
        ended = batch["next", "done"].squeeze(-1)
        for episode_return in batch["next", "episode_reward"][ended].flatten().tolist():
            self.results.add(frame=self.frames, wall_time=self.wall_time(), train_return=episode_return)
            self.last_train = episode_return

    def eval_due(self) -> bool:
        """Whether an evaluation is due (every ``eval.interval`` frames, and at the last frame); the schedule moves
        past this frame count, so ask once per collector batch."""
        final = self.frames >= self.cfg.collector.total_frames and self.last_eval != self.frames
        due = self.frames >= self.next_eval or final
        while self.next_eval <= self.frames:
            self.next_eval += self.cfg.eval.interval
        return due

    def checkpoint_due(self) -> bool:
        """Whether a checkpoint is due (every ``checkpoint.interval`` frames); the schedule moves on as above."""
        due = self.frames >= self.next_checkpoint
        while self.next_checkpoint <= self.frames:
            self.next_checkpoint += self.cfg.checkpoint.interval
        return due

    def wall_time(self) -> float:
        """Seconds of training so far, across resumes."""
        return round(self.wall_offset + time.perf_counter() - self.started, 3)

    def state_dict(self) -> dict:
        schedule = {"next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint, "last_eval": self.last_eval}
        return dict(
            format=FORMAT,
            frames=self.frames,
            updates=self.updates,
            update_credit=self.update_credit,
            results=self.results.rows,
            wall_time=self.wall_time(),
            schedule=schedule,
        )

    def load_state_dict(self, saved: dict) -> None:
        self.frames, self.updates, self.update_credit = saved["frames"], saved["updates"], saved["update_credit"]
        self.next_eval, self.next_checkpoint, self.last_eval = (
            saved["schedule"][k] for k in ("next_eval", "next_checkpoint", "last_eval")
        )
        self.wall_offset = saved["wall_time"]
        self.results = Results(self.folder, saved["results"])


def make_checkpointer(progress: Progress, replay_buffer, actor: DiffusionActor | None, state: dict) -> Checkpoint:
    """The run's ``torchrl.checkpoint.Checkpoint``: the state dicts of ``state`` (the loss, optimizers, schedule and
    target updater, loaded keeping this run's hyperparameters), the replay buffer, the RNG states, the counters
    (``trainer_state``), the config, and a diffusion ``actor``'s weights and record (what ``load_actor`` and
    evaluate.py read). Everything is JSON or a state dict read weights-only."""
    components = {
        name: StateOf(obj, load=lambda saved, obj=obj: load_keeping_hyperparameters(obj, saved))
        for name, obj in state.items()
    }
    components["replay_buffer"] = StateOf(
        replay_buffer,
        save=lambda: replay_buffer_state(replay_buffer),
        load=lambda saved: load_replay_buffer_state(replay_buffer, saved),
    )
    if actor is not None:
        components.update(actor=actor, actor_record=actor_record(actor))
    return weights_only_checkpoint(
        **components,
        rng=GlobalRNGState(),
        trainer_state=progress.trainer_state,
        config=OmegaConf.to_container(progress.cfg, resolve=True),
    )


def save_checkpoint(checkpoint: Checkpoint, progress: Progress, state: dict) -> Path:
    """``checkpoint`` into the run folder's rotation at the current frame, unless it is already there.

    Refused with ``NonFiniteError`` when a tensor of ``state`` (weights, optimizer moments) is not finite: the
    previous checkpoints stay.
    """
    if progress.saved is not None and progress.saved[0] == (progress.frames, progress.updates):
        return progress.saved[1]
    if not state_is_finite({name: obj.state_dict() for name, obj in state.items()}):
        raise NonFiniteError(
            f"At frame {progress.frames} the weights or optimizer states are not finite; no checkpoint was written."
        )
    progress.trainer_state.clear()
    progress.trainer_state.update(progress.state_dict())
    skipped = set() if progress.cfg.checkpoint.save_replay_buffer else {"replay_buffer"}
    path = write_checkpoint(progress.folder, checkpoint, progress.frames, set(checkpoint.components) - skipped)
    progress.saved = ((progress.frames, progress.updates), path)
    return path


def write_checkpoint(folder: Path, checkpoint: Checkpoint, step: int, components: Collection[str]) -> Path:
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


def resume(checkpoint: Checkpoint, progress: Progress, replay_buffer, device: torch.device) -> None:
    """Loads the checkpoint ``checkpoint.resume`` names into ``checkpoint``'s objects and ``progress``.

    Its config is compared with this run's first (``compare_for_resume``: a structural change is refused
    field by field, before anything is loaded; the others are printed); a checkpoint without a replay buffer
    resumes the updates once ``collector.init_random_frames`` new transitions are collected.
    """
    cfg = progress.cfg
    path = find_checkpoint(cfg.checkpoint.resume)
    saved = read_checkpoint(path, components=("config", "trainer_state"))
    changed = compare_for_resume(saved["config"], OmegaConf.to_container(cfg, resolve=True))
    has_buffer = "replay_buffer" in Checkpoint.manifest(path)["components"]
    json_or_actor = ("trainer_state", "config", "actor", "actor_record")
    exact = [name for name in checkpoint.components if name not in json_or_actor]
    try:
        load_checkpoint_components(
            checkpoint, path, [n for n in exact if has_buffer or n != "replay_buffer"], map_location=device
        )
    except (TorchRLCheckpointError, OSError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path} cannot be resumed: {err}") from err
    progress.load_state_dict(saved)
    if path.parent.resolve() == (progress.folder / CHECKPOINTS).resolve():
        progress.saved = ((progress.frames, progress.updates), path)
    restored = "networks, target networks, optimizers, learning-rate schedule, RNG states, counters, results"
    lines = [
        f"Resumed from {path} at frame {progress.frames} ({progress.updates} updates).",
        f"  restored exactly: {restored}"
        + (f", replay buffer ({len(replay_buffer)} transitions)" if has_buffer else ""),
    ]
    if not has_buffer:
        progress.update_start = progress.frames + cfg.collector.init_random_frames
        lines.append(
            f"  the checkpoint holds no replay buffer: updates resume once the policy has collected "
            f"{cfg.collector.init_random_frames} new transitions (frame {progress.update_start})"
        )
    elif not cfg.checkpoint.save_replay_buffer:
        lines.append(
            "  its replay buffer was loaded; checkpoint.save_replay_buffer=false: later checkpoints will not hold it"
        )
    lines.append(
        f"  new: the episodes in progress restart; environments seeded from (env.seed, frame {progress.frames})"
    )
    lines += [f"  changed: {key}: {old!r} -> {new!r}" for key, old, new in changed]
    print("\n".join(lines), flush=True)


def load_keeping_hyperparameters(stateful, state_dict: dict) -> None:
    """``stateful.load_state_dict(state_dict)``, keeping the hyperparameters this run was built with.

    Torch's optimizers and learning-rate schedules restore their hyperparameters from a state dict too
    (each param group's ``lr``, betas, eps, ``fused``; a schedule's ``base_lrs``): a resume that changed
    ``optim.lr`` would print the change and go on with the checkpoint's rate. Here their state (Adam's
    moments and step counts, the schedule's position) comes from the checkpoint, their hyperparameters
    from this run's config, and each rate is recomputed at the schedule's position (the same rate, bit
    for bit, when the config did not change).
    """
    if isinstance(stateful, torch.optim.Optimizer):
        configured = [{k: v for k, v in group.items() if k != "params"} for group in stateful.param_groups]
        stateful.load_state_dict(state_dict)
        for group, values in zip(stateful.param_groups, configured, strict=True):
            group.update(values)
    elif isinstance(stateful, torch.optim.lr_scheduler.LambdaLR):
        base_lrs = list(stateful.base_lrs)
        stateful.load_state_dict(state_dict)
        stateful.base_lrs = base_lrs
        groups = stateful.optimizer.param_groups
        for group, base, factor in zip(groups, base_lrs, stateful.lr_lambdas, strict=True):
            lr = base * factor(stateful.last_epoch)
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)  # in place: a compiled update reads this tensor
            else:
                group["lr"] = lr
    else:
        stateful.load_state_dict(state_dict)


def state_is_finite(saved: dict) -> bool:
    """Whether every floating-point tensor in the nested state ``saved`` is finite."""
    if isinstance(saved, torch.Tensor):
        return not saved.is_floating_point() or bool(torch.isfinite(saved).all())
    if isinstance(saved, dict) or hasattr(saved, "items"):
        return all(state_is_finite(v) for v in saved.values())
    if isinstance(saved, (list, tuple)):
        return all(state_is_finite(v) for v in saved)
    return True


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
