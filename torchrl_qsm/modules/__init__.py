from torchrl_qsm.modules.actor import DiffusionActor, DiffusionPolicy

__all__ = ["DiffusionActor", "DiffusionPolicy"]
