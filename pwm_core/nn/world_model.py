"""TD-MPC2's multi-task implicit world model, the model PWM extracts policies from.

Components (docs/algorithm.md#world-model-architecture), each conditioned on a learned task embedding e:
    encode  h(o, e) -> z        obs -> latent, ends LayerNorm + SimNorm
    next    d(z, e, a) -> z'    latent dynamics, ends LayerNorm + SimNorm
    reward  R(z, e, a)          logits over symlog bins; r_t uses the pre-step latent z_t
    pi      pi(z, e)            TD-MPC2's Gaussian policy prior (tanh-squashed)
    Q       Q_k(z, e, a)        ensemble of num_q value heads (logits), plus a Polyak target copy
Inputs are concatenated as [z || e || a]. Shapes: B batch, T time, O obs, A action, Z latent.
A ``task`` is a LongTensor (B,) of embedding rows or an int (one row for the whole batch).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pwm_core.errors import PwmError
from pwm_core.nn.layers import EnsembleLinear, QEnsemble, SimNorm, mlp
from pwm_core.nn.math import two_hot_inv
from pwm_core.nn.sizes import WorldModelConfig

Task = Tensor | int
LOG_SQRT_2PI = 0.9189385332046727  # log(sqrt(2 pi)), the Gaussian normaliser per dim


class WorldModel(nn.Module):
    """TD-MPC2 world model. Parameter groups (= TD-MPC2 checkpoint prefixes): ``_encoder``,
    ``_dynamics``, ``_reward``, ``_pi``, ``_Qs``, ``_task_emb``; ``_target_Qs`` holds buffers."""

    _action_masks: Tensor  # buffers
    _discounts: Tensor

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        self.cfg = cfg
        Z, E, A, H = cfg.latent_dim, cfg.task_dim, cfg.act_dim, [cfg.mlp_dim] * 2
        self._task_emb = nn.Embedding(cfg.n_tasks, E, max_norm=1)  # rows renormalised to <= 1
        enc_hidden = max(cfg.num_enc_layers - 1, 1) * [cfg.enc_dim]
        self._encoder = mlp(cfg.obs_dim + E, enc_hidden, Z, act=SimNorm(cfg.simnorm_dim))
        self._dynamics = mlp(Z + E + A, H, Z, act=SimNorm(cfg.simnorm_dim))
        self._reward = mlp(Z + E + A, H, cfg.num_bins)
        self._pi = mlp(Z + E, H, 2 * A)
        self._Qs = QEnsemble(cfg.num_q, Z + E + A, H, cfg.num_bins, dropout=cfg.dropout)
        # Target Qs: buffers, never in an optimiser; no dropout (TD-MPC2 keeps them in eval mode).
        self._target_Qs = QEnsemble(cfg.num_q, Z + E + A, H, cfg.num_bins, learnable=False)

        masks = torch.zeros(cfg.n_tasks, A)
        for i, n in enumerate(cfg.action_dims):
            masks[i, :n] = 1.0
        self.register_buffer("_action_masks", masks)
        self.register_buffer("_discounts", torch.tensor(cfg.discounts).unsqueeze(-1), persistent=False)
        self.import_notes: list[str] = []  # what import_tdmpc2_checkpoint could not take from the file
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """TD-MPC2 init: Linear weights trunc-normal(0.02), biases 0, LayerNorm (1, 0), embedding
        U(-0.02, 0.02); last-layer weights of reward and every Q-head 0 (predictions start at 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.uniform_(self._task_emb.weight, -0.02, 0.02)
        # nn.Sequential / nn.ModuleList items are typed as Module: name the layer types.
        for layer in cast(Iterable[EnsembleLinear], self._Qs.params):
            layer.reset_parameters()
        nn.init.zeros_(cast(nn.Linear, self._reward[-1]).weight)
        nn.init.zeros_(cast(EnsembleLinear, self._Qs.params[-1]).weight)
        self.update_targets(1.0)

    @property
    def action_masks(self) -> Tensor:
        """(n_tasks, A): row i is 1 on the first action_dims[i] entries, 0 on the padding."""
        return self._action_masks

    def _rows(self, task: Task) -> Tensor:
        """Embedding rows as a LongTensor; a plain integer is range-checked."""
        if not isinstance(task, Tensor):
            task = int(task)
            if not 0 <= task < self.cfg.n_tasks:
                raise PwmError(f"task row {task} out of range: the model has {self.cfg.n_tasks} tasks")
            return torch.tensor(task, device=self._action_masks.device)
        return task.long()

    def task_emb(self, x: Tensor, task: Task) -> Tensor:
        """x (B, D) or (T, B, D) -> [x || e] (..., D + task_dim); e broadcast over time/batch."""
        e = self._task_emb(self._rows(task))
        return torch.cat([x, e.expand(*x.shape[:-1], -1)], dim=-1)

    def discount(self, task: Task) -> Tensor:
        """Per-task gamma, (B, 1) ((1, 1) for an int task)."""
        return self._discounts[self._rows(task).reshape(-1)]

    def encode(self, obs: Tensor, task: Task) -> Tensor:
        """obs (B, O) or (T, B, O) -> z (B, Z) or (T, B, Z)."""
        return self._encoder(self.task_emb(obs, task))

    def next(self, z: Tensor, a: Tensor, task: Task) -> Tensor:
        """z (..., Z), a (..., A) -> z' (..., Z)."""
        return self._dynamics(torch.cat([self.task_emb(z, task), a], dim=-1))

    def reward(self, z: Tensor, a: Tensor, task: Task) -> Tensor:
        """z (..., Z), a (..., A) -> reward logits (..., num_bins) for r_t = R(z_t, a_t)."""
        return self._reward(torch.cat([self.task_emb(z, task), a], dim=-1))

    def pi(self, z: Tensor, task: Task) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample from TD-MPC2's policy prior. z (..., Z) -> action (..., A), info.

        info: "mean" tanh(mu) (..., A); "log_std" (..., A); "log_prob" (..., 1) of the squashed
        sample; "entropy" = -log_prob; "scaled_entropy" (..., 1), the entropy term of TD-MPC2's
        policy loss. Padded action dims (task mask 0) have mu = log_std = eps = 0, so the action
        and mean there are exactly 0.
        """
        mu, raw_log_std = self._pi(self.task_emb(z, task)).chunk(2, dim=-1)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(raw_log_std) + 1)
        eps = torch.randn_like(mu)
        mask = self._action_masks[self._rows(task)]
        mu, log_std, eps = mu * mask, log_std * mask, eps * mask
        action_dims = mask.sum(-1, keepdim=True)

        # Gaussian log-density, summed over all dims (a padded dim adds the constant -log sqrt(2pi)).
        gauss_log_prob = (-0.5 * eps.pow(2) - log_std - LOG_SQRT_2PI).sum(-1, keepdim=True)
        action = torch.tanh(mu + eps * log_std.exp())
        # tanh change of variables
        log_prob = gauss_log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
        info = {
            "mean": torch.tanh(mu),
            "log_std": log_std,
            "log_prob": log_prob,
            "entropy": -log_prob,
            # TD-MPC2 scales the pre-squash Gaussian log-prob by the number of valid action dims
            # (written there as -log_prob * (gauss_log_prob * dims) / (log_prob + 1e-8)).
            "scaled_entropy": -gauss_log_prob * action_dims,
        }
        return action, info

    def Q(
        self, z: Tensor, a: Tensor, task: Task, return_type: str = "min", target: bool = False, detach: bool = False
    ) -> Tensor:
        """State-action value. z (..., Z), a (..., A).

        return_type "all": logits of every head (num_q, ..., num_bins); "min" / "avg": the min / mean
        of the decoded values (real units) of 2 heads drawn at random, (..., 1).
        ``target`` uses the Polyak target copy; ``detach`` the online heads without gradient to
        their parameters (gradients still flow into z and a).
        """
        if return_type not in ("min", "avg", "all"):
            raise ValueError(f"return_type must be 'min', 'avg' or 'all', got {return_type!r}")
        x = torch.cat([self.task_emb(z, task), a], dim=-1)
        qnet = self._target_Qs if target else self._Qs
        if return_type == "all":
            return qnet(x, detach=detach)
        heads = torch.randperm(self.cfg.num_q, device=x.device)[:2]
        q = two_hot_inv(qnet(x, heads=heads, detach=detach), self.cfg.vmin, self.cfg.vmax)
        return q.min(0).values if return_type == "min" else q.mean(0)

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        """Polyak update of the target Qs: target <- target + tau (online - target)."""
        online = dict(self._Qs.named_parameters())
        for name, t in self._target_Qs.named_buffers():
            if tau == 1.0:
                t.copy_(online[name])  # also the first copy, when t is still uninitialised memory
            else:
                t.lerp_(online[name], tau)
