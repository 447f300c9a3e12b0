"""Q-score matching (QSM) for TorchRL: a diffusion-model policy trained by matching grad_a Q."""

from torchrl_qsm.contract import DiffusionPolicyModule
from torchrl_qsm.diagnostics import edge_fraction, NonFiniteError
from torchrl_qsm.diffusion import (
    ddpm_sample,
    EpsilonNetwork,
    FourierFeatures,
    Mish,
    NoiseSchedule,
    SinusoidalFeatures,
)
from torchrl_qsm.modules import (
    actor_record,
    actor_state,
    ActorFileError,
    BestOfNActor,
    build_actor,
    DiffusionActor,
    DiffusionPolicy,
    export_policy,
    load_actor,
    save_actor,
    UnsafeFileError,
)
from torchrl_qsm.objectives import CurvatureAlpha, QSMLoss

__version__ = "0.1.0"

__all__ = [
    "ActorFileError",
    "BestOfNActor",
    "CurvatureAlpha",
    "DiffusionActor",
    "DiffusionPolicy",
    "DiffusionPolicyModule",
    "EpsilonNetwork",
    "FourierFeatures",
    "Mish",
    "NonFiniteError",
    "NoiseSchedule",
    "QSMLoss",
    "SinusoidalFeatures",
    "UnsafeFileError",
    "__version__",
    "actor_record",
    "actor_state",
    "build_actor",
    "ddpm_sample",
    "edge_fraction",
    "export_policy",
    "load_actor",
    "save_actor",
]
