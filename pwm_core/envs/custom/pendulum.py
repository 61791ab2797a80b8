"""pendulum-spin: dm_control's pendulum (SwingUp init: hinge angle ~ U(-pi, pi)) rewarded for spinning."""

from __future__ import annotations

from dm_control.rl import control
from dm_control.suite import pendulum
from dm_control.utils import rewards

TIME_LIMIT = 20  # seconds at the 0.02 s physics timestep: 1000 control steps
SPIN_SPEED = 9.0  # rad/s, either direction


def spin_reward(angular_velocity: float) -> float:
    """1 for |omega| >= 9 rad/s, linear down to 0.5 at 4.5 rad/s and 0 at rest."""
    return float(
        rewards.tolerance(
            abs(angular_velocity),
            bounds=(SPIN_SPEED, float("inf")),
            margin=SPIN_SPEED / 2,
            value_at_margin=0.5,
            sigmoid="linear",
        )
    )


class Spin(pendulum.SwingUp):
    def get_reward(self, physics: pendulum.Physics) -> float:
        return spin_reward(float(physics.named.data.qvel["hinge"][0]))


def spin(seed: int) -> control.Environment:
    physics = pendulum.Physics.from_xml_string(*pendulum.get_model_and_assets())
    return control.Environment(physics, Spin(random=seed), time_limit=TIME_LIMIT)


TASKS = {"pendulum-spin": spin}
