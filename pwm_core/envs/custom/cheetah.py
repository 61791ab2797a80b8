"""Cheetah custom tasks: run backwards, run on one leg (front / back), jump in place.

Physics, observation (position 8, velocity 9) and initial state are dm_control's Cheetah; TD-MPC2
doubles the ground length.
"""

from __future__ import annotations

from dm_control.rl import control
from dm_control.suite import cheetah, common
from dm_control.utils import rewards

from pwm_core.envs.custom.models import suite_xml

TIME_LIMIT = 10  # seconds at the 0.01 s physics timestep: 1000 control steps
RUN_SPEED = 10.0  # dm_control's _RUN_SPEED
BACKWARDS_SPEED = 0.8 * RUN_SPEED
ONE_FOOT_SPEED = 0.6 * RUN_SPEED
JUMP_SPEED = 0.5  # |speed| allowed while jumping in place
JUMP_HEIGHT = 1.2
XML_EDITS = (('size="100 .8 .5"', 'size="200 .8 .5"'),)  # TD-MPC2: ground x half-length 100 -> 200


def run_backwards_reward(speed: float) -> float:
    """Linear in speed from 0 m/s (reward 0) to -8 m/s and beyond (reward 1)."""
    return float(
        rewards.tolerance(
            speed, bounds=(-float("inf"), -BACKWARDS_SPEED), margin=BACKWARDS_SPEED, value_at_margin=0, sigmoid="linear"
        )
    )


def one_foot_reward(torso_z: float, foot_z: float, speed: float) -> float:
    """Run forward at >= 6 m/s with the torso and the lifted foot at >= 1.2 m."""
    torso_up = rewards.tolerance(torso_z, bounds=(JUMP_HEIGHT, float("inf")), margin=JUMP_HEIGHT / 2)
    foot_up = rewards.tolerance(foot_z, bounds=(JUMP_HEIGHT, float("inf")), margin=JUMP_HEIGHT / 2)
    up = (3 * foot_up + 2 * torso_up) / 5
    horizontal = rewards.tolerance(
        speed, bounds=(ONE_FOOT_SPEED, float("inf")), margin=ONE_FOOT_SPEED, value_at_margin=0, sigmoid="linear"
    )
    return float(up * (5 * horizontal + 1) / 6)


def jump_reward(torso_z: float, bfoot_z: float, ffoot_z: float, speed: float) -> float:
    """Raise torso and both feet to >= 1.2 m while staying in place (|speed| <= 0.5 m/s)."""
    horizontal = rewards.tolerance(
        speed, bounds=(-JUMP_SPEED, JUMP_SPEED), margin=JUMP_SPEED, value_at_margin=0, sigmoid="linear"
    )

    def stand(foot_z: float) -> float:
        height = rewards.tolerance((torso_z + foot_z) / 2, bounds=(JUMP_HEIGHT, float("inf")), margin=JUMP_HEIGHT / 2)
        return (5 * height + horizontal) / 6

    return float((stand(bfoot_z) + stand(ffoot_z)) / 2)


def _z(physics: cheetah.Physics, body: str) -> float:
    return float(physics.named.data.xpos[body, "z"])


class RunBackwards(cheetah.Cheetah):
    def get_reward(self, physics: cheetah.Physics) -> float:
        return run_backwards_reward(physics.speed())


class RunOneFoot(cheetah.Cheetah):
    """``lifted_foot`` stays up: "bfoot" runs on the front leg, "ffoot" on the back leg."""

    def __init__(self, lifted_foot: str, random: int | None = None):
        self._lifted_foot = lifted_foot
        super().__init__(random=random)

    def get_reward(self, physics: cheetah.Physics) -> float:
        return one_foot_reward(_z(physics, "torso"), _z(physics, self._lifted_foot), physics.speed())


class Jump(cheetah.Cheetah):
    def get_reward(self, physics: cheetah.Physics) -> float:
        return jump_reward(_z(physics, "torso"), _z(physics, "bfoot"), _z(physics, "ffoot"), physics.speed())


def _make(task: cheetah.Cheetah) -> control.Environment:
    physics = cheetah.Physics.from_xml_string(suite_xml("cheetah.xml", XML_EDITS), common.ASSETS)
    return control.Environment(physics, task, time_limit=TIME_LIMIT)


TASKS = {
    "cheetah-run-backwards": lambda seed: _make(RunBackwards(random=seed)),
    "cheetah-run-front": lambda seed: _make(RunOneFoot("bfoot", random=seed)),
    "cheetah-run-back": lambda seed: _make(RunOneFoot("ffoot", random=seed)),
    "cheetah-jump": lambda seed: _make(Jump(random=seed)),
}
