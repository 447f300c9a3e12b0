"""The fp32 matmul path: the fastest one this machine computes as accurately as torch's default.

A QSM update at the authors' widths is matmul-bound, and which kernel library runs an fp32 matmul
decides its speed. On a CPU, torch sends fp32 matmuls to MKL by default, and
``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` sends them to oneDNN instead. That setting
*permits* oneDNN to compute in bfloat16: on CPUs with AMX it does, on CPUs without (AMD EPYC Zen 5,
for one) it computes in full fp32 and may be faster than MKL. On CUDA, ``"tf32"`` permits TF32
tensor cores, which do round (10-bit mantissa). A flag's name cannot tell which happens on the
machine at hand, so :func:`choose_fp32_matmuls` measures it::

    error(path) = max over checked GEMMs of  ||C_path - C_64||_F / ||C_64||_F

with ``C_64`` the same product in float64. A path is accurate when its error is within
``tolerance_factor`` times the default path's (fp32 rounding gives about 1e-7 sqrt(k) at inner size
``k``; bfloat16 about 4e-3 and TF32 about 5e-4, thousands of times more). Among accurate paths the
fastest on the given GEMM shapes is kept; reduced precision is never chosen this way (use
``torch.autocast`` for that, explicitly).

A path other than the default sets one backend's flag apart from the others, and torch 2.13 then
refuses to summarise them: ``torch.get_float32_matmul_precision()`` raises ("mix of the legacy and new
APIs"). Code that reads it fails while such a path is set; inductor's GEMM autotuning
(``torch.compile(mode="max-autotune")``) is one. Where that code must run, keep the default path
(``choose_fp32_matmuls(paths=PATHS["cpu"][:1])``, or ``matmul_path("cpu", "default").apply()``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

GemmShape = tuple[int, int, int]  # (m, k, n): [m, k] x [k, n]


@dataclass(frozen=True)
class MatmulPath:
    """A setting of torch's fp32 matmul flags: ``settings`` maps a flag's module path to its value."""

    name: str
    description: str
    settings: dict[str, str] = field(default_factory=dict)

    def apply(self) -> None:
        for flag, value in self.settings.items():
            owner, attribute = flag.rsplit(".", 1)
            setattr(_resolve(owner), attribute, value)


# The default path first: it is the accuracy reference and the fallback.
PATHS: dict[str, tuple[MatmulPath, ...]] = {
    "cpu": (
        MatmulPath("mkl", "torch's default (MKL)", {"torch.backends.mkldnn.matmul.fp32_precision": "ieee"}),
        MatmulPath(
            "onednn",
            'oneDNN (torch.backends.mkldnn.matmul.fp32_precision="bf16"; fp32 unless the CPU has AMX)',
            {"torch.backends.mkldnn.matmul.fp32_precision": "bf16"},
        ),
    ),
    "cuda": (
        MatmulPath("ieee", "torch's default (full fp32)", {"torch.backends.cuda.matmul.fp32_precision": "ieee"}),
        MatmulPath("tf32", "TF32 tensor cores", {"torch.backends.cuda.matmul.fp32_precision": "tf32"}),
    ),
}


def matmul_path(device: torch.device | str, name: str) -> MatmulPath:
    """The path called ``name`` among :data:`PATHS` of ``device``'s type (``"default"``: its first)."""
    paths = PATHS.get(torch.device(device).type, ())
    if paths and name == "default":
        return paths[0]
    for path in paths:
        if path.name == name:
            return path
    raise ValueError(
        f"No fp32 matmul path {name!r} for device type {torch.device(device).type!r}; "
        f"known: {['default', *(path.name for path in paths)]}."
    )


@dataclass(frozen=True)
class MatmulChoice:
    """What :func:`choose_fp32_matmuls` measured and chose (its ``str`` is the line it prints)."""

    device: str
    default: MatmulPath
    chosen: MatmulPath
    errors: dict[str, float]
    seconds: dict[str, float]
    tolerance: float

    @property
    def accurate(self) -> list[str]:
        return [name for name, error in self.errors.items() if error <= self.tolerance]

    def __str__(self) -> str:
        default = self.default.name
        parts = [
            f"{name} {1e3 * self.seconds[name]:.2f} ms, error {self.errors[name]:.1e}"
            + ("" if name in self.accurate else " (refused: above the tolerance)")
            for name in self.errors
        ]
        speedup = self.seconds[default] / self.seconds[self.chosen.name]
        return (
            f"fp32 matmuls on {self.device}: {self.chosen.name}, {self.chosen.description}, {speedup:.2f}x the "
            f"default's speed [{'; '.join(parts)}; tolerance {self.tolerance:.1e} against float64]"
        )


