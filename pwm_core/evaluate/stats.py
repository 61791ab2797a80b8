"""Aggregate scores over tasks and runs, with rliable's estimators and stratified bootstrap CIs.

Our own numpy/scipy code (``rliable`` 1.2.0 fails to import with pandas 3 and ignores its
``random_state``); definitions follow ``google-research/rliable:rliable/metrics.py`` and
``library.py``. A score matrix is ``scores: (runs N, tasks M)``, already normalised
(:func:`normalized_score`). Bootstraps draw from an explicit ``numpy.random.Generator(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

import numpy as np
import scipy.stats

from pwm_core.tasks import TaskSpec, get_task

Statistic = Callable[[np.ndarray], float]
CiOver = Literal["runs", "tasks", "both"]
DMC_MAX_RETURN = 1000.0  # 1000 control steps, rewards in [0, 1]


def normalized_score(task: TaskSpec | str, episode_return: float, final_success: float) -> float:
    """One episode's score: DMC return / 1000 and Meta-World success at the final step (both in [0, 1]);
    diffsim: the raw return, not normalised (its tasks have no reference scale; rewards are negative costs).

    TD-MPC2 and PWM score Meta-World by ``info["success"]`` of the last step, not "ever succeeded".
    Aggregates and CIs over diffsim tasks are therefore on returns (``optimality_gap`` means nothing there).
    """
    spec = get_task(task) if isinstance(task, str) else task
    if spec.suite == "dmc":
        return float(episode_return) / DMC_MAX_RETURN
    if spec.suite == "diffsim":
        return float(episode_return)
    return float(final_success)


def _matrix(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty (runs, tasks) matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


@overload
def iqm(x: np.ndarray, axis: None = None) -> float: ...
@overload
def iqm(x: np.ndarray, axis: int) -> np.ndarray: ...
def iqm(x: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the 25% trimmed mean (drop floor(n/4) scores at each end, average the rest).

    ``axis=None`` pools every score (rliable's ``aggregate_iqm`` over runs x tasks): a float.
    """
    out = scipy.stats.trim_mean(np.asarray(x, dtype=np.float64), 0.25, axis=axis)
    return float(out) if axis is None else out


def mean(scores: np.ndarray) -> float:
    """Mean over tasks of the per-task mean over runs."""
    return float(np.mean(np.mean(scores, axis=0)))


def median(scores: np.ndarray) -> float:
    """Median over tasks of the per-task mean over runs."""
    return float(np.median(np.mean(scores, axis=0)))


def optimality_gap(scores: np.ndarray, gamma: float = 1.0) -> float:
    """gamma - mean(min(scores, gamma)): how far below the target score, on average over all runs."""
    return float(gamma - np.mean(np.minimum(scores, gamma)))


AGGREGATES: dict[str, Statistic] = {"mean": mean, "median": median, "iqm": iqm, "optimality_gap": optimality_gap}


def aggregate(scores: np.ndarray) -> dict[str, float]:
    """scores: (runs, tasks) -> {"mean", "median", "iqm", "optimality_gap" (gamma=1)}."""
    x = _matrix(scores)
    return {name: float(f(x)) for name, f in AGGREGATES.items()}


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Statistic = iqm,
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    over: CiOver = "runs",
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(scores)``, scores: (runs N, tasks M).

    Resampling axis (rliable's ``StratifiedBootstrap``): with ``over="runs"`` each replicate draws,
    **independently within each task column**, N run indices with replacement; the task set stays
    fixed, so the CI is the uncertainty over runs (seeds, episodes) on these tasks. ``"tasks"``
    resamples whole task columns instead (the PWM notebook's CI, which put tasks on rliable's runs
    axis); ``"both"`` does both (rliable's ``task_bootstrap=True``). Returns (lo, hi) at 1 - alpha.
    """
    x = _matrix(scores)
    if over not in ("runs", "tasks", "both"):
        raise ValueError(f"over must be 'runs', 'tasks' or 'both', got {over!r}")
    n, m = x.shape
    rng = np.random.default_rng(seed)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, m))
    cols = np.arange(m)[None, :]
    stats = np.empty(reps)
    for k in range(reps):
        if over != "tasks":
            rows = rng.integers(0, n, size=(n, m))  # column j draws its own N runs
        if over != "runs":
            cols = rng.integers(0, m, size=(1, m))
        stats[k] = statistic(x[rows, cols])
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) averaged over tasks; x: (runs_x, tasks), y: (runs_y, tasks), same tasks.

    Per task it is the Mann-Whitney U statistic over ``runs_x * runs_y`` pairs, i.e.
    P(X > Y) + 0.5 P(X = Y): identical samples give 0.5.
    """
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same tasks, got {x.shape[1]} and {y.shape[1]} columns")
    nx, ny = len(x), len(y)
    ranks = scipy.stats.rankdata(np.concatenate([x, y]), axis=0)  # average ranks: a tie counts 1/2
    u = ranks[:nx].sum(axis=0) - nx * (nx + 1) / 2
    return float(np.mean(u / (nx * ny)))


def poi_ci(x: np.ndarray, y: np.ndarray, reps: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of :func:`probability_of_improvement`.

    rliable's ``StratifiedIndependentBootstrap``: each replicate resamples the runs of x and,
    independently, the runs of y, with replacement within each task column.
    """
    x, y = _matrix(x, "x"), _matrix(y, "y")
    rng = np.random.default_rng(seed)
    cols = np.arange(x.shape[1])[None, :]
    stats = np.empty(reps)
    for k in range(reps):
        xs = x[rng.integers(0, len(x), size=x.shape), cols]
        ys = y[rng.integers(0, len(y), size=y.shape), cols]
        stats[k] = probability_of_improvement(xs, ys)
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
