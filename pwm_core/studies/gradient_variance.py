"""PWM Figure 3: variance and ESNR of first-order policy gradients through the true simulator and
through world models trained with horizons 3 and 16, against the rollout horizon H.

1. Data: ``episodes`` behaviour episodes on the differentiable double pendulum (stochastic init;
   Gaussian actions whose std is drawn per episode log-uniformly in [0.05, 1]).
2. World models: TD-MPC2's model and update (:func:`pwm_core.train.pretrain.update_world_model`) on
   the raw rewards (two-hot in symlog space), single task, no task embedding, rho 0.99, trained once
   with horizon 3 and once with horizon 16 from the same init; small widths so that CPU training takes
   about a minute.
3. Policy: TD-MPC2's policy prior pi(z) = mlp(L, [mlp_dim, mlp_dim], 2A), TD-MPC2 init, seeded, the SAME
   weights for every estimator; a = tanh(mu + sigma eps) with log sigma squashed into [-5, 0.5].
4. For each of ``samples`` start states (drawn from the stochastic init, shared by all estimators)
   and shared noise eps, the loss of horizon H is -sum_{t<H} (r_t / 21554.2305 + 1) (the official
   normalisation; no discount, no terminal value):
   * true: o_t from the simulator, z_t = h(o_t) with the horizon-16 model's encoder, a_t = pi(sg(z_t)),
     (s_{t+1}, r_t) from the Warp simulator (gradients through its adjoint);
   * wm-hK: z_0 = h(o_0), a_t = pi(sg(z_t)), r_t = R(z_t, a_t) decoded (symexp two-hot),
     z_{t+1} = d(z_t, a_t), with the horizon-K model.
   Each sample gets its own copy of the policy parameters, so one backward pass gives all per-sample
   gradients g_i (samples x P).
5. Metrics per H: variance = mean over parameters of the unbiased variance over samples; ESNR = mean
   over parameters of mean^2 / (variance + 1e-9).

Differences from the official scripts (docs/algorithm.md#studies-gradient-variance), deliberately: no synthetic
term is added to the "true" ESNR curve; curves are plotted at H (not H - 1); the true rollouts start from the same
independent start states as the model rollouts (the official ones drift along one trajectory); rewards
are decoded from the 101-bin head (the official indexes logit 0); and the policy is one explicit network
shared by all estimators.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pwm_core.config import to_dict
from pwm_core.diffsim.double_pendulum import DoublePendulum
from pwm_core.errors import PwmError
from pwm_core.nn.layers import mlp
from pwm_core.nn.math import two_hot_inv
from pwm_core.nn.sizes import WorldModelConfig
from pwm_core.nn.world_model import WorldModel
from pwm_core.studies.common import pyplot, torch_threads
from pwm_core.train.pretrain import PretrainConfig, RunningScale, held_out_metrics, make_optimizers, update_world_model

ESNR_EPS = 1e-9  # official: mean^2 / (var + 1e-9)
TRUE = "true"


@dataclass
class GradientVarianceConfig:
    """The Figure 3 experiment; the official protocol at CPU-friendly model sizes."""

    horizons: tuple[int, ...] = tuple(range(1, 51))  # rollout horizons H at which gradients are measured
    samples: int = 100  # gradient samples per horizon
    wm_horizons: tuple[int, ...] = (3, 16)  # training horizons of the world models
    episodes: int = 64  # behaviour episodes for world-model training
    episode_length: int = 100  # steps per behaviour episode
    held_out_episodes: int = 8  # extra episodes for the models' held-out errors
    wm_steps: int = 500  # updates per world model
    batch_size: int = 64  # windows per world-model update
    lr: float = 3e-4  # world-model Adam lr (TD-MPC2)
    rho: float = 0.99  # per-step loss weight (the official pedagogical config)
    enc_dim: int = 128  # encoder hidden width (official 256)
    mlp_dim: int = 128  # dynamics / reward / Q / policy hidden width (official 512)
    latent_dim: int = 64  # latent z (official 512)
    reward_scale: float = 21554.2305  # official: r / scale + 1
    min_action_std: float = 0.05  # behaviour policy: per-episode std, log-uniform in [min, max]
    max_action_std: float = 1.0
    seed: int = 0
    threads: int = 1  # torch intra-op threads while the study runs (small models: 1 is fastest)

    @classmethod
    def quick(cls, **overrides: Any) -> GradientVarianceConfig:
        """Seconds, for CI: 4 horizons, 8 samples, tiny data and models, 20 updates each."""
        return cls(
            **{
                "horizons": (1, 2, 4, 8),
                "samples": 8,
                "episodes": 8,
                "episode_length": 32,
                "held_out_episodes": 2,
                "wm_steps": 20,
                "batch_size": 16,
                "enc_dim": 32,
                "mlp_dim": 32,
                "latent_dim": 16,
                **overrides,
            }
        )


# ------------------------------------------------------------------------------------------- data
def collect(
    sim: DoublePendulum, episodes: int, cfg: GradientVarianceConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Behaviour episodes: obs (T+1, E, 6), actions (T, E, 1), rewards (T, E)."""
    T = cfg.episode_length
    start = sim.initial_state(episodes, generator)
    log_std = torch.empty(episodes).uniform_(
        math.log(cfg.min_action_std), math.log(cfg.max_action_std), generator=generator
    )
    actions = (torch.randn(T, episodes, 1, generator=generator) * log_std.exp()[:, None]).clamp(-1, 1)
    with torch.no_grad():
        states, rewards = sim.rollout(start, actions)
    return sim.observe(states), actions, rewards


