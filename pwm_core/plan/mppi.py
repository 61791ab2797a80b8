"""MPPI planning with a world model: TD-MPC2's planner (``tdmpc2.py:_plan``; docs/algorithm.md#mppi-planning),
for B envs at once.

Once per action and env:

1. z_0 = h(o, e); P policy-prior trajectories are rolled through the dynamics (sampled once, kept for
   every iteration);
2. a Gaussian over H-step action sequences: the mean is the previous plan's mean shifted one step earlier
   (warm start; zeros at an episode's first step), the std is max_std;
3. ``iterations`` times: N - P sequences clamp(mean + std * eps, -1, 1) join the P prior ones, all multiplied
   by the task's action mask; each is scored G = sum_t gamma^t r_t + gamma^H V(z_H); the top K (elites),
   weighted by softmax(temperature * G), refit the mean and std (std clamped to [min_std, max_std]);
4. one elite is drawn with those weights (Gumbel-max) and its first action is executed (plus std_0 noise
   outside eval mode).

The prior and value come from a :class:`Prior`: TD-MPC2's own (:class:`WorldModelPrior`: pi, Q averaged over
2 random heads, rewards in real units, per-task gamma) or an extracted PWM policy's (:class:`PolicyPrior`:
actor, min over critics, rewards in symlog units, the policy's gamma).

Randomness: each env slot draws from its own ``torch.Generator``, so an env's plan does not depend on the
other envs planned in the same call. Everything else is batched over (env, sample) rows: no Python loop over
samples, only over the H steps and the iterations.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from pwm_core.config import ConfigError, from_dict, to_dict
from pwm_core.errors import PwmError
from pwm_core.nn.actor_critic import Actor, CriticEnsemble
from pwm_core.nn.imagine import imagine
from pwm_core.nn.math import almost_two_hot_inv, two_hot_inv
from pwm_core.nn.world_model import WorldModel
from pwm_core.tasks import TaskSpec

if TYPE_CHECKING:
    from pwm_core.policy import Policy

# TD-MPC2's proportions of elites and prior trajectories among the samples (64 and 24 of 512)
ELITE_FRACTION = 64 / 512
PI_TRAJ_FRACTION = 24 / 512


@dataclass
class MPPIConfig:
    """TD-MPC2's planner settings; defaults = ``tdmpc2/config.yaml``."""

    iterations: int = 6  # refits per action (TD-MPC2 adds 2 when action_dim >= 20: never for MT30/MT80)
    num_samples: int = 512  # N action sequences per iteration, prior trajectories included
    num_elites: int = 64  # K best sequences that refit the Gaussian
    num_pi_trajs: int = 24  # P sequences from the policy prior, sampled once per action
    horizon: int = 3  # H, planning horizon
    temperature: float = 0.5  # multiplies the elite values inside the softmax (an inverse temperature)
    min_std: float = 0.05  # lower clamp of the refitted std
    max_std: float = 2.0  # initial std, and its upper clamp
    eval_mode: bool = True  # execute the drawn elite's action without std_0 exploration noise
    seed: int = 0  # seeds the per-env generators
    amp: str | None = None  # None (fp32) or "bf16": network calls under bfloat16 autocast

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first field outside its allowed values (after any field changed)."""
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MPPIConfig:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown keys are an error."""
        return from_dict(cls, d)

    def with_samples(self, num_samples: int) -> MPPIConfig:
        """A copy with ``num_samples`` sequences, elites and prior trajectories at TD-MPC2's 64 and 24 per 512."""
        return replace(
            self,
            num_samples=num_samples,
            num_elites=max(1, round(num_samples * ELITE_FRACTION)),
            num_pi_trajs=round(num_samples * PI_TRAJ_FRACTION),
        )


def validate_config(cfg: MPPIConfig) -> None:
    """Raise :class:`ConfigError` for settings MPPI cannot run with."""
    if min(cfg.iterations, cfg.num_samples, cfg.num_elites, cfg.horizon) < 1:
        raise ConfigError("iterations, num_samples, num_elites and horizon must all be >= 1")
    if cfg.num_elites > cfg.num_samples or not 0 <= cfg.num_pi_trajs <= cfg.num_samples:
        raise ConfigError(
            f"num_elites ({cfg.num_elites}) and num_pi_trajs ({cfg.num_pi_trajs}) must lie in "
            f"0..num_samples ({cfg.num_samples}), num_elites >= 1"
        )
    if not 0 < cfg.min_std <= cfg.max_std or cfg.temperature < 0:
        raise ConfigError(
            f"need 0 < min_std <= max_std and temperature >= 0, got min_std {cfg.min_std}, "
            f"max_std {cfg.max_std}, temperature {cfg.temperature}"
        )
    if cfg.amp not in (None, "bf16"):
        raise ConfigError(f"amp: {cfg.amp!r} is not supported; use none or bf16")


