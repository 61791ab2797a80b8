"""The ball thrown at a wall (PWM Figure 2), as a time-stepped differentiable simulation.

A unit-mass ball leaves (0, 0) at speed V0 and launch angle theta, with a constant horizontal
acceleration AX and gravity G. A wall of thickness WALL_THICKNESS stands at x = WALL_X and reaches up
to y = WALL_TOP (it extends downwards without end; there is no ground). Contact is a dflex-style
penalty on the wall's box: the penetration along the face of least penetration, force
KE * depth - KD * (v . n) along that face's normal. Semi-implicit Euler, T = 2 s in 240 steps.

State (x, y, vx, vy); no action; reward x_{t+1} - x_t, so the return is the throw distance x_T.
The official figure uses a closed form instead (:func:`analytic_landscape`), where a blocked ball
simply stops at the wall; the simulator's blocked balls bounce back (kd 10 is lightly damped).
"""

from __future__ import annotations

import math

import torch
import warp as wp
from torch import Tensor

from pwm_core.diffsim.bridge import DiffSim

V0 = 10.0  # launch speed, m/s
AX = 1.0  # horizontal acceleration, m/s^2
G = -9.81  # gravity, m/s^2
WALL_X = 5.0  # the wall's near face, m
WALL_TOP = 0.0  # the wall's top, m
WALL_THICKNESS = 1.0  # m (deeper than any penetration: about 0.1 m at 10 m/s)
WALL_RIGHT = WALL_X + WALL_THICKNESS  # the wall's far face, m
KE = 1.0e4  # contact stiffness, N/m
KD = 10.0  # contact damping, N s/m
DURATION = 2.0  # s
STEPS = 240
DT = DURATION / STEPS


def _kernel(dtype):
    @wp.kernel
    def step(state: wp.array2d(dtype=dtype), next_state: wp.array2d(dtype=dtype), reward: wp.array(dtype=dtype)):
        i = wp.tid()
        x = state[i, 0]
        y = state[i, 1]
        vx = state[i, 2]
        vy = state[i, 3]
        fx = dtype(AX)
        fy = dtype(G)
        if x > dtype(WALL_X) and x < dtype(WALL_RIGHT) and y < dtype(WALL_TOP):
            left = x - dtype(WALL_X)
            right = dtype(WALL_RIGHT) - x
            top = dtype(WALL_TOP) - y
            if left <= right and left <= top:
                fx = fx - dtype(KE) * left - dtype(KD) * vx
            elif top <= right:
                fy = fy + dtype(KE) * top - dtype(KD) * vy
            else:
                fx = fx + dtype(KE) * right - dtype(KD) * vx
        vx1 = vx + dtype(DT) * fx
        vy1 = vy + dtype(DT) * fy
        x1 = x + dtype(DT) * vx1
        next_state[i, 0] = x1
        next_state[i, 1] = y + dtype(DT) * vy1
        next_state[i, 2] = vx1
        next_state[i, 3] = vy1
        reward[i] = x1 - x

    return step


class BallWall(DiffSim):
    """The ball-wall throw: state (x, y, vx, vy), no action, reward = forward progress."""

    name = "ball-wall"
    state_dim, act_dim, obs_dim = 4, 0, 4
    dt, episode_length = DT, STEPS
    kernels = {torch.float32: _kernel(wp.float32), torch.float64: _kernel(wp.float64)}

    def step_torch(self, state: Tensor, action: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, y, vx, vy = state.unbind(-1)
        inside = (x > WALL_X) & (x < WALL_RIGHT) & (y < WALL_TOP)
        left, right, top = x - WALL_X, WALL_RIGHT - x, WALL_TOP - y
        use_left = inside & (left <= right) & (left <= top)
        use_top = inside & ~use_left & (top <= right)
        use_right = inside & ~use_left & ~use_top
        zero = torch.zeros_like(x)
        fx = AX + torch.where(use_left, -KE * left - KD * vx, zero) + torch.where(use_right, KE * right - KD * vx, zero)
        fy = G + torch.where(use_top, KE * top - KD * vy, zero)
        vx1, vy1 = vx + DT * fx, vy + DT * fy
        x1 = x + DT * vx1
        return torch.stack([x1, y + DT * vy1, vx1, vy1], -1), x1 - x

    def observe(self, state: Tensor) -> Tensor:
        return state

    def launch_state(self, theta: Tensor) -> Tensor:
        """theta (N,) launch angles -> start states (N, 4), differentiable in theta."""
        return torch.stack(
            [torch.zeros_like(theta), torch.zeros_like(theta), V0 * torch.cos(theta), V0 * torch.sin(theta)], -1
        )

    def initial_state(
        self,
        n: int,
        generator: torch.Generator | None = None,
        stochastic: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Launch angles U(-pi, pi) (``stochastic``) or 0."""
        theta = torch.zeros(n, dtype=dtype)
        if stochastic:
            theta = (torch.rand(n, generator=generator, dtype=dtype) * 2 - 1) * math.pi
        return self.launch_state(theta)

    def throw(self, theta: Tensor) -> Tensor:
        """theta (N,) -> x_T (N,), the landing x after DURATION seconds; differentiable in theta."""
        states, _ = self.rollout(self.launch_state(theta), steps=STEPS)
        return states[-1, :, 0]


def analytic_landscape(theta: Tensor) -> Tensor:
    """The official closed form f(theta) (docs/algorithm.md#studies-the-ball-thrown-at-a-wall): x_T of free
    flight, or WALL_X when the ball reaches the wall below its top before DURATION. theta (N,) -> (N,),
    differentiable almost everywhere."""
    c, s = torch.cos(theta), torch.sin(theta)
    # time to reach the wall, as the official script writes it: sqrt(v^2 c^2 + a w), not + 2 a w
    t_wall = (-V0 * c + torch.sqrt(V0**2 * c**2 + AX * WALL_X)) / AX
    y_wall = V0 * s * t_wall + 0.5 * G * t_wall**2
    x_T = V0 * c * DURATION + 0.5 * AX * DURATION**2
    blocked = (WALL_TOP > y_wall) & (t_wall < DURATION)
    return torch.where(blocked, torch.full_like(x_T, WALL_X), x_T)
