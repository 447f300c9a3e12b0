from torchrl_qsm.objectives.qsm import CurvatureAlpha, QSMLoss

__all__ = ["CurvatureAlpha", "QSMLoss"]
