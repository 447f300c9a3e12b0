"""QSM's update and acting against the authors' JAX code, side by side in one process.

    python benchmarks/vs_authors_jax.py --official PATH             # 1 thread (pinned) and 2 threads, widths 512
    python benchmarks/vs_authors_jax.py --official PATH --threads 2 --widths 256 512
    python benchmarks/vs_authors_jax.py --device cuda               # GPU: ours against TorchRL's SAC (no JAX)

``PATH`` is a checkout of github.com/Alescontrela/score_matching_rl (measured at 2e77893; the repository
has no licence file, so it is never copied here). Run it with a Python that has both this project and
JAX (versions in benchmarks/README.md, "Against the authors' JAX code"). The authors' learner is
imported from its file, ``jaxrl5/agents/score_matching/score_matching_learner.py``: the package's
``__init__`` files pull in tensorflow-probability and gym, which the update does not use, so empty
package shells stand in for them.

Each thread count runs in its own process (XLA sizes its thread pool at start). With 1 thread the
process is pinned to one CPU: XLA's own thread flags do not keep its GEMMs on one core. Both sides run
the same update (the authors' sizes: critics and eps-network ``W x W``, Fourier 64 + conditioning
128 x 128, T 5, batch 256, cheetah-run shapes 17/6) on the same batches, round-robin; each round prints
every candidate's time and its ratio to the authors' update. Candidates:

- ``jax``: ``ScoreMatchingLearner.update`` (jitted: critic and actor steps, soft target update);
- ``qsm``: our eager update as the training script builds it (``make_learner`` with its defaults and
  ``compile.compile=false``; fp32 matmul kernels chosen as ``optim.fp32_matmuls=auto`` chooses them);
- ``qsm-default-kernels``: the same update with torch's default fp32 matmul path (``optim.fp32_matmuls=default``);
- ``qsm-compiled``: ``qsm`` with ``compile.compile=true``, the script's default where it can build: the update
  (update.py) compiles whole, the learning-rate schedule's step stays outside.

Acting at batch 1 compares our exploration policy (the chain + N(0, 0.1^2), eager and under
``torch.compile``) with the authors' ``sample_actions`` (jitted), each returning a NumPy action as a
collector hands it to the environment.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OBS_DIM, ACTION_DIM = 17, 6


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, help="checkout of Alescontrela/score_matching_rl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--widths", type=int, nargs="+", default=[512])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20, help="updates per candidate and round")
    parser.add_argument("--no-compile", action="store_true", help="leave out qsm-compiled")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.official is None:
        parser.error("--official PATH (a checkout of Alescontrela/score_matching_rl) is needed on CPU")
    return args


def main() -> None:
    args = parse_args()
    if args.child or args.device != "cpu":
        return child(args)
    for threads in args.threads:  # one process per thread count
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if threads == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        command = [sys.executable, __file__, "--child", "--threads", str(threads), "--official", str(args.official)]
        command += ["--widths", *map(str, args.widths), "--batch", str(args.batch)]
        command += ["--rounds", str(args.rounds), "--iters", str(args.iters)] + ["--no-compile"] * args.no_compile
        if threads == 1:
            command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
        subprocess.run(command, env=env, check=True)


# --- the authors' learner ----------------------------------------------------------------------------
class Box:
    """What ``ScoreMatchingLearner.create`` reads of a gym Box: ``shape`` and ``sample()``."""

    def __init__(self, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0) -> None:
        self.shape, self.low, self.high = shape, low, high

    def sample(self):
        import numpy as np

        return np.random.uniform(self.low, self.high, self.shape).astype(np.float32)


def load_authors_learner(official: Path):
    """``ScoreMatchingLearner`` from the checkout, without running its packages' ``__init__`` files."""
    official = official.resolve()
    learner_file = official / "jaxrl5/agents/score_matching/score_matching_learner.py"
    if not learner_file.exists():
        sys.exit(f"--official {official}: no {learner_file.relative_to(official)} there; is it score_matching_rl?")
    sys.path.insert(0, str(official))

    def shell(name: str, **attributes) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module

    for package in ("jaxrl5.agents", "jaxrl5.agents.score_matching", "jaxrl5.data"):
        shell(package, __path__=[str(official / package.replace(".", "/"))])
    shell("jaxrl5.data.dataset", DatasetDict=dict)  # a type alias is all the learner takes from it
    has_gym = importlib.util.find_spec("gym") is not None
    if not has_gym:  # the learner takes only gym.spaces' names, for its signatures
        shell("gym", spaces=types.SimpleNamespace(Space=object, Box=Box))
    from jaxrl5.agents.score_matching.score_matching_learner import ScoreMatchingLearner

    if not has_gym:
        del sys.modules["gym"]  # others (torchrl) look for a real gym
    return ScoreMatchingLearner


