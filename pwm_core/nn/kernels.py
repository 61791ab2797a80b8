"""Mish, the activation of every hidden layer, with three kernels: ``exact``, ``fast`` and ``fused``.

``exact`` is ATen's ``mish`` (x * tanh(softplus(x))), what TD-MPC2 and the official PWM code run: the
official extraction recipe keeps it, so it stays equal to the official code bit for bit. ``fast``
computes the same function from one exponential, mish(x) = x * n / (n + 2) with n = e^x (e^x + 2), and
its derivative n / (n + 2) + 4 x e^x (e^x + 1) / (n + 2)^2 from the saved e^x and n + 2: ATen's kernel
evaluates exp, log1p and tanh per element in the forward and again in the backward, which on a CPU
costs more than the matmuls of the same layer (benchmarks/bench_kernels.py). The two agree to a few
float32 ulps (within 6e-6 of the float64 value over [-60, 60], where ATen's is within 2e-6); x is
clamped at 20 inside the exponential, where tanh(softplus(x)) is 1 in float32. Inputs other than
float32 (bf16 autocast) use ATen's kernel.

``fused`` (float32 only) runs each hidden layer's elementwise chain, Mish and LayerNorm with its affine, as
one compiled kernel forward and one backward (:func:`mish_norm`, :func:`norm_mish`, via ``torch.compile``):
the one-exp formula, traced, so the compiler derives and fuses its gradient. Eager ops make a dozen passes
over the layer's activations forward and as many backward; fused, a few: 2.0-2.7x less time for the
critic's (3, 256, 400) block forward + backward on an AMD EPYC (benchmarks/bench_kernels.py). The first call of
each shape compiles (seconds; inductor caches the kernels on disk for later processes). Where compiling
fails (no C++ compiler, an unsupported platform) a warning line says so once and the ``fast`` eager kernels
run instead; non-float32 inputs (bf16 autocast) and layers of fewer than 16,384 activations (where a
compiled call's overhead eats the gain) take the eager path too.

Dropout (TD-MPC2's Q-heads, p = 0.01) follows the kernels too (:func:`dropout`): ``exact`` is ATen's, the others
draw the same Bernoulli mask sparsely on a CPU.

Which kernel runs is set for a block of code with :func:`use_kernels` (training configs carry it as
``kernels``); the default is ``exact``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pwm_core.config import ConfigError

KERNELS = ("exact", "fast", "fused")
_mode = "exact"
log = logging.getLogger(__name__)


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
    """x * tanh(softplus(x)) with the kernel in force (see :func:`use_kernels`; ``fused`` alone: ``fast``'s)."""
    if _mode != "exact" and x.dtype == torch.float32:
        return _ExpMish.apply(x)
    return F.mish(x)


# Above this rate a sparse draw saves little over one draw per element.
SPARSE_DROPOUT_MAX_P = 0.25


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element of x with probability p and scale the rest by 1 / (1 - p) (``F.dropout``) with the
    kernels in force.

    ``exact`` is ATen's ``F.dropout``, what TD-MPC2 runs. Otherwise, on a CPU and for p <= 0.25, the same
    Bernoulli(p) mask is drawn sparsely: the gaps between successive dropped elements are Geometric(p), so a
    1% dropout draws ~n / 100 random numbers where ATen's CPU Bernoulli draws n (at TD-MPC2's 1M model, B=256,
    H=16: 3 ms per mask against 23 ms). The same distribution from another random stream (seeded by the same
    global generator, so runs and resumes stay reproducible).
    """
    if not training or p == 0.0:
        return x
    sparse = _mode != "exact" and x.device.type == "cpu" and 0.0 < p <= SPARSE_DROPOUT_MAX_P
    if not sparse or torch.compiler.is_compiling():  # (a compiled region draws its own mask)
        return F.dropout(x, p, True)
    n = x.numel()
    mean = n * p
    draws = int(mean + 8.0 * math.sqrt(mean) + 16)  # enough to pass n but for a ~1e-15 chance
    ends = torch.empty(draws, dtype=torch.float64).geometric_(p).cumsum_(0)  # 1-based positions of the drops
    while ends[-1] < n:
        ends = torch.cat([ends, torch.empty(draws, dtype=torch.float64).geometric_(p).cumsum_(0) + ends[-1]])
    dropped = ends[ends <= n].long() - 1
    mask = torch.full(x.shape, 1.0 / (1.0 - p), dtype=x.dtype)  # contiguous, whatever x's strides
    mask.view(-1).index_fill_(0, dropped, 0.0)
    return x * mask


# ------------------------------------------------------------------------------ fused (compiled) blocks
def _mish_expr(x: Tensor) -> Tensor:
    """The one-exp mish as plain ops, for the compiler to trace and differentiate (same formula as _ExpMish)."""
    e = torch.exp(x.clamp(max=20.0))
    n = e * (e + 2.0)
    return x * n / (n + 2.0)


def _mish_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return F.layer_norm(_mish_expr(x), x.shape[-1:]) * weight + bias


def _norm_mish(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return _mish_expr(F.layer_norm(x, x.shape[-1:]) * weight + bias)


# Below this many elements a compiled block is no faster than the eager ops (the call's own overhead, ~0.1 ms
# forward + backward, eats the gain: (64, 100) 0.28 ms either way, (64, 400) 0.39 vs 0.51 ms on an AMD EPYC),
# so small layers stay eager and never compile.
MIN_FUSED_NUMEL = 16_384
RECOMPILE_LIMIT = 64  # graphs per fused block (shape x grad mode x dtype) before dynamo gives up compiling
_compiled: dict[str, Callable[..., Tensor]] = {}
_compile_failed = False


def _fused(name: str, fn: Callable[..., Tensor], *args: Tensor) -> Tensor | None:
    """fn(*args) compiled, or None (the caller runs its eager ops) when the ``fused`` kernels are not in force,
    the input is not float32 or is smaller than MIN_FUSED_NUMEL, or compiling failed (said once)."""
    global _compile_failed
    x = args[0]
    if _mode != "fused" or _compile_failed or x.dtype != torch.float32 or x.numel() < MIN_FUSED_NUMEL:
        return None
    if torch.compiler.is_compiling():  # inside a compiled region (--compile): its compiler fuses the eager ops
        return None
    compiled = _compiled.get(name)
    if compiled is None:
        # One kernel per shape (and grad mode): static kernels ran ~20% faster than dynamic ones (the critic's
        # block), and a shape always gets the same kernel, in any process, so a resumed run stays bitwise
        # equal to an uninterrupted one. A run sees a handful of shapes per block; dynamo's limit of 8 graphs
        # per function (after which it runs the function uncompiled) is raised for that.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        compiled = _compiled[name] = torch.compile(fn, fullgraph=True, dynamic=False)
    try:
        return compiled(*args)
    except Exception as e:  # noqa: BLE001 - whatever the compiler raises, the eager kernels can do the work
        _compile_failed = True
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        log.warning(
            "kernels 'fused': torch.compile failed (%s: %s); running the 'fast' eager kernels instead",
            type(e).__name__,
            first[:200],
        )
        return None


def mish_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor | None:
    """Mish -> LayerNorm over the last dim (no affine of its own) -> * weight + bias (broadcast against x), as
    one compiled kernel; None unless the ``fused`` kernels are in force and can run (the caller's eager
    ops then do it). PWM's actor and critic blocks."""
    return _fused("mish_norm", _mish_norm, x, weight, bias)


def norm_mish(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor | None:
    """LayerNorm over the last dim -> * weight + bias -> Mish, as :func:`mish_norm`. TD-MPC2's NormedLinear."""
    return _fused("norm_mish", _norm_mish, x, weight, bias)


class Mish(nn.Mish):
    """``nn.Mish`` that follows :func:`use_kernels` (no parameters: state dicts are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return mish(x)
