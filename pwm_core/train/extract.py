"""PWM policy extraction: first-order policy learning through a frozen multi-task world model.

For one task, a new actor and a 3-critic ensemble are trained on latents only
(docs/algorithm.md#extraction-actor-and-critics and the Extraction sections after it).
One iteration (:meth:`Extractor.step`, the official ``PWM.update`` with ``finetune_wm=False``):

1. set the linearly decayed learning rates;
2. z_0 = h(o, e) for B start observations of the task (obs[0] of H+1-step dataset windows);
3. imagined rollout, H = 16: a_t = tanh(mu(sg z_t) + sigma eps), r_t = R(z_t, a_t) decoded in symlog
   units, z_{t+1} = d(z_t, a_t), V_{t+1} = min_k V_k(z_{t+1});
4. actor loss = mean_b -(sum_t gamma^t r_t + gamma^(H+1) V_H) / running std, one Adam step (clip 1);
5. critic targets r_t + gamma V_{t+1} (the code's TD(lambda) with an all-ones done mask), then 8 passes
   x 4 unshuffled time-major minibatches of MSE Adam steps (clip 100).

Defaults reproduce the official multitask code, quirks included; the paper's variants are flags
(``critic_target``, ``bootstrap``, ``mask_actions``, ``batch_size``). The world model's parameters
take no gradient here: the official code computes world-model (and critic) gradients in the actor's
backward pass and never uses them.

The extracted policy is written as a self-contained artifact (:func:`save_policy`): encoder, the
task's embedding row, actor and critics, enough to act from raw observations without the world model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_

from pwm_core import io
from pwm_core.config import ConfigError, check_device, from_dict, to_dict
from pwm_core.data import EpisodeDataset
from pwm_core.data.sampler import WindowSampler
from pwm_core.errors import PwmError
from pwm_core.io import atomic_write
from pwm_core.nn.actor_critic import Actor, CriticEnsemble
from pwm_core.nn.math import almost_two_hot_inv
from pwm_core.nn.imagine import imagine as roll_out
from pwm_core.nn.kernels import KERNELS, use_kernels
from pwm_core.nn.world_model import WorldModel
from pwm_core.seeding import derived_seed, global_rng_state, set_global_rng_state
from pwm_core.tasks import TASKS
from pwm_core.train import distributed
from pwm_core.train.optim import adam
from pwm_core.train.returns import (
    RET_RMS_EPS,
    RunningMeanStd,
    discounted_return,
    linear_lr,
    one_step_targets,
    td_lambda_targets,
)


CHECKPOINT_FORMAT = "pwm-extract-checkpoint"
CHECKPOINT_VERSION = 1
MAX_ABS_VALUE = 1e6  # official: abort when an imagined value exceeds this ("next value error")


@dataclass
class ExtractConfig:
    """PWM's policy-extraction recipe; defaults = the official multitask run (config_mt30/80 + pwm_48M)."""

    steps: int = 10_000  # actor updates; also the lr-decay length (general.epochs overrides max_epochs)
    batch_size: int = 512  # imagination start states per update (buffer batch; the paper: 64)
    horizon: int = 16  # H, imagined rollout length
    gamma: float = 0.99  # discount, the same for every task (not TD-MPC2's per-task discount)
    lam: float = 0.95  # TD(lambda) lambda (only with critic_target="td-lambda")
    actor_lr: float = 5e-4  # initial actor lr
    critic_lr: float = 5e-4  # initial critic lr
    lr_end: float = 1e-5  # lr reached after `steps` updates (linear schedule, hard-coded in the code)
    betas: tuple[float, float] = (0.7, 0.95)  # Adam betas of actor and critic
    actor_grad_clip: float = 1.0  # actor gradient-norm clip
    critic_grad_clip: float = 100.0  # critic gradient-norm clip
    critic_iterations: int = 8  # passes over the critic dataset per update
    critic_batches: int = 4  # minibatches per pass (size B*H/4 = 2048)
    num_critics: int = 3  # value heads; min over heads for bootstrap and targets
    # critic targets: the code's done mask is all ones, so TD(lambda) is one-step; paper: td-lambda
    # (docs/algorithm.md#extraction-critic-targets)
    critic_target: Literal["one-step", "td-lambda"] = "one-step"
    # code: gamma^(H+1) V(z_H); paper, SHAC: gamma^H (docs/algorithm.md#extraction-terminal-bootstrap)
    bootstrap: Literal["gamma-h1", "gamma-h"] = "gamma-h1"
    # code drives padded action dims too; True: zero them, as TD-MPC2 (docs/algorithm.md#extraction-action-masks)
    mask_actions: bool = False
    ret_rms: bool = True  # divide the actor loss by the running std of per-sample losses; False: by H
    detach: bool = True  # the actor reads sg(z_t); the dynamics still get the live z_t
    # code: unshuffled time-major critic minibatches (docs/algorithm.md#extraction-critic-training)
    shuffle_critic: bool = False
    actor_units: tuple[int, ...] = (400, 200, 100)  # actor hidden widths (alg yaml)
    critic_units: tuple[int, ...] = (400, 200)  # critic hidden widths (alg yaml)
    init_logstd: float = -1.0  # initial actor log-std (sigma ~ 0.368)
    min_logstd: float = -1.427  # lower clamp of the actor log-std (sigma >= 0.240); no upper clamp
    return_states: int = 64  # ours: fixed start states of the model_return metric
    critic_warmup: int = 0  # ours: first updates train only the critic (the actor waits for a value estimate)
    keep: Literal["last", "best"] = "last"  # ours: publish the last policy (the code) or the best evaluated one
    checkpoint_every_s: float = 600.0  # ours: seconds of wall time between checkpoints (besides each evaluation)
    model_return_every: int = 10  # ours: the metric at update 1, every N-th and the last (0: never); 12% of B=64
    seed: int = 0  # actor/critic init, action noise, critic shuffling (the official runs use 42)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str | None = None  # None (fp32) or "bf16": rollout and critic forward passes under autocast
    # torch.compile one rollout step (action, reward, dynamics, value) and the critic's loss, each a graph reused
    # every step: 1.15-1.25x per update over the fused kernels (benchmarks/bench_official.py), after tens of
    # seconds of compiling on the first update
    compile: bool = False
    # Mish kernel: exact (ATen's, the official code's) | fast (one exp; ours) | fused (fast, compiled with LayerNorm)
    kernels: str = "exact"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first field outside its allowed values (after any field changed)."""
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExtractConfig:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown keys are an error."""
        return from_dict(cls, d)


