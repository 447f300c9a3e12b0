from torchrl_qsm.modules.actor import DiffusionActor, DiffusionPolicy
from torchrl_qsm.modules.best_of_n import BestOfNActor
from torchrl_qsm.modules.saving import actor_record, export_policy, load_actor, save_actor

__all__ = [
    "actor_record",
    "BestOfNActor",
    "DiffusionActor",
    "DiffusionPolicy",
    "export_policy",
    "load_actor",
    "save_actor",
]
