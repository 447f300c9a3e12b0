"""The training loop of the script: collect, store, update, evaluate, checkpoint.

qsm.py builds QSM and its update and hands them to :func:`train`; benchmarks/learning/baselines.py
hands TorchRL's SAC and TD3 to the same loop, so that a comparison differs in the algorithm only.
What the loop guarantees (README, "Checkpoints and resume"):

- SIGINT (Ctrl-C) and SIGTERM ask for a stop: the loop finishes what it is doing (a collector batch,
  one update, an evaluation, a checkpoint write), writes a checkpoint and exits with 130 / 143. A
  second signal aborts at once, without a checkpoint (the previous one stays).
- Non-finite data or losses stop the run with an error naming the key, the frame and the update;
  a checkpoint is written only when every saved tensor is finite.
- A resumed run continues the counters, the update schedule and the random streams of the one it
  resumes; a changed configuration is refused field by field where it would not fit the checkpoint.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import tqdm
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase
from torchrl._utils import timeit
from torchrl.checkpoint import Checkpoint, GlobalRNGState
from torchrl.checkpoint import CheckpointError as TorchRLCheckpointError
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_qsm import actor_record, DiffusionActor, edge_fraction, NonFiniteError
from torchrl_qsm.diagnostics import first_non_finite
from torchrl_qsm.modules.saving import load_checkpoint_components, weights_only_checkpoint

from checkpoints import (
    CheckpointError,
    CHECKPOINTS,
    find_checkpoint,
    FORMAT,
    load_replay_buffer_state,
    read_checkpoint,
    replay_buffer_state,
    RunFolder,
    save_checkpoint,
    StateOf,
)
from config import compare_for_resume
from utils import describe_collection, make_collector, make_replay_buffer, stream_seed, task_name

EVAL_SEED_OFFSET = 10_000
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


class StopSignals:
    """SIGINT and SIGTERM request a stop at the next safe point; a second one aborts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, object] = {}
        self.phase = "startup"
        self.last_checkpoint = "none"

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            self.previous.setdefault(number, signal.getsignal(number))
            signal.signal(number, self._handle)

    def restore(self) -> None:
        """The handlers from before :meth:`install` (for a loop run inside a longer-lived process)."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    @staticmethod
    def ignore() -> None:
        """While collector workers start: they inherit it and leave stopping to this process."""
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received)

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            print(
                f"\n{name} again: aborting now, without a checkpoint (the last one: {self.last_checkpoint}).",
                flush=True,
            )
            os._exit(128 + number)
        self.received = number
        tqdm.tqdm.write(
            f"\n{name} received during {self.phase}: stopping once it is done, with a checkpoint "
            f"(send {name} again to abort at once, without one)."
        )


def check_finite_batch(batch: TensorDictBase, first_frame: int) -> None:
    """Raises NonFiniteError naming the key and the frame of the first non-finite value of a collected batch."""
    flat = batch.reshape(-1)
    for key, value in flat.items(True, True):
        index = first_non_finite(value)
        if index is not None:
            row = index[0]
            raise NonFiniteError(
                f"The collected data holds a non-finite {key!r} ({value[row].flatten().tolist()}) at frame "
                f"{first_frame + row + 1}; it was not stored. The environment (or its transforms) produced it: "
                "check the task's observations and rewards."
            )


def check_finite_losses(metrics: list[TensorDictBase], first_update: int) -> None:
    """One device sync per collector batch: every ``loss_*`` of the batch's updates must be finite."""
    if not metrics:
        return
    keys = list(dict.fromkeys(key for m in metrics for key in m.keys() if key.startswith("loss_")))  # TD3: every 2nd
    losses = torch.stack([torch.stack([m[key] for key in keys if key in m.keys()]).float().sum() for m in metrics])
    found = first_non_finite(losses)
    if found is None:
        return
    index = found[0]
    values = {key: metrics[index][key].item() for key in keys if key in metrics[index].keys()}
    raise NonFiniteError(
        f"Update {first_update + index + 1} gave non-finite losses {values}: the weights may be non-finite from "
        "then on. No checkpoint was written; lower optim.lr, or look for extreme rewards."
    )


