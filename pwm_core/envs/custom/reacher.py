"""reacher-three-easy / reacher-three-hard: dm_control's Reacher task on a three-link arm.

The task logic (random joints and target, sparse reward for touching the target) is dm_control's
``Reacher`` unchanged; only the model differs (``assets/reacher_three_links.xml``: links of 0.09 m,
wrist and middle joint limited to +-80 deg, three motors). Observation: position 3, to_target 2,
velocity 3.
"""

from __future__ import annotations

from dm_control.rl import control
from dm_control.suite import common, reacher

from pwm_core.envs.custom.models import asset_xml

TIME_LIMIT = 20  # seconds at the 0.02 s physics timestep: 1000 control steps
EASY_TARGET = 0.05  # target sphere radius (m)
HARD_TARGET = 0.015


def _make(target_size: float, seed: int) -> control.Environment:
    physics = reacher.Physics.from_xml_string(asset_xml("reacher_three_links.xml"), common.ASSETS)
    task = reacher.Reacher(target_size=target_size, random=seed)
    return control.Environment(physics, task, time_limit=TIME_LIMIT)


TASKS = {
    "reacher-three-easy": lambda seed: _make(EASY_TARGET, seed),
    "reacher-three-hard": lambda seed: _make(HARD_TARGET, seed),
}
