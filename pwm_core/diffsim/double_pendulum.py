"""The double pendulum of PWM's gradient study (DiffRL fork's ``DoublePendulumEnv``): an acrobot.

Two 1 m, 10 kg rods (centre of mass mid-rod, inertia m L^2 / 12 about it) on hinges about the same
axis; only the elbow is actuated, torque = action x 1000 N m; armature 0.1 kg m^2 on both joints,
no damping, gravity 9.81. One env step is 1/60 s in 4 substeps of semi-implicit Euler.

Choice, documented: this is a proper two-link pendulum (the elbow sits at the tip of the upper rod).
The fork's shipped URDF puts the elbow's origin at the shoulder, so both links hinge at one pivot; we do
not reproduce that quirk (docs/algorithm.md#simulators-the-double-pendulum).

State (th1, th2, th1', th2'): th1 the shoulder angle from upright, th2 the elbow angle relative to
the upper rod; 0 = both rods up. Obs [cos th1, sin th1, cos th2, sin th2, th1', th2'] (6); reward
-(th1^2 + th2^2) - 0.1 (th1'^2 + th2'^2) with the angles wrapped to [-pi, pi], post-step. Episodes
start upright at rest; stochastic init adds U(+-pi/2) to the angles and U(+-0.25) to the rates.

Equations of motion, M(q) q'' = tau - C(q, q') - dV/dq with (b = m2 l1 lc2, c2 = cos th2):
    M11 = m1 lc1^2 + I1 + m2 (l1^2 + lc2^2) + I2 + arm + 2 b c2,  M12 = m2 lc2^2 + I2 + b c2,
    M22 = m2 lc2^2 + I2 + arm
    rhs1 = b sin th2 (2 th1' th2' + th2'^2) + g ((m1 lc1 + m2 l1) sin th1 + m2 lc2 sin(th1 + th2))
    rhs2 = tau - b sin th2 th1'^2 + g m2 lc2 sin(th1 + th2)
"""

from __future__ import annotations

import math

import torch
import warp as wp
from torch import Tensor

from pwm_core.diffsim.bridge import DiffSim, wrap_angle

LENGTH = 1.0  # m, both rods
MASS = 10.0  # kg, both rods
ARMATURE = 0.1  # kg m^2, both joints
GRAVITY = 9.81  # m/s^2
TORQUE_SCALE = 1000.0  # N m per unit action, elbow only
SUBSTEPS = 4
DT = 1.0 / 60.0  # s per env step
H = DT / SUBSTEPS  # s per substep
_LC = LENGTH / 2
_I = MASS * LENGTH**2 / 12
M11_0 = MASS * _LC**2 + _I + MASS * (LENGTH**2 + _LC**2) + _I + ARMATURE  # M11 without the 2 b c2 term
M12_0 = MASS * _LC**2 + _I  # M12 without b c2
M22 = MASS * _LC**2 + _I + ARMATURE
B = MASS * LENGTH * _LC  # m2 l1 lc2
G1 = GRAVITY * (MASS * _LC + MASS * LENGTH)  # g (m1 lc1 + m2 l1)
G2 = GRAVITY * MASS * _LC  # g m2 lc2


