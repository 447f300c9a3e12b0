"""What the training script guarantees when users lean on it: signals, non-finite data, resume,
run folders and checkpoint files (README, "Checkpoints and resume")."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torchrl.envs import Transform

from torchrl_qsm import NonFiniteError
from torchrl_qsm.run import remove_stale_partials

from _helpers import (
    assert_results,
    copy_run,
    read_checkpoint,
    read_returns,
    ROOT,
    run_script,
    SCRIPT_DIR,
    script_module,
    TINY,
)

pytestmark = pytest.mark.slow
SCRIPT = str(SCRIPT_DIR / "qsm.py")

# The README's widths (256), on cartpole-swingup; each phase made long enough that a random moment
# inside it is easy to hit: many updates, or long evaluations.
WIDE = [
    "env.domain=cartpole",
    "env.task=swingup",
    "network.hidden_sizes=[256,256]",
    "optim.batch_size=64",
    "collector.total_frames=300",
    "collector.frames_per_batch=100",
    "collector.init_random_frames=100",
    "logger.backend=",
    "compile.compile=false",  # compiling is not what these tests test, and a recompile made them miss phases
]
PHASES = {
    "updates": [
        "optim.utd_ratio=1",
        "eval.interval=300",
        "eval.episodes=1",
        "env.max_episode_steps=100",
        "checkpoint.interval=300",
        "replay_buffer.size=1000",
    ],
    "evaluation": [
        "optim.utd_ratio=0.05",
        "eval.interval=100",
        "eval.episodes=10",
        "env.max_episode_steps=400",
        "checkpoint.interval=300",
        "replay_buffer.size=1000",
    ],
}


def expected_updates(overrides: list[str]) -> int:
    """What an uninterrupted run does: utd_ratio updates per frame of every batch from the one that
    reaches init_random_frames on, the fractions carried over."""
    values = dict(o.split("=", 1) for o in overrides)
    total, batch = int(values["collector.total_frames"]), int(values["collector.frames_per_batch"])
    credit, updates = 0.0, 0
    for frames in range(batch, total + 1, batch):
        if frames >= int(values["collector.init_random_frames"]):
            credit += batch * float(values["optim.utd_ratio"])
        updates, credit = updates + int(credit), credit - int(credit)
    return updates


class Reader:
    """The merged stdout/stderr of a process, read on a thread so that the test can wait for text."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text, self.process = "", process
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.process.stdout.read(1), ""):
            self.text += chunk

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not re.search(pattern, self.text):
            assert self.process.poll() is None or re.search(pattern, self.text), f"ended early:\n{self.text[-3000:]}"
            assert time.time() < deadline, f"no {pattern!r} after {timeout} s:\n{self.text[-3000:]}"
            time.sleep(0.01)

    def finish(self, timeout: float = 300) -> str:
        self.process.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return self.text


def start(folder: Path, *overrides: str) -> Reader:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, SCRIPT, *overrides, f"hydra.run.dir={folder}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return Reader(process)


# When the phase of interest begins, as the run's output shows it: after the first batch's updates
# start (the progress bar counts them), after the first evaluation's line (the next one follows the
# next batch).
TRIGGERS = {"updates": r"updates=[1-9]", "evaluation": r"\[eval\] frame 100"}
DELAYS = {"updates": (0.5, 1.8), "evaluation": (0.3, 0.8)}


