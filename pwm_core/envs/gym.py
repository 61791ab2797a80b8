"""Every task as a gymnasium environment: the project's env behind ``gymnasium.Env``'s API.

    >>> env = make_gym_env("walker-walk", seed=0)
    >>> obs, info = env.reset()                          # obs: (24,) float32
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

or, after :func:`register_envs`, ``gymnasium.make("pwm/walker-walk-v0")``.

Episodes end by time limit only (500 agent steps for dm_control, 100 for Meta-World, each step two
simulator steps): ``truncated`` is True at the last step and ``terminated`` is always False, as
neither suite has terminal states. ``info["success"]`` is a float (always 0.0 for dm_control).
``diffsim-ball-wall`` is one step long (one throw); gymnasium's ``check_env`` refuses such episodes.

Seeding follows :mod:`pwm_core.evaluate`: ``reset(seed=s)`` builds the task's env with seed ``s``, and
each later ``reset()`` starts that env's next episode, so episode k after ``reset(seed=s)`` is the
same as episode k of ``pwmctl eval --seeds`` for env seed ``s``.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from pwm_core.envs.base import Env, make_env
from pwm_core.errors import EnvError
from pwm_core.tasks import TASKS, get_task

ID_PREFIX = "pwm/"
ID_VERSION = "v0"
RENDER_FPS = 30  # as pwmctl eval's videos
MAX_SEED = 2**31 - 1  # dm_control and Meta-World take seeds as 32-bit ints


def gym_id(task: str) -> str:
    """``"walker-walk"`` -> ``"pwm/walker-walk-v0"``, the id :func:`register_envs` gives the task."""
    return f"{ID_PREFIX}{task}-{ID_VERSION}"


class PwmGymEnv(gymnasium.Env):
    """One task as a ``gymnasium.Env``: Box observations (task obs dim,) float32, actions in [-1, 1].

    ``task`` is the task's :class:`~pwm_core.tasks.TaskSpec` (``spec`` is gymnasium's EnvSpec). The
    wrapped env is built on the first ``reset`` and rebuilt by every seeded ``reset``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS}

    def __init__(
        self, task: str, seed: int | None = None, render_mode: str | None = None, width: int = 384, height: int = 384
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task = get_task(task)
        self.render_mode = render_mode
        self.width, self.height = width, height
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.task.obs_dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (self.task.act_dim,), np.float32)
        self._first_seed = seed  # used by the first reset() that names no seed
        self._env: Env | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode -> (obs (obs_dim,) float32, info). ``options`` is accepted and unused."""
        super().reset(seed=seed)  # seeds self.np_random (fresh entropy when seed is None)
        env = self._env
        if seed is not None or env is None:  # a seeded reset, or the first: (re)build the task's env
            if seed is None:
                seed = self._first_seed if self._first_seed is not None else int(self.np_random.integers(MAX_SEED))
            self._close_env()
            env = self._env = make_env(self.task, seed)
        return env.reset(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """action (act_dim,) in [-1, 1] -> (obs (obs_dim,) float32, reward, terminated, truncated, info)."""
        if self._env is None:
            raise EnvError(f"{self.task.name}: step() needs a reset() first")
        obs, reward, done, info = self._env.step(np.asarray(action, dtype=np.float32))
        return obs, float(reward), False, bool(done), dict(info)  # time limit only: a truncation

    def render(self) -> np.ndarray | None:
        """With render_mode "rgb_array": the frame (height, width, 3) uint8; needs MUJOCO_GL=egl|osmesa."""
        if self.render_mode is None:
            return None
        if self._env is None:
            raise EnvError(f"{self.task.name}: render() needs a reset() first")
        return self._env.render(self.width, self.height)

    def close(self) -> None:
        self._close_env()

    def _close_env(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def make_gym_env(task: str, seed: int | None = None, render_mode: str | None = None) -> PwmGymEnv:
    """A task's gymnasium env; ``seed`` seeds the first ``reset()`` (as ``reset(seed=seed)`` would)."""
    return PwmGymEnv(task, seed=seed, render_mode=render_mode)


def register_envs() -> list[str]:
    """Register ``pwm/<task>-v0`` with gymnasium for every task (once); returns the ids.

    ``max_episode_steps`` is the task's episode length, so ``env.spec.max_episode_steps`` is right
    for libraries that read it (its TimeLimit truncates at the same step as the env itself).
    """
    ids = []
    for name, spec in TASKS.items():
        env_id = gym_id(name)
        if env_id not in gymnasium.registry:
            gymnasium.register(
                env_id,
                entry_point=f"{__name__}:PwmGymEnv",
                kwargs={"task": name},
                max_episode_steps=spec.episode_length,
            )
        ids.append(env_id)
    return ids
