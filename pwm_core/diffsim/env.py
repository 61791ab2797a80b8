"""The diffsim simulators behind the :class:`~pwm_core.envs.base.Env` interface (one env, numpy in/out),
so that the rest of the pipeline (``pwmctl collect``, evaluation) can drive them like dm_control tasks.

Tasks (action repeat 1; no terminal states, ``done`` is the time limit):

==========================  ===  ===  =======  ==================================================
name                        obs  act  length   episode
==========================  ===  ===  =======  ==================================================
diffsim-cartpole-swingup      5    1      240  DiffRL cartpole swing-up, stochastic init
diffsim-double-pendulum       6    1      240  the acrobot of PWM's gradient study, stochastic init
diffsim-ball-wall             4    1        1  one throw: theta = pi * action, reward x_T
==========================  ===  ===  =======  ==================================================
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import torch

from pwm_core.diffsim.ball_wall import BallWall
from pwm_core.diffsim.bridge import DiffSim
from pwm_core.diffsim.cartpole import CartPole
from pwm_core.diffsim.double_pendulum import DoublePendulum
from pwm_core.envs.base import check_action
from pwm_core.errors import EnvError
from pwm_core.tasks import TaskSpec

SUITE: Final = "diffsim"
FIRST_ID = 80  # global task ids after MT80's 0..79
_SIMS: dict[str, type[DiffSim]] = {
    "diffsim-cartpole-swingup": CartPole,
    "diffsim-double-pendulum": DoublePendulum,
    "diffsim-ball-wall": BallWall,
}
DIFFSIM_TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(
        FIRST_ID + i,
        name,
        SUITE,
        cls.obs_dim,
        max(cls.act_dim, 1),
        1 if cls is BallWall else cls.episode_length,
        action_repeat=1,
    )
    for i, (name, cls) in enumerate(_SIMS.items())
}


class DiffSimEnv:
    """One diffsim environment, float32, no gradient; seeded start states (the simulator's stochastic init)."""

    def __init__(self, spec: TaskSpec, seed: int = 0, backend: str = "warp"):
        if spec.name not in _SIMS:
            raise EnvError(f"{spec.name} is not a diffsim task: choose one of {', '.join(_SIMS)}")
        self.spec = spec
        self.sim = _SIMS[spec.name](backend)
        self._generator = torch.Generator().manual_seed(seed)
        self._state: torch.Tensor | None = None
        self._t: int | None = None

    @property
    def state(self) -> np.ndarray:
        """The simulator state (D,) (see the simulator's docstring for its coordinates)."""
        if self._state is None:
            raise EnvError(f"{self.spec.name}: reset() first")
        return self._state[0].numpy().copy()

    def reset(self) -> np.ndarray:
        self._t = 0
        if isinstance(self.sim, BallWall):
            self._state = torch.zeros(1, 4)  # at the launch point, not yet thrown
        else:
            self._state = self.sim.initial_state(1, self._generator)
        return self._obs(self._state)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        if self._t is None or self._state is None or self._t >= self.spec.episode_length:
            raise EnvError(f"{self.spec.name}: step() needs a reset() first (at start and after done)")
        a = torch.from_numpy(np.clip(check_action(self.spec, action), -1.0, 1.0)).unsqueeze(0)
        with torch.no_grad():
            if isinstance(self.sim, BallWall):
                start = self.sim.launch_state(math.pi * a[:, 0])
                states, rewards = self.sim.rollout(start, steps=self.sim.episode_length)
                self._state, reward = states[-1], rewards.sum(0)
            else:
                self._state, reward = self.sim.step(self._state, a)
        self._t += 1
        return self._obs(self._state), float(reward[0]), self._t >= self.spec.episode_length, {"success": 0.0}

    def _obs(self, state: torch.Tensor) -> np.ndarray:
        return self.sim.observe(state)[0].numpy().astype(np.float32)

    def render(self, width: int = 384, height: int = 384) -> np.ndarray:
        raise EnvError(f"{self.spec.name}: the diffsim environments do not render")

    def close(self) -> None:
        pass


def make_diffsim_env(task: str | TaskSpec, seed: int = 0, backend: str = "warp") -> DiffSimEnv:
    """A diffsim task's env by name (``diffsim-cartpole-swingup``, ...) or spec."""
    if isinstance(task, str):
        if task not in DIFFSIM_TASKS:
            raise EnvError(f"unknown diffsim task {task!r}: choose one of {', '.join(DIFFSIM_TASKS)}")
        task = DIFFSIM_TASKS[task]
    return DiffSimEnv(task, seed, backend)
