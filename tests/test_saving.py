"""A trained actor out of the library: ``save_actor``/``load_actor``, the ``torch.export`` program that needs
only torch, and ``evaluate.py`` on a checkpoint of the training script (README, "After training")."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensordict
import torch
from tensordict import NonTensorData, TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_qsm import (
    actor_record,
    ActorFileError,
    build_actor,
    DiffusionActor,
    EpsilonNetwork,
    export_policy,
    load_actor,
    save_actor,
    UnsafeFileError,
)

from _helpers import box, make_actor, OBS_DIM, read_checkpoint, ROOT, run_script, SCRIPT_DIR, script_module

T, A = 5, 3


@pytest.fixture
def actor():
    return make_actor(bound=2.0)


def actions_of(actor, observation: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        return actor(TensorDict(observation=observation, batch_size=observation.shape[:1]))["action"]


def test_save_and_load_give_back_an_actor_with_the_same_actions(actor, tmp_path):
    path = save_actor(actor, tmp_path / "actor.pt")
    again = load_actor(path)
    observation = torch.randn(9, OBS_DIM)
    assert torch.equal(actions_of(actor, observation, seed=3), actions_of(again, observation, seed=3))


def test_load_actor_refuses_a_file_without_an_actor_naming_what_it_reads(tmp_path):
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(
        ValueError, match="holds no torchrl_qsm actor: load_actor reads a file of torchrl_qsm.save_actor"
    ):
        load_actor(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "options",
    [
        {"beta_start": 1e-3, "beta_end": 0.1, "num_steps": 7},  # the linear schedule's own betas
        {"schedule": "cosine", "temperature": 0.5, "clip_sample": False},
        {"network": {"activation": torch.nn.SiLU, "layer_norm": True, "time_embedding": "sinusoidal", "time_dim": 16}},
        {"network": {"obs_dim": None}},  # a lazy network, saved once it has seen an observation
    ],
    ids=["linear", "cosine", "network-options", "lazy"],
)
def test_the_record_is_plain_json_and_rebuilds_the_same_actor(options, tmp_path):
    network = options.pop("network", None)
    if network is not None:
        obs_dim = network.pop("obs_dim", OBS_DIM)
        score_network = EpsilonNetwork(A, obs_dim, hidden_sizes=(16, 16), cond_sizes=(8, 8), **network)
        actor = DiffusionActor(A, obs_dim, score_network, spec=box(A, 2.0))
        actions_of(actor, torch.randn(2, OBS_DIM), seed=0)  # a lazy network takes its size here
    else:
        actor = make_actor(bound=2.0, **options)
    record = actor_record(actor)
    assert json.loads(json.dumps(record)) == record  # sizes, keys, bounds, schedule, network options: plain values
    rebuilt = build_actor(record)  # fresh weights: the same architecture and schedule
    assert rebuilt.state_dict().keys() == actor.state_dict().keys()
    assert torch.equal(rebuilt.module.schedule.betas, actor.module.schedule.betas)
    again = load_actor(save_actor(actor, tmp_path / "actor.pt"))
    observation = torch.randn(9, OBS_DIM)
    assert torch.equal(actions_of(actor, observation, seed=3), actions_of(again, observation, seed=3))


def test_an_actor_the_record_cannot_describe_is_refused_when_saved(tmp_path):
    custom = DiffusionActor(A, OBS_DIM, torch.nn.Linear(A + OBS_DIM + 1, A), spec=box(A))
    with pytest.raises(TypeError, match="knows torchrl_qsm's EpsilonNetwork only; .* export_policy"):
        save_actor(custom, tmp_path / "actor.pt")
    assert not (tmp_path / "actor.pt").exists()


class RunsCode:
    """Pickles as a call of ``os.system``: what a file crafted to run a command when it is unpickled holds."""

    def __init__(self, marker) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.command,)


def crafted_files(folder, marker) -> list:
    """The same planted call, through torch.save (a zip) and as a bare pickle (protocol 2 and 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "torchrl_qsm.actor/2", "record": RunsCode(marker)}, folder / "saved.pt")
    paths = [folder / "saved.pt"]
    for protocol in (2, 4):
        paths.append(folder / f"pickle{protocol}.pt")
        paths[-1].write_bytes(pickle.dumps({"actor": RunsCode(marker)}, protocol=protocol))
    return paths


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")  # torch's note on the bare protocol-4 pickle
def test_load_actor_refuses_a_file_that_would_run_code_and_runs_none_of_it(tmp_path):
    marker = tmp_path / "MARKER"
    paths = crafted_files(tmp_path / "files", marker)
    for path in paths:
        with pytest.raises(UnsafeFileError, match=r"refused: loading it would run code .*\(it pickles posix.system"):
            load_actor(path)
    assert not marker.exists()
    pickle.loads(paths[-1].read_bytes())  # the control: unpickling the file does run the planted command
    assert marker.exists()


