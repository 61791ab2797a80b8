"""SHAC, short-horizon actor-critic (Xu et al. 2022), through a differentiable simulator.

One epoch (:meth:`SHAC.epoch`, NVlabs/DiffRL ``algorithms/shac.py``; docs/algorithm.md#shac):

1. linear lr decay to 1e-5 over ``epochs``;
2. roll the N envs on for h = 32 steps through the simulator, keeping the graph (the state is detached
   at the window's start, the envs keep running across windows): a_t = tanh(mu(o_t) + sigma eps),
   o_t normalised by running statistics (``obs_rms``);
3. actor loss = -(1 / (h N)) sum_envs [sum_t gamma^t r_t + gamma^h V_target(o_h)], where an env whose
   episode ends inside the window closes its partial return with gamma V_target of its pre-reset
   observation there and restarts its discount (no early termination in these tasks: a non-finite state
   ends the episode with a zero bootstrap);
4. backpropagate through the simulator, clip the actor's gradient norm at 1, one Adam step;
5. critic: TD(lambda) targets (lambda 0.95, gamma 0.99; the window's last step counts as done so it
   bootstraps), then 16 passes x 4 shuffled minibatches of MSE Adam steps (clip 1), then the target
   critic moves by Polyak averaging theta_targ <- alpha theta_targ + (1 - alpha) theta.

Networks are Linear -> ELU -> LayerNorm blocks; the actor has a state-independent log-std (init -1).
Defaults are the original cartpole swing-up settings (DiffRL ``cfg/shac/cartpole_swing_up.yaml``).

A trained agent is published as a policy artifact of its own format (:data:`SHAC_POLICY_FORMAT`, the same
two files as an extracted policy: ``policy.safetensors`` + ``policy.yaml``): :func:`save_shac_policy`
writes it, :class:`ShacPolicy` acts from raw observations (normalised by the saved ``obs_rms``, then
tanh(mu)), and :func:`pwm_core.policy.load_policy` reads either format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from safetensors.torch import save
from torch import Tensor
from torch.nn.utils import clip_grad_norm_

from pwm_core.config import ConfigError, from_dict, to_dict
from pwm_core.diffsim.bridge import DiffSim
from pwm_core.diffsim.cartpole import CartPole
from pwm_core.errors import PwmError
from pwm_core.io import atomic_write, read_checkpoint
from pwm_core.nn.checkpoint import load_matching, one_line
from pwm_core.seeding import global_rng_state, set_global_rng_state
from pwm_core.policy import POLICY_CONFIG_FILE, POLICY_FILE
from pwm_core.train.optim import adam
from pwm_core.train.returns import RunningMeanStd, linear_lr, td_lambda_targets

OBS_RMS_EPS = 1e-5  # DiffRL: (x - mean) / sqrt(var + 1e-5)
SHAC_CHECKPOINT_FORMAT = "pwm-shac-checkpoint"
SHAC_CHECKPOINT_VERSION = 1
SHAC_POLICY_FORMAT = "pwm-shac-policy"
SHAC_POLICY_VERSION = 1


@dataclass
class SHACConfig:
    """SHAC's recipe; defaults = DiffRL's cartpole swing-up config (docs/algorithm.md#shac)."""

    num_envs: int = 64  # parallel environments N
    horizon: int = 32  # h, steps per window (the short horizon)
    epochs: int = 500  # windows (actor updates); also the lr-decay length
    gamma: float = 0.99  # discount
    lam: float = 0.95  # TD(lambda) lambda of the critic targets
    actor_units: tuple[int, ...] = (64, 64)  # actor MLP
    critic_units: tuple[int, ...] = (64, 64)  # critic MLP
    actor_lr: float = 1e-2  # initial actor lr
    critic_lr: float = 1e-3  # initial critic lr
    lr_end: float = 1e-5  # lr reached after `epochs` (linear schedule)
    betas: tuple[float, float] = (0.7, 0.95)  # Adam betas of actor and critic
    grad_norm: float = 1.0  # gradient-norm clip of actor and critic
    critic_iterations: int = 16  # passes over the window's critic data
    critic_batches: int = 4  # minibatches per pass (N h / 4 samples each)
    target_alpha: float = 0.2  # Polyak: theta_targ <- alpha theta_targ + (1 - alpha) theta
    init_logstd: float = -1.0  # initial actor log-std
    obs_rms: bool = True  # normalise observations by running mean / std
    stochastic_init: bool = True  # random start states (DiffRL's stochastic_init)
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first field outside its allowed values (after any field changed)."""
        validate_config(self)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SHACConfig:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown keys are an error."""
        return from_dict(cls, d)


def validate_config(cfg: SHACConfig) -> None:
    """A :class:`ConfigError` naming the first setting SHAC cannot run with."""
    if min(cfg.num_envs, cfg.horizon, cfg.epochs, cfg.critic_iterations, cfg.critic_batches) < 1:
        raise ConfigError(
            "num_envs, horizon, epochs, critic_iterations and critic_batches must be >= 1, got "
            f"{cfg.num_envs}, {cfg.horizon}, {cfg.epochs}, {cfg.critic_iterations}, {cfg.critic_batches}"
        )
    if cfg.critic_batches > cfg.num_envs * cfg.horizon:
        raise ConfigError(
            f"critic_batches {cfg.critic_batches} > num_envs x horizon "
            f"({cfg.num_envs * cfg.horizon}): every minibatch needs a sample"
        )
    for key in ("gamma", "lam", "target_alpha"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {getattr(cfg, key)}")
    if min(cfg.actor_lr, cfg.critic_lr, cfg.lr_end, cfg.grad_norm) <= 0:
        raise ConfigError("actor_lr, critic_lr, lr_end and grad_norm must be > 0")
    if any(u < 1 for u in (*cfg.actor_units, *cfg.critic_units)):
        raise ConfigError(
            f"layer widths must be >= 1, got actor {list(cfg.actor_units)}, critic {list(cfg.critic_units)}"
        )


def elu_mlp(in_dim: int, units: Sequence[int], out_dim: int) -> nn.Sequential:
    """DiffRL's MLP: (Linear -> ELU -> LayerNorm) per hidden width, then Linear."""
    dims = [in_dim, *units]
    layers: list[nn.Module] = []
    for i in range(len(units)):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ELU(), nn.LayerNorm(dims[i + 1])]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class GaussianActor(nn.Module):
    """a = tanh(mu(o) + exp(logstd) eps), reparameterised; tanh(mu(o)) when deterministic."""

    def __init__(self, obs_dim: int, act_dim: int, units: Sequence[int], init_logstd: float):
        super().__init__()
        self.mu = elu_mlp(obs_dim, units, act_dim)
        self.logstd = nn.Parameter(torch.full((act_dim,), float(init_logstd)))

    def forward(self, obs: Tensor, deterministic: bool = False, generator: torch.Generator | None = None) -> Tensor:
        mu = self.mu(obs)
        if deterministic:
            return torch.tanh(mu)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return torch.tanh(mu + self.logstd.exp() * eps)


class SHAC:
    """SHAC on a :class:`~pwm_core.diffsim.bridge.DiffSim` (default: cartpole swing-up). ``epoch()`` is one
    window + actor update + critic fit; ``evaluate()`` the deterministic policy's mean episode return."""

    def __init__(self, cfg: SHACConfig, sim: DiffSim | None = None):
        self.cfg = cfg
        self.sim = sim if sim is not None else CartPole()
        if self.sim.act_dim == 0:
            raise ValueError(f"{self.sim.name} takes no action: SHAC needs a controlled simulator")
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        O, A = self.sim.obs_dim, self.sim.act_dim
        self.actor = GaussianActor(O, A, cfg.actor_units, cfg.init_logstd)
        self.critic = elu_mlp(O, cfg.critic_units, 1)
        self.target_critic = elu_mlp(O, cfg.critic_units, 1).requires_grad_(False)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.actor_optim = adam(self.actor.parameters(), lr=cfg.actor_lr, betas=cfg.betas)
        self.critic_optim = adam(self.critic.parameters(), lr=cfg.critic_lr, betas=cfg.betas)
        self.obs_rms = RunningMeanStd((O,)) if cfg.obs_rms else None
        self.state = self._reset_states(cfg.num_envs)
        self.t_env = torch.zeros(cfg.num_envs, dtype=torch.long)  # steps into the current episode
        self.ep_return = torch.zeros(cfg.num_envs)
        self.finished_returns: list[float] = []  # undiscounted returns of completed episodes
        self.epoch_count = 0
        self.recorder: TrainingRecorder | None = None  # set by record_episodes()

    def record_episodes(self, writer: Any, num_envs: int, task: str) -> TrainingRecorder:
        """Record the complete training episodes of envs ``0..num_envs-1`` (observations, the sampled
        actions, rewards) into ``writer`` (an :class:`~pwm_core.data.EpisodeWriter`) as ``task``; they
        are written at each :meth:`save_checkpoint`, so the dataset and the checkpoint always agree."""
        if not 1 <= num_envs <= self.cfg.num_envs:
            raise ConfigError(f"can record 1..{self.cfg.num_envs} envs (num_envs), got {num_envs}")
        self.recorder = TrainingRecorder(
            writer, num_envs, self.sim.episode_length, self.sim.obs_dim, self.sim.act_dim, task
        )
        return self.recorder

    def _reset_states(self, n: int) -> Tensor:
        return self.sim.initial_state(n, self.generator, stochastic=self.cfg.stochastic_init)

    def normalize(self, obs: Tensor) -> Tensor:
        if self.obs_rms is None:
            return obs
        return (obs - self.obs_rms.mean) / torch.sqrt(self.obs_rms.var + OBS_RMS_EPS)

    def epoch(self) -> dict[str, float]:
        """One SHAC iteration; returns actor_loss, value_loss, actor_grad_norm, episode_return (mean over
        the episodes finished so far, last 100; NaN before the first) and the current lrs."""
        cfg, N, h = self.cfg, self.cfg.num_envs, self.cfg.horizon
        for optim, lr0 in ((self.actor_optim, cfg.actor_lr), (self.critic_optim, cfg.critic_lr)):
            for group in optim.param_groups:
                group["lr"] = linear_lr(self.epoch_count, cfg.epochs, lr0, cfg.lr_end)

        # 2-3. the window through the simulator, with the graph; gradients are cut at its start
        s = self.state.detach()
        obs_buf, rew_buf, done_buf, next_v_buf = [], [], [], []
        discount = torch.ones(N)  # gamma^t since each env's episode (or the window) started
        ret = torch.zeros(N)  # discounted partial return with gradient
        loss = torch.zeros(())
        for t in range(h):
            obs = self.sim.observe(s)
            if self.obs_rms is not None:
                self.obs_rms.update(obs.detach())
            o = self.normalize(obs)
            obs_buf.append(o.detach())
            a = self.actor(o, generator=self.generator)
            s, r = self.sim.step(s, a)
            self.t_env += 1
            self.ep_return += r.detach()
            bad = ~torch.isfinite(s).all(-1) | ~torch.isfinite(r)  # ends the episode, bootstrap 0
            r = torch.where(bad, torch.zeros_like(r), r)
            done = (self.t_env >= self.sim.episode_length) | bad
            if self.recorder is not None:
                self.recorder.step(
                    self.t_env - 1, obs.detach(), a.detach(), r.detach(), self.sim.observe(s.detach()), done, bad
                )
            next_obs = self.normalize(self.sim.observe(torch.where(bad[:, None], torch.zeros_like(s), s)))
            next_v = self.target_critic(next_obs).squeeze(-1)  # pre-reset obs at a time-limit end
            next_v = torch.where(bad, torch.zeros_like(next_v), next_v)
            ret = ret + discount * r
            closes = done if t < h - 1 else torch.ones_like(done)  # every env closes at the window's end
            loss = loss - (ret + cfg.gamma * discount * next_v)[closes].sum()
            rew_buf.append(r.detach())
            next_v_buf.append(next_v.detach())
            done_buf.append(closes.float())
            discount = torch.where(done, torch.ones_like(discount), discount * cfg.gamma)
            ret = torch.where(done, torch.zeros_like(ret), ret)
            if done.any():
                self.finished_returns += self.ep_return[done].tolist()
                self.ep_return[done] = 0.0
                self.t_env[done] = 0
                s = torch.where(done[:, None], self._reset_states(N).to(s.dtype), s)
        self.state = s.detach()
        actor_loss = loss / (h * N)

        # 4. actor step through the simulator's gradients
        self.actor_optim.zero_grad()
        actor_loss.backward()
        grad_norm = clip_grad_norm_(self.actor.parameters(), cfg.grad_norm)
        self.actor_optim.step()

        # 5. critic on TD(lambda) targets, then the Polyak target update
        obs_all = torch.stack(obs_buf)  # (h, N, O)
        targets = td_lambda_targets(
            torch.stack(rew_buf), torch.stack(next_v_buf), torch.stack(done_buf), cfg.gamma, cfg.lam
        )
        x, y = obs_all.reshape(h * N, -1), targets.reshape(h * N)
        size = max(h * N // cfg.critic_batches, 1)
        value_loss = 0.0
        for _ in range(cfg.critic_iterations):
            perm = torch.randperm(h * N, generator=self.generator)
            for i in range(0, h * N, size):
                idx = perm[i : i + size]
                loss_v = (self.critic(x[idx]).squeeze(-1) - y[idx]).pow(2).mean()
                self.critic_optim.zero_grad()
                loss_v.backward()
                clip_grad_norm_(self.critic.parameters(), cfg.grad_norm)
                self.critic_optim.step()
                value_loss = loss_v.item()
        with torch.no_grad():
            for p_targ, p in zip(self.target_critic.parameters(), self.critic.parameters()):
                p_targ.mul_(cfg.target_alpha).add_(p, alpha=1 - cfg.target_alpha)

        self.epoch_count += 1
        recent = self.finished_returns[-100:]
        return {
            "actor_loss": actor_loss.item(),
            "value_loss": value_loss,
            "actor_grad_norm": float(grad_norm),
            "episode_return": sum(recent) / len(recent) if recent else float("nan"),
            "actor_lr": self.actor_optim.param_groups[0]["lr"],
        }

    @torch.no_grad()
    def evaluate(self, num_envs: int = 16, seed: int = 1234) -> float:
        """Mean undiscounted return of full episodes with the deterministic policy tanh(mu(o))."""
        gen = torch.Generator().manual_seed(seed)
        s = self.sim.initial_state(num_envs, gen, stochastic=self.cfg.stochastic_init)
        total = torch.zeros(num_envs)
        for _ in range(self.sim.episode_length):
            s, r = self.sim.step(s, self.actor(self.normalize(self.sim.observe(s)), deterministic=True))
            total += r
        return float(total.mean())

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bitwise: networks, optimisers, obs statistics, the
        envs' states mid-episode and every random generator."""
        return {
            "format": SHAC_CHECKPOINT_FORMAT,
            "version": SHAC_CHECKPOINT_VERSION,
            "epoch": self.epoch_count,
            "config": self.cfg.to_dict(),
            "sim": self.sim.name,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "obs_rms": self.obs_rms.state_dict() if self.obs_rms is not None else {},
            "state": self.state.clone(),
            "t_env": self.t_env.clone(),
            "ep_return": self.ep_return.clone(),
            "finished_returns": torch.tensor(self.finished_returns[-100:], dtype=torch.float64),
            "rng": {**global_rng_state(), "generator": self.generator.get_state()},
            **({"recorder": self.recorder.state_dict()} if self.recorder is not None else {}),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same simulator and network shapes; ``epochs`` may differ)."""
        if sd.get("sim") != self.sim.name:
            raise PwmError(f"the checkpoint trains on {sd.get('sim')!r}, not {self.sim.name!r}")
        try:
            self.actor.load_state_dict(sd["actor"])
            self.critic.load_state_dict(sd["critic"])
            self.target_critic.load_state_dict(sd["target_critic"])
        except RuntimeError as e:
            raise PwmError(f"the checkpoint's networks do not match this config: {one_line(e)}") from None
        self.actor_optim.load_state_dict(sd["actor_optim"])
        self.critic_optim.load_state_dict(sd["critic_optim"])
        if self.obs_rms is not None and sd["obs_rms"]:
            self.obs_rms.load_state_dict(sd["obs_rms"])
        if sd["state"].shape[0] != self.cfg.num_envs:
            raise PwmError(f"the checkpoint runs {sd['state'].shape[0]} envs, this config {self.cfg.num_envs}")
        self.state, self.t_env, self.ep_return = sd["state"].clone(), sd["t_env"].clone(), sd["ep_return"].clone()
        self.finished_returns = sd["finished_returns"].tolist()
        self.epoch_count = int(sd["epoch"])
        set_global_rng_state(sd["rng"])
        self.generator.set_state(sd["rng"]["generator"])
        if self.recorder is not None:
            self.recorder.load_state_dict(sd.get("recorder"))

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` atomically (temporary file + rename), after committing the recorded
        episodes (a crash between the two is undone on load: the dataset is cut back to the checkpoint's count)."""
        if self.recorder is not None:
            self.recorder.flush()
        atomic_write(Path(path), lambda f: torch.save(self.state_dict(), f))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Continue from a file written by :meth:`save_checkpoint` (read with ``weights_only=True``)."""
        sd = read_checkpoint(path, SHAC_CHECKPOINT_FORMAT, SHAC_CHECKPOINT_VERSION, "SHAC")
        self.load_state_dict(sd)


class TrainingRecorder:
    """The complete episodes of the first K training envs, as SHAC ran them (raw observations, the sampled
    actions with their exploration noise, rewards): the data of PWM's dflex protocol, where the world model
    learns from a SHAC run. Only episodes recorded from their first step are kept; one that ends on a
    non-finite state is dropped. Finished episodes wait in memory until :meth:`flush` commits them (at
    every checkpoint); :meth:`state_dict` holds the unfinished ones and the committed count."""

    def __init__(self, writer: Any, num_envs: int, episode_length: int, obs_dim: int, act_dim: int, task: str):
        self.writer, self.k, self.L, self.task = writer, num_envs, episode_length, task
        self.obs = torch.zeros(num_envs, episode_length + 1, obs_dim)
        self.action = torch.zeros(num_envs, episode_length, act_dim)
        self.reward = torch.zeros(num_envs, episode_length)
        self.live = torch.zeros(num_envs, dtype=torch.bool)  # recording since the episode's first step
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []  # finished, not yet committed
        self.committed = writer.num_episodes

    @torch.no_grad()
    def step(
        self, t: Tensor, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, done: Tensor, bad: Tensor
    ) -> None:
        """One env step of all envs: ``t`` (N,) the step index inside each episode, ``obs`` before and
        ``next_obs`` after it (pre-reset), ``done`` / ``bad`` as in :meth:`SHAC.epoch`."""
        k, idx = self.k, torch.arange(self.k)
        t = t[:k]
        self.live |= t == 0
        self.obs[idx, t] = obs[:k].float()
        self.obs[idx, t + 1] = torch.nan_to_num(next_obs[:k].float())
        self.action[idx, t] = action[:k].float()
        self.reward[idx, t] = torch.nan_to_num(reward[:k].float())
        ended = done[:k]
        keep = ended & self.live & ~bad[:k] & (t == self.L - 1)
        if keep.any():
            self.pending.append((self.obs[keep].clone(), self.action[keep].clone(), self.reward[keep].clone()))
        self.live &= ~ended

    def flush(self) -> None:
        """Commit the finished episodes (one write)."""
        if self.pending:
            obs, action, reward = (torch.cat(x).numpy() for x in zip(*self.pending))
            self.writer.append_episodes(obs, action, reward, [self.task] * obs.shape[0])
            self.pending = []
        self.committed = self.writer.num_episodes

    def state_dict(self) -> dict[str, Any]:
        if self.pending:
            raise RuntimeError("flush() the recorded episodes before taking the state")
        return {
            "committed": self.committed,
            "obs": self.obs.clone(),
            "action": self.action.clone(),
            "reward": self.reward.clone(),
            "live": self.live.clone(),
        }

    def load_state_dict(self, sd: dict[str, Any] | None) -> None:
        """Continue from :meth:`state_dict`; episodes committed after that checkpoint are removed from the
        dataset (the resumed run records them again). ``None`` (a checkpoint of a run that did not
        record): start with nothing in progress."""
        self.pending = []
        if sd is None:
            self.live[:] = False
            return
        if self.writer.num_episodes > sd["committed"]:
            self.writer.truncate(sd["committed"])
        self.committed = self.writer.num_episodes
        if sd["obs"].shape != self.obs.shape:
            raise PwmError(f"the checkpoint records {sd['obs'].shape[0]} envs, this run {self.k}")
        self.obs, self.action, self.reward = sd["obs"].clone(), sd["action"].clone(), sd["reward"].clone()
        self.live = sd["live"].clone()


def train_shac(cfg: SHACConfig, sim: DiffSim | None = None) -> tuple[SHAC, list[dict[str, float]]]:
    """``cfg.epochs`` SHAC epochs; returns the trainer (actor, critic, obs_rms) and the per-epoch metrics."""
    agent = SHAC(cfg, sim)
    return agent, [agent.epoch() for _ in range(cfg.epochs)]


# ------------------------------------------------------------------------------ policy artifact
_POLICY_KEYS = ("task", "obs_dim", "act_dim", "task_obs_dim", "task_act_dim", "actor_units", "critic_units")


def shac_policy_config(agent: SHAC, task: str) -> dict[str, Any]:
    """The plain-data half of a SHAC policy artifact (policy.yaml): dims, layer widths, provenance."""
    O, A = agent.sim.obs_dim, agent.sim.act_dim
    return {
        "format": SHAC_POLICY_FORMAT,
        "version": SHAC_POLICY_VERSION,
        "task": task,
        "simulator": agent.sim.name,
        "obs_dim": O,
        "act_dim": A,
        "task_obs_dim": O,
        "task_act_dim": A,
        "actor_units": list(agent.cfg.actor_units),
        "critic_units": list(agent.cfg.critic_units),
        "epochs": agent.epoch_count,
        "shac": agent.cfg.to_dict(),
    }


@torch.no_grad()
def shac_policy_tensors(agent: SHAC) -> dict[str, Tensor]:
    """The tensor half, under :class:`ShacPolicy`'s state-dict keys: ``actor.*``, ``critic.*`` and the
    observation statistics ``obs_rms_{mean,var}`` (mean 0 / var 1 - 1e-5 without ``obs_rms``: identity)."""
    tensors = {f"actor.{k}": v for k, v in agent.actor.state_dict().items()}
    tensors.update({f"critic.{k}": v for k, v in agent.critic.state_dict().items()})
    O = agent.sim.obs_dim
    if agent.obs_rms is not None:
        tensors["obs_rms_mean"], tensors["obs_rms_var"] = agent.obs_rms.mean, agent.obs_rms.var
    else:
        tensors["obs_rms_mean"], tensors["obs_rms_var"] = torch.zeros(O), torch.full((O,), 1.0 - OBS_RMS_EPS)
    return {k: v.detach().float().cpu().contiguous().clone() for k, v in tensors.items()}


class ShacPolicy(nn.Module):
    """A SHAC policy that acts from raw observations: a = tanh(mu((o - mean) / sqrt(var + 1e-5))).

    The counterpart of :class:`pwm_core.policy.Policy` for SHAC artifacts (same ``act`` /
    ``value`` / ``config`` interface, no world model, no task embedding, no padding beyond the task's).
    """

    obs_rms_mean: Tensor  # buffers
    obs_rms_var: Tensor

    def __init__(self, config: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        missing = [k for k in _POLICY_KEYS if k not in config]
        if missing:
            raise PwmError(f"SHAC policy config: missing keys {', '.join(missing)}")
        self.config = c = dict(config)
        self.actor = GaussianActor(c["obs_dim"], c["act_dim"], list(c["actor_units"]), -1.0)
        self.critic = elu_mlp(c["obs_dim"], list(c["critic_units"]), 1)
        self.register_buffer("obs_rms_mean", torch.zeros(c["obs_dim"]))
        self.register_buffer("obs_rms_var", torch.ones(c["obs_dim"]))
        if tensors is not None:
            self.load_tensors(tensors)
        self.eval()

    @classmethod
    def from_shac(cls, agent: SHAC, task: str) -> ShacPolicy:
        """The agent's current policy, on the CPU."""
        return cls(shac_policy_config(agent, task), shac_policy_tensors(agent))

    def load_tensors(self, tensors: dict[str, Tensor], where: str = "policy tensors") -> None:
        """Load :func:`shac_policy_tensors`; any missing, unexpected or mis-shaped tensor is one PwmError."""
        load_matching(self, tensors, f"{where} do not match the policy config")

    def normalize(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_rms_mean) / torch.sqrt(self.obs_rms_var + OBS_RMS_EPS)

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """obs (N, obs_dim) -> actions (N, act_dim) in [-1, 1], float32; one obs (obs_dim,) gives (act_dim,).
        Stochastic actions (tanh of the Gaussian) draw from torch's global generator."""
        a = self.actor(self.normalize(self._obs(obs)), deterministic=deterministic).float().cpu().numpy()
        return a[0] if np.ndim(obs) == 1 else a

    @torch.no_grad()
    def value(self, obs: np.ndarray | Tensor) -> np.ndarray:
        """V(o) in return units: obs as in :meth:`act` -> (N,) (or a scalar)."""
        v = self.critic(self.normalize(self._obs(obs))).squeeze(-1).float().cpu().numpy()
        return v[0] if np.ndim(obs) == 1 else v

    def _obs(self, obs: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.obs_rms_mean.device)
        x = x.unsqueeze(0) if x.ndim == 1 else x
        if x.shape[-1] != self.config["obs_dim"]:
            raise PwmError(
                f"observations have {x.shape[-1]} dims; policy {self.config['task']!r} takes {self.config['obs_dim']}"
            )
        return x


def save_shac_policy(agent: SHAC, task: str, folder: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``folder/policy.safetensors`` and ``folder/policy.yaml`` (each atomically) for ``task`` (the
    diffsim task name, e.g. ``diffsim-cartpole-swingup``); ``metadata`` goes under ``metadata`` in the YAML."""
    folder = Path(folder)
    config = shac_policy_config(agent, task)
    if metadata:
        config["metadata"] = metadata
    data = save(shac_policy_tensors(agent), metadata={"format": SHAC_POLICY_FORMAT})
    atomic_write(folder / POLICY_FILE, lambda f: f.write(data))
    text = yaml.safe_dump(config, sort_keys=False).encode()
    atomic_write(folder / POLICY_CONFIG_FILE, lambda f: f.write(text))
    return folder


def load_shac_policy(
    folder: str | os.PathLike, config: dict[str, Any], device: str | torch.device = "cpu"
) -> ShacPolicy:
    """Rebuild a SHAC policy from its folder and its already-read ``policy.yaml`` (what
    :func:`~pwm_core.policy.load_policy` calls for this format); any problem is a one-line PwmError."""
    folder = Path(folder)
    if config.get("version", 0) > SHAC_POLICY_VERSION:
        raise PwmError(f"{folder} holds a SHAC policy of a newer pwmctl (version {config['version']}); upgrade pwmctl")
    from pwm_core.policy import build_policy

    return build_policy(ShacPolicy, folder, config, device)
