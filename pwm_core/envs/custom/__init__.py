"""TD-MPC2's 11 custom dm_control tasks (``nicklashansen/tdmpc2``: ``tdmpc2/envs/tasks/``), built as plain
``control.Environment`` objects.

Nothing is registered into ``dm_control.suite``: :data:`CUSTOM_TASKS` maps a task name to a
builder ``seed -> control.Environment`` that :func:`pwm_core.envs.dmc.load` calls directly.
"""

from __future__ import annotations

from collections.abc import Callable

from dm_control.rl import control

from pwm_core.envs.custom import ball_in_cup, cheetah, hopper, pendulum, reacher, walker

CUSTOM_TASKS: dict[str, Callable[[int], control.Environment]] = {
    **walker.TASKS,
    **cheetah.TASKS,
    **hopper.TASKS,
    **reacher.TASKS,
    **ball_in_cup.TASKS,
    **pendulum.TASKS,
}