@pytest.mark.parametrize(
    "phase, signum",
    [("updates", signal.SIGINT), ("evaluation", signal.SIGTERM)],
    ids=["SIGINT-updates", "SIGTERM-evaluation"],
)
def test_a_signal_at_a_random_moment_leaves_a_checkpoint_that_resumes_to_the_same_counts(tmp_path, phase, signum):
    # one real signal of each kind, at a random moment, to the script as a user runs it (the phases are also hit
    # deterministically, in-process, below); SIGINT goes to the whole process group, as a terminal's Ctrl-C does;
    # SIGTERM to the process, as kill does
    overrides = [*WIDE, *PHASES[phase]]
    rng = random.Random(f"{phase}{signum}")
    for attempt in range(4):  # a random moment may fall just outside the phase: try again
        folder = tmp_path / f"attempt{attempt}"
        run = start(folder, *overrides)
        run.wait_for(TRIGGERS[phase])
        time.sleep(rng.uniform(*DELAYS[phase]))
        if signum == signal.SIGINT:
            os.killpg(run.process.pid, signum)
        else:
            run.process.send_signal(signum)
        output = run.finish()
        assert run.process.returncode == 128 + signum, output[-3000:]
        assert re.search(r"Stopped at frame \d+ \(\d+ updates\); checkpoint written to", output), output[-3000:]
        saved = read_checkpoint(folder)
        hit = re.search(rf"{signal.Signals(signum).name} received during ([a-z ]+): stopping", output)
        if hit and hit.group(1) == phase:
            break
        print(f"attempt {attempt}: the signal arrived during {hit and hit.group(1)}, not {phase}")
    else:
        pytest.fail(f"four random moments missed the {phase} phase")
    assert 0 < saved["frames"] <= 300

    # resume in place: the same frame and update counts as a run that was never stopped
    done = run_script(folder, *overrides, f"checkpoint.resume={folder}", tiny=False)
    final = read_checkpoint(folder)
    assert (final["frames"], final["updates"]) == (300, expected_updates(overrides)), done.stdout[-2000:]
    assert f"Resumed from {saved['path']} at frame {saved['frames']} ({saved['updates']} updates)" in done.stdout


@pytest.mark.parametrize(
    "phase, signum", [("evaluation", signal.SIGINT), ("checkpoint writing", signal.SIGTERM)], ids=["eval", "write"]
)
def test_a_signal_inside_evaluation_or_checkpoint_writing_stops_after_it_and_resumes_to_the_same_counts(
    tmp_path, monkeypatch, capsys, phase, signum
):
    # the signal raised from inside the phase, at its first occurrence (frame 100), in this process
    qsm, checkpoints = script_module("qsm"), script_module("checkpoints")
    where = (qsm, "evaluate_policy") if phase == "evaluation" else (checkpoints, "write_checkpoint")
    real, calls = getattr(*where), []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(*where, signalled)
    with pytest.raises(SystemExit) as stopped:
        qsm.train(compose(TINY), tmp_path)
    output = capsys.readouterr().out
    assert stopped.value.code == 128 + signum, output[-3000:]
    assert f"{signal.Signals(signum).name} received during {phase}: stopping once it is done" in output
    saved = read_checkpoint(tmp_path)
    assert (saved["frames"], saved["updates"]) == (100, 50)
    assert f"Stopped at frame 100 (50 updates); checkpoint written to {saved['path']}" in output
    monkeypatch.setattr(*where, real)
    qsm.train(compose([*TINY, f"checkpoint.resume={tmp_path}"]), tmp_path)
    final = read_checkpoint(tmp_path)
    assert (final["frames"], final["updates"]) == (200, 150)  # as a run never stopped


def test_a_second_signal_aborts_at_once_without_a_checkpoint(tmp_path):
    run = start(tmp_path, *WIDE, *PHASES["evaluation"])
    run.wait_for(TRIGGERS["evaluation"])
    time.sleep(0.5)
    os.killpg(run.process.pid, signal.SIGINT)
    run.wait_for("SIGINT received during")
    os.killpg(run.process.pid, signal.SIGINT)
    output = run.finish(timeout=30)
    assert run.process.returncode == 130, output[-2000:]
    assert "SIGINT again: aborting now, without a checkpoint (the last one: none)" in output
    assert not (tmp_path / "checkpoint.pt").exists()


def test_ctrl_c_stops_a_run_with_collector_processes_cleanly(tmp_path):
    # the workers ignore the terminal's SIGINT: the main process stops them after its checkpoint
    run = start(
        tmp_path,
        *TINY,
        "collector.backend=multiprocess",
        "collector.num_workers=2",
        "collector.total_frames=100000",
        "eval.interval=100000",
    )
    run.wait_for(r"updates=[1-9]")
    os.killpg(run.process.pid, signal.SIGINT)
    output = run.finish(timeout=120)
    assert run.process.returncode == 130, output[-3000:]
    saved = read_checkpoint(tmp_path)
    assert 0 < saved["frames"] < 100000 and saved["updates"] > 0
    assert "Traceback" not in output, output[-3000:]


