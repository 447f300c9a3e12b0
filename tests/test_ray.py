"""Collection on Ray (``collector.backend=ray``): a local Ray started by the run, its workers fed the learner's
weights, resume, Ctrl-C, and the errors of a missing Ray or an address where no cluster answers
(README, "On a cluster")."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from _helpers import assert_results, read_checkpoint, run_script, script_module, TINY

pytest.importorskip("ray", reason="the ray extra: pip install -e '.[ray]' (CI installs it)")
pytestmark = pytest.mark.slow

# two workers of one environment each on a local Ray of two CPUs (this machine's), 25 frames each per batch
RAY = ["collector.backend=ray", "collector.num_workers=2", "ray.num_cpus=2"]


def ray_processes() -> list[int]:
    """The process ids of Ray's own daemons (raylet, GCS) on this machine."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"/raylet" in cmdline or b"gcs_server" in cmdline:
            found.append(int(pid))
    return found


def test_trains_on_a_local_ray_with_two_workers_and_shuts_it_down(tmp_path):
    done = run_script(tmp_path, *RAY)
    assert_results(tmp_path, final_frame=200)
    saved = read_checkpoint(tmp_path)
    assert saved["updates"] == 150  # the same accounting as one collector: utd 1 from frame 100
    assert saved["config"]["collector"]["backend"] == "ray"
    assert "collection: ray, 2 workers x 1 environment, sync; a local Ray of 2 CPUs" in done.stdout
    assert not ray_processes(), "the run left Ray running"


def test_the_workers_collect_with_the_weights_of_the_latest_updates(tmp_path):
    utils, compose = script_module("utils"), script_module("test_sota_qsm").compose_config
    cfg = compose(*TINY, *RAY)
    env = utils.make_env("cartpole", "swingup")
    actor, policy = utils.make_qsm_agent(cfg, env, torch.device("cpu"))
    collector = utils.make_collector(cfg, policy, 200, 0, seed=0, device=torch.device("cpu"))
    try:
        batches = iter(collector)  # as the training loop takes them
        next(batches)
        with torch.no_grad():  # the learner updates its actor
            for p in actor.parameters():
                p.add_(0.01)
        learner = TensorDict.from_module(policy).detach().clone()
        next(batches)  # collected after the update
        for worker in collector.state_dict():
            remote = TensorDict(worker["policy_state_dict"]).unflatten_keys(".")
            assert (remote == learner).all(), "a worker collected with the weights of before the update"
    finally:
        collector.shutdown()
    assert not ray_processes()


def test_ctrl_c_stops_a_ray_run_with_a_checkpoint_and_it_resumes_with_async_collection(tmp_path):
    start = script_module("test_reliability").start
    run = start(tmp_path, *TINY, *RAY, "collector.total_frames=100000", "eval.interval=100000")
    run.wait_for(r"updates=[1-9]", timeout=180)
    os.killpg(run.process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    output = run.finish(timeout=120)
    assert run.process.returncode == 130, output[-3000:]
    saved = read_checkpoint(tmp_path)
    assert 0 < saved["frames"] < 100000 and saved["updates"] > 0
    assert "Traceback" not in output, output[-3000:]
    assert not ray_processes(), "Ctrl-C left Ray running"

    # resumed in place, switched to async collection (each batch one worker's 50 frames): 100 frames more
    end = saved["frames"] + 100
    done = run_script(
        tmp_path,
        *RAY,
        "collector.sync=false",
        f"collector.total_frames={end}",
        f"checkpoint.resume={tmp_path}",
    )
    assert f"at frame {saved['frames']} ({saved['updates']} updates)" in done.stdout
    assert "changed: collector.sync: True -> False" in done.stdout
    final = read_checkpoint(tmp_path)
    # as a run never stopped: one update per frame of every batch from frame 100 on, the owed ones done first
    assert (final["frames"], final["updates"]) == (end, end - 50)
    assert not ray_processes()


def test_a_missing_ray_names_its_install_command(monkeypatch):
    config = script_module("config")
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name))
    cfg = script_module("test_sota_qsm").compose_config(*RAY)
    with pytest.raises(
        ValueError, match=r'collector.backend=ray needs Ray, which is not installed: pip install -e ".\[ray\]"'
    ):
        config.validate_config(cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "address, message",
    [
        ("head-node", r"ray.address='head-node' is not an address: use null"),
        (f"127.0.0.1:{free_port()}", r"ray.address='127.0.0.1:\d+': no Ray cluster answers there"),
    ],
)
def test_a_bad_ray_address_is_refused_before_anything_is_built(address, message):
    config, compose = script_module("config"), script_module("test_sota_qsm").compose_config
    with pytest.raises(ValueError, match=message):
        config.validate_config(compose(*RAY, f"ray.address={address}"))


def test_joining_a_cluster_where_there_is_none_says_how_to_start_one(tmp_path):
    done = run_script(tmp_path, *RAY, "ray.address=auto", check=False)
    assert done.returncode == 1
    assert "ray.address='auto': Could not find any running Ray instance." in done.stderr, done.stderr[-3000:]
    assert "Start a cluster with `ray start --head`" in done.stderr