# --- timing ------------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import torch

    for folder in (ROOT / "sota-implementations" / "qsm", ROOT / "benchmarks" / "learning", ROOT / "benchmarks"):
        sys.path.insert(0, str(folder))
    device = torch.device(args.device)
    threads = args.threads[0] if device.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    torch._dynamo.config.recompile_limit = 64
    learner_class = load_authors_learner(args.official) if device.type == "cpu" else None
    versions = f"torch {torch.__version__}"
    if learner_class is not None:
        import jax

        versions += f", jax {jax.__version__}"
    pinned = " (pinned to one CPU)" if threads == 1 and device.type == "cpu" else ""
    print(f"\n##### {threads} thread(s){pinned}, device {device}, {versions}", flush=True)
    for width in args.widths:
        compare(args, width, device, learner_class)


def compare(args: argparse.Namespace, width: int, device, learner_class) -> None:
    import numpy as np
    import torch
    from script_learner import make_learner
    from update_speed import make_batch, record_matmuls, script_config

    from baselines import sac
    from utils import compile_update, make_env, set_matmul_kernels

    print(f"\n=== widths {width}x{width}, batch {args.batch} ===")
    torch.manual_seed(0)
    np.random.seed(0)
    env = make_env("cheetah", "run")
    cfg = script_config(width, device)
    qsm = make_learner(cfg, env, device)
    loss = qsm["state"]["loss"]
    choice = set_matmul_kernels(cfg, device, loss.actor_network, loss.qvalue_network)
    fast, default = choice.chosen.apply, choice.default.apply  # process-wide flags: set before each run
    batches = [make_batch(args.batch, device) for _ in range(args.iters)]

    def updates(learn):
        def run() -> None:
            for batch in batches:
                learn(batch.clone())
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    if learner_class is not None:
        peer = "jax"
        timed = {"jax": (authors_updates(learner_class, width, batches), fast)}
    else:
        peer = "sac"
        timed = {"sac": (updates(sac(cfg, env, device)["learn"]), fast)}
        if not args.no_compile:
            timed["sac-compiled"] = (updates(compile_update(sac(cfg, env, device)["learn"], cfg, device, 0)), fast)
    timed["qsm"] = (updates(qsm["learn"]), fast)
    timed["qsm-default-kernels"] = (updates(make_learner(cfg, env, device)["learn"]), default)
    if not args.no_compile:
        compiled = make_learner(script_config(width, device, "compile.compile=true"), env, device)
        timed["qsm-compiled"] = (updates(compiled["learn"]), fast)

    for name, (run, kernels) in timed.items():  # warm-up: jit, compile, first calls
        kernels()
        start = time.perf_counter()
        run()
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    times = {name: [] for name in timed}
    print("  round" + "".join(f"{name:>24}" for name in timed) + f"   (ms/update, and time / {peer}'s)")
    for r in range(args.rounds):
        for name, (run, kernels) in timed.items():
            kernels()
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / args.iters)
        row = "".join(f"{1e3 * t[-1]:>16.2f} ({t[-1] / times[peer][-1]:.2f}x)" for t in times.values())
        print(f"  {r:>5}{row}", flush=True)
    print(f"  summary: median ms/update; ratio to {peer}: median (min-max) of the per-round ratios")
    for name, t in times.items():
        ratios = sorted(a / b for a, b in zip(t, times[peer]))
        print(
            f"    {name:<22}{1e3 * statistics.median(t):8.2f} ms   ratio {statistics.median(ratios):.2f} "
            f"({ratios[0]:.2f}-{ratios[-1]:.2f})"
        )
    fast()
    if learner_class is not None:
        gemms(record_matmuls(qsm["learn"], batches[0].clone()), choice)
        ours = {"qsm": qsm["learn"]} | ({"qsm-compiled": compiled["learn"]} if not args.no_compile else {})
        floor(ours, batches, {name: statistics.median(t) for name, t in times.items()})
        xla_account(learner_class, width, authors_batch(batches[0]))
    latency = acting(qsm, authors_agent(learner_class, width) if learner_class is not None else None, device)
    if learner_class is not None:  # UTD 1: one update and one action per frame
        per_frame = statistics.median(times["jax"]) + latency["jax"]
        print(
            f"  the authors' loop without the environment: update + acting {1e3 * per_frame:.2f} ms per frame, "
            f"{1 / per_frame:.0f} frames/s at most"
        )


