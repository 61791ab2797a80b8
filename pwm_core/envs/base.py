"""The environment interface and factory, TD-MPC2's multi-task padding, the padded random action."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pwm_core.errors import EnvError
from pwm_core.tasks import TaskSpec, get_task


class Env(Protocol):
    """One task, as the agent sees it: flat float32 observations, actions in [-1, 1].

    ``done`` is a time-limit truncation after ``spec.episode_length`` agent steps (no terminal
    states in either suite); ``info["success"]`` is a float (always 0.0 for dm_control).
    """

    spec: TaskSpec

    def reset(self) -> np.ndarray:
        """Start an episode; returns obs: (spec.obs_dim,) float32."""
        ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """action: (spec.act_dim,) in [-1, 1] -> obs (spec.obs_dim,) f32, reward, done, info."""
        ...

    def render(self, width: int = 384, height: int = 384) -> np.ndarray:
        """RGB frame: (height, width, 3) uint8. Needs an OpenGL backend (MUJOCO_GL=egl|osmesa)."""
        ...

    def close(self) -> None: ...


def make_env(task: str | TaskSpec, seed: int = 0) -> Env:
    """Build one task's env (dm_control, Meta-World or a diffsim simulator), seeded with ``seed``.

    Unknown names raise :class:`~pwm_core.tasks.UnknownTaskError`; a simulator that fails to
    build raises :class:`EnvError` naming the task.
    """
    spec = get_task(task) if isinstance(task, str) else task
    try:
        if spec.suite == "dmc":  # suites imported on first use: each costs ~1 s
            from pwm_core.envs.dmc import DMCEnv

            return DMCEnv(spec, seed)
        if spec.suite == "diffsim":  # Warp kernels, loaded from Warp's cache
            from pwm_core.diffsim.env import DiffSimEnv

            return DiffSimEnv(spec, seed)
        from pwm_core.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(spec, seed)
    except EnvError:
        raise
    except Exception as e:
        raise EnvError(f"cannot build {spec.name} (seed {seed}): {type(e).__name__}: {e}") from e


def check_action(spec: TaskSpec, action: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """``action`` as a (spec.act_dim,) array of ``dtype``; a wrong shape raises EnvError."""
    a: np.ndarray = np.asarray(action, dtype=dtype)
    if a.shape != (spec.act_dim,):
        raise EnvError(f"{spec.name}: action must have shape ({spec.act_dim},), got {a.shape}")
    return a


class PaddedEnv:
    """TD-MPC2's ``MultitaskWrapper`` for one task: a shared (obs_dim, act_dim) interface.

    Observations are right-padded with zeros to ``obs_dim``; ``step`` takes an ``act_dim`` action
    and uses its first ``spec.act_dim`` entries (the rest is what the action mask zeroes).
    """

    def __init__(self, env: Env, obs_dim: int, act_dim: int):
        if obs_dim < env.spec.obs_dim or act_dim < env.spec.act_dim:
            raise EnvError(
                f"{env.spec.name} needs obs_dim >= {env.spec.obs_dim} and act_dim >= "
                f"{env.spec.act_dim}, got {obs_dim} and {act_dim}"
            )
        self.env = env
        self.spec = env.spec
        self.obs_dim = obs_dim
        self.act_dim = act_dim

    def _pad(self, obs: np.ndarray) -> np.ndarray:
        out = np.zeros(self.obs_dim, dtype=np.float32)
        out[: obs.shape[0]] = obs
        return out

    def reset(self) -> np.ndarray:
        """Returns obs: (obs_dim,) float32, zeros beyond spec.obs_dim."""
        return self._pad(self.env.reset())

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """action: (act_dim,); entries beyond spec.act_dim are ignored."""
        a = np.asarray(action)
        if a.shape != (self.act_dim,):
            raise EnvError(f"{self.spec.name}: padded action must have shape ({self.act_dim},), got {a.shape}")
        obs, reward, done, info = self.env.step(a[: self.spec.act_dim])
        return self._pad(obs), reward, done, info

    def render(self, width: int = 384, height: int = 384) -> np.ndarray:
        return self.env.render(width, height)

    def close(self) -> None:
        self.env.close()


def random_action(spec: TaskSpec, rng: np.random.Generator, act_dim: int | None = None) -> np.ndarray:
    """Uniform action in [-1, 1]^spec.act_dim, zero-padded to ``act_dim``: (act_dim,) float32."""
    act_dim = spec.act_dim if act_dim is None else act_dim
    if act_dim < spec.act_dim:
        raise EnvError(f"{spec.name} needs act_dim >= {spec.act_dim}, got {act_dim}")
    a = np.zeros(act_dim, dtype=np.float32)
    a[: spec.act_dim] = rng.uniform(-1.0, 1.0, spec.act_dim)
    return a