# ----------------------------------------------------------------------------------- pure math
def critic_minibatches(
    z: Tensor, targets: Tensor, n_batches: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> list[tuple[Tensor, Tensor]]:
    """The official ``CriticDataset``: z (H, B, L) and targets (H, B) flattened time-major to H*B rows,
    rows whose latent has a NaN dropped, then contiguous slices of H*B // n_batches rows (the size is
    fixed before dropping, so the last slice may be short). Unshuffled, batch k holds time steps
    k*H/n .. (k+1)*H/n - 1 of every sample; ``shuffle`` permutes the rows once first.
    """
    H, B = targets.shape
    size = H * B // n_batches
    z, targets = z.reshape(H * B, -1), targets.reshape(H * B)
    keep = ~z.isnan().any(-1)
    z, targets = z[keep], targets[keep]
    if shuffle:
        perm = torch.randperm(targets.shape[0], generator=generator, device=targets.device)
        z, targets = z[perm], targets[perm]
    return [(z[i : i + size], targets[i : i + size]) for i in range(0, targets.shape[0], size)]


# ---------------------------------------------------------------------------- imagined rollout
class Rollout(NamedTuple):
    z: Tensor  # (H, B, L) sg(z_t), t = 0..H-1: the critic's training inputs
    reward: Tensor  # (H, B) r_t = R(z_t, a_t) in symlog units, NaN -> 0
    next_value: Tensor  # (H, B) min_k V_k(z_{t+1}); [-1] carries the bootstrap's gradient


def imagine(
    world_model: WorldModel,
    actor: Actor,
    critic: CriticEnsemble,
    z0: Tensor,
    task: Tensor,
    horizon: int,
    eps: Tensor | None = None,
    mask: Tensor | None = None,
    detach: bool = True,
) -> Rollout:
    """Roll the actor through the world model for ``horizon`` steps from z0 (B, L)
    (docs/algorithm.md#extraction-imagined-rollout-and-actor-loss).

    ``eps`` (H, B, A): the actor's noise; None = deterministic actions tanh(mu). ``mask`` (A,): multiply
    the actions by the task's action mask. Gradients reach the actor through every later dynamics,
    reward and value step; the critic's parameters take none (the code computes and discards them).
    The loop is the shared :func:`pwm_core.nn.imagine.imagine`.
    """
    vmin, vmax = world_model.cfg.vmin, world_model.cfg.vmax
    values: list[Tensor] = []

    def act(t: int, z: Tensor) -> Tensor:
        a = actor(z.detach() if detach else z, deterministic=eps is None, eps=None if eps is None else eps[t])
        return a if mask is None else a * mask  # action masking (TD-MPC2; not in PWM)

    def reward(z: Tensor, a: Tensor) -> Tensor:
        logits = world_model.reward(z, a, task).float()  # r_t from the pre-step latent z_t
        r = almost_two_hot_inv(logits, vmin, vmax).squeeze(-1)  # symlog units: no symexp
        return torch.nan_to_num(r, 0.0, 0.0, 0.0)  # official: NaN reward -> 0

    def value(t: int, z: Tensor) -> None:
        values.append(critic.min(z, detach=True).squeeze(-1).float())

    out = roll_out(world_model, z0, task, horizon, act, reward=reward, after_step=value)
    return Rollout(torch.stack([z.detach() for z in out.z[:-1]]), torch.stack(out.reward), torch.stack(values))


def imagine_step(
    world_model: WorldModel,
    actor: Actor,
    critic: CriticEnsemble,
    z: Tensor,
    task: Tensor,
    eps: Tensor | None,
    mask: Tensor | None,
    detach: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of :func:`imagine` as a plain function (for ``torch.compile``): z_t (B, L) and the noise
    eps_t (B, A) -> (z_{t+1}, r_t, min_k V_k(z_{t+1})), the same ops in the same order. The actor's log-std
    clamp is left to the caller (once per rollout: it is in place, and a compiled graph may not mutate)."""
    mu = actor._mu(z.detach() if detach else z)
    a = torch.tanh(mu) if eps is None else torch.tanh(mu + actor.logstd.exp() * eps)
    if mask is not None:
        a = a * mask
    logits = world_model.reward(z, a, task).float()
    r = torch.nan_to_num(
        almost_two_hot_inv(logits, world_model.cfg.vmin, world_model.cfg.vmax).squeeze(-1), 0.0, 0.0, 0.0
    )
    z_next = world_model.next(z, a, task)
    return z_next, r, critic.min(z_next, detach=True).squeeze(-1).float()


def imagine_stepwise(
    step: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor]],
    actor: Actor,
    z0: Tensor,
    horizon: int,
    eps: Tensor | None = None,
) -> Rollout:
    """:func:`imagine` with each step done by ``step(z_t, eps_t)`` (:func:`imagine_step` bound to the models,
    compiled or not)."""
    with torch.no_grad():
        actor.logstd.clamp_(min=actor.min_logstd)  # what Actor.forward does on every call; idempotent here
    zs, rewards, values = [z0.detach()], [], []
    z = z0
    for t in range(horizon):
        z, r, v = step(z, None if eps is None else eps[t])
        zs.append(z.detach())
        rewards.append(r)
        values.append(v)
    return Rollout(torch.stack(zs[:-1]), torch.stack(rewards), torch.stack(values))


# ------------------------------------------------------------------------------------ extractor
@runtime_checkable
class StartStates(Protocol):
    """A WindowSampler-like source: ``sample()`` returns windows with ``obs`` (H+1, B, O), ``task`` (B,)."""

    def sample(self) -> Any: ...


class Extractor:
    """Policy extraction for one task of a frozen world model; ``step()`` is one official ``update``.

    ``start_states``: a WindowSampler-like object (its ``obs[0]`` are the start states, see
    :func:`start_state_sampler`) or a callable returning (B, O) padded observations. Checkpoints
    resume bitwise (on the same device type) when the source is a sampler with a ``generator`` (saved)
    or a callable that draws from torch's, numpy's or python's global generators (restored).
    Attributes: ``actor``, ``critic``, ``ret_rms``, ``step_count`` (updates done), ``world_model``
    (moved to the device, switched to eval mode and frozen in place), ``task_row``, ``task_name``.
    """

    def __init__(
        self,
        cfg: ExtractConfig,
        world_model: WorldModel,
        task_row: int,
        start_states: Callable[[], Tensor] | StartStates,
        device: str | torch.device | None = None,
    ) -> None:
        validate_config(cfg)
        mcfg = world_model.cfg
        if not 0 <= int(task_row) < mcfg.n_tasks:
            raise PwmError(f"task row {task_row} out of range: the world model has {mcfg.n_tasks} tasks")
        self.cfg, self.task_row, self.task_name = cfg, int(task_row), mcfg.task_names[int(task_row)]
        self.device = distributed.resolve_device(cfg.device if device is None else device)
        self.step_count = 0

        # Frozen world model: no optimiser and no gradient to its weights (finetune_wm=False)
        self.world_model = world_model.to(self.device).eval().requires_grad_(False)
        self._task = torch.tensor(self.task_row, device=self.device)  # embedding row
        self._mask = world_model.action_masks[self.task_row] if cfg.mask_actions else None

        # Actor and critics from their own seed, leaving torch's global generator untouched
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            self.actor = Actor(mcfg.latent_dim, mcfg.act_dim, cfg.actor_units, cfg.init_logstd, cfg.min_logstd).to(
                self.device
            )
            self.critic = CriticEnsemble(mcfg.latent_dim, cfg.num_critics, cfg.critic_units).to(self.device)
        self.actor_optim = adam(self.actor.parameters(), lr=cfg.actor_lr, betas=cfg.betas)
        self.critic_optim = adam(self.critic.parameters(), lr=cfg.critic_lr, betas=cfg.betas)
        self.ret_rms = RunningMeanStd(device=self.device)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)  # action noise, shuffling

        # Start states; the first draw also fixes the states of the model_return metric
        self._sampler: StartStates | None = start_states if isinstance(start_states, StartStates) else None
        self._source: Callable[[], Tensor] | None = None if isinstance(start_states, StartStates) else start_states
        if self._sampler is not None:
            batch = self._sampler.sample()
            self._check_task(batch.task)
            first = self._checked(batch.obs[0])
        else:
            first = self._start_obs()
        self.return_obs = first[: cfg.return_states].clone()
        self._step: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor]] | None = None
        self._critic_loss: Callable[[Tensor, Tensor], Tensor] = self._value_loss
        if cfg.compile:  # one graph per shape, reused by every step of every update (resume stays bitwise)
            self._step = torch.compile(self._imagine_step, dynamic=False)
            self._critic_loss = torch.compile(self._value_loss, dynamic=False)

    # ------------------------------------------------------------------------------- training
    def step(self) -> dict[str, float]:
        """One update (Mish: ``cfg.kernels``). Returns actor_loss, value_loss (mean over the critic minibatches),
        actor_grad_norm and critic_grad_norm (before clipping; critic: its last minibatch),
        imagined_reward (mean r_t of the rollout, symlog units), ret_std (the actor-loss divisor) and, at
        update 1, every ``model_return_every``-th and the last, model_return (see :meth:`model_return`; a
        no-grad rollout that costs about 12% of a B=64 update, so it is not computed every time)."""
        with use_kernels(self.cfg.kernels):
            return self._update()

    def _update(self) -> dict[str, float]:
        cfg, H = self.cfg, self.cfg.horizon
        # Linear lr decay towards lr_end over cfg.steps, set at the start of the iteration
        for optim, lr0 in ((self.actor_optim, cfg.actor_lr), (self.critic_optim, cfg.critic_lr)):
            for group in optim.param_groups:
                group["lr"] = linear_lr(self.step_count, cfg.steps, lr0, cfg.lr_end)

        # 1. Imagined rollout from B start states of this task (obs[0] of the windows only)
        obs = self._start_obs()
        eps = torch.randn(H, obs.shape[0], self.world_model.cfg.act_dim, generator=self.generator, device=self.device)
        with self._autocast():
            z0 = self.world_model.encode(obs, self._task)
            if self._step is not None:
                roll = imagine_stepwise(self._step, self.actor, z0, H, eps)
            else:
                roll = imagine(
                    self.world_model, self.actor, self.critic, z0, self._task, H, eps, self._mask, cfg.detach
                )
        self._check_values(roll.next_value)

        # 2. Actor: one step on the imagined return; 3-4. critic targets, then critic regression
        if self.step_count < cfg.critic_warmup:  # critic warm-up: the bootstrap of a random critic misleads
            actor_loss, actor_grad_norm = self.actor_loss(roll).detach(), torch.zeros((), device=self.device)
        else:
            actor_loss, actor_grad_norm = self.actor_update(roll)
        reward = roll.reward.detach()
        targets = self.critic_targets(reward, roll.next_value.detach())
        value_loss, critic_grad_norm = self.critic_update(roll.z, targets)

        self.step_count += 1
        out = {
            "actor_loss": actor_loss.detach(),
            "value_loss": value_loss,
            "actor_grad_norm": actor_grad_norm,
            "critic_grad_norm": critic_grad_norm,
            "imagined_reward": reward.mean(),
            "ret_std": torch.sqrt(self.ret_rms.var + RET_RMS_EPS) if cfg.ret_rms else torch.tensor(float(H)),
        }
        n, every = self.step_count, cfg.model_return_every
        if every and (n == 1 or n % every == 0 or n == cfg.steps):
            out["model_return"] = self._model_return()
        return dict(zip(out, torch.stack([v.float().to(self.device) for v in out.values()]).tolist()))

    def actor_loss(self, roll: Rollout) -> Tensor:
        """Maximise the discounted imagined return plus the critic's bootstrap (Eq. 6): per sample
        -(sum_t gamma^t r_t + gamma^k V(z_H)), divided by the running std of these losses (return
        normalisation, statistics updated with this batch first; no mean subtraction), or by H."""
        loss = -discounted_return(roll.reward, roll.next_value[-1], self.cfg.gamma, self.cfg.bootstrap)  # (B,)
        if self.cfg.ret_rms:
            self.ret_rms.update(loss.detach())
            loss = self.ret_rms.scale(loss)
        else:
            loss = loss / self.cfg.horizon
        return loss.mean()

    def actor_update(self, roll: Rollout) -> tuple[Tensor, Tensor]:
        """One Adam step of the actor on :meth:`actor_loss` (gradient-norm clip); (loss, grad norm)."""
        actor_loss = self.actor_loss(roll)
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        grad_norm = clip_grad_norm_(self.actor.parameters(), self.cfg.actor_grad_clip)
        if torch.isnan(grad_norm):
            raise PwmError(
                f"NaN actor gradient at update {self.step_count}: the imagined rollout diverged; "
                "lower actor_lr or check the world model"
            )
        self.actor_optim.step()
        return actor_loss, grad_norm

    def critic_targets(self, reward: Tensor, next_value: Tensor) -> Tensor:
        """Value targets (H, B) from this rollout's rewards and values (current critic, no target network):
        one-step r_t + gamma V_{t+1} (the code's TD(lambda) with its all-ones done mask) or the paper's
        TD(lambda), the imagined trajectory ending only at the horizon."""
        if self.cfg.critic_target == "one-step":
            return one_step_targets(reward, next_value, self.cfg.gamma)
        done = torch.zeros_like(reward)
        done[-1] = 1.0
        return td_lambda_targets(reward, next_value, done, self.cfg.gamma, self.cfg.lam)

    def critic_update(self, z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """critic_iterations passes x critic_batches minibatches of MSE Adam steps, every head regressing
        the same target; NaN/inf gradients zeroed (the code's "NaN fix"). (mean loss, last grad norm)."""
        cfg = self.cfg
        minibatches = critic_minibatches(z, targets, cfg.critic_batches, cfg.shuffle_critic, self.generator)
        value_losses = []
        for _ in range(cfg.critic_iterations):
            for zb, target in minibatches:
                value_loss = self._critic_loss(zb, target)
                self.critic_optim.zero_grad(set_to_none=True)
                value_loss.backward()
                for p in self.critic.parameters():
                    if p.grad is not None:
                        p.grad.nan_to_num_(0.0, 0.0, 0.0)
                grad_norm = clip_grad_norm_(self.critic.parameters(), cfg.critic_grad_clip)
                self.critic_optim.step()
                value_losses.append(value_loss.detach())
        return torch.stack(value_losses).mean(), grad_norm

    def _value_loss(self, z: Tensor, target: Tensor) -> Tensor:
        """Mean squared error of every head's V(z) (K, n) against the target (n,)."""
        with self._autocast():
            values = self.critic(z).squeeze(-1).float()
        return (values - target).pow(2).mean()

    def _imagine_step(self, z: Tensor, eps: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        return imagine_step(self.world_model, self.actor, self.critic, z, self._task, eps, self._mask, self.cfg.detach)

    @torch.no_grad()
    def model_return(self) -> float:
        """The deterministic policy's model-predicted return from the fixed start states ``return_obs``:
        sum_t gamma^t r_t + bootstrap, symlog units, averaged over the states. Unlike the normalised
        actor loss it is comparable across updates (docs/algorithm.md#extraction-imagined-rollout-and-actor-loss)."""
        return float(self._model_return())

    @torch.no_grad()
    def _model_return(self) -> Tensor:
        with self._autocast():
            z0 = self.world_model.encode(self.return_obs, self._task)
            roll = imagine(self.world_model, self.actor, self.critic, z0, self._task, self.cfg.horizon, mask=self._mask)
        return discounted_return(roll.reward, roll.next_value[-1], self.cfg.gamma, self.cfg.bootstrap).mean()

    @torch.no_grad()
    def act(self, obs: Tensor | np.ndarray, deterministic: bool = True) -> Tensor:
        """obs (N, O) padded observations -> actions (N, A) (padded; the env takes the first
        action_dims[task]). fp32 always; stochastic actions draw from torch's global generator."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        a = self.actor(self.world_model.encode(obs, self._task), deterministic=deterministic)
        return a * self._mask if self._mask is not None else a

    def policy_state(self) -> dict[str, Tensor]:
        """What the policy is made of besides the frozen encoder: ``actor.*``, ``critic.*``, ``ret_rms_*``."""
        tensors = {f"actor.{k}": v for k, v in self.actor.state_dict().items()}
        tensors.update({f"critic.{k}": v for k, v in self.critic.state_dict().items()})
        tensors.update({f"ret_rms_{k}": v for k, v in self.ret_rms.state_dict().items()})
        return tensors

    def load_policy_state(self, tensors: dict[str, Tensor]) -> None:
        """Put back a :meth:`policy_state` (e.g. the best one evaluated) into actor, critic and ret_rms."""
        self.actor.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("actor.")})
        self.critic.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("critic.")})
        self.ret_rms.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("ret_rms_")})

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bitwise (tensors and plain data)."""
        sampler = getattr(self._sampler, "generator", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step_count,
            "config": self.cfg.to_dict(),
            "model_config": self.world_model.cfg.to_dict(),
            "task_row": self.task_row,
            "task": self.task_name,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "ret_rms": self.ret_rms.state_dict(),
            "return_obs": self.return_obs.cpu(),
            "rng": {
                **global_rng_state(),
                "device_type": self.device.type,
                "generator": self.generator.get_state(),
                "sampler": sampler.get_state() if sampler is not None else torch.empty(0, dtype=torch.uint8),
            },
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same world-model config and task; the config may differ)."""
        if sd["model_config"] != self.world_model.cfg.to_dict() or sd["task_row"] != self.task_row:
            raise PwmError(
                f"the checkpoint extracts task {sd['task']!r} (row {sd['task_row']}) of another "
                f"world model; this extractor has {self.task_name!r} (row {self.task_row})"
            )
        self.actor.load_state_dict(sd["actor"])
        self.critic.load_state_dict(sd["critic"])
        self.actor_optim.load_state_dict(sd["actor_optim"])
        self.critic_optim.load_state_dict(sd["critic_optim"])
        self.ret_rms.load_state_dict(sd["ret_rms"])
        self.return_obs = sd["return_obs"].to(self.device)
        self.step_count = int(sd["step"])
        rng = sd["rng"]
        set_global_rng_state(rng)
        if rng["device_type"] == self.device.type:
            self.generator.set_state(rng["generator"])
        else:  # a CPU checkpoint resumed on CUDA (or back): the noise stream cannot carry over
            self.generator.manual_seed(derived_seed(self.cfg.seed, 0, self.step_count))
        sampler = getattr(self._sampler, "generator", None)
        if sampler is not None and rng["sampler"].numel():
            sampler.set_state(rng["sampler"])

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` atomically (temporary file + rename)."""
        atomic_write(Path(path), lambda f: torch.save(self.state_dict(), f))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Continue from a file written by :meth:`save_checkpoint`."""
        self.load_state_dict(read_checkpoint(path))

    # --------------------------------------------------------------------------------- helpers
    def _start_obs(self) -> Tensor:
        if self._sampler is not None:
            return self._checked(self._sampler.sample().obs[0])
        assert self._source is not None
        return self._checked(self._source())

    def _checked(self, obs: Tensor) -> Tensor:
        want = (self.cfg.batch_size, self.world_model.cfg.obs_dim)
        if tuple(obs.shape) != want:
            raise PwmError(
                f"start states of shape {tuple(obs.shape)}, expected {want} "
                "(batch_size x the world model's padded obs dim)"
            )
        return obs.to(self.device, torch.float32)

    def _check_task(self, task_ids: Tensor) -> None:
        spec = TASKS.get(self.task_name)
        if spec is not None and bool((task_ids != spec.id).any()):
            raise PwmError(
                f"the start-state sampler yields windows of other tasks than {self.task_name!r}; "
                "build it with tasks=[that task] (see start_state_sampler)"
            )

    def _check_values(self, values: Tensor) -> None:
        if bool((values.abs() > MAX_ABS_VALUE).any()):
            raise PwmError(
                f"an imagined value exceeds {MAX_ABS_VALUE:g} at update {self.step_count}: the "
                "critic diverged; lower critic_lr or check the world model"
            )

    def _autocast(self):
        if self.cfg.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def start_state_sampler(
    datasets: Sequence[EpisodeDataset],
    world_model: WorldModel,
    task_row: int,
    cfg: ExtractConfig,
    device: str | torch.device | None = None,
) -> WindowSampler:
    """Windows of H+1 rows of the task at ``task_row`` only, padded to the world model's dims; their obs[0]
    are the start states. The official buffer draws 17-step slices the same way, from a bootstrap
    resample of (at most 24,000) episodes; here every stored episode is used as it is."""
    name = world_model.cfg.task_names[task_row]
    if name not in TASKS:
        raise PwmError(f"task {name!r} of the world model is not a known task: cannot select its episodes")
    mcfg = world_model.cfg
    return WindowSampler(
        datasets,
        cfg.horizon,
        cfg.batch_size,
        tasks=[TASKS[name].id],
        seed=cfg.seed,
        device=distributed.resolve_device(cfg.device if device is None else device),
        obs_dim=mcfg.obs_dim,
        act_dim=mcfg.act_dim,
    )


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read an extraction checkpoint (no code is unpickled: ``weights_only=True``)."""
    return io.read_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "extraction")


def validate_config(cfg: ExtractConfig) -> None:
    check_device(cfg.device)
    if cfg.amp not in (None, "bf16"):
        raise ConfigError(f"amp: {cfg.amp!r} is not supported; use none or bf16")
    if cfg.kernels not in KERNELS:
        raise ConfigError(f"kernels: {cfg.kernels!r} is not one of {list(KERNELS)}")
    if cfg.critic_target not in ("one-step", "td-lambda"):
        raise ConfigError(f"critic_target: {cfg.critic_target!r} is not one of ['one-step', 'td-lambda']")
    if cfg.bootstrap not in ("gamma-h1", "gamma-h"):
        raise ConfigError(f"bootstrap: {cfg.bootstrap!r} is not one of ['gamma-h1', 'gamma-h']")
    if (
        min(
            cfg.steps,
            cfg.batch_size,
            cfg.horizon,
            cfg.critic_iterations,
            cfg.critic_batches,
            cfg.num_critics,
            cfg.return_states,
        )
        < 1
    ):
        raise ConfigError(
            "steps, batch_size, horizon, critic_iterations, critic_batches, num_critics and "
            "return_states must all be >= 1"
        )
    if cfg.critic_warmup < 0:
        raise ConfigError(f"critic_warmup must be >= 0, got {cfg.critic_warmup}")
    if cfg.keep not in ("last", "best"):
        raise ConfigError(f"keep: {cfg.keep!r} is not one of ['last', 'best']")
    if cfg.model_return_every < 0:
        raise ConfigError(f"model_return_every must be >= 0 (0: never), got {cfg.model_return_every}")
    if cfg.critic_batches > cfg.batch_size * cfg.horizon:
        raise ConfigError(
            f"critic_batches {cfg.critic_batches} > batch_size x horizon "
            f"({cfg.batch_size * cfg.horizon} critic samples per update)"
        )


# ------------------------------------------------------------------------------------- recipes
# Named starting points for ExtractConfig; explicit settings (config set, --set, flags) go on top.
# "official" is ExtractConfig() itself: the official multitask code, quirks included (pinned by a test).
# "default" is what measures best per minute on the learning benchmark (docs/learning.md, one row each).
EXTRACT_RECIPES: dict[str, dict[str, Any]] = {
    "official": {},
    "default": {
        "batch_size": 64,  # the paper's batch: ~5x the updates per minute of 512 on a CPU
        "mask_actions": True,  # padded action dims stay zero (TD-MPC2): mixed action sizes beat random
        "keep": "best",  # publish the best real-env evaluation: extraction peaks, then exploits model errors
        # Mish + LayerNorm of each hidden layer as one compiled kernel (the one-exp Mish): 1.09-1.13x per update
        # over the eager one-exp kernels at 1M B=64, 1.07x at 5M (benchmarks/bench_kernels.py)
        "kernels": "fused",
        # 2 critic passes per update, not 8: ~2x the actor updates per minute at B=64. Same world models and
        # minutes, 10 seeds: better on cartpole-balance (0.991 vs 0.808), cartpole-swingup (428.5 vs 258.3) and
        # finger-spin (0.141 vs 0.104), even on cup-catch and cheetah-run (P2's model), lower on one cup-catch
        # model with overlapping CIs (0.468 vs 0.641; docs/learning-notes.md, sessions 8 and 9)
        "critic_iterations": 2,
    },
}


def recipe_config(recipe: str) -> ExtractConfig:
    """ExtractConfig for a named recipe (see :data:`EXTRACT_RECIPES`)."""
    if recipe not in EXTRACT_RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}: use one of {', '.join(EXTRACT_RECIPES)}")
    return ExtractConfig.from_dict(EXTRACT_RECIPES[recipe])


# The policy artifact lives in pwm_core.policy; these names stay importable from here.
from pwm_core.policy import Policy, load_policy, policy_config, policy_tensors, save_policy  # noqa: E402, F401
