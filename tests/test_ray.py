"""Collection on Ray (``collector.backend=ray``): a local Ray started by the run, its workers fed the learner's
weights, resume, Ctrl-C, a cluster of two nodes joined with its token, and the errors of a missing Ray, an
address where no cluster answers and a refused token (README, "On a cluster")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
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
    cfg = compose(*TINY, *RAY, "collector.init_random_frames=0", "env.seed=0")
    env = utils.make_env("cartpole", "swingup")
    actor, policy = utils.make_qsm_agent(cfg, env, torch.device("cpu"))
    collector = utils.make_collector(cfg, policy, torch.device("cpu"))
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


def test_a_refused_token_names_its_fix_where_the_run_joins(monkeypatch):
    """Ray's own error names neither the address nor how the script gets the token; both places where the run
    joins a cluster do: the check before anything is built, and ``ray.init`` (reached with ``ray.address=auto``)."""
    import ray._raylet
    from ray.exceptions import AuthenticationError, RpcError

    config, utils = script_module("config"), script_module("utils")
    refused = "RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
    fix = (
        r"set RAY_AUTH_MODE=token where the script runs, as on every node, with the cluster's token in "
        r"~/.ray/auth_token, in the file that RAY_AUTH_TOKEN_PATH names, or in RAY_AUTH_TOKEN "
        r"\(here RAY_AUTH_MODE is unset; README, \"On a cluster\"\)\."
    )
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)

    def head_node(error: Exception):
        def gcs_client(address):  # Ray's client of the head node, which ray.init connects with
            raise error

        monkeypatch.setattr(ray._raylet, "GcsClient", gcs_client)

    with socket.create_server(("127.0.0.1", 0)) as head:  # something answers there, as a head node does
        ray_cfg = OmegaConf.create({"address": f"127.0.0.1:{head.getsockname()[1]}"})
        head_node(AuthenticationError(refused))
        with pytest.raises(
            ValueError,
            match=rf"^ray.address='{ray_cfg.address}': this run cannot join the cluster "
            rf"without its token \({refused}\)\. .*{fix}$",
        ):
            config.check_ray(ray_cfg)
        head_node(RpcError("Timed out while waiting for GCS to become available."))  # not a Ray head there
        with pytest.raises(ValueError, match=rf"^ray.address='{ray_cfg.address}': no Ray cluster answers there"):
            config.check_ray(ray_cfg)
    with pytest.raises(ConnectionError, match=rf"^ray.address='auto': this run cannot join the cluster .*{fix}$"):
        with utils.joining("auto"):
            raise AuthenticationError(refused)


def start_node(log: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """``ray start --block ARGS``, in a process group of its own: its node's daemons are its children, and end
    with it."""
    with open(log, "w") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            stop_nodes([node])
            raise AssertionError(f"ray start {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return node


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    """Ends the nodes started here and every process of their groups, and nothing else."""
    for node in nodes:
        node.terminate()  # `ray start --block` stops its node's daemons on SIGTERM
    for node in nodes:
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(node.pid, signal.SIGKILL)  # any process of the group still there
        except ProcessLookupError:
            pass
        node.wait()


@pytest.fixture
def cluster():
    """A Ray cluster of two nodes on this machine, a head and a worker node of one CPU each, started with
    ``ray start`` as the README's recipe does, with token authentication and a token of its own (no other
    process on this machine holds it). It is joined at 127.0.0.1, at a free port; Ray 2.60's daemons listen on
    every interface whatever the address (no option of ``ray start`` was found against it), and the token keeps out
    anything else that reaches them. Yields the address and the environment that joins it."""
    folder = Path(tempfile.mkdtemp(prefix="qsm-ray-", dir="/tmp"))  # short: Ray's socket paths live below it
    token = folder / "auth_token"
    token.write_text(os.urandom(32).hex())
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "OMP_NUM_THREADS": "1"}
    address = f"127.0.0.1:{free_port()}"
    common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={folder / 'ray'}"]
    nodes = []
    try:
        nodes.append(
            start_node(
                folder / "head.log",
                env,
                "--head",
                f"--port={address.split(':')[1]}",
                "--include-dashboard=false",
                *common,
            )
        )
        nodes.append(start_node(folder / "worker.log", env, f"--address={address}", *common))
        yield address, env
    finally:
        stop_nodes(nodes[::-1])
        shutil.rmtree(folder, ignore_errors=True)
    for node in nodes:
        with pytest.raises(ProcessLookupError):
            os.killpg(node.pid, 0)


CLUSTER_STATE = """
import asyncio, json, sys
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo

gcs = GcsClient(address=sys.argv[1])
nodes = {n.node_id.hex(): GcsNodeInfo.GcsNodeState.Name(n.state) for n in gcs.get_all_node_info(timeout=30).values()}
async def actors():
    return await gcs.async_get_all_actor_info(timeout=30)
workers = [a.address.node_id.hex() for a in asyncio.run(actors()).values() if a.class_name == "Collector"]
print(json.dumps({"nodes": nodes, "workers": workers}))
"""


def test_trains_on_a_cluster_of_two_nodes_that_it_joins_with_the_cluster_token(tmp_path, cluster, monkeypatch):
    address, env = cluster
    # without the token (this process's Ray has none of this cluster's), the cluster refuses before anything is built
    config = script_module("config")
    with pytest.raises(
        ValueError, match=rf"ray.address='{address}': this run cannot join the cluster without its token"
    ):
        config.check_ray(OmegaConf.create({"address": address}))

    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what the README's recipe exports where the script runs
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", env["RAY_AUTH_TOKEN_PATH"])
    done = run_script(tmp_path, "collector.backend=ray", "collector.num_workers=2", f"ray.address={address}")
    assert_results(tmp_path, final_frame=200)
    assert f"collection: ray, 2 workers x 1 environment, sync; joins {address}" in done.stdout

    # the cluster is still up, both nodes alive, and each node ran one of the run's two workers
    state = subprocess.run(
        [sys.executable, "-c", CLUSTER_STATE, address], env=env, capture_output=True, text=True, timeout=120
    )
    assert state.returncode == 0, state.stderr[-3000:]
    state = json.loads(state.stdout)
    assert list(state["nodes"].values()) == ["ALIVE", "ALIVE"], state
    assert sorted(state["workers"]) == sorted(state["nodes"]), state