# --- non-finite values -----------------------------------------------------------------------------
def test_a_nan_reward_stops_the_run_naming_the_key_and_the_frame_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    utils = script_module("utils")
    cfg = compose([*TINY, "checkpoint.interval=50"])
    real_make_env = utils.make_env

    def make_env(*args, **kwargs):  # an environment whose 130th reward is NaN
        env = real_make_env(*args, **kwargs)
        env.append_transform(NaNRewardAt(130))
        return env

    monkeypatch.setattr(utils, "make_env", make_env)
    with pytest.raises(
        NonFiniteError, match=r"non-finite \('next', 'reward'\) \(\[nan\]\) at frame 130; it was not stored"
    ):
        script_module("qsm").train(cfg, tmp_path)  # the script's run, in this process
    saved = read_checkpoint(tmp_path)
    assert saved["frames"] == 100  # the last checkpoint before the NaN, untouched
    assert script_module("checkpoints").state_is_finite(saved["state"])


def test_diverging_losses_stop_the_run_before_a_non_finite_checkpoint_is_written(tmp_path):
    done = run_script(tmp_path, "optim.lr=1e30", "checkpoint.interval=50", check=False)
    assert done.returncode == 1
    assert re.search(r"NonFiniteError: QSMLoss: loss_\w+ is (nan|inf)", done.stderr), done.stderr[-3000:]
    assert "Stopped by an error during updates; no checkpoint written (the last one: frame 50" in done.stdout
    saved = read_checkpoint(tmp_path)  # the checkpoint of frame 50, before updates
    assert saved["frames"] == 50 and script_module("checkpoints").state_is_finite(saved["state"])


def test_the_loop_refuses_to_checkpoint_non_finite_weights(tmp_path):
    checkpoints, utils = script_module("checkpoints"), script_module("utils")
    bad = {"loss": {"weight": torch.tensor([1.0, float("nan")])}, "optim": {"state": {0: {"exp_avg": torch.ones(2)}}}}
    assert not checkpoints.state_is_finite(bad) and checkpoints.state_is_finite({"x": torch.ones(2), "n": 3})
    with pytest.raises(NonFiniteError, match=r"Update 3 gave non-finite losses \{'loss_actor': nan"):
        utils.check_finite_losses([TensorDictOf(1.0), TensorDictOf(2.0), TensorDictOf(float("nan"))], first_update=0)
    # an update may output fewer loss_* terms than another (TD3's actor every second update): each is checked
    critic_only = TensorDictOf(1.0).exclude("loss_actor")
    with pytest.raises(
        NonFiniteError, match=r"Update 12 gave non-finite losses \{'loss_actor': inf, 'loss_qvalue': 1.0\}"
    ):
        utils.check_finite_losses([critic_only, TensorDictOf(float("inf"))], first_update=10)


# --- resume ----------------------------------------------------------------------------------------
def test_resume_refuses_structural_changes_naming_every_field_and_prints_the_allowed_ones(tmp_path, tiny_run):
    first = tiny_run
    resume = f"checkpoint.resume={first}"
    done = run_script(
        tmp_path / "changed",
        resume,
        "network.hidden_sizes=[64,64]",
        "env.task=balance",
        "diffusion.num_steps=10",
        "network.layer_norm=true",
        "diffusion.schedule=cosine",
        "replay_buffer.size=2000",
        "diffusion.alpha=auto",
        check=False,
    )
    assert done.returncode == 1
    for field, old, new in [
        ("network.hidden_sizes", "[32, 32]", "[64, 64]"),
        ("env.task", "'swingup'", "'balance'"),
        ("diffusion.num_steps", "5", "10"),
        ("network.layer_norm", "False", "True"),
        ("diffusion.schedule", "'vp'", "'cosine'"),
        ("replay_buffer.size", "1000", "2000"),
        ("diffusion.alpha", "50.0", "'auto'"),  # auto keeps state (its curvature estimate); numbers may change
    ]:
        assert f"{field} was {old} in the checkpoint, now {new}" in done.stderr, field
    allowed = run_script(
        tmp_path / "allowed", resume, "collector.total_frames=300", "diffusion.alpha=10", "optim.lr=1e-4"
    )
    for line in (
        "changed: collector.total_frames: 200 -> 300",
        "changed: diffusion.alpha: 50.0 -> 10",
        "changed: optim.lr: 0.0003 -> 0.0001",
    ):
        assert line in allowed.stdout
    assert read_checkpoint(tmp_path / "allowed")["frames"] == 300


