"""PWM's actor and critic ensemble (docs/algorithm.md#extraction-actor-and-critics). Both read only the latent z.

Actor pi(z): MLP [400, 200, 100], each block Linear -> Mish -> LayerNorm (activation BEFORE the norm,
unlike TD-MPC2's NormedLinear), PyTorch's default init, a state-independent log-std; the action is
tanh(mu + sigma * eps), or tanh(mu) when deterministic.

Critic V_k(z), k = 1..3: MLP [400, 200] -> 1 with the same blocks, orthogonal init (gain sqrt 2, output
layer included), zero biases. The heads are stacked (weights (K, out, in)) and evaluated with batched
matmuls instead of the official functorch vmap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pwm_core.nn.kernels import Mish, mish, mish_norm
from pwm_core.nn.layers import EnsembleLayerNorm


class Actor(nn.Module):
    """Stochastic tanh-Gaussian policy on z (official ``ActorStochasticMLP`` with Mish, init_gain 1).

    ``logstd`` (A,) starts at ``init_logstd`` and is clamped in place from below at ``min_logstd`` on
    every forward call; there is no upper clamp.
    """

    def __init__(
        self,
        latent_dim: int,
        act_dim: int,
        units: Sequence[int] = (400, 200, 100),
        init_logstd: float = -1.0,
        min_logstd: float = -1.427,
    ):
        super().__init__()
        dims = [latent_dim, *units]
        blocks: list[nn.Module] = []
        for i in range(len(units)):
            blocks += [nn.Linear(dims[i], dims[i + 1]), Mish(), nn.LayerNorm(dims[i + 1])]
        blocks.append(nn.Linear(dims[-1], act_dim))
        self.mu_net = nn.Sequential(*blocks)
        self.logstd = nn.Parameter(torch.full((act_dim,), float(init_logstd)))
        self.min_logstd = min_logstd

    def forward(self, z: Tensor, deterministic: bool = False, eps: Tensor | None = None) -> Tensor:
        """z (..., L) -> action (..., A) in [-1, 1].

        Stochastic: tanh(mu + exp(logstd) * eps), reparameterised; ``eps`` (..., A) standard normal
        noise, drawn from torch's global generator when not given. Deterministic: tanh(mu).
        """
        with torch.no_grad():
            self.logstd.clamp_(min=self.min_logstd)  # lower clamp only, in place (official clamp_std)
        mu = self._mu(z)
        if deterministic:
            return torch.tanh(mu)
        if eps is None:
            eps = torch.randn_like(mu)
        return torch.tanh(mu + self.logstd.exp() * eps)

    def _mu(self, z: Tensor) -> Tensor:
        """mu_net(z); each Linear -> Mish -> LayerNorm block's Mish and LayerNorm as one kernel where the
        ``fused`` kernels are in force (``mu_net`` keeps its layout: state dicts are unchanged)."""
        layers = list(self.mu_net)
        h = z
        for i in range(0, len(layers) - 1, 3):
            linear, act, norm = layers[i : i + 3]
            h = linear(h)
            fused = mish_norm(h, cast(nn.LayerNorm, norm).weight, cast(nn.LayerNorm, norm).bias)
            h = norm(act(h)) if fused is None else fused
        return layers[-1](h)


class CriticEnsemble(nn.Module):
    """``num_critics`` value heads V_k(z), stacked: ``weights[i]`` (K, out, in), ``biases[i]`` (K, out),
    ``norms[i]`` per-head LayerNorm of the hidden layers."""

    def __init__(self, latent_dim: int, num_critics: int = 3, units: Sequence[int] = (400, 200)):
        super().__init__()
        dims = [latent_dim, *units, 1]
        self.num_critics = num_critics
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_critics, dims[i + 1], dims[i])) for i in range(len(dims) - 1)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(num_critics, dims[i + 1])) for i in range(len(dims) - 1)
        )
        self.norms = nn.ModuleList(EnsembleLayerNorm(num_critics, d) for d in units)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official CriticMLP init, each head on its own: orthogonal weights with gain sqrt(2) (output
        layer too), zero biases; LayerNorm gain 1, bias 0."""
        for w, b in zip(self.weights, self.biases):
            for k in range(self.num_critics):
                nn.init.orthogonal_(w[k], gain=math.sqrt(2))
            nn.init.zeros_(b)
        for norm in cast(Iterable[EnsembleLayerNorm], self.norms):  # nn.ModuleList iterates as Module
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def forward(self, z: Tensor, detach: bool = False) -> Tensor:
        """z (..., L) -> values (K, ..., 1). ``detach``: the parameters take no gradient (the values are
        the same and gradients still flow into z), for the bootstrap inside the actor's rollout."""
        lead = z.shape[:-1]
        h = z.reshape(-1, z.shape[-1])
        n_layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if detach:
                w, b = w.detach(), b.detach()
            k, out = w.shape[:2]
            if i == 0:  # the input is shared: one wide matmul for all heads
                h = F.linear(h, w.reshape(k * out, -1), b.reshape(-1)).unflatten(-1, (k, out)).transpose(0, 1)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < n_layers - 1:  # Mish, then LayerNorm
                norm = cast(EnsembleLayerNorm, self.norms[i])
                fused = mish_norm(h, *norm.affine(detach=detach))
                h = norm(mish(h), detach=detach) if fused is None else fused
        return h.reshape(h.shape[0], *lead, 1)

    def min(self, z: Tensor, detach: bool = False) -> Tensor:
        """min_k V_k(z): z (..., L) -> (..., 1), the value PWM bootstraps and builds targets with."""
        return self.forward(z, detach).min(0).values