def sample_windows(
    obs: Tensor, actions: Tensor, rewards: Tensor, H: int, B: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """B random (H+1)-step windows: obs (H+1, B, O), actions (H, B, A), rewards (H, B)."""
    T, E = rewards.shape
    e = torch.randint(E, (B,), generator=generator)
    t = torch.randint(T - H + 1, (B,), generator=generator)[None] + torch.arange(H + 1)[:, None]  # (H+1, B)
    return obs[t, e], actions[t[:-1], e], rewards[t[:-1], e]


# ------------------------------------------------------------------------------------ world models
def model_config(cfg: GradientVarianceConfig, sim: DoublePendulum) -> WorldModelConfig:
    """A single-task TD-MPC2 world model for the pendulum, no task embedding, log-std range [-5, 0.5]."""
    return WorldModelConfig(
        obs_dim=sim.obs_dim,
        act_dim=sim.act_dim,
        action_dims=[sim.act_dim],
        episode_lengths=[sim.episode_length],
        task_names=[sim.name],
        task_dim=0,
        enc_dim=cfg.enc_dim,
        num_enc_layers=2,
        mlp_dim=cfg.mlp_dim,
        latent_dim=cfg.latent_dim,
        num_q=2,
        log_std_min=-5.0,
        log_std_max=0.5,
    )


def train_world_model(
    mcfg: WorldModelConfig,
    data: tuple[Tensor, Tensor, Tensor],
    held_out: tuple[Tensor, Tensor, Tensor],
    horizon: int,
    cfg: GradientVarianceConfig,
    on_step: Callable[[], None] | None = None,
) -> tuple[WorldModel, dict[str, float]]:
    """TD-MPC2's update for ``cfg.wm_steps`` steps on windows of ``horizon``; returns the model and its
    last training losses plus held-out errors on 16-step windows (the same windows for every model)."""
    torch.manual_seed(cfg.seed)  # every model starts from the same weights
    model = WorldModel(mcfg)
    pcfg = PretrainConfig(horizon=horizon, batch_size=cfg.batch_size, rho=cfg.rho, lr=cfg.lr, seed=cfg.seed)
    optim, pi_optim = make_optimizers(model, pcfg)
    scale = RunningScale(pcfg.tau)
    gen = torch.Generator().manual_seed(cfg.seed)
    task = torch.zeros(cfg.batch_size, dtype=torch.long)
    metrics: dict[str, float] = {}
    for _ in range(cfg.wm_steps):
        obs, act, rew = sample_windows(*data, horizon, cfg.batch_size, gen)
        metrics = update_world_model(model, optim, pi_optim, scale, obs, act, rew, task, pcfg)
        if on_step is not None:
            on_step()
    model.eval()
    val_obs, val_act, val_rew = held_out
    H_val = min(16, val_rew.shape[0])
    obs, act, rew = sample_windows(val_obs, val_act, val_rew, H_val, 256, torch.Generator().manual_seed(cfg.seed + 1))
    with torch.no_grad():
        val = held_out_metrics(model, obs, act, rew, torch.zeros(256, dtype=torch.long), pcfg)
    return model, {
        "loss": metrics["loss"],
        "consistency": metrics["consistency"],
        "reward_ce": metrics["reward_ce"],
        **{f"val_{k}": float(v) for k, v in val.items()},
    }


# ------------------------------------------------------------------------------------------ policy
def policy_prior(latent_dim: int, hidden: int, act_dim: int, seed: int) -> nn.Sequential:
    """TD-MPC2's policy prior mlp(L, [hidden, hidden], 2A) with TD-MPC2's init (seeded)."""
    torch.manual_seed(seed)
    pi = mlp(latent_dim, [hidden, hidden], 2 * act_dim)
    with torch.no_grad():
        for m in pi.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
    return pi


def per_sample_parameters(pi: nn.Sequential, n: int) -> dict[str, Tensor]:
    """n independent leaf copies of every parameter, (n, *shape): the gradient of a sum of per-sample
    losses w.r.t. copy i is sample i's own gradient."""
    return {k: p.detach().unsqueeze(0).repeat(n, *[1] * p.ndim).requires_grad_() for k, p in pi.named_parameters()}


def act(
    params: dict[str, Tensor], z: Tensor, eps: Tensor, log_std_min: float = -5.0, log_std_max: float = 0.5
) -> Tensor:
    """The policy prior with per-sample parameters: z (n, L), eps (n, A) -> a = tanh(mu + sigma eps) (n, A).
    Layers as :func:`pwm_core.nn.layers.mlp`: NormedLinear (Linear -> LayerNorm -> Mish), then Linear."""
    n_layers = len({k.split(".")[0] for k in params})
    h = z
    for i in range(n_layers):
        h = torch.baddbmm(params[f"{i}.bias"].unsqueeze(1), h.unsqueeze(1), params[f"{i}.weight"].transpose(1, 2))
        h = h.squeeze(1)
        if i < n_layers - 1:
            h = F.layer_norm(h, h.shape[-1:]) * params[f"{i}.ln.weight"] + params[f"{i}.ln.bias"]
            h = F.mish(h)
    mu, raw = h.chunk(2, dim=-1)
    log_std = log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(raw) + 1)
    return torch.tanh(mu + eps * log_std.exp())


