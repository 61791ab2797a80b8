"""The Warp <-> torch bridge shared by every simulator in :mod:`pwm_core.diffsim`.

A simulator is one Warp kernel per dtype that advances N environments by one env step:
``step(state (N, D), [action (N, A)], next_state (N, D), reward (N,))``. Torch sees it two ways:

* :class:`WarpStep` (one step, closed loop): forward launches the kernel, backward launches its
  adjoint (``wp.launch(..., adjoint=True)``) with the incoming gradients; no Tape. This is what a torch
  policy backpropagates through, one step at a time.
* :class:`WarpRollout` (T steps, open loop): the states live in one (T+1, N, D) array, step t reads
  slice t and writes slice t+1 (nothing is overwritten), all launches are recorded on a ``wp.Tape``
  and ``tape.backward()`` replays the adjoints.

Both are zero-copy (``wp.from_torch``) and run wherever the tensors live (CPU or CUDA).
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from types import ModuleType
from typing import ClassVar, cast

import torch
import warp as wp
from torch import Tensor

from pwm_core.errors import PwmError

_WP_DTYPES = {torch.float32: wp.float32, torch.float64: wp.float64}
_initialised = False


def init_warp() -> None:
    """``wp.init()`` without the greeting on stdout (``PWM_WARP_VERBOSE=1`` keeps Warp's own logging:
    the greeting and one "Module ... load ... (compiled|cached)" line per module)."""
    global _initialised
    if not _initialised:
        if not os.environ.get("PWM_WARP_VERBOSE"):
            wp.config.log_level = wp.LOG_WARNING
        wp.init()
        _initialised = True


def load_kernels(modules: list[ModuleType]) -> dict[str, float]:
    """Compile (cold cache) or load (warm cache) the kernels of ``modules`` ahead of first use, so the
    cost does not land inside a timed step. Returns seconds per module name."""
    init_warp()
    times = {}
    for m in modules:
        t0 = time.perf_counter()
        wp.load_module(m, device="cpu")
        times[m.__name__] = time.perf_counter() - t0
    return times


def _wp(t: Tensor, grad: Tensor | None = None) -> wp.array:
    """A Warp view of a torch tensor; with ``grad``, a differentiable one whose adjoint buffer is ``grad``
    (without, no gradient buffer: the bridge manages gradients itself)."""
    # an array unless return_ctype=True; Warp annotates the union without overloads
    return cast(wp.array, wp.from_torch(t, requires_grad=grad is not None, grad=grad))


def wp_device(t: Tensor) -> str:
    return "cpu" if t.device.type == "cpu" else f"cuda:{t.device.index or 0}"


class WarpStep(torch.autograd.Function):
    """One env step through a Warp kernel: (state (N, D), action (N, A) | None) -> (next (N, D), r (N,)).

    Backward is one adjoint launch; the adjoints of the inputs are accumulated into zeroed buffers.
    """

    @staticmethod
    def forward(ctx, kernel: wp.Kernel, state: Tensor, action: Tensor | None) -> tuple[Tensor, Tensor]:
        init_warp()
        state = state.detach().contiguous()
        action = None if action is None else action.detach().contiguous()
        next_state, reward = torch.empty_like(state), state.new_empty(state.shape[0])
        inputs = [_wp(state)] + ([] if action is None else [_wp(action)])
        wp.launch(
            kernel, dim=state.shape[0], inputs=inputs, outputs=[_wp(next_state), _wp(reward)], device=wp_device(state)
        )
        ctx.kernel, ctx.has_action = kernel, action is not None
        ctx.save_for_backward(state, action, next_state, reward)
        return next_state, reward

    @staticmethod
    def backward(ctx, g_next: Tensor | None, g_reward: Tensor | None):
        state, action, next_state, reward = ctx.saved_tensors
        g_next = torch.zeros_like(next_state) if g_next is None else g_next.contiguous()
        g_reward = torch.zeros_like(reward) if g_reward is None else g_reward.contiguous()
        g_state = torch.zeros_like(state)
        g_action = None
        inputs, adj_inputs = [_wp(state)], [_wp(g_state)]
        if action is not None:
            g_action = torch.zeros_like(action)
            inputs.append(_wp(action))
            adj_inputs.append(_wp(g_action))
        wp.launch(
            ctx.kernel,
            dim=state.shape[0],
            inputs=inputs,
            outputs=[_wp(next_state), _wp(reward)],
            adj_inputs=adj_inputs,
            adj_outputs=[_wp(g_next), _wp(g_reward)],
            adjoint=True,
            device=wp_device(state),
        )
        return None, g_state, g_action


class WarpRollout(torch.autograd.Function):
    """T open-loop steps recorded on a ``wp.Tape``: (state0 (N, D), actions (T, N, A) | None, T) ->
    (states (T+1, N, D), rewards (T, N)). Backward seeds the arrays' gradients and replays the tape."""

    @staticmethod
    def forward(ctx, kernel: wp.Kernel, state0: Tensor, actions: Tensor | None, steps: int):
        init_warp()
        N, D = state0.shape
        dev = wp_device(state0)
        states = state0.new_empty(steps + 1, N, D)
        states[0] = state0.detach()
        rewards = state0.new_empty(steps, N)
        g_states, g_rewards = torch.zeros_like(states), torch.zeros_like(rewards)
        ws, wr = _wp(states, g_states), _wp(rewards, g_rewards)
        wa = None
        if actions is not None:
            actions = actions.detach().contiguous()
            ctx.g_actions = torch.zeros_like(actions)
            wa = _wp(actions, ctx.g_actions)
        tape = wp.Tape()
        with tape:
            for t in range(steps):
                inputs = [ws[t]] + ([] if wa is None else [wa[t]])
                wp.launch(kernel, dim=N, inputs=inputs, outputs=[ws[t + 1], wr[t]], device=dev)
        ctx.tape, ctx.arrays = tape, (ws, wr, wa)  # the Warp arrays keep their torch buffers alive
        ctx.g_states, ctx.g_rewards, ctx.has_action = g_states, g_rewards, actions is not None
        return states, rewards

    @staticmethod
    def backward(ctx, g_states: Tensor | None, g_rewards: Tensor | None):
        ctx.tape.zero()  # a second backward (retain_graph) starts from clean buffers too
        for buf, g in ((ctx.g_states, g_states), (ctx.g_rewards, g_rewards)):
            if g is None:
                buf.zero_()
            else:
                buf.copy_(g)
        if ctx.has_action:
            ctx.g_actions.zero_()
        ctx.tape.backward()  # adjoints accumulate from t = T-1 down to 0 into the seeded buffers
        return None, ctx.g_states[0].clone(), ctx.g_actions.clone() if ctx.has_action else None, None


