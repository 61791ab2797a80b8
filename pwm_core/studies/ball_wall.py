"""PWM Figure 2: a discontinuous landscape, smooth models of it, and gradient descent on each.

A ball is thrown at launch angle theta; J(theta) = -x_T (minimise = throw furthest). A wall stops
low throws, so J jumps at the angles where the ball just clears the wall, and the optimum
(J* = -21.85 at theta = 0.123 on the official grid) sits right next to such a jump.

1. Landscape: ``analytic`` (the official closed form, default) or ``sim`` (our Warp simulator,
   where blocked balls bounce), on ``grid`` angles in [-pi, pi].
2. Models, each fit by MSE regression of J on the grid (Adam 2e-3, batch 56 drawn with replacement,
   grid // 56 steps per epoch, 100 epochs, torch seeded before each model; the official recipe):
   ``mish-ln-mlp``  mlp(1, [32, 32], 1): NormedLinear = Linear -> LayerNorm -> Mish. The official
                    script's model, which the paper's figure labels "ReLU" although it has no ReLU;
   ``relu-mlp``     Linear -> ReLU, twice, -> Linear: an actual ReLU MLP (not in the official script);
   ``simnorm-mlp``  mlp(1, [32], 32) ending LayerNorm -> SimNorm(8), then Linear(32 -> 1) (the paper's
                    "SimNorm"). Its output is a linear read-out of 4 simplices, so its range grows only as
                    fast as Adam moves the read-out weights (about lr per step). The official script
                    zeroes only the body's gradients, letting the read-out's gradients accumulate;
                    ``official_decoder_bug=True`` reproduces that.
3. Gradient descent from theta = -pi on the true landscape (autograd through the closed form, or
   Warp's adjoint through the simulator) and on each model. Adam on theta (lr 0.02, 300 steps),
   theta clipped to [-pi, pi]. Adam rather than plain GD because the true gradient vanishes at
   theta = -pi exactly (the worst throw is a stationary point) and Adam's first step goes by its sign.

Metrics per row: approximation error = RMSE of the model over the grid; descent gap = J(theta_final)
- J*, the TRUE value where the descent ended; argmin gap = J(theta_argmin) - J* at the model's own grid
minimum; official opt. error = model(theta_argmin) - J*, the model's PREDICTED minimum (the official
script's number, which restricts the MLP's argmin to theta < 0 and uses a hand-picked plateau point,
16.85, for the ground truth; we take every argmin over the whole grid and run the descents instead).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from pwm_core.config import to_dict
from pwm_core.diffsim.ball_wall import WALL_X, BallWall, analytic_landscape
from pwm_core.errors import PwmError
from pwm_core.nn.layers import SimNorm, mlp
from pwm_core.studies.common import pyplot, torch_threads

GROUND_TRUTH = "ground-truth"


@dataclass
class BallWallConfig:
    """The Figure 2 experiment; defaults = the official script, plus our descent settings."""

    landscape: Literal["analytic", "sim"] = "analytic"  # official closed form | the Warp simulator
    grid: int = 1000  # angles in linspace(-pi, pi)
    hidden: int = 32  # hidden width of every model
    epochs: int = 100  # regression epochs
    batch_size: int = 56  # regression batch, drawn uniformly with replacement
    lr: float = 2e-3  # regression Adam lr
    descent_steps: int = 300  # gradient-descent steps on theta (ours)
    descent_lr: float = 0.02  # Adam lr of the descent (ours)
    theta0: float = -math.pi  # where every descent starts
    models: tuple[str, ...] = ("mish-ln-mlp", "relu-mlp", "simnorm-mlp")
    # the official script zeroes only the SimNorm body's gradients, so its decoder's gradients pile up
    # over all steps; True reproduces that (and the official SimNorm fit), False zeroes everything
    official_decoder_bug: bool = False
    seed: int = 0  # torch seed set before each model's init and training
    threads: int = 1  # torch intra-op threads while the study runs (tiny models: 1 is fastest)

    @classmethod
    def quick(cls, **overrides: Any) -> BallWallConfig:
        """A few seconds: a coarse grid, 10 epochs, 60 descent steps (for CI)."""
        return cls(**{"grid": 200, "epochs": 10, "descent_steps": 60, **overrides})


def _mish_ln_mlp(hidden: int) -> nn.Sequential:
    return mlp(1, [hidden, hidden], 1)


def _relu_mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _simnorm_mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(mlp(1, [hidden], hidden, act=SimNorm(8)), nn.Linear(hidden, 1))


MODELS: dict[str, tuple[str, Callable[[int], nn.Sequential]]] = {
    "mish-ln-mlp": ("MLP Mish+LN (paper: 'ReLU')", _mish_ln_mlp),
    "relu-mlp": ("MLP (ReLU)", _relu_mlp),
    "simnorm-mlp": ("SimNorm MLP", _simnorm_mlp),
}


def landscape(kind: str) -> Callable[[Tensor], Tensor]:
    """J(theta) = -x_T, (N,) -> (N,) float64, differentiable in theta."""
    if kind == "analytic":
        return lambda theta: -analytic_landscape(theta.double())
    if kind == "sim":
        sim = BallWall()
        return lambda theta: -sim.throw(theta.double())
    raise PwmError(f"landscape must be 'analytic' or 'sim', got {kind!r}")


def _objective(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The fitted landscape as a descent objective: theta (N,) -> J (N,)."""
    return lambda theta: model(theta.unsqueeze(-1)).squeeze(-1)