def test_an_actor_file_of_torchrl_qsm_0_1_is_refused_with_the_fix(actor, tmp_path):
    # 0.1.0's save_actor pickled the whole module
    torch.save({"format": "torchrl_qsm.actor/1", "torchrl_qsm": "0.1.0", "actor": actor}, tmp_path / "old.pt")
    with pytest.raises(UnsafeFileError, match="pickles .*torchrl_qsm.* file of torchrl_qsm 0.1.0, .* Fix: ") as err:
        load_actor(tmp_path / "old.pt")
    assert "torchrl_qsm.modules.actor.DiffusionActor" in err.value.globals


def test_load_actor_names_a_file_torch_cannot_read(tmp_path):
    (tmp_path / "notes.pt").write_text("not an actor")
    with pytest.raises(ActorFileError, match="is not a file that torch can read"):
        load_actor(tmp_path / "notes.pt")


def crafted_checkpoint(tiny_run, folder, marker, payload: str) -> Path:
    """A copy of the tiny run's newest checkpoint whose actor and loss payloads carry the planted call: a torch file
    (``state.pt``) or a tensordict folder with a pickled field (what TorchRL's own reader also accepts)."""
    checkpoints = script_module("checkpoints")
    crafted = folder / "checkpoints" / checkpoints.find_checkpoint(tiny_run).name
    shutil.copytree(checkpoints.find_checkpoint(tiny_run), crafted)
    for component in [*crafted.glob("components/*-actor"), *crafted.glob("components/*-loss")]:
        (component / "state.pt").unlink()
        if payload == "torch file":
            torch.save({"weight": RunsCode(marker)}, component / "state.pt")
        else:
            TensorDict({"weight": torch.ones(1), "planted": NonTensorData(RunsCode(marker))}).memmap(
                component / "state"
            )
    return folder


@pytest.mark.parametrize("payload", ["torch file", "tensordict folder"])
def test_load_actor_evaluate_py_and_resume_refuse_a_crafted_checkpoint_and_run_none_of_it(tiny_run, tmp_path, payload):
    marker = tmp_path / "MARKER"
    folder = crafted_checkpoint(tiny_run, tmp_path / "crafted", marker, payload)
    with pytest.raises(UnsafeFileError):
        load_actor(folder)
    evaluated = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "evaluate.py"), f"checkpoint={folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    resumed = run_script(tmp_path / "resumed", f"checkpoint.resume={folder}", check=False)
    for done in (evaluated, resumed):
        assert done.returncode == 1, done.stderr[-3000:]
        assert "UnsafeFileError" in done.stderr and "refused" in done.stderr, done.stderr[-3000:]
    assert not marker.exists()
    if payload == "tensordict folder":  # the control: tensordict's own reader runs it
        with pytest.warns(FutureWarning, match="pickled non-tensor field"):
            tensordict.load(next(folder.glob("checkpoints/*/components/*-loss")) / "state")
        assert marker.exists()


def test_a_checkpoint_of_the_earlier_single_file_format_is_refused_with_the_fix(actor, tmp_path):
    checkpoints = script_module("checkpoints")
    torch.save({"format": "torchrl_qsm checkpoint 1", "actor": {"actor": actor}}, tmp_path / "checkpoint.pt")
    for path in (tmp_path, tmp_path / "checkpoint.pt"):
        with pytest.raises(checkpoints.CheckpointError, match="earlier version of the script .* Resume or evaluate it"):
            checkpoints.find_checkpoint(path)


