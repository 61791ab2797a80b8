"""Per-task and aggregate reports of evaluation episodes, comparisons between policies, tables.

A *run* is one evaluation episode, i.e. one (env seed, episode) pair of a task: the score matrix
is (runs, tasks), so confidence intervals cover the episode-to-episode variability of the
evaluated policies on these tasks, not the variability over training seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pwm_core.errors import PwmError
from pwm_core.evaluate.rollout import EpisodeResult
from pwm_core.evaluate.stats import AGGREGATES, CiOver, poi_ci, probability_of_improvement, stratified_bootstrap_ci
from pwm_core.tasks import get_task

SCORE_RULE = "DMC: return / 1000; Meta-World: success at the final step; diffsim: the raw return"
RESAMPLING = {
    "runs": "runs (seed x episode) resampled with replacement within each task",
    "tasks": "task columns resampled with replacement (runs kept)",
    "both": "task columns resampled, then runs within each",
}


def score_matrix(results: Sequence[EpisodeResult]) -> tuple[list[str], np.ndarray]:
    """The tasks (first-seen order) and scores: (runs, tasks), runs ordered by (seed, episode).

    Every task needs the same number of runs (rliable's rectangular matrix).
    """
    by_task: dict[str, list[EpisodeResult]] = {}
    for r in results:
        by_task.setdefault(r.task, []).append(r)
    if not by_task:
        raise PwmError("no evaluation episodes to report")
    counts = {t: len(rs) for t, rs in by_task.items()}
    if len(set(counts.values())) != 1:
        raise PwmError(f"every task needs the same number of episodes to aggregate, got {counts}")
    columns = [[r.score for r in sorted(rs, key=lambda r: (r.seed, r.episode))] for rs in by_task.values()]
    return list(by_task), np.array(columns, dtype=np.float64).T


def _ci_meta(reps: int, alpha: float, seed: int, over: str, method: str) -> dict:
    return {
        "level": 1 - alpha,
        "method": method,
        "over": over,
        "resampling": RESAMPLING[over],
        "reps": reps,
        "seed": seed,
    }


def summarize(
    results: Sequence[EpisodeResult],
    label: str | None = None,
    *,
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    ci_over: CiOver = "runs",
) -> dict:
    """Per-task statistics and aggregates with stratified-bootstrap CIs, as a JSON-able dict.

    ``tasks[name]``: n episodes, return mean / std (ddof 0), success rate (Meta-World only, else
    None), mean normalised score. ``aggregate[metric]``: value, lo, hi for mean, median, IQM and
    optimality gap over the (runs, tasks) score matrix; ``ci`` records how the CIs were drawn.
    """
    actors = {r.actor for r in results}
    if len(actors) > 1:
        raise PwmError(f"summarize one policy at a time, got episodes of {sorted(actors)}")
    label = label or (actors.pop() if actors else "policy")
    names, scores = score_matrix(results)
    tasks = {}
    for name in names:
        rs = [r for r in results if r.task == name]
        returns = np.array([r.ret for r in rs])
        metaworld = get_task(name).suite == "metaworld"
        tasks[name] = {
            "n": len(rs),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "success_rate": float(np.mean([r.final_success for r in rs])) if metaworld else None,
            "score_mean": float(np.mean([r.score for r in rs])),
        }
    aggregate = {}
    for metric, statistic in AGGREGATES.items():
        lo, hi = stratified_bootstrap_ci(scores, statistic, reps=reps, alpha=alpha, seed=seed, over=ci_over)
        aggregate[metric] = {"value": float(statistic(scores)), "lo": lo, "hi": hi}
    summary = {
        "label": label,
        "num_tasks": len(names),
        "runs_per_task": int(scores.shape[0]),
        "score": SCORE_RULE,
        "tasks": tasks,
        "aggregate": aggregate,
        "ci": _ci_meta(reps, alpha, seed, ci_over, "percentile stratified bootstrap"),
    }
    if scores.shape[0] == 1 and ci_over == "runs":
        summary["note"] = "one run per task: a CI over runs is a point; use ci_over='tasks' or more episodes"
    return summary


def compare(
    results: Mapping[str, Sequence[EpisodeResult]], *, reps: int = 2000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Probability of improvement P(X > Y) with a CI for every pair of labels (in the given order).

    All labels must cover the same tasks; their numbers of runs may differ.
    """
    if len(results) < 2:
        raise PwmError(f"compare needs at least two policies, got {list(results)}")
    matrices = {label: score_matrix(rs) for label, rs in results.items()}
    labels = list(matrices)
    tasks = matrices[labels[0]][0]
    for label, (names, _) in matrices.items():
        if set(names) != set(tasks):
            raise PwmError(
                f"{label!r} and {labels[0]!r} were evaluated on different tasks: {sorted(set(names) ^ set(tasks))}"
            )
    aligned = {label: m[:, [names.index(t) for t in tasks]] for label, (names, m) in matrices.items()}
    pairs = []
    for i, x in enumerate(labels):
        for y in labels[i + 1 :]:
            lo, hi = poi_ci(aligned[x], aligned[y], reps=reps, alpha=alpha, seed=seed)
            pairs.append(
                {"x": x, "y": y, "poi": probability_of_improvement(aligned[x], aligned[y]), "lo": lo, "hi": hi}
            )
    return {
        "tasks": tasks,
        "runs_per_task": {label: int(m.shape[0]) for label, m in aligned.items()},
        "score": SCORE_RULE,
        "pairs": pairs,
        "ci": _ci_meta(reps, alpha, seed, "runs", "percentile stratified independent bootstrap (x and y apart)"),
    }


def format_table(report: dict) -> str:
    """A :func:`summarize` or :func:`compare` result as markdown tables (readable as plain text)."""
    ci = report["ci"]
    level = f"{100 * ci['level']:g}%"
    footer = f"CI: {ci['method']}, {ci['resampling']}, {ci['reps']} reps, seed {ci['seed']}. Score: {report['score']}."
    if "pairs" in report:
        lines = [f"| X | Y | P(X > Y) | {level} CI |", "|---|---|---:|---|"]
        lines += [f"| {p['x']} | {p['y']} | {p['poi']:.3f} | [{p['lo']:.3f}, {p['hi']:.3f}] |" for p in report["pairs"]]
        return "\n".join(lines + ["", footer])
    lines = [
        f"{report['label']}: {report['num_tasks']} tasks x {report['runs_per_task']} runs (seed x episode)",
        "",
        "| task | n | return | success | score |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in report["tasks"].items():
        success = "-" if t["success_rate"] is None else f"{t['success_rate']:.2f}"
        lines.append(
            f"| {name} | {t['n']} | {t['return_mean']:.1f} ± {t['return_std']:.1f} | {success} "
            f"| {t['score_mean']:.3f} |"
        )
    lines += ["", f"| aggregate | value | {level} CI |", "|---|---:|---|"]
    for metric, a in report["aggregate"].items():
        lines.append(f"| {metric} | {a['value']:.3f} | [{a['lo']:.3f}, {a['hi']:.3f}] |")
    lines += ["", footer]
    if "note" in report:
        lines.append(f"Note: {report['note']}")
    return "\n".join(lines)


def format_latency(latency: Mapping[str, Mapping]) -> str:
    """``{label: Latency.to_dict()}`` as a markdown table: ms per call (mean, p50, p95; one call acts for
    every env of a lockstep step, so this is the time to an action), envs per call and ms per action."""
    lines = ["| actor | calls | envs/call | ms/call | p50 | p95 | ms/action |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, t in latency.items():
        envs = t["actions"] / t["calls"] if t["calls"] else float("nan")
        lines.append(
            f"| {label} | {t['calls']} | {envs:.1f} | {t['ms_per_call']:.2f} | {t['p50_ms_per_call']:.2f} "
            f"| {t['p95_ms_per_call']:.2f} | {t['ms_per_action']:.2f} |"
        )
    return "\n".join(lines)
