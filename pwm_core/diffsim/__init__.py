"""Differentiable simulators as Warp kernels (float32 / float64), batched over environments, with a
pure-torch twin of each as the test oracle
(docs/algorithm.md#simulators-warp-kernels-and-torch-twins).

>>> sim = make_sim("cartpole-swingup")                      # backend="torch" runs the twin
>>> s = sim.initial_state(64)                               # (64, 4)
>>> s1, r = sim.step(s, policy(sim.observe(s)))             # r.sum().backward() reaches the policy
>>> states, rewards = sim.rollout(s, actions)               # open loop (T, 64, 1) through one wp.Tape

Each simulator module is one Warp module: it compiles once (about 3 s on CPU) and then loads from
Warp's kernel cache (``~/.cache/warp/<version>``, or ``WARP_CACHE_PATH``) in milliseconds.
"""

from __future__ import annotations

from pwm_core.diffsim import ball_wall, cartpole, double_pendulum
from pwm_core.diffsim.ball_wall import BallWall, analytic_landscape
from pwm_core.diffsim.bridge import DiffSim, WarpRollout, WarpStep, init_warp, load_kernels, wrap_angle
from pwm_core.diffsim.cartpole import CartPole
from pwm_core.diffsim.double_pendulum import DoublePendulum
from pwm_core.errors import PwmError

SIMS: dict[str, type[DiffSim]] = {cls.name: cls for cls in (BallWall, CartPole, DoublePendulum)}
KERNEL_MODULES = (ball_wall, cartpole, double_pendulum)


def make_sim(name: str, backend: str = "warp") -> DiffSim:
    """A simulator by name (``ball-wall``, ``cartpole-swingup``, ``double-pendulum``)."""
    if name not in SIMS:
        raise PwmError(f"unknown simulator {name!r}: choose one of {', '.join(SIMS)}")
    return SIMS[name](backend)


__all__ = [
    "KERNEL_MODULES",
    "SIMS",
    "BallWall",
    "CartPole",
    "DiffSim",
    "DoublePendulum",
    "WarpRollout",
    "WarpStep",
    "analytic_landscape",
    "init_warp",
    "load_kernels",
    "make_sim",
    "wrap_angle",
]
