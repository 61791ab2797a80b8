"""Mish, x * tanh(softplus(x)), computed from one exp: the activation of every PWM / TD-MPC2 network.

ATen's CPU Mish kernel evaluates tanh and log1p(exp) per element and ran at ~5 ns per element here (a
third of a 1M-model extraction update, forward and backward; benchmarks/bench_overheads.py). With
n = e^x (e^x + 2), tanh(softplus(x)) = n / (n + 2), so the forward needs one exp and a few
in-place passes. The backward recomputes it from the saved input (as ATen does, so training holds
no more activations than with ``F.mish``):

    d mish / dx = t + x * sigmoid(x) * (1 - t^2),   t = tanh(softplus(x)).

x is clamped at 20 inside the exp (t = 1 to float32 precision there); the results equal ``F.mish`` to
a few float32 ulps (tests/test_nn_math.py). :func:`use_aten_mish` switches back to ATen's kernel, for the
before/after benchmark.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

_EXP_CLAMP = 20.0  # e^20 squared stays finite in float32 and bfloat16; t(20) = 1 - 4e-18
_ATEN = False


def _tanh_softplus(x: Tensor) -> Tensor:
    """t = tanh(softplus(x)) = n / (n + 2) with n = e^x (e^x + 2), in a fresh tensor (the quotient form
    keeps float32's relative precision for very negative x, where t ~ e^x)."""
    e = x.clamp(max=_EXP_CLAMP).exp_()
    n = e.add(2.0).mul_(e)
    return n.div_(n.add(2.0))


class _Mish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return _tanh_softplus(x).mul_(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        t = _tanh_softplus(x)
        d = torch.sigmoid(x).mul_(x).mul_(t.mul(t).neg_().add_(1.0)).add_(t)
        return d.mul_(grad)


def mish(x: Tensor) -> Tensor:
    """Mish(x) = x * tanh(softplus(x)), elementwise, differentiable (first order)."""
    if _ATEN or x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu":
        return F.mish(x)  # ATen's fused kernel is the fast one on GPUs; bf16 keeps its own rounding path
    return _Mish.apply(x)


class Mish(nn.Module):
    """:func:`mish` as a module (a drop-in for ``nn.Mish``: no parameters, same state-dict keys)."""

    def forward(self, x: Tensor) -> Tensor:
        return mish(x)


def use_aten_mish(flag: bool) -> None:
    """True: every :func:`mish` calls ``F.mish`` (ATen's kernel); False: the one-exp form (default on CPU)."""
    global _ATEN
    _ATEN = bool(flag)