def authors_agent(learner_class, width: int):
    return learner_class.create(
        0,
        Box((OBS_DIM,), -10.0, 10.0),
        Box((ACTION_DIM,)),
        critic_hidden_dims=(width, width),
        actor_hidden_dims=(width, width),
        M_q=50.0,  # the authors' defaults otherwise (T 5, vp schedule, lr 3e-4, cosine decay over 2e6 steps)
    )


def authors_batch(batch) -> dict:
    """Our batch in the authors' layout: rewards and masks flat."""
    import jax.numpy as jnp

    return dict(
        observations=jnp.asarray(batch["observation"].numpy()),
        actions=jnp.asarray(batch["action"].numpy()),
        next_observations=jnp.asarray(batch["next", "observation"].numpy()),
        rewards=jnp.asarray(batch["next", "reward"].squeeze(-1).numpy()),
        masks=jnp.asarray(1.0 - batch["next", "terminated"].squeeze(-1).float().numpy()),
    )


def authors_updates(learner_class, width: int, batches):
    """``run()``: the authors' jitted update over the same batches (their layout: rewards and masks flat)."""
    import jax

    state = {"agent": authors_agent(learner_class, width)}
    jax_batches = [authors_batch(b) for b in batches]

    def run() -> None:
        for batch in jax_batches:
            state["agent"], _ = state["agent"].update(batch)
        jax.block_until_ready(state["agent"])

    return run


