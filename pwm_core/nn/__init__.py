"""Neural networks: TD-MPC2's multi-task world model, its building blocks and checkpoint formats."""

from pwm_core.nn.actor_critic import Actor, CriticEnsemble
from pwm_core.nn.checkpoint import (
    import_tdmpc2_checkpoint,
    load_world_model,
    save_world_model,
    tdmpc2_state_dict,
)
from pwm_core.nn.layers import NormedLinear, QEnsemble, SimNorm, mlp
from pwm_core.nn.math import almost_two_hot_inv, soft_ce, symexp, symlog, two_hot, two_hot_inv
from pwm_core.nn.sizes import SIZES, WorldModelConfig, count_parameters, world_model_config
from pwm_core.nn.world_model import WorldModel

__all__ = [
    "SIZES",
    "Actor",
    "CriticEnsemble",
    "NormedLinear",
    "QEnsemble",
    "SimNorm",
    "WorldModel",
    "WorldModelConfig",
    "almost_two_hot_inv",
    "count_parameters",
    "import_tdmpc2_checkpoint",
    "load_world_model",
    "mlp",
    "save_world_model",
    "soft_ce",
    "symexp",
    "symlog",
    "tdmpc2_state_dict",
    "two_hot",
    "two_hot_inv",
    "world_model_config",
]
