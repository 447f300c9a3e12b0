"""torchrl_qsm.run.RunGuard: a run folder one run writes into, and stop signals turned into a stop request."""

import os
import signal
import subprocess
import sys

import pytest

from torchrl_qsm.run import RunGuard


def test_a_signal_becomes_a_stop_request_with_the_shell_s_exit_code_and_the_handlers_come_back(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    with RunGuard(tmp_path / "run") as guard:
        guard.phase = "updates"
        assert not guard.stop_requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.stop_requested and guard.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM received during updates: stopping once it is done, with a checkpoint" in capsys.readouterr().out


def test_a_second_signal_aborts_at_once_naming_the_last_checkpoint(tmp_path):
    code = f"""
import os, signal, time
from torchrl_qsm.run import RunGuard
with RunGuard({str(tmp_path)!r}) as guard:
    guard.last_checkpoint = "frame 100"
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130
    assert "SIGINT again: aborting now, without a checkpoint (the last one: frame 100)." in done.stdout


def test_a_folder_is_written_by_one_run_at_a_time(tmp_path):
    with RunGuard(tmp_path):
        with pytest.raises(RuntimeError, match=rf"{tmp_path} is in use by another run \(pid {os.getpid()}\)"):
            RunGuard(tmp_path).__enter__()
    with RunGuard(tmp_path):  # released when the first one ended
        pass


def test_a_folder_holding_a_run_is_claimed_only_to_resume_it(tmp_path):
    (tmp_path / "returns.csv").write_text("frame\n")
    with pytest.raises(RuntimeError, match=r"holds another run \(returns.csv\); resume it with checkpoint.resume="):
        RunGuard(tmp_path).__enter__()
    with RunGuard(tmp_path, resume=tmp_path / "checkpoints" / "checkpoint-000000000100"):
        pass


def test_partial_files_of_an_interrupted_write_are_removed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    staged = checkpoints / ".checkpoint-000000000300.stage-1"
    staged.mkdir(parents=True)
    (tmp_path / "returns.csv.tmp").write_text("half")
    with RunGuard(tmp_path, resume=tmp_path) as guard:
        assert sorted(p.name for p in guard.removed_partials) == [".checkpoint-000000000300.stage-1", "returns.csv.tmp"]
    assert not staged.exists() and not (tmp_path / "returns.csv.tmp").exists()


def test_an_error_in_the_block_is_reported_with_the_phase_and_the_last_checkpoint(tmp_path, capsys):
    with pytest.raises(ValueError, match="boom"), RunGuard(tmp_path) as guard:
        guard.phase, guard.last_checkpoint = "evaluation", "frame 200, checkpoints/checkpoint-000000000200"
        raise ValueError("boom")
    assert (
        "Stopped by an error during evaluation; no checkpoint written (the last one: frame 200, "
        "checkpoints/checkpoint-000000000200)." in capsys.readouterr().out
    )
