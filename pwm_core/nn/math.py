"""Discrete regression over symlog bins, as TD-MPC2 trains its reward and value heads.

Rewards and values are predicted as logits over ``num_bins`` evenly spaced bins spanning
``[vmin, vmax]`` in symlog space (101 bins in [-10, 10]: bin width 0.2, bin 50 is 0).

- ``two_hot``: the training target, a real value encoded on its two neighbouring bins.
- ``two_hot_inv``: TD-MPC2's decoding, back in real units (symexp of the expected bin).
- ``almost_two_hot_inv``: PWM's decoding inside imagined rollouts, **stays in symlog units** (no
  symexp), so PWM's returns, critic targets and values all live in symlog space
  (docs/algorithm.md#reward-encoding-symlog-bins).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """sign(x) * ln(1 + |x|)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """sign(x) * (exp|x| - 1), the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def bins(num_bins: int, vmin: float, vmax: float, like: Tensor) -> Tensor:
    """The ``num_bins`` bin centres in symlog units, on ``like``'s device and dtype."""
    return torch.linspace(vmin, vmax, num_bins, device=like.device, dtype=like.dtype)


def two_hot(x: Tensor, num_bins: int = 101, vmin: float = -10.0, vmax: float = 10.0) -> Tensor:
    """Encode real values as soft two-hot vectors over symlog bins.

    x: (...,) or (..., 1) real values (a trailing singleton dim of a tensor with 2+ dims is the
    value dim, TD-MPC2's (B, 1) convention) -> (..., num_bins).
    x' = clamp(symlog(x), vmin, vmax) lies between bins k and k+1 at fraction delta: mass 1 - delta
    on bin k and delta on bin k+1 (at x' = vmax all mass lands on the last bin).
    """
    if x.ndim >= 2 and x.shape[-1] == 1:
        x = x.squeeze(-1)
    return _two_hot(x, num_bins, vmin, vmax)


def _two_hot(x: Tensor, num_bins: int, vmin: float, vmax: float) -> Tensor:
    """:func:`two_hot` of every element: x (...) -> (..., num_bins), no squeezing."""
    x = symlog(x).clamp(vmin, vmax)
    pos = (x - vmin) * ((num_bins - 1) / (vmax - vmin))  # exact for 101 bins in [-10, 10] (x 5)
    k = pos.floor().clamp(max=num_bins - 2)
    delta = (pos - k).unsqueeze(-1)
    k = k.long().unsqueeze(-1)
    out = torch.zeros(*x.shape, num_bins, device=x.device, dtype=x.dtype)
    out.scatter_(-1, k, 1 - delta)
    return out.scatter_(-1, k + 1, delta)


def almost_two_hot_inv(logits: Tensor, vmin: float = -10.0, vmax: float = 10.0) -> Tensor:
    """PWM's differentiable decoding: sum(softmax(logits) * bins), **in symlog units**.

    logits: (..., num_bins) -> (..., 1).
    """
    probs = F.softmax(logits, dim=-1)
    return (probs * bins(logits.shape[-1], vmin, vmax, logits)).sum(-1, keepdim=True)


def two_hot_inv(logits: Tensor, vmin: float = -10.0, vmax: float = 10.0) -> Tensor:
    """TD-MPC2's decoding: symexp(sum(softmax(logits) * bins)), in real units.

    logits: (..., num_bins) -> (..., 1).
    """
    return symexp(almost_two_hot_inv(logits, vmin, vmax))


def soft_ce(
    logits: Tensor, target_values: Tensor, num_bins: int = 101, vmin: float = -10.0, vmax: float = 10.0
) -> Tensor:
    """Cross-entropy of ``logits`` against ``two_hot(target_values)``.

    logits: (..., num_bins); target_values: real values (...) or (..., 1), broadcastable to the
    logits' leading dims (e.g. (H, B) targets for (num_q, H, B, num_bins) logits) -> loss (..., 1).
    """
    if logits.shape[-1] != num_bins:
        raise ValueError(f"logits have {logits.shape[-1]} bins, expected num_bins={num_bins}")
    if target_values.ndim == logits.ndim:  # (..., 1) form
        target_values = target_values.squeeze(-1)
    target = _two_hot(target_values.broadcast_to(logits.shape[:-1]), num_bins, vmin, vmax)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)