def _kernel(dtype):
    @wp.kernel
    def step(
        state: wp.array2d(dtype=dtype),
        action: wp.array2d(dtype=dtype),
        next_state: wp.array2d(dtype=dtype),
        reward: wp.array(dtype=dtype),
    ):
        i = wp.tid()
        q1 = state[i, 0]
        q2 = state[i, 1]
        qd1 = state[i, 2]
        qd2 = state[i, 3]
        tau = dtype(TORQUE_SCALE) * action[i, 0]
        for _k in range(SUBSTEPS):
            c2, s2 = wp.cos(q2), wp.sin(q2)
            s12 = wp.sin(q1 + q2)
            m11 = dtype(M11_0) + dtype(2.0) * dtype(B) * c2
            m12 = dtype(M12_0) + dtype(B) * c2
            det = m11 * dtype(M22) - m12 * m12
            r1 = dtype(B) * s2 * (dtype(2.0) * qd1 * qd2 + qd2 * qd2) + dtype(G1) * wp.sin(q1) + dtype(G2) * s12
            r2 = tau - dtype(B) * s2 * qd1 * qd1 + dtype(G2) * s12
            qdd1 = (dtype(M22) * r1 - m12 * r2) / det
            qdd2 = (m11 * r2 - m12 * r1) / det
            qd1 = qd1 + dtype(H) * qdd1
            qd2 = qd2 + dtype(H) * qdd2
            q1 = q1 + dtype(H) * qd1
            q2 = q2 + dtype(H) * qd2
        next_state[i, 0] = q1
        next_state[i, 1] = q2
        next_state[i, 2] = qd1
        next_state[i, 3] = qd2
        w1 = wp.atan2(wp.sin(q1), wp.cos(q1))
        w2 = wp.atan2(wp.sin(q2), wp.cos(q2))
        reward[i] = -(w1 * w1 + w2 * w2) - dtype(0.1) * (qd1 * qd1 + qd2 * qd2)

    return step


class DoublePendulum(DiffSim):
    """Acrobot-like double pendulum: state (th1, th2, th1', th2'), action (1,) elbow torque / 1000 N m."""

    name = "double-pendulum"
    state_dim, act_dim, obs_dim = 4, 1, 6
    dt, episode_length = DT, 240
    kernels = {torch.float32: _kernel(wp.float32), torch.float64: _kernel(wp.float64)}

    def step_torch(self, state: Tensor, action: Tensor | None) -> tuple[Tensor, Tensor]:
        q1, q2, qd1, qd2 = state.unbind(-1)
        assert action is not None  # act_dim 1: DiffSim.step checked it
        tau = TORQUE_SCALE * action[:, 0]
        for _ in range(SUBSTEPS):
            c2, s2, s12 = torch.cos(q2), torch.sin(q2), torch.sin(q1 + q2)
            m11, m12 = M11_0 + 2 * B * c2, M12_0 + B * c2
            det = m11 * M22 - m12 * m12
            r1 = B * s2 * (2 * qd1 * qd2 + qd2 * qd2) + G1 * torch.sin(q1) + G2 * s12
            r2 = tau - B * s2 * qd1 * qd1 + G2 * s12
            qd1 = qd1 + H * (M22 * r1 - m12 * r2) / det
            qd2 = qd2 + H * (m11 * r2 - m12 * r1) / det
            q1 = q1 + H * qd1
            q2 = q2 + H * qd2
        w1, w2 = wrap_angle(q1), wrap_angle(q2)
        reward = -(w1 * w1 + w2 * w2) - 0.1 * (qd1 * qd1 + qd2 * qd2)
        return torch.stack([q1, q2, qd1, qd2], -1), reward

    def observe(self, state: Tensor) -> Tensor:
        q1, q2, qd1, qd2 = state.unbind(-1)
        return torch.stack([torch.cos(q1), torch.sin(q1), torch.cos(q2), torch.sin(q2), qd1, qd2], -1)

    def initial_state(
        self,
        n: int,
        generator: torch.Generator | None = None,
        stochastic: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Upright at rest; ``stochastic``: + U(+-pi/2) on the angles, U(+-0.25) on the rates."""
        state = torch.zeros(n, 4, dtype=dtype)
        if stochastic:
            u = torch.rand(n, 4, generator=generator, dtype=dtype) * 2 - 1
            state += u * torch.tensor([math.pi / 2, math.pi / 2, 0.25, 0.25], dtype=dtype)
        return state

    def energy(self, state: Tensor) -> Tensor:
        """Total mechanical energy (N,) in J, armature included (a conserved quantity when unactuated)."""
        q1, q2, qd1, qd2 = state.unbind(-1)
        c2 = torch.cos(q2)
        m11, m12 = M11_0 + 2 * B * c2, M12_0 + B * c2
        kinetic = 0.5 * (m11 * qd1 * qd1 + 2 * m12 * qd1 * qd2 + M22 * qd2 * qd2)
        potential = G1 * torch.cos(q1) + G2 * torch.cos(q1 + q2)
        return kinetic + potential
