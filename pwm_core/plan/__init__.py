"""Planning with a world model: TD-MPC2's MPPI, batched over envs, as a baseline to PWM's policies."""

from pwm_core.plan.mppi import (
    MPPI,
    MPPIConfig,
    PlannerActor,
    PolicyPrior,
    Prior,
    Refit,
    WorldModelPrior,
    refit,
    sample_elite,
    validate_config,
    warm_start,
)

__all__ = [
    "MPPI",
    "MPPIConfig",
    "PlannerActor",
    "PolicyPrior",
    "Prior",
    "Refit",
    "WorldModelPrior",
    "refit",
    "sample_elite",
    "validate_config",
    "warm_start",
]