# ----------------------------------------------------------------------------------- pure math
class Refit(NamedTuple):
    mean: Tensor  # (B, H, A)
    std: Tensor  # (B, H, A)
    elites: Tensor  # (B, K, H, A) elite action sequences, best first
    weights: Tensor  # (B, K) softmax weights of the elites, summing to 1


def refit(
    actions: Tensor,
    value: Tensor,
    num_elites: int,
    temperature: float,
    min_std: float,
    max_std: float,
    mask: Tensor | None = None,
) -> Refit:
    """MPPI's update: the top ``num_elites`` sequences weighted by softmax(temperature * value).

    actions (B, N, H, A), value (B, N); ``mask`` (B, A) zeroes the mean and std of padded action dims.
    std = sqrt(sum_k w_k (a_k - mean)^2), clamped to [min_std, max_std] before masking.
    """
    elite_value, idx = value.topk(num_elites, dim=1)
    elites = actions.gather(1, idx[:, :, None, None].expand(-1, -1, *actions.shape[2:]))
    weights = torch.softmax(temperature * (elite_value - elite_value.max(1, keepdim=True).values), dim=1)
    w = weights[:, :, None, None]
    mean = (w * elites).sum(1)
    std = (w * (elites - mean.unsqueeze(1)).square()).sum(1).sqrt().clamp(min_std, max_std)
    if mask is not None:
        mean, std = mean * mask.unsqueeze(1), std * mask.unsqueeze(1)
    return Refit(mean, std, elites, weights)


def warm_start(prev_mean: Tensor, first: Tensor) -> Tensor:
    """The initial mean: the previous plan's mean shifted one step earlier with a zero last step, or zeros at
    an episode's first step. prev_mean (B, H, A), first (B,) bool -> (B, H, A)."""
    mean = torch.zeros_like(prev_mean)
    mean[:, :-1] = prev_mean[:, 1:]
    return mean.masked_fill(first[:, None, None], 0.0)


def sample_elite(weights: Tensor, u: Tensor) -> Tensor:
    """One index per row drawn with probabilities ``weights`` (B, K), by the Gumbel-max trick on uniforms
    ``u`` in [0, 1) of the same shape -> (B,) (TD-MPC2's ``gumbel_softmax_sample``)."""
    return (weights.log() - torch.log(-torch.log(u))).argmax(-1)


# ---------------------------------------------------------------------------------------- priors
class Prior(Protocol):
    """The policy prior and the value MPPI maximises. Rows: M = envs x samples; z (M, Z), task (M,) rows."""

    value_heads: int  # value heads of which 2 are drawn per iteration and env; 0: no draw

    def action(self, z: Tensor, task: Tensor, eps: Tensor) -> Tensor:
        """A sampled prior action (M, A) in [-1, 1], 0 on padded dims; eps (M, A) standard normal noise."""
        ...

    def reward(self, z: Tensor, a: Tensor, task: Tensor) -> Tensor:
        """r(z, a) (M, 1), in the units of :meth:`value`."""
        ...

    def discount(self, task: Tensor) -> Tensor:
        """gamma (M, 1)."""
        ...

    def value(self, z: Tensor, task: Tensor, eps: Tensor, heads: Tensor | None) -> Tensor:
        """Terminal value V(z_H) (M, 1); eps (M, A) noise for an action; heads (M, 2) the drawn heads."""
        ...


class WorldModelPrior:
    """TD-MPC2's own prior and value: pi(z) samples; rewards decoded to real units (two_hot_inv); per-task
    gamma; V(z_H) = Q(z_H, a ~ pi(z_H)), the mean of 2 randomly drawn heads of the online ensemble."""

    def __init__(self, world_model: WorldModel) -> None:
        self.wm = world_model
        self.value_heads = world_model.cfg.num_q

    def action(self, z: Tensor, task: Tensor, eps: Tensor) -> Tensor:
        # WorldModel.pi with the noise given (pi draws it from torch's global generator): tanh(mu + sigma eps)
        wm = self.wm
        mu, raw_log_std = wm._pi(wm.task_emb(z, task)).chunk(2, dim=-1)
        lo, hi = wm.cfg.log_std_min, wm.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(raw_log_std) + 1)
        return torch.tanh(mu + eps * log_std.exp()) * wm.action_masks[task]

    def reward(self, z: Tensor, a: Tensor, task: Tensor) -> Tensor:
        return two_hot_inv(self.wm.reward(z, a, task).float(), self.wm.cfg.vmin, self.wm.cfg.vmax)

    def discount(self, task: Tensor) -> Tensor:
        return self.wm.discount(task)

    def value(self, z: Tensor, task: Tensor, eps: Tensor, heads: Tensor | None) -> Tensor:
        a = self.action(z, task, eps)
        q = two_hot_inv(self.wm.Q(z, a, task, "all").float(), self.wm.cfg.vmin, self.wm.cfg.vmax)  # (Q, M, 1)
        assert heads is not None  # MPPI draws them: value_heads > 0
        return q.gather(0, heads.T.unsqueeze(-1)).mean(0)


