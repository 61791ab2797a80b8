"""walker-walk-backwards / walker-run-backwards: dm_control's PlanarWalker rewarded for moving in -x.

Physics, observation (orientations 14, height 1, velocity 9) and initial state are dm_control's;
TD-MPC2 only doubles the floor length so the walker does not run off its end.
"""

from __future__ import annotations

from dm_control.rl import control
from dm_control.suite import common, walker
from dm_control.utils import rewards

from pwm_core.envs.custom.models import suite_xml

TIME_LIMIT = 25  # seconds: 1000 control steps
CONTROL_TIMESTEP = 0.025
STAND_HEIGHT = 1.2
WALK_SPEED = 1.0
RUN_SPEED = 8.0
XML_EDITS = (('size="250 .8 .2"', 'size="500 .8 .2"'),)  # TD-MPC2: floor x half-length 250 -> 500


def backwards_reward(torso_height: float, torso_upright: float, horizontal_velocity: float, move_speed: float) -> float:
    """Stand tall and upright while moving at ``-move_speed`` or faster (m/s)."""
    standing = rewards.tolerance(torso_height, bounds=(STAND_HEIGHT, float("inf")), margin=STAND_HEIGHT / 2)
    upright = (1 + torso_upright) / 2
    stand = (3 * standing + upright) / 4
    move = rewards.tolerance(
        horizontal_velocity,
        bounds=(-float("inf"), -move_speed),
        margin=move_speed / 2,
        value_at_margin=0.5,
        sigmoid="linear",
    )
    return float(stand * (5 * move + 1) / 6)


class PlanarWalkerBackwards(walker.PlanarWalker):
    def __init__(self, move_speed: float, random: int | None = None):
        self.move_speed = move_speed
        super().__init__(move_speed=move_speed, random=random)

    def get_reward(self, physics: walker.Physics) -> float:
        return backwards_reward(
            physics.torso_height(), physics.torso_upright(), physics.horizontal_velocity(), self.move_speed
        )


def _make(move_speed: float, seed: int) -> control.Environment:
    physics = walker.Physics.from_xml_string(suite_xml("walker.xml", XML_EDITS), common.ASSETS)
    task = PlanarWalkerBackwards(move_speed=move_speed, random=seed)
    return control.Environment(physics, task, time_limit=TIME_LIMIT, control_timestep=CONTROL_TIMESTEP)


TASKS = {
    "walker-walk-backwards": lambda seed: _make(WALK_SPEED, seed),
    "walker-run-backwards": lambda seed: _make(RUN_SPEED, seed),
}