def matmul_shapes(*modules: nn.Module, batch_size: int) -> list[GemmShape]:
    """The GEMMs of a forward and backward through each ``nn.Linear`` of ``modules`` at ``batch_size``:
    ``[B, in] x [in, out]`` (output), ``[B, out] x [out, in]`` (input gradient), ``[out, B] x [B, in]``
    (weight gradient). Distinct shapes, in order of appearance."""
    shapes: list[GemmShape] = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Linear) and not isinstance(layer, nn.modules.lazy.LazyModuleMixin):
                k, n = layer.in_features, layer.out_features
                shapes += [(batch_size, k, n), (batch_size, n, k), (n, batch_size, k)]
    return list(dict.fromkeys(shapes))


def choose_fp32_matmuls(
    device: torch.device | str = "cpu",
    shapes: Sequence[GemmShape] = ((256, 512, 512), (256, 512, 6), (256, 23, 512)),
    *,
    tolerance_factor: float = 10.0,
    min_speedup: float = 1.03,
    paths: Iterable[MatmulPath] | None = None,
    verbose: bool = True,
) -> MatmulChoice:
    """Sets, process-wide, the fastest fp32 matmul path that is as accurate as the default; returns the choice.

    Call it once before training (the training script does, ``optim.fp32_matmuls=auto``). Each path of
    ``paths`` (default: :data:`PATHS` of the device type; the first is the default path) is checked on
    ``shapes`` as a linear layer's forward, both of its backward products and a 2-member batched
    product (an ensemble of critics under ``vmap``), against float64; its time is the median of
    three rounds over the same products. The fastest accurate path is kept if it beats the default by
    ``min_speedup``; otherwise, or on a device with no alternative, the default path is set.

    Args:
        device: where the matmuls run.
        shapes: ``(m, k, n)`` GEMMs that stand for the workload (:func:`matmul_shapes` of its networks).

    Keyword Args:
        tolerance_factor: how many times the default path's error a path may have.
        min_speedup: the time ratio a path must beat the default by to be chosen.
        paths: the candidates, default path first.
        verbose: print the choice (one line).
    """
    device = torch.device(device)
    paths = tuple(paths if paths is not None else PATHS.get(device.type, ()))
    if not paths:
        raise ValueError(f"choose_fp32_matmuls knows no matmul paths for device type {device.type!r}; pass paths=.")
    if not shapes:
        raise ValueError("choose_fp32_matmuls needs at least one (m, k, n) GEMM shape.")
    operands = [_operands(shape, device) for shape in shapes]
    errors = {}
    for path in paths:
        path.apply()
        errors[path.name] = max(_error(ops) for ops in operands)
    tolerance = tolerance_factor * errors[paths[0].name]
    rounds = {path.name: [] for path in paths}
    for _ in range(3):  # interleaved, so a slow moment of the host hits every path alike
        for path in paths:
            path.apply()
            rounds[path.name].append(_time(operands, device))
    seconds = {name: statistics.median(times) for name, times in rounds.items()}
    chosen = paths[0]
    for path in paths[1:]:
        if errors[path.name] <= tolerance and seconds[path.name] * min_speedup < seconds[chosen.name]:
            chosen = path
    chosen.apply()
    choice = MatmulChoice(device.type, paths[0], chosen, errors, seconds, tolerance)
    if verbose:
        print(choice, flush=True)
    return choice


def _resolve(dotted: str):
    obj = __import__(dotted.split(".")[0])
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def _operands(shape: GemmShape, device: torch.device) -> dict[str, torch.Tensor]:
    m, k, n = shape
    generator = torch.Generator().manual_seed(m * 1_000_003 + k * 1009 + n)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device)

    # weight: stored [n, k] as nn.Linear stores it; the ensemble as vmap stacks it
    return dict(
        x=randn(m, k), weight=randn(n, k), bias=randn(n), grad=randn(m, n), xs=randn(2, m, k), ws=randn(2, k, n)
    )


def _products(ops: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The products a linear layer and a vmapped ensemble of them run, through torch's public ops."""
    return [
        F.linear(ops["x"], ops["weight"], ops["bias"]),  # forward
        torch.matmul(ops["grad"], ops["weight"]),  # input gradient
        torch.matmul(ops["grad"].t(), ops["x"]),  # weight gradient
        torch.matmul(ops["xs"], ops["ws"]),  # batched (vmapped critics)
    ]


def _error(ops: dict[str, torch.Tensor]) -> float:
    exact = _products({name: value.double() for name, value in ops.items()})
    return max(
        ((result.double() - reference).norm() / reference.norm()).item()
        for result, reference in zip(_products(ops), exact)
    )


def _time(operands: list[dict[str, torch.Tensor]], device: torch.device, min_seconds: float = 0.02) -> float:
    """Seconds per pass over every product of every shape (repeated for at least ``min_seconds``)."""
    for ops in operands:
        _products(ops)  # first calls create and cache the kernels' primitives
    _sync(device)
    repeats, start = 0, time.perf_counter()
    while repeats < 3 or time.perf_counter() - start < min_seconds:
        for ops in operands:
            _products(ops)
        repeats += 1
        _sync(device)
    return (time.perf_counter() - start) / repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
