"""Meta-World MT50 tasks with TD-MPC2's episode protocol (``tdmpc2/envs/metaworld.py``).

Version note: TD-MPC2's MT80 data was collected with Meta-World **V2** envs (a 2023 git commit,
mujoco-py + MuJoCo 2.1). We use metaworld 3.1.1's **V3** goal-observable envs on the official
``mujoco`` bindings: same observation layout (39 = hand 3, gripper 1, two objects' pos+quat 14,
the same 18 for the previous frame, goal 3) and action layout (xyz mocap delta + gripper, 4), but
re-tuned rewards and physics. Returns are therefore **not directly comparable** with the published
MT80 data; success rates are the closer measure.

Seeding: TD-MPC2 re-sampled goals from the global ``np.random`` (V2 behaviour); we draw them from
the env's own generator seeded at construction (``seeded_rand_vec``), so that an env's episodes
depend only on its seed, also when several envs share a process.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

from pwm_core.envs.base import check_action
from pwm_core.errors import EnvError
from pwm_core.tasks import TaskSpec

CAMERA = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)  # TD-MPC2 overrides corner2's position for its videos


def env_id(name: str) -> str:
    """``"mw-button-press"`` -> ``"button-press-v3-goal-observable"``."""
    return f"{name.removeprefix('mw-')}-v3-goal-observable"


class MetaWorldEnv:
    """A Meta-World V3 task behind the :class:`~pwm_core.envs.base.Env` interface.

    ``info`` is Meta-World's info dict of the last simulator step, with ``success`` as a float.
    Nothing is rendered at construction; :meth:`render` needs an OpenGL backend.
    """

    def __init__(self, spec: TaskSpec, seed: int):
        self.spec = spec
        # Meta-World types its goal-observable classes as the base env, whose __init__ takes no seed;
        # theirs does (metaworld/env_dict.py, _create_observable_goal_envs)
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[env_id(spec.name)](seed=seed)  # type: ignore[call-arg]
        self._env._freeze_rand_vec = False  # TD-MPC2: object/goal positions re-sampled every reset
        self._env.seeded_rand_vec = True  # ours: from the env's seeded generator (see module doc)
        self._env.model.cam_pos[self._env.model.camera(CAMERA).id] = CAMERA_POS
        obs_shape = self._env.observation_space.shape
        assert obs_shape is not None  # a Box
        obs_dim = obs_shape[0]
        if obs_dim != spec.obs_dim:
            raise EnvError(f"{spec.name}: Meta-World gives obs {obs_dim}, the table says {spec.obs_dim}")
        self._renderer: mujoco.Renderer | None = None
        self._t: int | None = None  # agent steps into the episode; None before the first reset

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset()
        # TD-MPC2: one discarded zero-action step after reset (the reset obs is kept).
        self._env.step(np.zeros(self.spec.act_dim, dtype=np.float32))
        self._t = 0
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        if self._t is None or self._t >= self.spec.episode_length:
            raise EnvError(f"{self.spec.name}: step() needs a reset() first (at start and after done)")
        a = check_action(self.spec, action)
        reward = 0.0
        for _ in range(self.spec.action_repeat):  # TD-MPC2: action repeat 2, rewards summed
            obs, r, _, _, info = self._env.step(a)
            reward += float(r)
        self._t += 1
        done = self._t >= self.spec.episode_length  # TD-MPC2: Timeout(100); no terminations
        return obs.astype(np.float32), reward, done, {**info, "success": float(info["success"])}

    def render(self, width: int = 384, height: int = 384) -> np.ndarray:
        if self._renderer is None or (self._renderer.width, self._renderer.height) != (width, height):
            self._close_renderer()
            self._renderer = mujoco.Renderer(self._env.model, height=height, width=width)
        self._renderer.update_scene(self._env.data, camera=CAMERA)
        return self._renderer.render()

    def _close_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def close(self) -> None:
        self._close_renderer()
        self._env.close()
