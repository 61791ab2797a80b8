"""Cartpole swing-up (DiffRL's ``CartPoleSwingUp``), reduced coordinates, semi-implicit Euler.

Constants from DiffRL's ``cartpole.urdf``: cart 1 kg; pole 10 kg with its centre of mass 0.5 m up the
pole and inertia 1 kg m^2 about it; force = action x 1000 N on the cart. One env step is 1/60 s in 4
substeps. Not modelled: the rail limits (+-4 m) and joint armature. The equations of motion
(theta = 0 upright, positive theta tips the pole towards +x):

    [mc + mp       mp l cos th] [x'' ]   [F + mp l sin th th'^2]
    [mp l cos th   mp l^2 + I ] [th''] = [mp g l sin th        ]

State (x, theta, x', theta'); obs [x, x', sin th, cos th, th'] (5); reward
-(th^2 + 0.1 th'^2 + 0.05 x^2 + 0.1 x'^2) with th wrapped to [-pi, pi], on the post-step state; no
action penalty. Episodes start hanging down at rest (th = pi); DiffRL's stochastic init adds U(+-pi/2)
to (x, th) and U(+-0.25) to the rates.
"""

from __future__ import annotations

import math

import torch
import warp as wp
from torch import Tensor

from pwm_core.diffsim.bridge import DiffSim, wrap_angle

CART_MASS = 1.0  # kg
POLE_MASS = 10.0  # kg
POLE_COM = 0.5  # m, pivot to the pole's centre of mass
POLE_INERTIA = 1.0  # kg m^2, about the centre of mass
GRAVITY = 9.81  # m/s^2
FORCE_SCALE = 1000.0  # N per unit action
SUBSTEPS = 4
DT = 1.0 / 60.0  # s per env step
H = DT / SUBSTEPS  # s per substep
M_TOTAL = CART_MASS + POLE_MASS
MP_L = POLE_MASS * POLE_COM
M_THETA = POLE_MASS * POLE_COM**2 + POLE_INERTIA
MP_G_L = POLE_MASS * GRAVITY * POLE_COM


def _kernel(dtype):
    @wp.kernel
    def step(
        state: wp.array2d(dtype=dtype),
        action: wp.array2d(dtype=dtype),
        next_state: wp.array2d(dtype=dtype),
        reward: wp.array(dtype=dtype),
    ):
        i = wp.tid()
        x = state[i, 0]
        th = state[i, 1]
        xd = state[i, 2]
        thd = state[i, 3]
        force = dtype(FORCE_SCALE) * action[i, 0]
        for _k in range(SUBSTEPS):
            c, s = wp.cos(th), wp.sin(th)
            m12 = dtype(MP_L) * c
            det = dtype(M_TOTAL) * dtype(M_THETA) - m12 * m12
            f1 = force + dtype(MP_L) * s * thd * thd
            f2 = dtype(MP_G_L) * s
            xdd = (dtype(M_THETA) * f1 - m12 * f2) / det
            thdd = (dtype(M_TOTAL) * f2 - m12 * f1) / det
            xd = xd + dtype(H) * xdd
            thd = thd + dtype(H) * thdd
            x = x + dtype(H) * xd
            th = th + dtype(H) * thd
        next_state[i, 0] = x
        next_state[i, 1] = th
        next_state[i, 2] = xd
        next_state[i, 3] = thd
        thw = wp.atan2(wp.sin(th), wp.cos(th))
        reward[i] = -(thw * thw + dtype(0.1) * thd * thd + dtype(0.05) * x * x + dtype(0.1) * xd * xd)

    return step


class CartPole(DiffSim):
    """Cartpole swing-up: state (x, theta, x', theta'), action (1,) cart force / 1000 N."""

    name = "cartpole-swingup"
    state_dim, act_dim, obs_dim = 4, 1, 5
    dt, episode_length = DT, 240
    kernels = {torch.float32: _kernel(wp.float32), torch.float64: _kernel(wp.float64)}

    def step_torch(self, state: Tensor, action: Tensor | None) -> tuple[Tensor, Tensor]:
        x, th, xd, thd = state.unbind(-1)
        assert action is not None  # act_dim 1: DiffSim.step checked it
        force = FORCE_SCALE * action[:, 0]
        for _ in range(SUBSTEPS):
            c, s = torch.cos(th), torch.sin(th)
            m12 = MP_L * c
            det = M_TOTAL * M_THETA - m12 * m12
            f1 = force + MP_L * s * thd * thd
            f2 = MP_G_L * s
            xd = xd + H * (M_THETA * f1 - m12 * f2) / det
            thd = thd + H * (M_TOTAL * f2 - m12 * f1) / det
            x = x + H * xd
            th = th + H * thd
        thw = wrap_angle(th)
        reward = -(thw * thw + 0.1 * thd * thd + 0.05 * x * x + 0.1 * xd * xd)
        return torch.stack([x, th, xd, thd], -1), reward

    def observe(self, state: Tensor) -> Tensor:
        x, th, xd, thd = state.unbind(-1)
        return torch.stack([x, xd, torch.sin(th), torch.cos(th), thd], -1)

    def initial_state(
        self,
        n: int,
        generator: torch.Generator | None = None,
        stochastic: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Hanging down (theta = pi, at rest); ``stochastic``: + U(+-pi/2) on (x, theta), U(+-0.25) on rates."""
        state = torch.zeros(n, 4, dtype=dtype)
        state[:, 1] = math.pi
        if stochastic:
            u = torch.rand(n, 4, generator=generator, dtype=dtype) * 2 - 1
            state += u * torch.tensor([math.pi / 2, math.pi / 2, 0.25, 0.25], dtype=dtype)
        return state
