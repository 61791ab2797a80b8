"""dm_control tasks wrapped as TD-MPC2 does (``tdmpc2/envs/dmcontrol.py``).

Observation = every entry of dm_control's observation dict, flattened and concatenated in dict
order, as float32. Action repeat 2 with summed rewards, 500 agent steps per episode.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

# Headless machines: dm_control probes GLFW at import and warns about the missing X display.
# Physics needs no display; rendering picks a backend from MUJOCO_GL (egl/osmesa) when asked.
warnings.filterwarnings("ignore", message=r".*DISPLAY environment variable is missing")
from dm_control import suite  # noqa: E402
from dm_control.rl import control  # noqa: E402
from dm_control.suite.wrappers import action_scale  # noqa: E402

# After the filter as well: pwm_core.envs.custom imports dm_control.
from pwm_core.envs.base import check_action  # noqa: E402
from pwm_core.envs.custom import CUSTOM_TASKS  # noqa: E402
from pwm_core.errors import EnvError  # noqa: E402
from pwm_core.tasks import TaskSpec  # noqa: E402

DOMAIN_ALIASES = {"cup": "ball_in_cup"}
RENDER_CAMERAS = {"quadruped": 2}  # TD-MPC2: camera 2 for quadruped, 0 otherwise


def domain_and_task(name: str) -> tuple[str, str]:
    """``"finger-turn-easy"`` -> ``("finger", "turn_easy")``; ``"cup-catch"`` -> ``("ball_in_cup", "catch")``."""
    domain, _, task = name.partition("-")
    return DOMAIN_ALIASES.get(domain, domain), task.replace("-", "_")


def load(name: str, seed: int) -> control.Environment:
    """The raw dm_control environment of a task (custom ones included), seeded with ``seed``."""
    if name in CUSTOM_TASKS:
        return CUSTOM_TASKS[name](seed)
    domain, task = domain_and_task(name)
    return suite.load(domain, task, task_kwargs={"random": seed}, visualize_reward=False)


def flatten_obs(observation: Mapping[str, Any]) -> np.ndarray:
    """Concatenate the flattened entries of a dm_control observation dict (dict order): float32."""
    return np.concatenate([np.asarray(v).ravel() for v in observation.values()]).astype(np.float32)


class DMCEnv:
    """A dm_control task behind the :class:`~pwm_core.envs.base.Env` interface."""

    def __init__(self, spec: TaskSpec, seed: int):
        self.spec = spec
        self._domain = domain_and_task(spec.name)[0]
        self._env = action_scale.Wrapper(load(spec.name, seed), minimum=-1.0, maximum=1.0)
        self._action_dtype = self._env.action_spec().dtype  # float64
        obs_dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        act_dim = self._env.action_spec().shape[0]
        if (obs_dim, act_dim) != (spec.obs_dim, spec.act_dim):
            raise EnvError(
                f"{spec.name}: dm_control gives obs {obs_dim} / act {act_dim}, the task "
                f"table says {spec.obs_dim} / {spec.act_dim}"
            )
        self._t: int | None = None  # agent steps into the episode; None before the first reset

    @property
    def physics(self):
        """The underlying ``dm_control.mujoco.Physics`` (for inspection and rendering)."""
        return self._env.physics

    def reset(self) -> np.ndarray:
        self._t = 0
        return flatten_obs(self._env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        if self._t is None or self._t >= self.spec.episode_length:
            raise EnvError(f"{self.spec.name}: step() needs a reset() first (at start and after done)")
        a = check_action(self.spec, action, self._action_dtype)
        reward = 0.0
        for _ in range(self.spec.action_repeat):  # TD-MPC2: action repeat 2, rewards summed
            time_step = self._env.step(a)
            reward += time_step.reward
        self._t += 1
        # TD-MPC2: Timeout(500); coincides with dm_control's own 1000-control-step episode end.
        done = self._t >= self.spec.episode_length
        return flatten_obs(time_step.observation), float(reward), done, {"success": 0.0}

    def render(self, width: int = 384, height: int = 384) -> np.ndarray:
        camera_id = RENDER_CAMERAS.get(self._domain, 0)
        return self.physics.render(height=height, width=width, camera_id=camera_id)

    def close(self) -> None:
        self._env.close()
