"""Run episodes on the envs of a :class:`VectorEnv` in lockstep: shared by collection and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pwm_core.envs.vector import VectorEnv


@dataclass
class Step:
    """One lockstep env step, for the envs in an episode (``rows`` of the VectorEnv)."""

    rows: np.ndarray  # (n,) env indices
    obs: np.ndarray  # (n, O) before the step
    action: np.ndarray  # (n, A)
    reward: np.ndarray  # (n,)
    next_obs: np.ndarray  # (n, O) after the step (the last obs of an episode when done)
    done: np.ndarray  # (n,) bool
    success: np.ndarray  # (n,)


def lockstep(
    venv: VectorEnv, act: Callable[[np.ndarray, np.ndarray], np.ndarray], begin: Callable[[int], bool]
) -> Iterator[Step]:
    """Run episodes on all envs of ``venv`` at once until no env starts another one.

    ``begin(i)`` is asked whenever env i is free (at the start and after each of its episodes,
    once that episode's last :class:`Step` was consumed) and says whether it runs another.
    ``act(obs, rows)`` maps the observations (n, O) of the envs in an episode to their actions
    (n, A). Free envs idle on zero actions (a VectorEnv steps every env) and are left out of the
    yielded steps.
    """
    n_envs = venv.num_envs
    busy = np.array([begin(i) for i in range(n_envs)], dtype=bool)
    obs = venv.reset()
    while busy.any():
        rows = np.flatnonzero(busy)
        actions = np.zeros((n_envs, venv.act_dim), dtype=np.float32)
        actions[rows] = act(obs[rows], rows)
        next_obs, reward, done, success = venv.step(actions)
        yield Step(rows, obs[rows], actions[rows], reward[rows], next_obs[rows], done[rows], success[rows])
        ended = np.flatnonzero(done)  # no auto-reset: reset every env whose episode ended, busy or not
        for i in ended:
            busy[i] = busy[i] and begin(int(i))
        if len(ended):
            next_obs[ended] = venv.reset(ended)
        obs = next_obs