class DiffSim(ABC):
    """A batched differentiable simulator with a Warp backend and a pure-torch twin.

    state (N, D) in the simulator's own coordinates (see each subclass); actions (N, A) in [-1, 1]
    (clipped, then scaled inside the step); reward (N,) of the post-step state. ``backend="torch"``
    runs the twin instead of Warp (the test oracle and fallback). float32 and float64 are supported.
    """

    name: ClassVar[str]
    state_dim: ClassVar[int]
    act_dim: ClassVar[int]  # 0: the simulator takes no action (ball-wall)
    obs_dim: ClassVar[int]
    dt: ClassVar[float]  # seconds per env step
    episode_length: ClassVar[int]  # env steps per episode
    kernels: ClassVar[dict[torch.dtype, wp.Kernel]]

    def __init__(self, backend: str = "warp"):
        if backend not in ("warp", "torch"):
            raise PwmError(f"backend must be 'warp' or 'torch', got {backend!r}")
        self.backend = backend

    # ---------------------------------------------------------------- the physics, in torch
    @abstractmethod
    def step_torch(self, state: Tensor, action: Tensor | None) -> tuple[Tensor, Tensor]:
        """The twin of the kernel: (state (N, D), action (N, A) in [-1, 1]) -> (next (N, D), reward (N,))."""

    @abstractmethod
    def observe(self, state: Tensor) -> Tensor:
        """state (..., D) -> observation (..., obs_dim), differentiable."""

    @abstractmethod
    def initial_state(
        self,
        n: int,
        generator: torch.Generator | None = None,
        stochastic: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """(n, D) start states; ``stochastic`` adds the task's random perturbation."""

    # ---------------------------------------------------------------- stepping
    def _check_state(self, state: Tensor) -> None:
        if state.dtype not in _WP_DTYPES:
            raise PwmError(f"{self.name}: state must be float32 or float64, got {state.dtype}")
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise PwmError(f"{self.name}: state must have shape (N, {self.state_dim}), got {tuple(state.shape)}")

    def _check_action(self, state: Tensor, action: Tensor | None) -> Tensor:
        """A simulator with actions (act_dim > 0): ``action`` (N, A) in the state's dtype, clipped."""
        if action is None or action.shape[-1] != self.act_dim or action.shape[:-1] != state.shape[:1]:
            got = None if action is None else tuple(action.shape)
            raise PwmError(f"{self.name}: action must have shape ({state.shape[0]}, {self.act_dim}), got {got}")
        return action.to(state.dtype).clamp(-1.0, 1.0)  # actions are clipped to [-1, 1], then scaled

    def step(self, state: Tensor, action: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One env step for N envs: (next_state (N, D), reward (N,)), differentiable in state and action."""
        self._check_state(state)
        action = self._check_action(state, action) if self.act_dim else None
        if self.backend == "torch":
            return self.step_torch(state, action)
        return WarpStep.apply(self.kernels[state.dtype], state, action)

    def rollout(self, state0: Tensor, actions: Tensor | None = None, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """Open loop: state0 (N, D), actions (T, N, A) (or ``steps`` without actions) ->
        states (T+1, N, D) incl. state0, rewards (T, N). Warp: one Tape over all T launches."""
        self._check_state(state0)
        if actions is not None:
            steps = actions.shape[0]
            actions = torch.stack([self._check_action(state0, a) for a in actions]) if self.act_dim else None
        elif self.act_dim:
            raise PwmError(f"{self.name}: rollout needs actions of shape (T, N, {self.act_dim})")
        if steps is None:
            raise PwmError(f"{self.name}: pass actions or steps")
        if self.backend == "warp":
            return WarpRollout.apply(self.kernels[state0.dtype], state0, actions, steps)
        states, rewards = [state0], []
        for t in range(steps):
            s, r = self.step_torch(states[-1], None if actions is None else actions[t])
            states.append(s)
            rewards.append(r)
        return torch.stack(states), torch.stack(rewards)


def wrap_angle(theta: Tensor) -> Tensor:
    """Angle wrapped to [-pi, pi] as atan2(sin, cos) (derivative 1 everywhere but at +-pi)."""
    return torch.atan2(torch.sin(theta), torch.cos(theta))