def gemms(calls: list[tuple], choice, top: int = 8) -> None:
    """Our update's matmuls by shape: GFLOP/s of torch's default path, the chosen path and XLA on the same
    product (operands of the same shapes; each library picks its own layouts). What a GEMM library gives
    these shapes bounds what the update can reach."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    by_shape: dict[tuple, list] = {}
    for func, layout, flops in calls:
        shapes = tuple(tuple(a.shape) for a in layout if hasattr(a, "shape"))
        entry = by_shape.setdefault((func.__name__.split(".")[0], shapes), [0, 0.0, func, layout])
        entry[0] += 1
        entry[1] += flops
    total = sum(entry[1] for entry in by_shape.values())
    print(f"  the update's matmuls: {len(calls)} calls, {total / 1e6:.0f} MFLOP; the {top} largest shapes, GFLOP/s:")
    print(f"    {'op and shapes':<44}{'calls':>6}{'share':>7}{'default':>9}{'chosen':>8}{'XLA':>7}")
    for (op, shapes), (count, flops, func, layout) in sorted(by_shape.items(), key=lambda kv: -kv[1][1])[:top]:
        args = [a.make("cpu") if hasattr(a, "make") else a for a in layout]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        per_call = flops / count

        arrays = [jnp.asarray(np.ascontiguousarray(t.numpy())) for t in tensors]
        if op == "addmm":
            xla = jax.jit(lambda bias, a, b: bias + a @ b)
        else:  # mm, bmm
            xla = jax.jit(lambda a, b: a @ b)
        xla_rate = per_call / best_time(functools.partial(run_xla, xla, arrays)) / 1e9
        rates = []
        for path in (choice.default, choice.chosen):
            path.apply()
            rates.append(per_call / best_time(functools.partial(func, *args)) / 1e9)
        label = f"{op} " + " ".join("x".join(map(str, s)) for s in shapes)
        print(f"    {label:<44}{count:>6}{flops / total:>7.0%}{rates[0]:>9.0f}{rates[1]:>8.0f}{xla_rate:>7.0f}")
    choice.chosen.apply()


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def floor(learners: dict, batches, median: dict[str, float]) -> None:
    """What the matmuls leave to the rest of each update, against the 0.8x target.

    ``torch.profiler`` times the matmul kernels inside each of our updates (self time of ``aten::mm``,
    ``addmm``, ``bmm``: the GEMMs as the update calls them, with its layouts and its caches); no update that
    does these matmuls can take less, so what the target leaves beyond them is the budget for everything
    else (Adam, activations, the sampler's elementwise steps, the framework's own cost).
    """
    from torch.profiler import profile

    jax_time = median["jax"]
    print(f"  floor: the matmul kernels inside our updates (profiled), the authors' update {1e3 * jax_time:.2f} ms")
    for name, learn in learners.items():
        with profile() as trace:
            for batch in batches:
                learn(batch.clone())
        gemm = sum(e.self_cpu_time_total for e in trace.key_averages() if e.key in GEMM_OPS) / 1e6 / len(batches)
        print(
            f"    {name}: matmuls {1e3 * gemm:.2f} ms ({gemm / jax_time:.2f} of the authors' update), the rest "
            f"{1e3 * (median[name] - gemm):.2f} ms; at 0.8x the rest would have {1e3 * (0.8 * jax_time - gemm):.2f} ms"
        )


def xla_account(learner_class, width: int, batch: dict) -> None:
    """XLA's own account of the authors' update: its cost analysis (all ops) and its optimised program's
    kernels (fusions; the dots among them)."""
    import re

    agent = authors_agent(learner_class, width)
    compiled = type(agent).update.lower(agent, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    program = compiled.as_text()
    fusions = re.findall(r"fusion\(.*kind=(k\w+)", program)
    print(
        f"  XLA's account of the authors' update: {cost['flops'] / 1e9:.2f} GFLOP, "
        f"{cost['transcendentals'] / 1e6:.1f} M transcendentals, {cost['bytes accessed'] / 1e6:.0f} MB accessed; "
        f"its optimised program runs {len(fusions)} kernels, {fusions.count('kCustom')} of them dots"
    )


def run_xla(fn, arrays) -> None:
    fn(*arrays).block_until_ready()


def best_time(fn, repeats: int = 5, min_seconds: float = 0.02) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < min_seconds:
            fn()
            n += 1
        best = min(best, (time.perf_counter() - start) / n)
    return best


def acting(qsm: dict, agent, device, iters: int = 300) -> dict[str, float]:
    """Batch-1 action latency, with the exploration noise, to a NumPy action as a collector needs it."""
    import numpy as np
    import torch
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    observation = np.random.randn(OBS_DIM).astype(np.float32)
    policy = qsm["exploration_policy"]

    def ours(actor):
        def act():
            td = TensorDict(observation=torch.from_numpy(observation).to(device).unsqueeze(0), batch_size=[1])
            return actor(td)["action"].cpu().numpy()

        return act

    runs = {"qsm": ours(policy), "qsm-compiled": ours(torch.compile(policy))}
    if agent is not None:
        import jax.numpy as jnp

        state = {"agent": agent}

        def authors():
            action, state["agent"] = state["agent"].sample_actions(jnp.asarray(observation))
            return np.asarray(action)

        runs["jax"] = authors
    latency = {}
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for name, act in runs.items():
            for _ in range(20):
                act()
            start = time.perf_counter()
            for _ in range(iters):
                act()
            latency[name] = (time.perf_counter() - start) / iters
    line = ", ".join(f"{name} {1e3 * seconds:.3f} ms" for name, seconds in latency.items())
    if "jax" in latency:
        eager, compiled = latency["qsm"] / latency["jax"], latency["qsm-compiled"] / latency["jax"]
        line += f"; ours / jax: eager {eager:.2f}, compiled {compiled:.2f}"
    print(f"  acting, batch 1 (with exploration noise): {line}", flush=True)
    return latency


if __name__ == "__main__":
    main()
