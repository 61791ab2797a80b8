"""hopper-hop-backwards: dm_control's Hopper (model, observation, init) rewarded for hopping in -x."""

from __future__ import annotations

from dm_control.rl import control
from dm_control.suite import hopper
from dm_control.utils import rewards

TIME_LIMIT = 20  # seconds: 1000 control steps
CONTROL_TIMESTEP = 0.02
STAND_HEIGHT = 0.6
HOP_SPEED = 2.0  # dm_control's _HOP_SPEED; TD-MPC2 asks for -HOP_SPEED/2 with margin HOP_SPEED/4


def hop_backwards_reward(height: float, speed: float) -> float:
    """Indicator of torso-over-foot height in [0.6, 2] times a linear reward for speed <= -1 m/s."""
    standing = rewards.tolerance(height, bounds=(STAND_HEIGHT, 2))
    hopping = rewards.tolerance(
        speed, bounds=(-float("inf"), -HOP_SPEED / 2), margin=HOP_SPEED / 4, value_at_margin=0.5, sigmoid="linear"
    )
    return float(standing * hopping)


class HopBackwards(hopper.Hopper):
    def get_reward(self, physics: hopper.Physics) -> float:
        return hop_backwards_reward(physics.height(), physics.speed())


def hop_backwards(seed: int) -> control.Environment:
    physics = hopper.Physics.from_xml_string(*hopper.get_model_and_assets())
    return control.Environment(
        physics, HopBackwards(hopping=True, random=seed), time_limit=TIME_LIMIT, control_timestep=CONTROL_TIMESTEP
    )


TASKS = {"hopper-hop-backwards": hop_backwards}
