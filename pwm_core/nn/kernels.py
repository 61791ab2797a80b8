"""Mish, the activation of every hidden layer, with two kernels: ``exact`` and ``fast``.

``exact`` is ATen's ``mish`` (x * tanh(softplus(x))), what TD-MPC2 and the official PWM code run: the
official extraction recipe keeps it, so it stays equal to the official code bit for bit. ``fast``
computes the same function from one exponential, mish(x) = x * n / (n + 2) with n = e^x (e^x + 2), and
its derivative n / (n + 2) + 4 x e^x (e^x + 1) / (n + 2)^2 from the saved e^x and n + 2: ATen's kernel
evaluates exp, log1p and tanh per element in the forward and again in the backward, which on a CPU
costs more than the matmuls of the same layer (benchmarks/bench_kernels.py). The two agree to a few
float32 ulps (within 6e-6 of the float64 value over [-60, 60], where ATen's is within 2e-6); x is
clamped at 20 inside the exponential, where tanh(softplus(x)) is 1 in float32. Inputs other than
float32 (bf16 autocast) use ATen's kernel.

Which kernel runs is set for a block of code with :func:`use_kernels` (training configs carry it as
``kernels``); the default is ``exact``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pwm_core.config import ConfigError

KERNELS = ("exact", "fast")
_mode = "exact"


def current_kernels() -> str:
    """The kernel set in force: ``exact`` or ``fast``."""
    return _mode


@contextmanager
def use_kernels(mode: str) -> Iterator[None]:
    """Run the block with the ``mode`` kernels (``exact`` | ``fast``), restoring the previous set after."""
    global _mode
    if mode not in KERNELS:
        raise ConfigError(f"kernels: {mode!r} is not one of {', '.join(KERNELS)}")
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous


class _ExpMish(torch.autograd.Function):
    """mish from one exp; saves x, e^x and n + 2 for the backward (three tensors of x's size)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        e = torch.exp(x.clamp(max=20.0))
        n = (e + 2.0).mul_(e)
        d = n + 2.0
        ctx.save_for_backward(x, e, d)
        return n.mul_(x).div_(d)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, e, d = ctx.saved_tensors
        # d mish / dx = (n + 4 x e (e + 1) / d) / d with n = d - 2
        t = (e + 1.0).mul_(e).mul_(x).mul_(4.0).div_(d)
        return t.add_(d).sub_(2.0).div_(d).mul_(grad)


def mish(x: Tensor) -> Tensor:
    """x * tanh(softplus(x)) with the kernel in force (see :func:`use_kernels`)."""
    if _mode == "fast" and x.dtype == torch.float32:
        return _ExpMish.apply(x)
    return F.mish(x)


class Mish(nn.Mish):
    """``nn.Mish`` that follows :func:`use_kernels` (no parameters: state dicts are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return mish(x)