def fit(
    model: nn.Module, theta: Tensor, J: Tensor, cfg: BallWallConfig, zeroed: nn.Module | None = None
) -> list[float]:
    """MSE regression of J (G,) on theta (G,), the official loop; returns the per-epoch mean loss.
    Only ``zeroed`` (default: the whole model) has its gradients reset between steps."""
    zeroed = model if zeroed is None else zeroed
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x, y = theta.float().unsqueeze(-1), J.float().unsqueeze(-1)
    losses = []
    for _ in range(cfg.epochs):
        total, steps = 0.0, max(len(x) // cfg.batch_size, 1)
        for _ in range(steps):
            idx = torch.randint(len(x), (cfg.batch_size,))
            loss = (model(x[idx]) - y[idx]).pow(2).mean()
            zeroed.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()
        losses.append(total / steps)
    return losses


def descend(objective: Callable[[Tensor], Tensor], cfg: BallWallConfig, dtype: torch.dtype) -> list[float]:
    """Adam on theta from ``cfg.theta0``, clipped to [-pi, pi]; returns theta_0..theta_K."""
    theta = torch.tensor([cfg.theta0], dtype=dtype, requires_grad=True)
    optim = torch.optim.Adam([theta], lr=cfg.descent_lr)
    path = [theta.item()]
    for _ in range(cfg.descent_steps):
        optim.zero_grad()
        objective(theta).sum().backward()
        optim.step()
        with torch.no_grad():
            theta.clamp_(-math.pi, math.pi)
        path.append(theta.item())
    return path


def run_ball_wall(cfg: BallWallConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole experiment; returns the results document (see :func:`table_rows` for the table)."""
    with torch_threads(cfg.threads):
        return _run(cfg, log or (lambda message: None))


def _run(cfg: BallWallConfig, log: Callable[[str], None]) -> dict[str, Any]:
    for name in cfg.models:
        if name not in MODELS:
            raise PwmError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    t_start = time.perf_counter()
    J_fn = landscape(cfg.landscape)
    theta = torch.linspace(-math.pi, math.pi, cfg.grid, dtype=torch.float64)
    with torch.no_grad():
        J = J_fn(theta)
    i_star = int(J.argmin())
    J_star, theta_star = float(J[i_star]), float(theta[i_star])
    jumps = int(((J[1:] - J[:-1]).abs() > 1.0).sum())
    log(f"landscape ({cfg.landscape}): J* = {J_star:.3f} at theta = {theta_star:.3f}, {jumps} jumps > 1 m")

    paths: dict[str, dict[str, list[float]]] = {}

    def row(name: str, label: str, path: list[float], pred: Tensor, seconds: float) -> dict[str, Any]:
        """pred: the model's J on the grid (G,) (the truth itself for the ground-truth row)."""
        with torch.no_grad():  # the true J at every descent iterate
            path_J = J_fn(torch.tensor(path, dtype=torch.float64)).tolist()
        paths[name] = {"theta": path, "J": path_J}
        k = int(pred.argmin())
        return {
            "model": name,
            "label": label,
            "approx_error": float((pred - J).pow(2).mean().sqrt()),
            "theta_final": path[-1],
            "J_final": path_J[-1],
            "optimality_gap": path_J[-1] - J_star,
            "theta_argmin": float(theta[k]),
            "argmin_gap": float(J[k]) - J_star,
            "argmin_predicted_gap": float(pred[k]) - J_star,
            "seconds": seconds,
        }

    t0 = time.perf_counter()
    rows = [row(GROUND_TRUTH, "ground truth", descend(J_fn, cfg, torch.float64), J, time.perf_counter() - t0)]
    curves = {"theta": theta.tolist(), GROUND_TRUTH: J.tolist()}
    for name in cfg.models:
        label, build = MODELS[name]
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model = build(cfg.hidden)
        fit(model, theta, J, cfg, zeroed=model[0] if name == "simnorm-mlp" and cfg.official_decoder_bug else None)
        model.eval()
        with torch.no_grad():
            pred = model(theta.float().unsqueeze(-1)).squeeze(-1).double()
        path = descend(_objective(model), cfg, torch.float32)
        rows.append(row(name, label, path, pred, time.perf_counter() - t0))
        curves[name] = pred.tolist()
        r = rows[-1]
        log(
            f"{label}: RMSE {r['approx_error']:.3f}; descent ends at theta = {r['theta_final']:.3f} "
            f"(gap {r['optimality_gap']:.2f}); its minimum is at theta = {r['theta_argmin']:.3f}"
        )
    return {
        "study": "ball-wall",
        "config": to_dict(cfg),
        "landscape": {
            "kind": cfg.landscape,
            "J_star": J_star,
            "theta_star": theta_star,
            "jumps": jumps,
            "plateau_fraction": float((J == -WALL_X).double().mean()),
        },  # balls stopped at the wall
        "rows": rows,
        "curves": curves,
        "paths": paths,
        "seconds": {"total": time.perf_counter() - t_start},
    }


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The Figure 2c table, one dict per row (column name -> value)."""
    return [
        {
            "model": r["label"],
            "approx. error": r["approx_error"],
            "descent theta": r["theta_final"],
            "descent gap": r["optimality_gap"],
            "argmin theta": r["theta_argmin"],
            "argmin gap": r["argmin_gap"],
            "official opt. err.": r["argmin_predicted_gap"],
        }
        for r in results["rows"]
    ]


def plot_ball_wall(results: dict[str, Any], path: Path) -> Path:
    """Three panels: (a) the landscape and the true descent, (b) model fits, (c) J along each descent."""
    plt = pyplot()
    curves, paths = results["curves"], results["paths"]
    theta = curves["theta"]
    labels = {r["model"]: r["label"] for r in results["rows"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(theta, curves[GROUND_TRUTH], color="black", lw=1.2)
    descent = paths[GROUND_TRUTH]
    ax.plot(descent["theta"], descent["J"], "o", ms=3, color="tab:red", alpha=0.5, label="descent")
    land = results["landscape"]
    ax.plot([land["theta_star"]], [land["J_star"]], "*", ms=12, color="gold", mec="black", label="optimum")
    ax.set(title=f"(a) landscape J = -x_T ({land['kind']})", xlabel="launch angle theta (rad)", ylabel="J")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(theta, curves[GROUND_TRUTH], color="black", lw=2, alpha=0.35, label="ground truth")
    for name in paths:
        if name != GROUND_TRUTH:
            ax.plot(theta, curves[name], lw=1.2, label=labels[name])
    ax.set(title="(b) model fits", xlabel="theta (rad)", ylabel="J")
    ax.legend(fontsize=8)
    ax = axes[2]
    for name in paths:
        ax.plot(paths[name]["J"], lw=1.5, label=labels[name], color="black" if name == GROUND_TRUTH else None)
    ax.axhline(land["J_star"], ls="--", color="gray", lw=1, label="J*")
    ax.set(title="(c) true J along gradient descent from theta = -pi", xlabel="descent step", ylabel="J(theta_k)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
