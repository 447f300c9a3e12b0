from torchrl_qsm.objectives.qsm import QSMLoss

__all__ = ["QSMLoss"]
