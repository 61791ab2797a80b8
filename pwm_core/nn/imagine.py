"""The latent rollout every part of PWM runs: z_{t+1} = d(z_t, a_t) with a_t from a policy, r_t = R(z_t, a_t).

Pre-training rolls the data's actions (:func:`pwm_core.train.pretrain.latent_rollout`), extraction rolls the
actor with gradients through every step (:func:`pwm_core.train.extract.imagine`), MPPI rolls the policy prior
and its sampled action sequences (:class:`pwm_core.plan.mppi.MPPI`). They differ only in where the actions
come from, what is read off each step, and what carries a gradient; this loop is the part they share.
Per step the order is: action, reward, next latent, ``after_step`` (autograd and float results depend on it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from torch import Tensor


class Dynamics(Protocol):
    """What the rollout needs of a world model (:class:`pwm_core.nn.world_model.WorldModel` has it)."""

    def next(self, z: Tensor, a: Tensor, task: Tensor) -> Tensor: ...


class Imagined(NamedTuple):
    z: list[Tensor]  # z_0 .. z_H (B, L) each (z_0 .. z_{H-1} when the last step was not rolled)
    action: list[Tensor]  # a_0 .. a_{H-1} (B, A)
    reward: list[Tensor]  # reward(z_t, a_t) per step; empty without a ``reward`` function


def imagine(
    world_model: Dynamics,
    z0: Tensor,
    task: Tensor,
    horizon: int,
    policy: Callable[[int, Tensor], Tensor],
    *,
    reward: Callable[[Tensor, Tensor], Tensor] | None = None,
    after_step: Callable[[int, Tensor], None] | None = None,
    roll_last: bool = True,
) -> Imagined:
    """Roll ``world_model`` for ``horizon`` steps from z0 (B, L) with task (B,) embedding rows.

    Args:
        policy: (t, z_t) -> a_t (B, A): the data's action t, an actor, a prior sample, ...
        reward: (z_t, a_t) -> what to keep of step t's reward (logits, decoded values, ...).
        after_step: called with (t, z_{t+1}) right after each dynamics step (e.g. a value read-out).
        roll_last: False skips the dynamics after the last action (only the actions are wanted).
    """
    zs, actions, rewards = [z0], [], []
    z = z0
    for t in range(horizon):
        a = policy(t, z)
        actions.append(a)
        if reward is not None:
            rewards.append(reward(z, a))
        if t < horizon - 1 or roll_last:
            z = world_model.next(z, a, task)
            zs.append(z)
            if after_step is not None:
                after_step(t, z)
    return Imagined(zs, actions, rewards)