def test_a_saved_replay_buffer_is_never_dropped_and_a_missing_one_is_refilled_before_updates(tmp_path, tiny_run):
    first, again, without, refilled = tiny_run, *(tmp_path / name for name in ("again", "without", "refilled"))
    done = run_script(
        again,
        f"checkpoint.resume={first}",
        "checkpoint.save_replay_buffer=false",
        "collector.total_frames=250",
    )
    assert "its replay buffer was loaded; checkpoint.save_replay_buffer=false" in done.stdout
    assert read_checkpoint(again)["updates"] == 150 + 50  # updated at once
    # a checkpoint without a buffer: the policy collects init_random_frames new transitions first
    run_script(without, "checkpoint.save_replay_buffer=false")
    done = run_script(refilled, f"checkpoint.resume={without}", "collector.total_frames=350")
    assert (
        "holds no replay buffer: updates resume once the policy has collected 100 new transitions (frame 300)"
        in done.stdout
    )
    assert read_checkpoint(refilled)["updates"] == 150 + 100  # the batches ending at 300 and 350


def test_runs_are_repeatable_and_a_resumed_run_does_not_replay_the_first_episodes(tmp_path, tiny_run):
    a, b, resumed = tiny_run, tmp_path / "b", tmp_path / "resumed"
    run_script(b)
    returns = [[(r["frame"], r["train_return"], r["eval_return"]) for r in read_returns(folder)] for folder in (a, b)]
    assert returns[0] == returns[1]  # the first episode's reset is seeded too
    weights = [read_checkpoint(f)["state"]["loss"] for f in (a, b)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # resumed at frame 200, the episodes are new ones, not the first run's again
    run_script(resumed, f"checkpoint.resume={a}", "collector.total_frames=400")
    first_episodes = [r["train_return"] for r in read_returns(a) if r["train_return"]][:4]
    after_resume = [r["train_return"] for r in read_returns(resumed) if r["train_return"] and int(r["frame"]) > 200][:4]
    assert first_episodes != after_resume


# --- run folders -----------------------------------------------------------------------------------
def test_a_folder_that_holds_another_run_is_refused_unless_that_run_is_resumed(tmp_path, tiny_run):
    folder = copy_run(tiny_run, tmp_path / "run")
    done = run_script(folder, check=False)
    assert done.returncode == 1
    assert f"{folder} holds another run (checkpoints, returns.csv); resume it with checkpoint.resume=" in done.stderr
    assert read_returns(folder) == read_returns(tiny_run)  # untouched
    run_script(folder, f"checkpoint.resume={folder}", "collector.total_frames=250")


def test_two_runs_at_once_never_share_a_folder(tmp_path):
    first = start(tmp_path / "shared", *TINY, "collector.total_frames=100000")
    first.wait_for(r"updates=[1-9]")
    done = run_script(tmp_path / "shared", check=False)
    os.killpg(first.process.pid, signal.SIGINT)
    first.finish()
    assert (
        done.returncode == 1
        and f"{tmp_path / 'shared'} is in use by another run (pid {first.process.pid})" in done.stderr
    )
    # default folders: two launches in the same second get two folders
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launches = [
        subprocess.Popen(
            [
                sys.executable,
                SCRIPT,
                *TINY,
                "collector.total_frames=50",
                "collector.init_random_frames=50",
                "collector.frames_per_batch=50",
                "eval.interval=50",
                "checkpoint.interval=50",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in launches]
    assert all(p.returncode == 0 for p in launches), outputs
    folders = {re.search(r"results in (\S+)", out).group(1) for out in outputs}
    assert len(folders) == 2 and all((tmp_path / f / "checkpoints").is_dir() for f in folders)


# --- checkpoint files ------------------------------------------------------------------------------
class SegmentTree(list):
    """Stands for a prioritized sampler's C++ sum/min tree: indexed and assigned leaf by leaf, pickled only."""


class PrioritizedBuffer:
    """What checkpoints.replay_buffer_state sees of a prioritized replay buffer (this install lacks the C++ trees)."""

    def __init__(self, priorities: list[float]) -> None:
        self.sampler = type("Sampler", (), {})()
        self.sampler._max_capacity = len(priorities)
        self.sampler._sum_tree, self.sampler._min_tree = SegmentTree(priorities), SegmentTree(priorities)
        self.loaded = None

    def state_dict(self) -> dict:
        trees = {name: SegmentTree(getattr(self.sampler, name)) for name in ("_sum_tree", "_min_tree")}
        return {"_sampler": {"_alpha": 0.7, **trees}, "_writer": {"_cursor": 2}}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def test_a_prioritized_sampler_s_trees_are_checkpointed_as_tensors_and_written_back(tmp_path):
    checkpoints = script_module("checkpoints")
    state = checkpoints.replay_buffer_state(PrioritizedBuffer([0.5, 2.0, 1.0]))
    torch.save(state, tmp_path / "buffer.pt")
    loaded = torch.load(tmp_path / "buffer.pt", weights_only=True)  # no pickled tree: tensors and plain values
    assert loaded["_sampler"]["_sum_tree"].tolist() == [0.5, 2.0, 1.0]
    target = PrioritizedBuffer([0.0, 0.0, 0.0])
    checkpoints.load_replay_buffer_state(target, loaded)
    assert target.sampler._sum_tree == [0.5, 2.0, 1.0] and target.sampler._min_tree == [0.5, 2.0, 1.0]
    assert target.loaded["_sampler"]["_sum_tree"] is target.sampler._sum_tree  # the sampler's own trees, filled
    assert target.loaded["_writer"] == {"_cursor": 2} and target.loaded["_sampler"]["_alpha"] == 0.7


def small_checkpoint(checkpoints, frames: int):
    """A checkpoint of the script's kind with two components: counters (JSON) and weights (a state dict)."""
    from torchrl_qsm.modules.saving import weights_only_checkpoint  # noqa: PLC0415

    state = {"format": checkpoints.FORMAT, "frames": frames}
    return state, weights_only_checkpoint(trainer_state=state, weights=torch.nn.Linear(2, 2))


def test_a_full_disk_names_the_folder_removes_the_partial_files_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    checkpoints = script_module("checkpoints")
    state, checkpoint = small_checkpoint(checkpoints, frames=1)
    checkpoints.write_checkpoint(tmp_path, checkpoint, 1, ["trainer_state", "weights"])
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):  # half written, then the disk is full
        Path(path).write_bytes(b"half a state dict")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    state["frames"] = 2
    with pytest.raises(
        OSError, match=rf"No space left on device while writing a checkpoint into {re.escape(str(tmp_path))}"
    ):
        checkpoints.write_checkpoint(tmp_path, checkpoint, 2, ["trainer_state", "weights"])
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-000000000001"]  # nothing staged left
    assert read_checkpoint(tmp_path)["frames"] == 1


KILLED = """
import os, sys, torch
sys.path.insert(0, {script_dir!r})
import checkpoints
import torchrl.checkpoint._checkpoint as torchrl_checkpoint
from torchrl_qsm.modules.saving import weights_only_checkpoint

folder, point = {folder!r}, {point!r}
state = {{"format": checkpoints.FORMAT, "frames": 0}}
checkpoint = weights_only_checkpoint(trainer_state=state, weights=torch.nn.Linear(2, 2))
real_replace, renames = torchrl_checkpoint.os.replace, []


def replace_killed_at_the_second(*args):  # the old checkpoint renamed to its backup, then killed
    renames.append(args)
    if len(renames) == 2:
        os._exit(137)
    return real_replace(*args)


for save, frames in enumerate((1, 2, 2) if point == "replacing the same frame count" else (1, 2, 3)):
    if save == 2:  # as SIGKILL would stop the process at this call: no cleanup runs
        killed = lambda *args, **kwargs: os._exit(137)
        if point == "writing":
            torch.save = killed
        elif point == "renaming into place":
            torchrl_checkpoint.os.replace = killed
        elif point == "removing the oldest":
            torchrl_checkpoint.shutil.rmtree = killed
        else:
            torchrl_checkpoint.os.replace = replace_killed_at_the_second
    state["frames"] = frames
    checkpoints.write_checkpoint(folder, checkpoint, frames, ["trainer_state", "weights"])
"""


@pytest.mark.parametrize(
    "point, newest, after_cleanup",
    [
        ("writing", 2, 2),
        ("renaming into place", 2, 2),
        ("removing the oldest", 3, 3),
        ("replacing the same frame count", 1, 2),  # a stop at the frame of the last checkpoint, more updates done
    ],
)
def test_a_write_killed_at_any_step_leaves_a_whole_checkpoint_to_resume(tmp_path, point, newest, after_cleanup):
    code = KILLED.format(script_dir=str(SCRIPT_DIR), folder=str(tmp_path), point=point)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr[-3000:]
    assert read_checkpoint(tmp_path)["frames"] == newest  # the newest whole checkpoint; partial files are hidden
    removed = remove_stale_partials(tmp_path, tmp_path / "checkpoints")  # what RunGuard does at the next start
    newest = after_cleanup
    assert removed and all(p.name.startswith(".checkpoint-") for p in removed), removed
    assert all(p.name.startswith("checkpoint-") for p in (tmp_path / "checkpoints").iterdir())
    assert read_checkpoint(tmp_path)["frames"] == newest


def test_damaged_foreign_or_old_checkpoints_are_refused_by_name(tmp_path, tiny_run):
    checkpoints = script_module("checkpoints")
    newest = checkpoints.find_checkpoint(tiny_run)
    assert newest == tiny_run / "checkpoints" / "checkpoint-000000000200"
    damaged = tmp_path / "damaged"
    shutil.copytree(newest, damaged)
    next(damaged.glob("components/*-critic_optim/state.pt")).write_bytes(b"not a state dict")
    unreadable = tmp_path / "unreadable"
    shutil.copytree(newest, unreadable)
    (unreadable / "manifest.json").write_text("{")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "empty").mkdir()
    (tmp_path / "old").mkdir()
    torch.save({"format": "torchrl_qsm checkpoint 2", "frames": 1}, tmp_path / "old" / "checkpoint.pt")
    for path, message in [
        (unreadable, "holds no checkpoint of the QSM training script"),
        (tmp_path / "notes.txt", "is not a checkpoint of the QSM training script"),
        (tmp_path / "empty", "holds no checkpoint of the QSM training script"),
        (tmp_path / "old", "is a checkpoint of an earlier version of the script"),
    ]:
        with pytest.raises(checkpoints.CheckpointError, match=message):
            checkpoints.read_checkpoint(path)
    with pytest.raises(checkpoints.CheckpointError, match="cannot be read"):
        checkpoints.read_checkpoint(damaged)
    done = run_script(tmp_path / "resumed", f"checkpoint.resume={damaged}", check=False)
    assert done.returncode == 1 and f"{damaged} cannot be resumed" in done.stderr, done.stderr[-3000:]


def test_partial_files_of_an_interrupted_write_are_removed_at_start(tmp_path, tiny_run):
    folder = copy_run(tiny_run, tmp_path / "run")
    (folder / "returns.csv.tmp").write_bytes(b"half a table")
    staged = folder / "checkpoints" / ".checkpoint-000000000250.stage-0123"
    staged.mkdir()
    (staged / "manifest.json").write_text("{")
    done = run_script(folder, f"checkpoint.resume={folder}", "collector.total_frames=250")
    assert (
        "Removed the partial files of an interrupted write: ['returns.csv.tmp', '.checkpoint-000000000250.stage-0123']"
        in done.stdout
    )
    assert not staged.exists() and not (folder / "returns.csv.tmp").exists()
    assert_results(folder, final_frame=250)


# --- helpers ---------------------------------------------------------------------------------------
def compose(overrides: list[str]):
    from test_sota_qsm import compose_config  # noqa: PLC0415

    return compose_config(*overrides)


def TensorDictOf(loss_value: float):
    from tensordict import TensorDict

    return TensorDict(loss_actor=torch.tensor(loss_value), loss_qvalue=torch.tensor(1.0))


class NaNRewardAt(Transform):
    """Makes the reward of the environment's ``step``-th step NaN, as a broken simulator or reward would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.steps = step, 0

    def _step(self, tensordict, next_tensordict):
        self.steps += 1
        if self.steps == self.step:
            next_tensordict["reward"] = torch.full_like(next_tensordict["reward"], float("nan"))
        return next_tensordict