class PolicyPrior:
    """An extracted PWM policy as prior and value: its actor's samples tanh(mu + sigma eps), masked; rewards in
    symlog units (the units its critics were trained in, docs/algorithm.md#reward-encoding-symlog-bins); its gamma;
    V(z_H) = min_k V_k(z_H)."""

    value_heads = 0

    def __init__(self, world_model: WorldModel, actor: Actor, critic: CriticEnsemble, gamma: float) -> None:
        self.wm, self.actor, self.critic, self.gamma = world_model, actor, critic, float(gamma)

    @classmethod
    def from_policy(cls, world_model: WorldModel, policy: Policy) -> PolicyPrior:
        """The actor and critics of ``policy``, which must have been extracted from ``world_model``."""
        c, m = policy.config, world_model.cfg
        if (
            (c["latent_dim"], c["act_dim"]) != (m.latent_dim, m.act_dim)
            or c["task"] not in m.task_names
            or not torch.equal(
                cast(nn.Linear, policy.encoder[0]).weight.cpu(), cast(nn.Linear, world_model._encoder[0]).weight.cpu()
            )
        ):
            raise PwmError(
                f"policy {c['task']!r} was not extracted from this world model (its encoder differs): "
                "plan with the world model the policy names as parent"
            )
        device = world_model.action_masks.device
        gamma = c.get("extract", {}).get("gamma", 0.99)
        # copies: moving the policy's own modules would split it across devices
        return cls(world_model, copy.deepcopy(policy.actor).to(device), copy.deepcopy(policy.critic).to(device), gamma)

    def action(self, z: Tensor, task: Tensor, eps: Tensor) -> Tensor:
        return self.actor(z, eps=eps) * self.wm.action_masks[task]

    def reward(self, z: Tensor, a: Tensor, task: Tensor) -> Tensor:
        return almost_two_hot_inv(self.wm.reward(z, a, task).float(), self.wm.cfg.vmin, self.wm.cfg.vmax)

    def discount(self, task: Tensor) -> Tensor:
        return torch.full((task.shape[0], 1), self.gamma, device=task.device)

    def value(self, z: Tensor, task: Tensor, eps: Tensor, heads: Tensor | None) -> Tensor:
        return self.critic.min(z).float()


# --------------------------------------------------------------------------------------- planner
class Model(Protocol):
    """What MPPI needs of a world model (:class:`WorldModel` has it): encoder, dynamics and action masks."""

    action_masks: Tensor  # (n_tasks, A)

    def encode(self, obs: Tensor, task: Tensor) -> Tensor: ...

    def next(self, z: Tensor, a: Tensor, task: Tensor) -> Tensor: ...