def state_is_finite(saved: dict) -> bool:
    def walk(value) -> bool:
        if isinstance(value, torch.Tensor):
            return not value.is_floating_point() or bool(torch.isfinite(value).all())
        if isinstance(value, dict) or hasattr(value, "items"):
            return all(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return all(walk(v) for v in value)
        return True

    return walk(saved)


def evaluate_policy(
    env: EnvBase, policy: Callable, max_steps: int, exploration: ExplorationType
) -> tuple[torch.Tensor, float]:
    """One episode in each of ``env``'s environments (a batch, stepped together) under ``exploration``, no
    gradients: the episodes' returns ``[E]`` and the share of action components on the box edges.

    The batch steps ``max_steps`` times (a DMC episode's length); an episode that ends sooner (a Gymnasium
    termination) counts up to its end, and what its environment does after its reset is left out.
    """
    spec = env.action_spec_unbatched
    with set_exploration_type(exploration), torch.no_grad():
        rollout = env.rollout(max_steps, policy, auto_cast_to_device=True, break_when_any_done=False)
    # tensor by tensor: TensorDict.cpu() would show tensordict's type memo a new type, and the compiled update
    # guards on that memo's size (a 10-20 s recompile after the first evaluation; benchmarks/README.md)
    done = rollout["next", "done"].squeeze(-1).long().cpu()  # [E, steps]
    in_episode = (done.cumsum(-1) - done) == 0  # every step up to and including the first end
    returns = (rollout["next", "reward"].squeeze(-1).cpu() * in_episode).sum(-1)
    edges = edge_fraction(rollout["action"].cpu()[in_episode], spec.space.low.cpu(), spec.space.high.cpu())
    return returns, edges.item()


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


def return_std(returns: torch.Tensor) -> float:
    """The episodes' standard deviation; 0 for one episode (``eval.episodes=1``), where torch's would be nan."""
    return returns.std().item() if returns.numel() > 1 else 0.0


def train(
    cfg: DictConfig,
    folder: RunFolder,
    *,
    name: str,
    device: torch.device,
    logger,
    eval_env: EnvBase,
    policy: Callable,
    exploration_policy: Callable,
    learn: Callable[[TensorDict], TensorDict],
    state: dict[str, object],
    eval_exploration: ExplorationType,
    best_of_n_policy: Callable | None = None,
) -> None:
    """Trains until ``collector.total_frames`` or a stop signal (then exits with 130 / 143).

    ``learn(batch)`` takes one replay batch and returns the update's detached metrics (``loss_*``
    among them); ``state`` maps names to what a checkpoint holds (``state_dict``/``load_state_dict``);
    ``policy`` is evaluated under ``eval_exploration``, ``exploration_policy`` collects. With
    ``eval.best_of_n > 1``, ``best_of_n_policy`` (the best of N samples of ``policy`` as the critic
    ranks them) is evaluated after ``policy`` at each evaluation, on episodes of its own. ``folder`` is
    claimed before anything is written into it (``RunFolder``).
    """
    if cfg.eval.best_of_n > 1 and best_of_n_policy is None:
        raise ValueError(f"eval.best_of_n={cfg.eval.best_of_n}: the {name} script has no critic-ranked policy; use 1.")
    Training(
        cfg,
        folder,
        name,
        device,
        logger,
        eval_env,
        policy,
        exploration_policy,
        learn,
        state,
        eval_exploration,
        best_of_n_policy=best_of_n_policy if cfg.eval.best_of_n > 1 else None,
    ).run()


class Training:
    """One run of :func:`train`: its counters, its schedule and the steps of its loop."""

    def __init__(
        self,
        cfg,
        folder,
        name,
        device,
        logger,
        eval_env,
        policy,
        exploration_policy,
        learn,
        state,
        eval_exploration,
        best_of_n_policy=None,
    ):
        self.cfg, self.folder, self.name, self.device, self.logger = cfg, folder.folder, name, device, logger
        self.eval_env, self.policy, self.exploration_policy, self.learn = eval_env, policy, exploration_policy, learn
        self.eval_exploration, self.best_of_n_policy = eval_exploration, best_of_n_policy
        self.stop = StopSignals()
        self.run_folder = folder
        self.config = {"algorithm": name, **OmegaConf.to_container(cfg, resolve=True)}
        OmegaConf.save(cfg, self.folder / "config.yaml", resolve=True)
        self.replay_buffer = make_replay_buffer(cfg, device)
        self.state = dict(state)
        self.frames, self.updates, self.credit, self.wall_offset = 0, 0, 0.0, 0.0
        c = cfg.collector
        self.total_frames, self.update_start = c.total_frames, c.init_random_frames
        self.next_eval, self.next_checkpoint, self.last_eval = cfg.eval.interval, cfg.checkpoint.interval, -1
        self.results = Results(self.folder)
        self.saved_at: tuple[int, int] | None = None
        self.last_checkpoint_path: Path | None = None
        self.last_train, self.last_eval_return = float("nan"), float("nan")
        # what a checkpoint holds (torchrl.checkpoint): state dicts, the RNG, and JSON (counters, config, actor record)
        self.trainer_state: dict = {}
        stateful = {name: StateOf(obj, load=self._loader(obj)) for name, obj in self.state.items()}
        buffer = self.replay_buffer
        stateful["replay_buffer"] = StateOf(
            buffer, save=lambda: replay_buffer_state(buffer), load=lambda state: load_replay_buffer_state(buffer, state)
        )
        self.restored = [*self.state, "replay_buffer", "rng"]  # what resume loads into this run
        if isinstance(policy, DiffusionActor):  # its weights and record: what load_actor and evaluate.py read
            stateful.update(actor=policy, actor_record=actor_record(policy))
        self.checkpointer = weights_only_checkpoint(
            **stateful, rng=GlobalRNGState(), trainer_state=self.trainer_state, config=self.config
        )

    @staticmethod
    def _loader(stateful):
        return lambda state: load_keeping_hyperparameters(stateful, state)

    # --- resume ----------------------------------------------------------------------------------
    def resume(self) -> None:
        path = find_checkpoint(self.cfg.checkpoint.resume)
        saved = read_checkpoint(path, components=("config", "trainer_state"))  # compared before anything is loaded
        changed = compare_for_resume(saved["config"], self.config)
        has_buffer = "replay_buffer" in Checkpoint.manifest(path)["components"]
        components = [name for name in self.restored if has_buffer or name != "replay_buffer"]
        try:
            load_checkpoint_components(self.checkpointer, path, components, map_location=self.device)
        except (TorchRLCheckpointError, OSError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path} cannot be resumed: {err}") from err
        self.frames, self.updates, self.credit = saved["frames"], saved["updates"], saved["update_credit"]
        self.next_eval, self.next_checkpoint, self.last_eval = (
            saved["schedule"][k] for k in ("next_eval", "next_checkpoint", "last_eval")
        )
        self.wall_offset = saved["wall_time"]
        self.results = Results(self.folder, saved["results"])
        if path.parent.resolve() == (self.folder / CHECKPOINTS).resolve():
            self.saved_at, self.last_checkpoint_path = (self.frames, self.updates), path
        lines = [f"Resumed from {path} at frame {self.frames} ({self.updates} updates)."]
        restored = "networks, target networks, optimizers, learning-rate schedule, RNG states, counters, results"
        lines.append(
            f"  restored exactly: {restored}"
            + (f", replay buffer ({len(self.replay_buffer)} transitions)" if has_buffer else "")
        )
        if not has_buffer:
            self.update_start = self.frames + self.cfg.collector.init_random_frames
            lines.append(
                f"  the checkpoint holds no replay buffer: updates resume once the policy has collected "
                f"{self.cfg.collector.init_random_frames} new transitions (frame {self.update_start})"
            )
        elif not self.cfg.checkpoint.save_replay_buffer:
            lines.append(
                "  its replay buffer was loaded; checkpoint.save_replay_buffer=false: "
                "later checkpoints will not hold it"
            )
        lines.append(
            f"  new: the episodes in progress restart; environments seeded from (env.seed, frame {self.frames})"
        )
        lines += [f"  changed: {key}: {old!r} -> {new!r}" for key, old, new in changed]
        print("\n".join(lines), flush=True)

    # --- checkpoints -----------------------------------------------------------------------------
    def wall_time(self) -> float:
        """Seconds of training so far, across resumes."""
        return round(self.wall_offset + time.perf_counter() - self.start, 3)

    def checkpoint(self) -> Path:
        if self.saved_at == (self.frames, self.updates):
            return self.last_checkpoint_path
        previous, self.stop.phase = self.stop.phase, "checkpoint writing"
        if not state_is_finite({k: v.state_dict() for k, v in self.state.items()}):
            raise NonFiniteError(
                f"At frame {self.frames} the weights or optimizer states are not finite; no checkpoint was written "
                f"(the last one: {self.stop.last_checkpoint})."
            )
        self.trainer_state.clear()
        self.trainer_state.update(
            format=FORMAT,
            frames=self.frames,
            updates=self.updates,
            update_credit=self.credit,
            results=self.results.rows,
            wall_time=self.wall_time(),
            schedule={
                "next_eval": self.next_eval,
                "next_checkpoint": self.next_checkpoint,
                "last_eval": self.last_eval,
            },
        )
        skipped = set() if self.cfg.checkpoint.save_replay_buffer else {"replay_buffer"}
        with timeit("checkpoint"):
            path = save_checkpoint(
                self.folder, self.checkpointer, self.frames, set(self.checkpointer.components) - skipped
            )
        self.saved_at, self.last_checkpoint_path = (self.frames, self.updates), path
        self.stop.last_checkpoint = f"frame {self.frames}, {path}"
        self.stop.phase = previous
        return path

    # --- the steps of the loop -------------------------------------------------------------------
    def store(self, batch: TensorDictBase) -> None:
        check_finite_batch(batch, self.frames)
        with timeit("rb - extend"):
            self.replay_buffer.extend(batch.reshape(-1))
        self.frames += batch.numel()
        if self.frames >= self.update_start:
            self.credit += batch.numel() * self.cfg.optim.utd_ratio

    def update_phase(self) -> list[TensorDictBase]:
        """The updates owed (``credit``), one at a time, until done or a stop is requested."""
        metrics, first = [], self.updates
        self.stop.phase = "updates"
        while self.credit >= 1 and not self.stop.requested:
            with timeit("rb - sample"):
                sample = self.replay_buffer.sample()
            with timeit("update"):
                metrics.append(self.learn(sample))
            if self.cfg.replay_buffer.prb:
                self.replay_buffer.update_priority(sample)
            self.credit -= 1
            self.updates += 1
        check_finite_losses(metrics, first)
        return metrics

    def evaluate(self) -> None:
        self.stop.phase = "evaluation"
        policies = {"": self.policy}
        if self.best_of_n_policy is not None:
            policies["best_of_n_"] = self.best_of_n_policy
        row = {}
        for prefix, policy in policies.items():
            with timeit("eval"):
                returns, edges = evaluate_policy(
                    self.eval_env, policy, self.cfg.env.max_episode_steps, self.eval_exploration
                )
            std = return_std(returns)
            row[f"eval_{prefix}return"], row[f"eval_{prefix}return_std"] = returns.mean().item(), std
            row[f"eval_{prefix}edge_fraction"] = edges
            which = f", best of {self.cfg.eval.best_of_n} samples (critic-ranked)" if prefix else ""
            tqdm.tqdm.write(
                f"[eval] frame {self.frames}{which}: return {returns.mean():.1f} +- {std:.1f} over "
                f"{returns.numel()} episodes; {100 * edges:.0f}% of action components on the box edges"
            )
            if self.logger is not None:
                self.logger.log_scalar(f"eval/{prefix}return", returns.mean().item(), step=self.frames)
                self.logger.log_scalar(f"eval/{prefix}edge_fraction", edges, step=self.frames)
        self.results.add(frame=self.frames, wall_time=self.wall_time(), **row)
        self.last_eval, self.last_eval_return = self.frames, row["eval_return"]
        if self.logger is not None:
            self.eval_env.apply(lambda module: module.dump() if hasattr(module, "dump") else None)

    def scheduled_work(self) -> None:
        """The evaluation and the checkpoint due at this frame (the last frame always evaluates)."""
        final = self.frames >= self.total_frames and self.last_eval != self.frames
        if self.frames >= self.next_eval or final:
            self.evaluate()
            while self.next_eval <= self.frames:
                self.next_eval += self.cfg.eval.interval
        if self.frames >= self.next_checkpoint:
            while self.next_checkpoint <= self.frames:
                self.next_checkpoint += self.cfg.checkpoint.interval
            self.checkpoint()

    def record_episodes(self, batch: TensorDictBase) -> None:
        episode_end = batch["next", "done"].squeeze(-1)
        for episode_return in batch["next", "episode_reward"][episode_end].flatten().tolist():
            self.results.add(frame=self.frames, wall_time=self.wall_time(), train_return=episode_return)
            self.last_train = episode_return

    def log(self, metrics: list[TensorDictBase]) -> None:
        if self.logger is None:
            return
        scalars = {"train/return": self.last_train}
        keys = dict.fromkeys(key for m in metrics for key in m.keys())
        for key in keys:
            values = [m[key] for m in metrics if key in m.keys()]
            scalars[f"train/{key}"] = torch.stack(values).float().mean().item()
        scalars.update(timeit.todict(prefix="time"))
        for key, value in scalars.items():
            self.logger.log_scalar(key, value, step=self.frames)

    def make_collector(self):
        seed = stream_seed(self.cfg.env.seed, self.frames)
        random_frames = max(0, self.cfg.collector.init_random_frames - self.frames)
        tqdm.tqdm.write(f"collection: {describe_collection(self.cfg)}")
        self.stop.ignore()  # collector processes inherit it: stopping is this process's job
        try:
            return make_collector(
                self.cfg, self.exploration_policy, self.total_frames - self.frames, random_frames, seed, self.device
            )
        finally:
            self.stop.install()

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.stop.install()
        self.start = time.perf_counter()
        if self.run_folder.removed_partials:
            print(
                "Removed the partial files of an interrupted write: "
                f"{[p.name for p in self.run_folder.removed_partials]}"
            )
        if self.cfg.checkpoint.resume:
            self.resume()
        self.eval_env.set_seed(stream_seed(self.cfg.env.seed + EVAL_SEED_OFFSET, self.frames))
        collector = None
        pbar = tqdm.tqdm(
            total=self.total_frames, initial=self.frames, unit="frame", unit_scale=True, dynamic_ncols=True
        )
        try:
            if not self.stop.requested and self.frames >= self.update_start:
                self.update_phase()  # the updates a stopped run still owed
            if not self.stop.requested:
                self.scheduled_work()
            if self.frames < self.total_frames and not self.stop.requested:
                collector = self.make_collector()
                self.stop.phase = "collection"
                for batch in collector:
                    self.store(batch)
                    metrics = self.update_phase() if self.frames >= self.update_start else []
                    if metrics and not getattr(collector, "update_after_each_batch", False):
                        collector.update_policy_weights_()  # else the collector sends them itself, worker by worker
                    self.record_episodes(batch)
                    pbar.update(batch.numel())
                    if not self.stop.requested:
                        self.scheduled_work()
                    pbar.set_postfix(
                        train_return=f"{self.last_train:.1f}",
                        eval_return=f"{self.last_eval_return:.1f}",
                        updates=str(self.updates),
                    )
                    self.log(metrics)
                    if self.stop.requested:
                        break
                    self.stop.phase = "collection"  # the collector's next batch
        except BaseException:
            pbar.close()
            self.stop.restore()
            print(
                f"\nStopped by an error at frame {self.frames} ({self.updates} updates); no checkpoint written "
                f"(the last one: {self.stop.last_checkpoint}).",
                flush=True,
            )
            raise
        finally:
            if collector is not None:
                collector.shutdown()
        pbar.close()
        try:
            path = self.checkpoint()
        finally:
            self.stop.restore()
        if self.stop.requested:
            print(f"Stopped at frame {self.frames} ({self.updates} updates); checkpoint written to {path}", flush=True)
            sys.exit(self.stop.exit_code)
        figure = self.results.plot(f"{self.name} {task_name(self.cfg)}")
        self.eval_env.close()
        print(
            f"Done: {self.frames} frames, {self.updates} updates. "
            f"Results: {self.folder / 'returns.csv'}, {figure}, {path}",
            flush=True,
        )
