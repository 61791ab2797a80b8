"""World-model pre-training: TD-MPC2's multi-task update with PWM's horizon 16 and rho 0.99.

One update (docs/algorithm.md#pre-training-the-td-mpc2-objective), on B windows of H+1 observations:

1. targets, no gradient: z'_t = h(o_t) (online encoder), y_t = r_t + gamma_task Qmin_target(z'_t, pi(z'_t))
2. latent rollout, with gradient: z_0 = h(o_0), z_{t+1} = d(z_t, a_t) (never re-encoded)
3. loss = 20 * consistency + 0.1 * reward CE + 0.1 * value CE, every term rho^t-weighted and / H
4. Adam (encoder lr x 0.3), grad-norm clip 20; then the policy prior on sg(z); then Polyak of target Qs.

PWM keeps encoder, dynamics, reward head and task embedding; the Q-ensemble and policy prior are
trained because their losses shape the latent space, and are dropped by PWM afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pwm_core import io
from pwm_core.config import ConfigError, from_dict, to_dict
from pwm_core.data import EpisodeDataset
from pwm_core.data.episodes import task_set_from_dict
from pwm_core.data.sampler import WindowSampler, choose_sampler, in_ram_nbytes
from pwm_core.errors import DatasetError, PwmError
from pwm_core.io import atomic_write
from pwm_core.nn import WorldModel, WorldModelConfig, world_model_config
from pwm_core.nn.imagine import imagine
from pwm_core.nn.kernels import use_kernels
from pwm_core.nn.math import soft_ce, two_hot_inv
from pwm_core.seeding import (
    derived_seed,
    global_rng_state,
    seed_everything,
    set_global_rng_state,
)
from pwm_core.tasks import TaskSet
from pwm_core.train import distributed
from pwm_core.train.returns import RunningScale, rho_weights, td_targets
from pwm_core.train.optim import adam

CHECKPOINT_FORMAT = "pwm-pretrain-checkpoint"
CHECKPOINT_VERSION = 1
_VAL_SEED_OFFSET = 1_000_003  # the held-out windows' generator, apart from the training streams


@dataclass
class PretrainConfig:
    """PWM's world-model pre-training recipe: the TD-MPC2 fork run with H=16, rho=0.99
    (docs/algorithm.md#pre-training-pwms-recipe)."""

    size: str = "5M"  # world-model preset (1M, 5M, 19M, 48M, 317M); PWM's released models are 48M
    steps: int = 10_000_000  # gradient updates (TD-MPC2 config `steps`; ~2 weeks at 48M on an RTX 3090)
    batch_size: int = 1024  # windows per update (PWM README CLI; fork default 2048)
    horizon: int = 16  # H, latent rollout length (PWM: "crucial"; TD-MPC2 uses 3)
    rho: float = 0.99  # per-step loss weight rho^t (PWM; TD-MPC2 uses 0.5)
    lr: float = 3e-4  # Adam lr of dynamics, reward, Qs and task embedding
    enc_lr_scale: float = 0.3  # encoder lr = lr * enc_lr_scale
    grad_clip_norm: float = 20.0  # gradient-norm clip, world model and policy prior separately
    tau: float = 0.01  # Polyak rate of the target Qs, also the EMA rate of the running Q scale
    consistency_coef: float = 20.0  # weight of the latent consistency MSE
    reward_coef: float = 0.1  # weight of the reward two-hot cross-entropy
    value_coef: float = 0.1  # weight of the Q-ensemble two-hot cross-entropy
    entropy_coef: float = 1e-4  # policy-prior entropy bonus
    pi_lr: float = 3e-4  # policy-prior Adam lr
    pi_eps: float = 1e-5  # policy-prior Adam eps
    val_fraction: float = 0.05  # held-out episodes per dataset (ours; >= 1 when a dataset has >= 2)
    val_every: int = 10_000  # updates between held-out evaluations (ours)
    val_batches: int = 8  # fixed held-out batches per evaluation (ours)
    checkpoint_every: int = 50_000  # updates between resumable checkpoints (TD-MPC2 eval_freq)
    checkpoint_every_s: float = 600.0  # ...and seconds of wall time between them (ours; 0: by count only)
    log_every: int = 1_000  # updates between training-metric reports (ours; TD-MPC2 logs every 10k)
    seed: int = 0  # seeds python, numpy, torch, the episode split and the window samplers
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str | None = None  # None (fp32) or "bf16": forward passes under torch.autocast(bfloat16)
    compile: bool = False  # torch.compile the world-model loss
    # Mish kernel: fused (the one-exp Mish and LayerNorm compiled as one kernel per layer; 1.07-1.17x per update
    # over fast at 1M B=256 H=3, 1.15-1.19x at H=16) | fast (one exp, eager) | exact (ATen's)
    kernels: str = "fused"
    ram_budget_gb: float | None = None  # rows held in RAM at most (None: half the available memory); beyond, the
    # windows stream from the Zarr arrays on disk (the same windows: this never changes a run)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first field outside its allowed values (after any field changed)."""
        from pwm_core.train.validation import validate_pretrain_config

        validate_pretrain_config(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown keys are an error."""
        return from_dict(cls, d)


def model_config(cfg: PretrainConfig, task_set: TaskSet, task_dim: int | None = None) -> WorldModelConfig:
    """The ``cfg.size`` preset for ``task_set`` with the policy-prior log-std range [-5, 0.5] of the
    TD-MPC2 fork PWM pre-trains with (upstream TD-MPC2: [-10, 2];
    docs/algorithm.md#pre-training-pwms-recipe)."""
    mcfg = world_model_config(cfg.size, task_set, task_dim)
    mcfg.log_std_min, mcfg.log_std_max = -5.0, 0.5
    return mcfg


# ----------------------------------------------------------------------------------- pure math
# ------------------------------------------------------------------------------------- losses
def latent_rollout(model: WorldModel, z0: Tensor, action: Tensor, task: Tensor) -> Tensor:
    """z_0 (B, L), actions (H, B, A) -> latents z_0..z_H (H+1, B, L) with z_{t+1} = d(z_t, a_t)."""
    return torch.stack(imagine(model, z0, task, action.shape[0], lambda t, z: action[t]).z)


def world_model_loss(
    model: WorldModel, obs: Tensor, action: Tensor, reward: Tensor, task: Tensor, cfg: PretrainConfig
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """TD-MPC2's world-model objective (docs/algorithm.md#pre-training-the-td-mpc2-objective).

    obs: (H+1, B, O); action: (H, B, A) (action[t] leads from obs[t] to obs[t+1]); reward: (H, B)
    real units; task: (B,) embedding rows. Returns the total loss, its detached terms and the
    latent rollout zs (H+1, B, L) (with gradient) for the policy-prior step.
    """
    H, B = action.shape[:2]
    mcfg = model.cfg
    rho = rho_weights(H, cfg.rho, obs.device)

    # Targets without gradient, model in eval mode (no Q dropout), as TD-MPC2 computes them
    model.eval()
    with torch.no_grad():
        next_z = model.encode(obs[1:], task)  # (H, B, L): consistency targets from the online encoder
        next_a, _ = model.pi(next_z, task)
        next_q = model.Q(next_z, next_a, task, return_type="min", target=True).view(H, B).float()
        y = td_targets(reward, next_q, model.discount(task).view(B))  # (H, B)

    # Latent rollout with gradient: z_{t+1} = d(z_t, a_t), never re-encoded
    model.train()
    zs = latent_rollout(model, model.encode(obs[0], task), action, task)  # (H+1, B, L)

    # Each term: (1/H) sum_t rho^t * mean over the batch (and latent dims / Q-heads)
    mse = (zs[1:].float() - next_z.float()).pow(2).mean(dim=(1, 2))  # (H,)
    consistency = (rho * mse).mean()
    reward_logits = model.reward(zs[:-1], action, task).float()  # r_t from the pre-step latent z_t
    reward_ce = soft_ce(reward_logits, reward, mcfg.num_bins, mcfg.vmin, mcfg.vmax).view(H, B).mean(1)
    reward_loss = (rho * reward_ce).mean()
    q_logits = model.Q(zs[:-1], action, task, return_type="all").float()  # (num_q, H, B, bins)
    num_q = q_logits.shape[0]
    value_ce = soft_ce(q_logits, y.expand(num_q, H, B), mcfg.num_bins, mcfg.vmin, mcfg.vmax)
    value_loss = (rho * value_ce.view(num_q, H, B).mean(2)).sum() / (H * num_q)

    loss = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
    metrics = {
        "loss": loss.detach(),
        "consistency": consistency.detach(),
        "reward_ce": reward_loss.detach(),
        "value_ce": value_loss.detach(),
    }
    return loss, metrics, zs


def policy_loss(
    model: WorldModel,
    zs: Tensor,
    task: Tensor,
    scale: RunningScale,
    cfg: PretrainConfig,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """TD-MPC2's policy-prior loss on detached latents zs (T, B, L), task (B,) embedding rows.

    L_pi = mean_t rho^t * mean_b -(entropy_coef * scaled_entropy + Q(z, pi(z)) / S), Q = mean of
    2 random heads with detached parameters, S = running scale updated from the t = 0 values
    (``gather`` collects them from every DDP rank, so all ranks share S).
    """
    T, B = zs.shape[:2]
    a, info = model.pi(zs, task)
    q = model.Q(zs, a, task, return_type="avg", detach=True).view(T, B).float()
    scale.update(q[0] if gather is None else gather(q[0].detach()))
    entropy = info["scaled_entropy"].view(T, B).float()
    loss = (-(cfg.entropy_coef * entropy + scale(q)).mean(1) * rho_weights(T, cfg.rho, zs.device)).mean()
    return loss, {
        "pi_loss": loss.detach(),
        "pi_entropy": entropy.mean().detach(),
        "pi_scale": scale.value.detach().clone(),
    }


@torch.no_grad()
def held_out_metrics(
    model: WorldModel, obs: Tensor, action: Tensor, reward: Tensor, task: Tensor, cfg: PretrainConfig
) -> dict[str, Tensor]:
    """Open-loop prediction errors on held-out windows (shapes as :func:`world_model_loss`).

    consistency: (1/H) sum_t rho^t MSE(z_{t+1}, h(o_{t+1})), the training term; reward_ce likewise;
    reward_mae: mean |two_hot_inv(R(z_t, a_t)) - r_t| in real reward units, unweighted.
    """
    H, B = action.shape[:2]
    mcfg = model.cfg
    rho = rho_weights(H, cfg.rho, obs.device)
    next_z = model.encode(obs[1:], task)
    zs = latent_rollout(model, model.encode(obs[0], task), action, task)
    mse = (zs[1:].float() - next_z.float()).pow(2).mean(dim=(1, 2))
    logits = model.reward(zs[:-1], action, task).float()
    reward_ce = soft_ce(logits, reward, mcfg.num_bins, mcfg.vmin, mcfg.vmax).view(H, B).mean(1)
    reward_hat = two_hot_inv(logits, mcfg.vmin, mcfg.vmax).view(H, B)
    return {
        "consistency": (rho * mse).mean(),
        "reward_ce": (rho * reward_ce).mean(),
        "reward_mae": (reward_hat - reward).abs().mean(),
    }


def make_optimizers(model: WorldModel, cfg: PretrainConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """TD-MPC2's two optimisers: the world model (encoder at lr x enc_lr_scale) and the policy prior
    (its own lr, eps 1e-5). Every trainable parameter is in exactly one of them."""
    optim = adam(
        [
            {"params": model._encoder.parameters(), "lr": cfg.lr * cfg.enc_lr_scale},
            {"params": model._dynamics.parameters()},
            {"params": model._reward.parameters()},
            {"params": model._Qs.parameters()},
            {"params": model._task_emb.parameters()},
        ],
        lr=cfg.lr,
    )
    pi_optim = adam(model._pi.parameters(), lr=cfg.pi_lr, eps=cfg.pi_eps)
    _check_all_trained(model, [p for g in optim.param_groups for p in g["params"]] + list(model._pi.parameters()))
    return optim, pi_optim


def update_world_model(
    model: WorldModel,
    optim: torch.optim.Optimizer,
    pi_optim: torch.optim.Optimizer,
    scale: RunningScale,
    obs: Tensor,
    action: Tensor,
    reward: Tensor,
    task: Tensor,
    cfg: PretrainConfig,
    loss_fn: Callable = world_model_loss,
    autocast: Callable = nullcontext,
    ddp: bool = False,
) -> dict[str, float]:
    """One TD-MPC2 update on a batch (shapes as :func:`world_model_loss`): world-model step, policy-prior
    step, Polyak of the target Qs. ``ddp``: average the gradients over the DDP ranks.

    Keys: loss, consistency, reward_ce, value_ce, grad_norm (before clipping), pi_loss, pi_entropy,
    pi_scale, pi_grad_norm.
    """
    wm_params = [p for g in optim.param_groups for p in g["params"]]
    pi_params = [p for g in pi_optim.param_groups for p in g["params"]]
    # 1. World model: consistency + reward + value, encoder lr x 0.3, clip 20
    with autocast():
        loss, metrics, zs = loss_fn(model, obs, action, reward, task, cfg)
    loss.backward()
    if ddp:
        distributed.all_reduce_gradients(wm_params)  # average before clipping
    grad_norm = torch.nn.utils.clip_grad_norm_(wm_params, cfg.grad_clip_norm)
    optim.step()
    optim.zero_grad(set_to_none=True)

    # 2. Policy prior on sg(z), against the just-updated Q-ensemble (detached)
    with autocast():
        pi_loss, pi_metrics = policy_loss(
            model, zs.detach(), task, scale, cfg, gather=distributed.all_gather if ddp else None
        )
    pi_loss.backward()
    if ddp:
        distributed.all_reduce_gradients(pi_params)
    pi_grad_norm = torch.nn.utils.clip_grad_norm_(pi_params, cfg.grad_clip_norm)
    pi_optim.step()
    pi_optim.zero_grad(set_to_none=True)
    # pi(z, e) and Q(z, a, e) also sent a gradient into the task embedding; TD-MPC2 lets it
    # ride into the next world-model step, we drop it (the embedding learns from the model loss)
    optim.zero_grad(set_to_none=True)

    # 3. Polyak averaging of the target Qs
    model.update_targets(cfg.tau)
    model.eval()
    out = {**metrics, **pi_metrics, "grad_norm": grad_norm, "pi_grad_norm": pi_grad_norm}
    return dict(zip(out, torch.stack([v.float() for v in out.values()]).tolist()))  # one device sync


# ------------------------------------------------------------------------------------ trainer
class Pretrainer:
    """Offline multi-task world-model training: ``step()`` is one TD-MPC2 update.

    Episodes are split (seeded, per dataset) into training and held-out ones; windows are drawn
    uniformly from each split and padded to the model's task-set dims, from rows loaded into RAM or,
    when they exceed ``cfg.ram_budget_gb`` (``streaming``), read from disk per batch with prefetch
    (:class:`~pwm_core.data.outofcore.OutOfCoreSampler`: the same windows). Under ``torchrun`` (after
    :func:`pwm_core.train.distributed.setup`) every rank samples its own windows and the
    gradients are averaged, so all ranks keep identical weights.

    Attributes: ``model`` (:class:`WorldModel`), ``step_count``, ``held_out`` (per dataset, the
    held-out episode indices), ``sampler`` / ``val_sampler``.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        model_cfg: WorldModelConfig,
        datasets: Sequence[EpisodeDataset],
        task_set: TaskSet,
        device: str | torch.device | None = None,
        *,
        held_out: Sequence[np.ndarray] | None = None,
    ) -> None:
        """``device`` overrides ``cfg.device``; ``held_out`` (per dataset, episode indices) overrides
        the seeded split (:func:`split_episodes`)."""
        if cfg.amp not in (None, "bf16"):
            raise ConfigError(f"amp: {cfg.amp!r} is not supported; use none or bf16")
        if tuple(model_cfg.task_names) != task_set.names:
            raise PwmError(
                f"the model's tasks {list(model_cfg.task_names)} differ from the task set {list(task_set.names)}"
            )
        self.cfg, self.model_cfg, self.task_set = cfg, model_cfg, task_set
        self.datasets = list(datasets)
        self.device = distributed.resolve_device(cfg.device if device is None else device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.step_count = 0
        seed_everything(cfg.seed)  # model init (identical on every rank), python and numpy
        # The update's own torch stream (policy noise, Q-head draws, dropout), seed + rank: other
        # code drawing from torch's global generator cannot change a run or its resumption
        self._rng = _seeded_rng_state(cfg.seed + self.rank, self.device)

        # Data: held-out split by episode, windows padded to the task set's dims
        for ds in self.datasets:
            if ds.select_episodes(task_set.ids).size == 0:
                raise DatasetError(f"{ds.path} has no episode of the task set {task_set.name!r}")
        self._build_samplers(
            split_episodes(self.datasets, task_set, cfg.val_fraction, cfg.horizon, cfg.seed)
            if held_out is None
            else held_out
        )
        row_of_id = torch.full((max(t.id for t in task_set) + 1,), -1, dtype=torch.long)
        row_of_id[list(task_set.ids)] = torch.arange(len(task_set))
        self._row_of_id = row_of_id.to(self.device)  # global task id -> embedding row

        # Model and the two optimisers (TD-MPC2: encoder at lr * 0.3; policy prior apart, eps 1e-5)
        self.model = WorldModel(model_cfg).to(self.device)
        distributed.broadcast_module(self.model)  # DDP: every rank starts from rank 0's weights
        self.optim, self.pi_optim = make_optimizers(self.model, cfg)
        self.scale = RunningScale(cfg.tau, self.device)
        # Inductor's pattern matcher fails on the Q-head draw randperm(num_q)[:2] (torch 2.13): off.
        self._loss_fn = (
            torch.compile(world_model_loss, options={"pattern_matcher": False}) if cfg.compile else world_model_loss
        )

    def _build_samplers(self, held_out: Sequence[np.ndarray]) -> None:
        """Training windows from all but the ``held_out`` episodes (seed + rank), held-out windows
        from those (fixed seed, see :meth:`validate`)."""
        cfg, mcfg = self.cfg, self.model_cfg
        if len(held_out) != len(self.datasets):
            raise PwmError(
                f"a held-out split for {len(held_out)} dataset(s) does not fit {len(self.datasets)} dataset(s)"
            )
        self.held_out = [np.asarray(h, np.int64) for h in held_out]
        for ds, h in zip(self.datasets, self.held_out):
            if h.size and h.max() >= ds.num_episodes:
                raise DatasetError(
                    f"{ds.path} has {ds.num_episodes} episodes but the split holds out "
                    f"episode {int(h.max())}; resume with the datasets of the run"
                )
        train_eps = [
            np.setdiff1d(ds.select_episodes(self.task_set.ids), h) for ds, h in zip(self.datasets, self.held_out)
        ]
        has_val = any(h.size for h in self.held_out)
        O, A = mcfg.obs_dim, mcfg.act_dim
        self.data_nbytes = sum(
            in_ram_nbytes(self.datasets, episodes=eps, obs_dim=O, act_dim=A)
            for eps in ([train_eps, self.held_out] if has_val else [train_eps])
        )
        budget = None if cfg.ram_budget_gb is None else int(cfg.ram_budget_gb * 1e9)
        sampler_cls = choose_sampler(self.data_nbytes, budget)  # both splits in RAM, or both streamed
        self.streaming = sampler_cls is not WindowSampler
        for old in (getattr(self, "sampler", None), getattr(self, "val_sampler", None)):
            if old is not None:
                old.close()
        self.sampler = sampler_cls(
            self.datasets,
            cfg.horizon,
            cfg.batch_size,
            seed=cfg.seed + self.rank,
            device=self.device,
            episodes=train_eps,
            obs_dim=O,
            act_dim=A,
        )
        self.val_sampler = (
            sampler_cls(
                self.datasets,
                cfg.horizon,
                cfg.batch_size,
                device=self.device,
                episodes=self.held_out,
                obs_dim=O,
                act_dim=A,
            )
            if has_val
            else None
        )

    # ------------------------------------------------------------------------------- training
    def step(self) -> dict[str, float]:
        """One update: world-model step, policy-prior step, Polyak; returns the losses.

        Keys: loss, consistency, reward_ce, value_ce, grad_norm (before clipping), pi_loss,
        pi_entropy, pi_scale, pi_grad_norm.
        """
        with self._own_rng(), use_kernels(self.cfg.kernels):
            return self._step()

    def _step(self) -> dict[str, float]:
        batch = self.sampler.sample()
        out = update_world_model(
            self.model,
            self.optim,
            self.pi_optim,
            self.scale,
            batch.obs,
            batch.action,
            batch.reward,
            self._row_of_id[batch.task],
            self.cfg,
            self._loss_fn,
            self._autocast,
            ddp=self.world_size > 1,
        )
        self.step_count += 1
        return out

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Held-out errors averaged over ``val_batches`` fixed windows (the same ones every call).

        Keys ``consistency``, ``reward_ce``, ``reward_mae`` (real reward units); empty when no
        episode is held out. Touches no training random state.
        """
        if self.val_sampler is None:
            return {}
        self.model.eval()
        self.val_sampler.manual_seed(self.cfg.seed + _VAL_SEED_OFFSET)
        totals: dict[str, float] = {}
        for _ in range(self.cfg.val_batches):
            batch = self.val_sampler.sample()
            with self._autocast():
                m = held_out_metrics(
                    self.model, batch.obs, batch.action, batch.reward, self._row_of_id[batch.task], self.cfg
                )
            for k, v in m.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return {k: v / self.cfg.val_batches for k, v in totals.items()}

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything ``--resume`` needs to continue as if never stopped (tensors and plain data)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step_count,
            "config": self.cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "task_set": self.task_set.to_dict(),
            "datasets": [ds.path for ds in self.datasets],
            "held_out": [torch.from_numpy(h) for h in self.held_out],
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "sampler": self.sampler.get_state(),
            "rng": {**global_rng_state(), "step": self._rng},
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (of a trainer with the same model config and task set)."""
        same_tasks = sd["task_set"]["tasks"] == self.task_set.to_dict()["tasks"]
        if sd["model_config"] != self.model_cfg.to_dict() or not same_tasks:
            raise PwmError(
                "the checkpoint was written for another model config or task set; resume it "
                "with the settings of its run"
            )
        held_out = [h.numpy() for h in sd["held_out"]]
        if len(held_out) != len(self.held_out) or any(
            not np.array_equal(a, b) for a, b in zip(held_out, self.held_out)
        ):
            self._build_samplers(held_out)  # keep the run's split even if a dataset has grown
        self.model.load_state_dict(sd["model"])
        self.optim.load_state_dict(sd["optim"])
        self.pi_optim.load_state_dict(sd["pi_optim"])
        self.scale.load_state_dict(sd["scale"])
        self.step_count = int(sd["step"])
        set_global_rng_state(sd["rng"])
        if self.rank == 0:
            self.sampler.set_state(sd["sampler"])
            self._rng = dict(sd["rng"]["step"])
            if self.device.type == "cuda" and self._rng["cuda"].numel() == 0:  # written on CPU
                self._rng["cuda"] = _seeded_rng_state(self.cfg.seed, self.device)["cuda"]
        else:  # the checkpoint holds rank 0's streams: give the other ranks fresh, distinct ones
            seed = derived_seed(self.cfg.seed, self.rank, self.step_count)
            self.sampler.manual_seed(seed)
            self._rng = _seeded_rng_state(seed + 1, self.device)

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` atomically (temporary file + rename); main rank only."""
        if not distributed.is_main():
            return
        atomic_write(Path(path), lambda f: torch.save(self.state_dict(), f))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint file written by :meth:`save_checkpoint` (every rank reads it)."""
        self.load_state_dict(read_checkpoint(path))

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        datasets: Sequence[EpisodeDataset],
        device: str | torch.device | None = None,
        cfg: PretrainConfig | None = None,
    ) -> Pretrainer:
        """A trainer continued from a checkpoint. ``cfg`` replaces the stored config (e.g. more
        ``steps``); the model config, task set and held-out split always come from the file."""
        sd = read_checkpoint(path)
        if len(datasets) != len(sd["held_out"]):
            raise PwmError(
                f"{os.fspath(path)} was trained on {len(sd['held_out'])} dataset(s) "
                f"({', '.join(sd['datasets'])}); got {len(datasets)}"
            )
        cfg = cfg if cfg is not None else PretrainConfig.from_dict(sd["config"])
        task_set = task_set_from_dict(sd["task_set"], os.fspath(path))
        trainer = cls(
            cfg,
            WorldModelConfig.from_dict(sd["model_config"]),
            datasets,
            task_set,
            device,
            held_out=[h.numpy() for h in sd["held_out"]],
        )
        trainer.load_state_dict(sd)
        return trainer

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with this trainer's torch RNG state as the global one, then keep the advanced state."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.set_rng_state(self._rng["cpu"])
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng["cuda"], self.device)
            yield
            self._rng = _current_rng_state(self.device)

    def _autocast(self):
        if self.cfg.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a pre-training checkpoint (no code is unpickled: ``weights_only=True``)."""
    return io.read_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "pre-training")


# ------------------------------------------------------------------------------------ helpers
def split_episodes(
    datasets: Sequence[EpisodeDataset], task_set: TaskSet, val_fraction: float, horizon: int, seed: int
) -> list[np.ndarray]:
    """Per dataset, the sorted held-out episode indices.

    Among the episodes of ``task_set`` long enough for one window (H+1 rows), round(val_fraction *
    n) are held out, at least 1 when n >= 2 and val_fraction > 0, and never all of them. The draw
    depends only on ``seed`` and the dataset's position, not on the rank.
    """
    held_out = []
    for i, ds in enumerate(datasets):
        eps = ds.select_episodes(task_set.ids)
        eligible = eps[ds.episode_lengths[eps] >= horizon + 1]
        n = eligible.size
        k = 0 if val_fraction <= 0 or n < 2 else min(max(round(val_fraction * n), 1), n - 1)
        rng = np.random.default_rng([seed, i])
        held_out.append(np.sort(rng.choice(eligible, size=k, replace=False)).astype(np.int64))
    return held_out


def _check_all_trained(model: torch.nn.Module, trained: list[torch.nn.Parameter]) -> None:
    ids = {id(p) for p in trained}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in ids]
    if missing:
        raise RuntimeError(f"world-model parameters outside both optimisers: {missing}")


def _current_rng_state(device: torch.device) -> dict[str, Tensor]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _seeded_rng_state(seed: int, device: torch.device) -> dict[str, Tensor]:
    """The torch RNG states ``torch.manual_seed(seed)`` gives, without touching the global ones."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _current_rng_state(device)