# ------------------------------------------------------------------------------------ rollouts
def true_rewards(
    sim: DoublePendulum,
    encoder: WorldModel,
    params: dict[str, Tensor],
    s0: Tensor,
    eps: Tensor,
    cfg: GradientVarianceConfig,
) -> Tensor:
    """Normalised rewards (H, n) of the policy in the Warp simulator; a_t = pi(sg(h(o_t)))."""
    s, rewards = s0, []
    for e in eps:
        with torch.no_grad():
            z = encoder.encode(sim.observe(s), 0)
        s, r = sim.step(s, act(params, z, e))
        rewards.append(r)
    return torch.stack(rewards) / cfg.reward_scale + 1


def model_rewards(
    model: WorldModel, params: dict[str, Tensor], obs0: Tensor, eps: Tensor, cfg: GradientVarianceConfig
) -> Tensor:
    """Normalised imagined rewards (H, n): z_0 = h(o_0), a_t = pi(sg(z_t)), r_t = R(z_t, a_t),
    z_{t+1} = d(z_t, a_t)."""
    with torch.no_grad():
        z = model.encode(obs0, 0)
    rewards = []
    for e in eps:
        a = act(params, z.detach(), e)
        rewards.append(two_hot_inv(model.reward(z, a, 0), model.cfg.vmin, model.cfg.vmax).squeeze(-1))
        z = model.next(z, a, 0)
    return torch.stack(rewards) / cfg.reward_scale + 1


def gradient_statistics(
    rewards: Tensor, params: dict[str, Tensor], horizons: tuple[int, ...]
) -> dict[str, list[float | None]]:
    """For each H: the per-sample gradients of -sum_{t<H} r_t (rewards (T, n)) w.r.t. ``params``, then
    variance = mean_p var_i g_ip and ESNR = mean_p mean_i(g_ip)^2 / (var_i g_ip + 1e-9). Non-finite -> None."""
    cumulative = rewards.cumsum(0)
    leaves = list(params.values())
    out: dict[str, list[float | None]] = {"variance": [], "esnr": [], "grad_norm": []}
    for H in horizons:
        grads = torch.autograd.grad(-cumulative[H - 1].sum(), leaves, retain_graph=True, allow_unused=True)
        g = torch.cat(
            [
                (gr if gr is not None else torch.zeros_like(p)).reshape(p.shape[0], -1).double()
                for gr, p in zip(grads, leaves)
            ],
            dim=1,
        )  # (n, P)
        var = g.var(0, unbiased=True)
        for key, value in (
            ("variance", var.mean()),
            ("esnr", (g.mean(0).pow(2) / (var + ESNR_EPS)).mean()),
            ("grad_norm", g.norm(dim=1).mean()),
        ):
            out[key].append(float(value) if torch.isfinite(value) else None)
    return out


