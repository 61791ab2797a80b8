"""Policy evaluation in the real environments and honest aggregate statistics (rliable's definitions).

>>> from pwm_core.evaluate import evaluate, random_actor, summarize, format_table
>>> ev = evaluate(random_actor(act_dim=1), ["cartpole-balance"], seeds=[0, 1], episodes=2)
>>> print(format_table(summarize(ev.episodes, "random")))
"""

from pwm_core.evaluate.report import compare, format_table, score_matrix, summarize
from pwm_core.evaluate.rollout import Actor, EpisodeResult, Evaluation, Latency, Video, evaluate, lockstep, random_actor
from pwm_core.evaluate.stats import (
    aggregate,
    iqm,
    normalized_score,
    poi_ci,
    probability_of_improvement,
    stratified_bootstrap_ci,
)

__all__ = [
    "Actor",
    "EpisodeResult",
    "Evaluation",
    "Latency",
    "Video",
    "aggregate",
    "compare",
    "evaluate",
    "format_table",
    "iqm",
    "lockstep",
    "normalized_score",
    "poi_ci",
    "probability_of_improvement",
    "random_actor",
    "score_matrix",
    "stratified_bootstrap_ci",
    "summarize",
]
