"""SHAC, short-horizon actor-critic (Xu et al. 2022), through a differentiable simulator.

One epoch (:meth:`SHAC.epoch`, NVlabs/DiffRL ``algorithms/shac.py``; diffsim.md §5):

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils import clip_grad_norm_

from pwm_core.config import to_dict
from pwm_core.diffsim.bridge import DiffSim
from pwm_core.diffsim.cartpole import CartPole
from pwm_core.train.extract import RunningMeanStd, linear_lr, td_lambda_targets

OBS_RMS_EPS = 1e-5  # DiffRL: (x - mean) / sqrt(var + 1e-5)


@dataclass
class SHACConfig:
    """SHAC's recipe; defaults = DiffRL's cartpole swing-up config (diffsim.md §5)."""

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

    def to_dict(self) -> dict:
        return to_dict(self)


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
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, betas=cfg.betas)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, betas=cfg.betas)
        self.obs_rms = RunningMeanStd((O,)) if cfg.obs_rms else None
        self.state = self._reset_states(cfg.num_envs)
        self.t_env = torch.zeros(cfg.num_envs, dtype=torch.long)  # steps into the current episode
        self.ep_return = torch.zeros(cfg.num_envs)
        self.finished_returns: list[float] = []  # undiscounted returns of completed episodes
        self.epoch_count = 0

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
            s, r = self.sim.step(s, self.actor(o, generator=self.generator))
            self.t_env += 1
            self.ep_return += r.detach()
            bad = ~torch.isfinite(s).all(-1) | ~torch.isfinite(r)  # ends the episode, bootstrap 0
            r = torch.where(bad, torch.zeros_like(r), r)
            done = (self.t_env >= self.sim.episode_length) | bad
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
        targets = td_lambda_targets(torch.stack(rew_buf), torch.stack(next_v_buf), torch.stack(done_buf),
                                    cfg.gamma, cfg.lam)
        x, y = obs_all.reshape(h * N, -1), targets.reshape(h * N)
        size = max(h * N // cfg.critic_batches, 1)
        value_loss = 0.0
        for _ in range(cfg.critic_iterations):
            perm = torch.randperm(h * N, generator=self.generator)
            for i in range(0, h * N, size):
                idx = perm[i:i + size]
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
        return {"actor_loss": actor_loss.item(), "value_loss": value_loss, "actor_grad_norm": float(grad_norm),
                "episode_return": sum(recent) / len(recent) if recent else float("nan"),
                "actor_lr": self.actor_optim.param_groups[0]["lr"]}

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


def train_shac(cfg: SHACConfig, sim: DiffSim | None = None) -> tuple[SHAC, list[dict[str, float]]]:
    """``cfg.epochs`` SHAC epochs; returns the trainer (actor, critic, obs_rms) and the per-epoch metrics."""
    agent = SHAC(cfg, sim)
    return agent, [agent.epoch() for _ in range(cfg.epochs)]