# ------------------------------------------------------------------------------------------ study
def run_gradient_variance(
    cfg: GradientVarianceConfig, log: Callable[[str], None] | None = None, on_step: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The whole experiment; ``on_step`` is called after every world-model update (progress bars)."""
    with torch_threads(cfg.threads):
        return _run(cfg, log or (lambda message: None), on_step)


def _run(cfg: GradientVarianceConfig, log: Callable[[str], None], on_step: Callable[[], None] | None) -> dict[str, Any]:
    if not cfg.horizons or min(cfg.horizons) < 1:
        raise PwmError(f"horizons must be positive, got {list(cfg.horizons)}")
    if cfg.samples < 2:
        raise PwmError(f"samples must be at least 2 to estimate a variance, got {cfg.samples}")
    if max(cfg.wm_horizons) > cfg.episode_length:
        raise PwmError(
            f"a world-model horizon ({max(cfg.wm_horizons)}) exceeds the episode length ({cfg.episode_length})"
        )
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    sim = DoublePendulum()
    gen = torch.Generator().manual_seed(cfg.seed)
    data = collect(sim, cfg.episodes, cfg, gen)
    held_out = collect(sim, cfg.held_out_episodes, cfg, gen)
    seconds["data"] = time.perf_counter() - t_start
    log(f"collected {cfg.episodes} x {cfg.episode_length} steps on the double pendulum")

    mcfg = model_config(cfg, sim)
    models, wm_metrics = {}, {}
    for K in cfg.wm_horizons:
        t0 = time.perf_counter()
        models[f"wm-h{K}"], wm_metrics[f"wm-h{K}"] = train_world_model(mcfg, data, held_out, K, cfg, on_step)
        seconds[f"wm-h{K}"] = time.perf_counter() - t0
        m = wm_metrics[f"wm-h{K}"]
        log(
            f"world model H={K}: {cfg.wm_steps} updates in {seconds[f'wm-h{K}']:.0f} s, held-out consistency "
            f"{m['val_consistency']:.4f}, reward MAE {m['val_reward_mae']:.4f}"
        )

    pi = policy_prior(cfg.latent_dim, cfg.mlp_dim, sim.act_dim, cfg.seed)
    s0 = sim.initial_state(cfg.samples, gen)
    eps = torch.randn(max(cfg.horizons), cfg.samples, sim.act_dim, generator=gen)
    encoder = models[f"wm-h{max(cfg.wm_horizons)}"]
    curves = {}
    t0 = time.perf_counter()
    params = per_sample_parameters(pi, cfg.samples)
    curves[TRUE] = gradient_statistics(true_rewards(sim, encoder, params, s0, eps, cfg), params, cfg.horizons)
    seconds[TRUE] = time.perf_counter() - t0
    for name, model in models.items():
        t0 = time.perf_counter()
        params = per_sample_parameters(pi, cfg.samples)
        rewards = model_rewards(model, params, sim.observe(s0), eps, cfg)
        curves[name] = gradient_statistics(rewards, params, cfg.horizons)
        seconds[f"{name}-gradients"] = time.perf_counter() - t0
    log(f"gradients: {cfg.samples} samples x {len(cfg.horizons)} horizons for {len(curves)} estimators")
    seconds["total"] = time.perf_counter() - t_start
    return {
        "study": "gradient-variance",
        "config": to_dict(cfg),
        "horizons": list(cfg.horizons),
        "policy_parameters": sum(p.numel() for p in pi.parameters()),
        "curves": curves,
        "world_models": wm_metrics,
        "seconds": seconds,
    }


def table_rows(results: dict[str, Any], max_rows: int = 10) -> list[dict[str, Any]]:
    """Variance and ESNR per estimator at up to ``max_rows`` horizons (evenly spread, first and last kept)."""
    horizons = results["horizons"]
    idx = (
        sorted({round(i * (len(horizons) - 1) / (max_rows - 1)) for i in range(max_rows)})
        if len(horizons) > max_rows
        else range(len(horizons))
    )
    rows = []
    for i in idx:
        row: dict[str, Any] = {"H": horizons[i]}
        for key in ("variance", "esnr"):
            for name, c in results["curves"].items():
                row[f"{key} {name}"] = c[key][i]
        rows.append(row)
    return rows


def plot_gradient_variance(results: dict[str, Any], path: Path) -> Path:
    """Two panels against H, log scale: gradient variance and ESNR, one curve per estimator."""
    plt = pyplot()
    H = results["horizons"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {TRUE: dict(color="black", lw=2)}
    for ax, key, title in ((axes[0], "variance", "gradient variance"), (axes[1], "esnr", "ESNR")):
        for name, c in results["curves"].items():
            pts = [(h, v) for h, v in zip(H, c[key]) if v is not None and v > 0]
            if pts:
                label = "true simulator" if name == TRUE else f"world model, trained H={name.split('-h')[-1]}"
                ax.plot(*zip(*pts), label=label, **styles.get(name, {}))
        ax.set(yscale="log", xlabel="rollout horizon H", title=title)
        ax.legend(fontsize=8)
    fig.suptitle("policy-gradient statistics on the double pendulum", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
