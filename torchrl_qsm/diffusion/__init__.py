"""Pure tensor code of a DDPM policy: schedules, time features, the eps-network, the sampler."""

from torchrl_qsm.diffusion.activations import Mish
from torchrl_qsm.diffusion.embeddings import FourierFeatures, SinusoidalFeatures
from torchrl_qsm.diffusion.networks import EpsilonNetwork
from torchrl_qsm.diffusion.sampler import ddpm_sample
from torchrl_qsm.diffusion.schedules import NoiseSchedule

__all__ = [
    "EpsilonNetwork",
    "FourierFeatures",
    "Mish",
    "NoiseSchedule",
    "SinusoidalFeatures",
    "ddpm_sample",
]
