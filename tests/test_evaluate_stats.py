"""Aggregate statistics (rliable's definitions), bootstrap CIs, and the evaluation reports."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from pwm_core.errors import PwmError
from pwm_core.evaluate import (
    EpisodeResult,
    aggregate,
    compare,
    format_table,
    iqm,
    normalized_score,
    poi_ci,
    probability_of_improvement,
    stratified_bootstrap_ci,
    summarize,
)
from pwm_core.tasks import get_task

# --- point estimates ---------------------------------------------------------------------------


def test_iqm_is_mean_of_middle_half():
    x = np.arange(1, 9)  # drop 1, 2 and 7, 8
    assert iqm(x) == 4.5
    assert iqm(x) == scipy.stats.trim_mean(x, 0.25)


def test_iqm_pools_runs_and_tasks_like_scipy():
    x = np.random.default_rng(0).normal(size=(5, 7))  # 35 scores: floor(8.75) = 8 cut at each end
    assert iqm(x) == pytest.approx(np.sort(x.ravel())[8:27].mean())
    assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x.ravel(), 0.25))
    np.testing.assert_allclose(iqm(x, axis=0), scipy.stats.trim_mean(x, 0.25, axis=0))


def test_iqm_ignores_outliers():
    assert iqm([0.0, 1.0, 1.0, 1.0, 1.0, 1000.0, -1000.0, 1.0]) == 1.0


def test_aggregate_hand_values():
    scores = np.array([[0.2, 1.5], [0.4, 0.5]])  # task means 0.3, 1.0
    agg = aggregate(scores)
    assert agg["mean"] == pytest.approx(0.65)
    assert agg["median"] == pytest.approx(0.65)
    assert agg["iqm"] == pytest.approx(0.45)  # sorted 0.2 [0.4 0.5] 1.5
    assert agg["optimality_gap"] == pytest.approx(1 - (0.2 + 1.0 + 0.4 + 0.5) / 4)  # 1.5 clipped to 1


def test_median_is_over_task_means():
    scores = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 1.0]])  # task means 0.5, 0.5, 1.0
    assert aggregate(scores)["median"] == 0.5


def test_scores_must_be_a_finite_matrix():
    with pytest.raises(ValueError, match="runs, tasks"):
        aggregate(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        stratified_bootstrap_ci(np.array([[np.nan, 1.0]]))


def test_normalized_score():
    assert normalized_score(get_task("walker-walk"), 850.0, 0.0) == 0.85
    assert normalized_score("mw-reach", 1849.0, 1.0) == 1.0  # the return does not count
    assert normalized_score("mw-reach", 1849.0, 0.0) == 0.0


# --- bootstrap CIs -----------------------------------------------------------------------------


def test_ci_contains_point_estimate_and_is_seeded():
    scores = np.random.default_rng(1).uniform(size=(10, 6))
    lo, hi = stratified_bootstrap_ci(scores, iqm, reps=500, seed=3)
    assert lo < iqm(scores) < hi
    assert stratified_bootstrap_ci(scores, iqm, reps=500, seed=3) == (lo, hi)
    assert stratified_bootstrap_ci(scores, iqm, reps=500, seed=4) != (lo, hi)


def test_ci_shrinks_with_more_runs():
    rng = np.random.default_rng(2)
    widths = []
    for runs in (4, 64):
        lo, hi = stratified_bootstrap_ci(rng.uniform(size=(runs, 5)), iqm, reps=500)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_runs_within_each_task():
    # Every task column is constant: resampling runs inside a column never changes the matrix,
    # while resampling task columns (or mixing scores across tasks) would move the mean.
    scores = np.array([[0.0, 1.0]] * 4)
    assert stratified_bootstrap_ci(scores, lambda s: float(s.mean()), reps=200) == (0.5, 0.5)
    lo, hi = stratified_bootstrap_ci(scores, lambda s: float(s.mean()), reps=200, over="tasks")
    assert lo == 0.0 and hi == 1.0


def test_bootstrap_draws_runs_independently_per_task():
    # Identical columns: a bootstrap of whole rows would keep col0 - col1 at exactly 0.
    scores = np.array([[0.0, 0.0], [1.0, 1.0]])
    lo, hi = stratified_bootstrap_ci(scores, lambda s: float(np.mean(s[:, 0] - s[:, 1])), reps=200)
    assert lo < 0 < hi


# --- probability of improvement ----------------------------------------------------------------


def test_poi_identical_is_one_half():
    x = np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3]])
    assert probability_of_improvement(x, x) == 0.5


def test_poi_dominated():
    x, y = np.array([[2.0, 3.0], [4.0, 5.0]]), np.array([[0.0, 1.0], [1.0, 2.0], [1.5, 0.0]])
    assert probability_of_improvement(x, y) == 1.0
    assert probability_of_improvement(y, x) == 0.0


def test_poi_ties_count_half():
    # Pairs (1,2) (1,3) (2,2) (2,3): only the tie scores, 1/2 of 1/4.
    assert probability_of_improvement(np.array([[1.0], [2.0]]), np.array([[2.0], [3.0]])) == 0.125
    # Task 0 always better (1), task 1 identical (1/2): mean 3/4.
    x, y = np.array([[5.0, 1.0], [6.0, 2.0]]), np.array([[1.0, 1.0], [2.0, 2.0]])
    assert probability_of_improvement(x, y) == 0.75


def test_poi_is_mann_whitney_u_over_pairs():
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 4, size=(6, 3)).astype(float), rng.integers(0, 4, size=(9, 3)).astype(float)
    u = [scipy.stats.mannwhitneyu(x[:, m], y[:, m], alternative="greater").statistic for m in range(3)]
    assert probability_of_improvement(x, y) == pytest.approx(np.mean(u) / (6 * 9))


def test_poi_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(5)
    x, y = rng.normal(0.3, 1, size=(8, 4)), rng.normal(0.0, 1, size=(5, 4))
    lo, hi = poi_ci(x, y, reps=300, seed=1)
    assert lo <= probability_of_improvement(x, y) <= hi and 0 <= lo < hi <= 1
    assert poi_ci(x, y, reps=300, seed=1) == (lo, hi)


# --- reports -----------------------------------------------------------------------------------


def _episodes(task: str, scores: list[float], actor: str = "policy") -> list[EpisodeResult]:
    dmc = get_task(task).suite == "dmc"
    return [
        EpisodeResult(task, seed, 0, 1000 * s if dmc else 7.0, 500 if dmc else 100, 0.0 if dmc else s, s, 0.1, actor)
        for seed, s in enumerate(scores)
    ]


def test_summarize_per_task_and_aggregates():
    results = _episodes("walker-walk", [0.2, 0.4, 0.6]) + _episodes("mw-reach", [1.0, 0.0, 1.0])
    s = summarize(results, "pwm", reps=200)
    walker, reach = s["tasks"]["walker-walk"], s["tasks"]["mw-reach"]
    assert walker["n"] == 3 and walker["return_mean"] == pytest.approx(400)
    assert walker["return_std"] == pytest.approx(np.std([200, 400, 600]))
    assert walker["success_rate"] is None  # dm_control has no success signal
    assert reach["success_rate"] == pytest.approx(2 / 3) and reach["score_mean"] == pytest.approx(2 / 3)
    matrix = np.array([[0.2, 1.0], [0.4, 0.0], [0.6, 1.0]])
    for metric, value in aggregate(matrix).items():
        a = s["aggregate"][metric]
        assert a["value"] == pytest.approx(value) and a["lo"] <= a["value"] <= a["hi"]
    assert s["ci"]["over"] == "runs" and "within each task" in s["ci"]["resampling"]
    assert summarize(results, "pwm", reps=200) == s  # seeded
    table = format_table(s)
    assert "| walker-walk | 3 | 400.0" in table and "| iqm |" in table and "within each task" in table


def test_summarize_needs_equal_runs_per_task():
    with pytest.raises(PwmError, match="same number"):
        summarize(_episodes("walker-walk", [0.2, 0.4]) + _episodes("mw-reach", [1.0]))


def test_compare_gives_poi_per_pair():
    better = _episodes("walker-walk", [0.8, 0.9], "pwm") + _episodes("cup-catch", [0.7, 0.9], "pwm")
    worse = _episodes("cup-catch", [0.1, 0.2, 0.3], "random") + _episodes("walker-walk", [0.1, 0.0, 0.2], "random")
    c = compare({"pwm": better, "random": worse}, reps=200)
    (pair,) = c["pairs"]
    assert (pair["x"], pair["y"], pair["poi"], pair["lo"], pair["hi"]) == ("pwm", "random", 1.0, 1.0, 1.0)
    assert c["runs_per_task"] == {"pwm": 2, "random": 3}
    assert "| pwm | random | 1.000 |" in format_table(c)


def test_compare_needs_the_same_tasks():
    with pytest.raises(PwmError, match="different tasks"):
        compare({"a": _episodes("walker-walk", [0.5]), "b": _episodes("cup-catch", [0.5])})
