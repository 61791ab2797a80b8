"""TD-MPC2's building blocks: NormedLinear, SimNorm, mlp, and a batched Q-ensemble.

Parameter names follow TD-MPC2 so that state-dict keys line up with its checkpoints:
``<i>.weight``, ``<i>.bias``, ``<i>.ln.weight``, ``<i>.ln.bias`` per layer, and for the ensemble
``params.<i>.*`` with a leading ``num_q`` dimension.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pwm_core.nn.kernels import Mish, dropout, mish, norm_mish


class NormedLinear(nn.Linear):
    """Linear -> Dropout (only if p > 0) -> LayerNorm -> activation (Mish unless ``act`` is given)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, act: nn.Module | None = None):
        super().__init__(in_features, out_features)
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.ln = nn.LayerNorm(out_features)
        self.act = Mish() if act is None else act

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        if isinstance(self.act, Mish) and (fused := norm_mish(x, self.ln.weight, self.ln.bias)) is not None:
            return fused
        return self.act(self.ln(x))

    def extra_repr(self) -> str:
        p = f", dropout={self.dropout.p}" if self.dropout is not None else ""
        return f"{super().extra_repr()}{p}"


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax within consecutive groups of ``dim`` entries.

    x: (..., L) with L divisible by ``dim`` -> (..., L); each group sums to 1.
    """

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        groups = x.unflatten(-1, (-1, self.dim))
        return F.softmax(groups, dim=-1).flatten(-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def mlp(
    in_dim: int, hidden: list[int], out_dim: int, act: nn.Module | None = None, dropout: float = 0.0
) -> nn.Sequential:
    """NormedLinear(Mish) per hidden width, then NormedLinear(act) if ``act`` else plain Linear.

    Dropout ``dropout`` is applied in the first layer only (TD-MPC2's Q-heads).
    """
    dims = [in_dim, *hidden]
    layers: list[nn.Module] = [
        NormedLinear(dims[i], dims[i + 1], dropout=dropout if i == 0 else 0.0) for i in range(len(hidden))
    ]
    layers.append(NormedLinear(dims[-1], out_dim, act=act) if act is not None else nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


def _register(module: nn.Module, name: str, value: Tensor, learnable: bool) -> None:
    if learnable:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


def _select(t: Tensor, heads: Tensor | None, detach: bool) -> Tensor:
    t = t if heads is None else t[heads]
    return t.detach() if detach else t


def inference_plan(seq: nn.Sequential) -> list[Callable[[Tensor], Tensor]]:
    """The layers of an eval-mode Sequential of Linear, LayerNorm, Mish, NormedLinear and SimNorm as a list of
    functional ops bound to the parameters (the tensors themselves, so in-place loads stay visible): applying
    them in turn runs the same ops in the same order as ``seq(x)``, so the result is bit-equal, in ~20% less
    time per call at a batch of 10, where ``nn.Module`` dispatch, not FLOPs, is the cost. Other modules (and
    a NormedLinear with dropout) stay module calls."""
    plan: list[Callable[[Tensor], Tensor]] = []
    for m in seq:
        if isinstance(m, NormedLinear) and m.dropout is None:
            plan += [_linear(m), _layer_norm(m.ln), _activation(m.act)]
        elif type(m) is nn.Linear:
            plan.append(_linear(m))
        elif type(m) is nn.LayerNorm:
            plan.append(_layer_norm(m))
        else:
            plan.append(_activation(m))
    return plan


def _linear(m: nn.Linear) -> Callable[[Tensor], Tensor]:
    return functools.partial(F.linear, weight=m.weight, bias=m.bias)


def _layer_norm(m: nn.LayerNorm) -> Callable[[Tensor], Tensor]:
    return functools.partial(F.layer_norm, normalized_shape=m.normalized_shape, weight=m.weight, bias=m.bias, eps=m.eps)


def _activation(m: nn.Module) -> Callable[[Tensor], Tensor]:
    if type(m) is Mish:
        return mish  # follows use_kernels at call time, as the module
    if type(m) is SimNorm:
        return functools.partial(_simnorm, dim=m.dim)
    return m


def _simnorm(x: Tensor, dim: int) -> Tensor:
    return F.softmax(x.unflatten(-1, (-1, dim)), dim=-1).flatten(-2)


class EnsembleLayerNorm(nn.Module):
    """Per-head LayerNorm: weight, bias (K, D). x: (K, N, D) -> (K, N, D)."""

    weight: Tensor  # parameters, or buffers when not learnable (see _register)
    bias: Tensor

    def __init__(self, num: int, dim: int, learnable: bool = True):
        super().__init__()
        _register(self, "weight", torch.ones(num, dim), learnable)
        _register(self, "bias", torch.zeros(num, dim), learnable)

    def forward(self, x: Tensor, heads: Tensor | None = None, detach: bool = False) -> Tensor:
        w, b = self.affine(heads, detach)
        return F.layer_norm(x, x.shape[-1:]) * w + b

    def affine(self, heads: Tensor | None = None, detach: bool = False) -> tuple[Tensor, Tensor]:
        """weight and bias of the selected heads as (K, 1, D), broadcasting against x (K, N, D)."""
        return _select(self.weight, heads, detach).unsqueeze(1), _select(self.bias, heads, detach).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"num={self.weight.shape[0]}, dim={self.weight.shape[1]}"


class EnsembleLinear(nn.Module):
    """K independent Linear layers as one batched matmul, optionally NormedLinear-style.

    weight (K, out, in), bias (K, out); with ``norm``: -> Dropout(p) -> per-head LayerNorm -> Mish.
    x: (N, in) shared by all heads, or (K, N, in) one slice per head -> (K, N, out).
    """

    weight: Tensor  # parameters, or buffers when not learnable (see _register)
    bias: Tensor

    def __init__(
        self, num: int, in_features: int, out_features: int, norm: bool, dropout: float = 0.0, learnable: bool = True
    ):
        super().__init__()
        self.num, self.in_features, self.out_features, self.p = num, in_features, out_features, dropout
        _register(self, "weight", torch.empty(num, out_features, in_features), learnable)
        _register(self, "bias", torch.empty(num, out_features), learnable)
        self.ln = EnsembleLayerNorm(num, out_features, learnable) if norm else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """TD-MPC2 init: weights trunc-normal(std 0.02), biases 0, LayerNorm gain 1 and bias 0."""
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)
        if self.ln is not None:
            nn.init.ones_(self.ln.weight)
            nn.init.zeros_(self.ln.bias)

    def forward(self, x: Tensor, heads: Tensor | None = None, detach: bool = False) -> Tensor:
        w, b = _select(self.weight, heads, detach), _select(self.bias, heads, detach)
        k = w.shape[0]
        if x.ndim == 2:  # shared input: one wide matmul for all heads
            x = F.linear(x, w.reshape(k * self.out_features, -1), b.reshape(-1))
            x = x.unflatten(-1, (k, self.out_features)).transpose(0, 1)
        else:
            x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        if self.ln is None:
            return x
        if self.p:
            x = dropout(x, self.p, self.training)  # independent mask per head
        if (fused := norm_mish(x, *self.ln.affine(heads, detach))) is not None:
            return fused
        return mish(self.ln(x, heads, detach))

    def extra_repr(self) -> str:
        p = f", dropout={self.p}" if self.p else ""
        return (
            f"num={self.num}, in_features={self.in_features}, out_features={self.out_features}, "
            f"norm={self.ln is not None}{p}"
        )


class QEnsemble(nn.Module):
    """``num_q`` Q-heads mlp(in, hidden, out, dropout) evaluated together with batched matmuls.

    Parameters are stacked along a leading ``num_q`` dim under ``params.<layer>.*`` (TD-MPC2's
    ``_Qs.params`` layout). ``learnable=False`` stores them as buffers (the target copy).
    """

    def __init__(
        self, num_q: int, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0, learnable: bool = True
    ):
        super().__init__()
        self.num_q = num_q
        dims = [in_dim, *hidden, out_dim]
        self.params = nn.ModuleList(
            EnsembleLinear(
                num_q,
                dims[i],
                dims[i + 1],
                norm=i < len(hidden),
                dropout=dropout if i == 0 else 0.0,
                learnable=learnable,
            )
            for i in range(len(dims) - 1)
        )

    def forward(self, x: Tensor, heads: Tensor | None = None, detach: bool = False) -> Tensor:
        """x: (..., in) -> (K, ..., out); ``heads`` (K,) selects heads (all by default);
        ``detach`` uses the parameters without gradient (values unchanged)."""
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for layer in self.params:
            h = layer(h, heads, detach)
        return h.reshape(h.shape[0], *lead, h.shape[-1])
