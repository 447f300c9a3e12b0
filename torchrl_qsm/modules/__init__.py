from torchrl_qsm.modules.actor import DiffusionActor, DiffusionPolicy
from torchrl_qsm.modules.best_of_n import BestOfNActor
from torchrl_qsm.modules.saving import (
    actor_from_state,
    actor_record,
    actor_state,
    ActorFileError,
    build_actor,
    export_policy,
    load_actor,
    load_weights_only,
    save_actor,
    UnsafeFileError,
)

__all__ = [
    "actor_from_state",
    "actor_record",
    "actor_state",
    "ActorFileError",
    "BestOfNActor",
    "build_actor",
    "DiffusionActor",
    "DiffusionPolicy",
    "export_policy",
    "load_actor",
    "load_weights_only",
    "save_actor",
    "UnsafeFileError",
]