class MPPI:
    """TD-MPC2's MPPI over a world model for a batch of envs, with per-env warm start and generators.

    Env *slots* (0, 1, ...) name the envs across calls: slot e keeps the mean of its last plan and its own
    generator (seeded from (cfg.seed, e) until :meth:`seed` sets it). ``plan`` runs under ``torch.no_grad`` on
    the world model's device and switches the model to eval mode (no Q dropout).
    """

    def __init__(
        self, world_model: WorldModel | Model, cfg: MPPIConfig | None = None, prior: Prior | None = None
    ) -> None:
        self.cfg = cfg = MPPIConfig() if cfg is None else cfg
        validate_config(cfg)
        self.wm = world_model.eval() if isinstance(world_model, nn.Module) else world_model
        if prior is None:
            if not isinstance(world_model, WorldModel):
                raise TypeError(f"MPPI: a {type(world_model).__name__} is no WorldModel: pass its prior")
            prior = WorldModelPrior(world_model)
        self.prior = prior
        masks = world_model.action_masks
        self.device, self.n_tasks, self.act_dim = masks.device, masks.shape[0], masks.shape[1]
        self._mean = torch.zeros(0, cfg.horizon, self.act_dim, device=self.device)  # per slot: last plan's mean
        self._generators: list[torch.Generator] = []

    def seed(self, envs: Sequence[int], seeds: Sequence[int]) -> None:
        """Re-seed the generators of slots ``envs`` with ``seeds``."""
        if not len(envs):
            return
        self._grow(max(envs) + 1)
        for e, s in zip(envs, seeds):
            self._generators[e].manual_seed(int(s))

    @property
    def mean(self) -> Tensor:
        """(slots, H, A): each slot's last plan mean, the warm start of its next plan."""
        return self._mean

    @torch.no_grad()
    def plan(
        self, obs: Tensor, task: Tensor | int, first: Tensor | bool = False, envs: Tensor | Sequence[int] | None = None
    ) -> Tensor:
        """obs (B, O) padded observations -> actions (B, A) in [-1, 1], exactly 0 on padded action dims.

        task: (B,) embedding rows, or one int for all; first: (B,) or one bool, True at an episode's first
        step (no warm start); envs: (B,) distinct slots [default 0..B-1].
        """
        cfg, wm, prior, A = self.cfg, self.wm, self.prior, self.act_dim
        B, H, N, K, P = obs.shape[0], cfg.horizon, cfg.num_samples, cfg.num_elites, cfg.num_pi_trajs
        obs = obs.to(self.device, torch.float32)
        task = self._task_rows(task, B)
        first = torch.as_tensor(first, dtype=torch.bool, device=self.device).expand(B)
        envs = torch.arange(B) if envs is None else torch.as_tensor(envs, dtype=torch.long).cpu()
        if envs.shape != (B,) or envs.unique().numel() != B:
            raise ValueError(f"envs must be {B} distinct slots, got {envs.tolist()}")
        self._grow(int(envs.max()) + 1)
        noise = self._noise([self._generators[e] for e in envs.tolist()])
        mask = wm.action_masks[task]  # (B, A)
        envs = envs.to(self.device)

        with self._autocast():
            z0 = wm.encode(obs, task)  # (B, Z)

            # Policy-prior trajectories, the same in every iteration
            pi_actions = torch.zeros(B, P, H, A, device=self.device)
            if P:
                task_p = task.repeat_interleave(P)

                def prior_action(t: int, z: Tensor) -> Tensor:
                    return prior.action(z, task_p, noise.prior[:, :, t].reshape(B * P, A))

                prior_roll = imagine(wm, z0.repeat_interleave(P, 0), task_p, H, prior_action, roll_last=False)
                for t, a in enumerate(prior_roll.action):
                    pi_actions[:, :, t] = a.view(B, P, A)

            # Gaussian with warm start; the std restarts at max_std every step
            mean = warm_start(self._mean[envs], first)
            std = torch.full_like(mean, cfg.max_std)
            z0, task_n = z0.repeat_interleave(N, 0), task.repeat_interleave(N)
            for i in range(cfg.iterations):
                samples = (mean.unsqueeze(1) + std.unsqueeze(1) * noise.gauss[:, i]).clamp(-1, 1)
                actions = torch.cat([pi_actions, samples], 1) * mask[:, None, None]  # (B, N, H, A)
                heads = None if noise.heads is None else noise.heads[:, i].repeat_interleave(N, 0)
                value = self._estimate_value(
                    z0, actions.view(B * N, H, A), task_n, noise.value[:, i].reshape(B * N, A), heads
                )
                mean, std, elites, weights = refit(
                    actions, value.view(B, N).nan_to_num(0.0), K, cfg.temperature, cfg.min_std, cfg.max_std, mask
                )

        # Execute the first action of one elite drawn with the softmax weights
        a = elites[torch.arange(B, device=self.device), sample_elite(weights, noise.gumbel), 0]
        if not cfg.eval_mode:
            a = a + std[:, 0] * noise.explore
        self._mean[envs] = mean
        return a.clamp(-1, 1)

    def _estimate_value(self, z: Tensor, actions: Tensor, task: Tensor, eps: Tensor, heads: Tensor | None) -> Tensor:
        """G = sum_t gamma^t r_t + gamma^H V(z_H): z (M, Z), actions (M, H, A) -> (M,)."""
        G: Tensor | float = 0.0
        discount: Tensor | float = 1.0
        gamma = self.prior.discount(task)
        roll = imagine(
            self.wm,
            z,
            task,
            actions.shape[1],
            lambda t, _: actions[:, t],
            reward=lambda z_t, a_t: self.prior.reward(z_t, a_t, task),
        )
        for r in roll.reward:
            G = G + discount * r
            discount = discount * gamma
        return (G + discount * self.prior.value(roll.z[-1], task, eps, heads)).squeeze(-1)

    def _noise(self, generators: list[torch.Generator]) -> _Noise:
        """All random numbers of one plan, drawn per env from its own generator."""
        cfg, A, Q = self.cfg, self.act_dim, self.prior.value_heads
        B, H, N, K, P, I = (
            len(generators),
            cfg.horizon,
            cfg.num_samples,
            cfg.num_elites,
            cfg.num_pi_trajs,
            cfg.iterations,
        )
        normal_shapes = {"prior": (P, H, A), "gauss": (I, N - P, H, A), "value": (I, N, A), "explore": (A,)}
        uniform_shapes = {"heads": (I, Q), "gumbel": (K,)}

        def draw(shapes: dict[str, tuple[int, ...]], fn) -> dict[str, Tensor]:
            sizes = [int(np.prod(s)) for s in shapes.values()]
            flat = torch.stack([fn(sum(sizes), generator=g, device=self.device) for g in generators])
            return {k: x.view(B, *s) for (k, s), x in zip(shapes.items(), flat.split(sizes, dim=1))}

        normal, uniform = draw(normal_shapes, torch.randn), draw(uniform_shapes, torch.rand)
        # 2 distinct heads per env and iteration, uniformly among the pairs
        heads = uniform["heads"].argsort(-1)[..., :2] if Q else None
        return _Noise(normal["prior"], normal["gauss"], normal["value"], normal["explore"], heads, uniform["gumbel"])

    def _task_rows(self, task: Tensor | int, B: int) -> Tensor:
        rows = torch.as_tensor(task, dtype=torch.long, device=self.device).expand(B)
        if bool(((rows < 0) | (rows >= self.n_tasks)).any()):
            raise PwmError(f"task rows {rows.unique().tolist()} out of range: the model has {self.n_tasks} tasks")
        return rows

    def _grow(self, slots: int) -> None:
        while len(self._generators) < slots:
            seed = int(np.random.SeedSequence([self.cfg.seed, len(self._generators)]).generate_state(1)[0])
            self._generators.append(torch.Generator(self.device).manual_seed(seed))
        if self._mean.shape[0] < slots:
            extra = self._mean.new_zeros(slots - self._mean.shape[0], *self._mean.shape[1:])
            self._mean = torch.cat([self._mean, extra])

    def _autocast(self):
        if self.cfg.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


