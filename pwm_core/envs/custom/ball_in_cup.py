"""cup-spin: swing the ball around the cup, fast and far from it, starting (mostly) inside it.

Model and observation (position 4, velocity 4) are dm_control's ball-in-cup; only the initial
state and the reward differ.
"""

from __future__ import annotations

import numpy as np
from dm_control.rl import control
from dm_control.suite import ball_in_cup
from dm_control.utils import rewards

TIME_LIMIT = 20  # seconds: 1000 control steps
CONTROL_TIMESTEP = 0.02
START_OUTSIDE_PROB = 0.1  # TD-MPC2: ~10% of episodes may start with the ball outside the cup
SPIN_DISTANCE = 0.5  # ball-to-target distance (m) for full distance reward
SPIN_SPEED = 6.0  # ball speed (m/s) for full speed reward


def spin_reward(ball_to_target: np.ndarray, ball_velocity: np.ndarray, in_target: float) -> float:
    """ball_to_target: (2,) xz offset (m); ball_velocity: (2,) xz slide-joint velocity (m/s).

    Zero while the ball is in the cup; otherwise (distance + 2 * speed rewards) / 3, both linear.
    """
    distance = float(np.linalg.norm(ball_to_target))
    speed = float(np.linalg.norm(np.abs(ball_velocity)))
    distance_reward = rewards.tolerance(
        distance, bounds=(SPIN_DISTANCE, float("inf")), margin=SPIN_DISTANCE / 2, value_at_margin=0.5, sigmoid="linear"
    )
    speed_reward = rewards.tolerance(
        speed, bounds=(SPIN_SPEED, float("inf")), margin=SPIN_SPEED / 2, value_at_margin=0.5, sigmoid="linear"
    )
    return float((1 - in_target) * (distance_reward + 2 * speed_reward) / 3)


class Spin(ball_in_cup.BallInCup):
    def initialize_episode(self, physics: ball_in_cup.Physics) -> None:
        """Rejection-sample a contact-free ball position, inside the cup unless drawn otherwise."""
        outside_ok = self.random.uniform(0, 1) < START_OUTSIDE_PROB
        while True:
            physics.named.data.qpos["ball_x"] = self.random.uniform(-0.2, 0.2)
            physics.named.data.qpos["ball_z"] = self.random.uniform(0.2, 0.5)
            physics.after_reset()
            if physics.data.ncon == 0 and (outside_ok or physics.in_target()):
                break
        # Skip BallInCup's own placement: go straight to base.Task's episode start.
        super(ball_in_cup.BallInCup, self).initialize_episode(physics)

    def get_reward(self, physics: ball_in_cup.Physics) -> float:
        velocity = physics.named.data.qvel[["ball_x", "ball_z"]]
        return spin_reward(physics.ball_to_target(), velocity, physics.in_target())


def spin(seed: int) -> control.Environment:
    physics = ball_in_cup.Physics.from_xml_string(*ball_in_cup.get_model_and_assets())
    return control.Environment(physics, Spin(random=seed), time_limit=TIME_LIMIT, control_timestep=CONTROL_TIMESTEP)


TASKS = {"cup-spin": spin}