@pytest.mark.parametrize("batch", [1, 7])
def test_the_exported_program_gives_the_actor_s_actions_for_the_same_noise(actor, tmp_path, batch):
    program = torch.export.load(export_policy(actor, tmp_path / "policy.pt2")).module()
    observation = torch.randn(batch, OBS_DIM)
    expected = actions_of(actor, observation, seed=11)
    torch.manual_seed(11)
    noise = torch.randn(T + 1, batch, A)  # the actor's own draw: x_T, then each step's noise
    action = program(observation, noise)
    torch.testing.assert_close(action, expected, rtol=1e-5, atol=1e-6)
    assert (action.abs() <= 2.0).all()  # inside the action bounds
    zeros = program(observation, torch.zeros(T + 1, batch, A))  # the noise-free chain: DETERMINISTIC
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        deterministic = actor(TensorDict(observation=observation, batch_size=[batch]))["action"]
    torch.testing.assert_close(zeros, deterministic, rtol=1e-5, atol=1e-6)


def test_the_exported_program_loads_and_runs_with_torch_alone(actor, tmp_path):
    path = export_policy(actor, tmp_path / "policy.pt2")
    code = f"""
import json, sys, torch
extra = {{"torchrl_qsm.json": ""}}
program = torch.export.load({str(path)!r}, extra_files=extra).module()
meta = json.loads(extra["torchrl_qsm.json"])
action = program(torch.randn(4, meta["observation"][1]), torch.randn(meta["noise"][0], 4, meta["action"][1]))
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("torchrl", "tensordict", "torchrl_qsm"))
print(json.dumps({{"shape": list(action.shape), "meta": meta, "imported": ours}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["shape"] == [4, A] and result["imported"] == []
    assert result["meta"]["num_steps"] == T and result["meta"]["action_high"] == [2.0] * A


def run_evaluate(*options: str) -> subprocess.CompletedProcess:
    """evaluate.py as a user runs it."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "evaluate.py"), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_evaluate_py_rebuilds_the_run_from_its_checkpoint_and_exports_it(tiny_run, tmp_path):
    checkpoint = tiny_run
    done = run_evaluate(f"checkpoint={checkpoint}", "eval.episodes=3", f"output={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cartpole-swingup, QSM at frame 200: return" in done.stdout and "over 3 episodes" in done.stdout
    with open(tmp_path / "returns.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    # the exported program acts like the checkpoint's actor, which load_actor gives back
    actor, program = load_actor(checkpoint), torch.export.load(tmp_path / "policy.pt2").module()
    observation = torch.randn(2, 5)
    expected = actions_of(actor, observation, seed=0)
    torch.manual_seed(0)
    torch.testing.assert_close(program(observation, torch.randn(T + 1, 2, 1)), expected, rtol=1e-5, atol=1e-6)


def test_evaluate_py_best_of_n_ranks_with_the_checkpoint_s_critics_on_the_same_episodes(tiny_run, tmp_path):
    done = run_evaluate(
        f"checkpoint={tiny_run}",
        "eval.episodes=2",
        "eval.best_of_n=4",
        "export=false",
        f"output={tmp_path}",
    )
    assert "QSM at frame 200: return" in done.stdout  # the plain evaluation, always
    assert "QSM at frame 200 (best of 4 samples, critic-ranked): return" in done.stdout
    with open(tmp_path / "returns.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["return"] and row["best_of_n_return"] for row in rows)


def test_a_checkpoint_older_than_a_config_field_gets_today_s_default_for_it(tiny_run):
    config = script_module("config")
    saved = read_checkpoint(tiny_run)
    del saved["config"]["diffusion"]["alpha_curvature"], saved["config"]["eval"]["best_of_n"]  # fields it predates
    cfg = config.saved_config(saved)
    assert cfg.diffusion.alpha_curvature == 1.5 and cfg.eval.best_of_n == 1
    assert cfg.collector.total_frames == 200 and cfg.network.hidden_sizes == [32, 32]  # the checkpoint's own values
    assert "algorithm" not in cfg


def test_load_actor_reads_the_trained_weights_from_a_checkpoint_of_the_script(tiny_run):
    saved = read_checkpoint(tiny_run)
    trained = TensorDict(saved["state"]["loss"]).unflatten_keys(".")["actor_network_params"]
    actor = load_actor(tiny_run)  # the run folder: its newest checkpoint
    assert (TensorDict.from_module(actor).detach() == trained).all()


def test_evaluate_py_names_an_unknown_option():
    done = subprocess.run(
        [sys.executable, str(SCRIPT_DIR / "evaluate.py"), "checkpoint=x.pt", "eval.episode=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "evaluate.py: Unknown configuration field(s): eval.episode (did you mean eval.episodes?)" in done.stderr
