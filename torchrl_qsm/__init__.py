"""Q-score matching (QSM) for TorchRL: a diffusion-model policy trained by matching grad_a Q."""
from torchrl_qsm.diagnostics import edge_fraction
from torchrl_qsm.diffusion import (
    chain_log_prob,
    ddpm_sample,
    EpsilonNetwork,
    FourierFeatures,
    Mish,
    NoiseSchedule,
    SinusoidalFeatures,
)
from torchrl_qsm.modules import DiffusionActor, DiffusionPolicy
from torchrl_qsm.objectives import QSMLoss

__version__ = "0.1.0"

__all__ = [
    "DiffusionActor",
    "DiffusionPolicy",
    "EpsilonNetwork",
    "FourierFeatures",
    "Mish",
    "NoiseSchedule",
    "QSMLoss",
    "SinusoidalFeatures",
    "__version__",
    "chain_log_prob",
    "ddpm_sample",
    "edge_fraction",
]