class _Noise(NamedTuple):
    prior: Tensor  # (B, P, H, A) prior trajectories
    gauss: Tensor  # (B, I, N - P, H, A) Gaussian samples, per iteration
    value: Tensor  # (B, I, N, A) the action inside the terminal value, per iteration
    explore: Tensor  # (B, A) exploration noise (outside eval mode)
    heads: Tensor | None  # (B, I, 2) value heads drawn per iteration
    gumbel: Tensor  # (B, K) uniforms of the final elite draw


# ----------------------------------------------------------------------------- evaluation actor
class PlannerActor:
    """MPPI as a :func:`pwm_core.evaluate.evaluate` actor (an episodic one: warm start within an episode).

    At an episode's first step the env's generator is re-seeded from (cfg.seed, task id, first observation),
    so an episode's actions depend on the episode only, not on how envs are batched (like ``random_actor``).
    Returns the first ``act_dim`` action dims [default: the model's padded width], as float32 on the CPU.
    """

    episodic = True

    def __init__(self, planner: MPPI, task_names: Sequence[str], act_dim: int | None = None) -> None:
        self.planner, self.act_dim = planner, planner.act_dim if act_dim is None else act_dim
        self._rows = {name: i for i, name in enumerate(task_names)}

    def __call__(self, obs: np.ndarray, specs: list[TaskSpec], envs: np.ndarray, first: np.ndarray) -> np.ndarray:
        missing = sorted({s.name for s in specs} - set(self._rows))
        if missing:
            raise PwmError(f"the world model was not trained on {', '.join(missing)}: cannot plan for it")
        rows = [self._rows[s.name] for s in specs]
        starts = np.flatnonzero(first)
        if len(starts):
            obs32 = np.ascontiguousarray(obs, np.float32)
            seeds = [
                int(
                    np.random.SeedSequence(
                        [self.planner.cfg.seed, specs[i].id, *obs32[i].view(np.uint32).tolist()]
                    ).generate_state(1)[0]
                )
                for i in starts
            ]
            self.planner.seed([int(envs[i]) for i in starts], seeds)
        a = self.planner.plan(
            torch.from_numpy(np.asarray(obs, np.float32)),
            torch.tensor(rows),
            torch.from_numpy(np.asarray(first, bool)),
            torch.from_numpy(np.asarray(envs)),
        )
        return a[:, : self.act_dim].float().cpu().numpy()
