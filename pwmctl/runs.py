"""Run folders ($PWM_HOME/runs/<run-id>/): the plan a command resumes from, its metrics log and status."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from pwm_core.train.loop import LOGGERS, METRICS, STATUS, LoggerUnavailable, append_jsonl, read_jsonl, read_status
from pwm_core.train.loop import run_callbacks
from pwmctl.console import fail

PLAN = "plan.json"  # the resolved inputs of a run; `--resume RUN` reads them back

__all__ = [
    "LOGGERS",
    "METRICS",
    "PLAN",
    "STATUS",
    "append_jsonl",
    "check_loggers",
    "read_jsonl",
    "read_plan",
    "read_status",
    "published_by",
    "refuse_if_published",
    "time_budget",
    "training_callbacks",
    "write_plan",
]

TIME_LIMIT_HELP = (
    "Stop after this many minutes of training as if done (evaluate, publish); schedules are fitted "
    "to the budget after its first 5%."
)
LOGGER_HELP = "Metrics logger besides the run's metrics.jsonl (repeatable): tensorboard | wandb (offline)."


def write_plan(run: Path, plan: dict) -> None:
    (run / PLAN).write_text(json.dumps(plan, indent=2))


def read_plan(run: Path, command: str) -> dict:
    """The plan of a `pwmctl COMMAND` run; a run of another command (or none) is one clear error."""
    try:
        plan = json.loads((run / PLAN).read_text())
    except FileNotFoundError:
        raise fail(f"run {run.name} has no {PLAN}: it cannot be resumed") from None
    if plan.get("command") not in (None, command):
        raise fail(f"run {run.name} was made by `pwmctl {plan['command']}`, not `pwmctl {command}`")
    return plan


def published_by(reg, kind: str, name: str, run: Path):
    """The version of ``kind/name`` this run published (its manifest's ``extra.run``), or None. A run killed
    after its publish but before it could record it must not publish a second version on ``--resume``."""
    for artifact in reg.list(kind=kind, name=name):
        if (artifact.manifest.get("extra") or {}).get("run") == run.name:
            return artifact
    return None


def refuse_if_published(reg, kind: str, name: str, run: Path, command: str) -> None:
    """One error line when ``run`` already published ``kind/name`` (``--resume`` of a finished run)."""
    done = published_by(reg, kind, name, run)
    if done is not None:
        raise fail(
            f"run {run.name} already finished and published {done.ref}; start a new `pwmctl {command}` to train again"
        )


def check_loggers(loggers: Sequence[str] | None) -> list[str]:
    """The ``--logger`` values, checked before any work: known names whose packages are installed."""
    loggers = list(dict.fromkeys(loggers or []))
    unknown = [x for x in loggers if x not in LOGGERS]
    if unknown:
        raise fail(f"unknown --logger {', '.join(unknown)}: use tensorboard or wandb (jsonl is always written)")
    needs = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb")}
    for name in loggers:
        if name in needs:
            import importlib.util

            module, how = needs[name]
            if importlib.util.find_spec(module) is None:
                raise fail(f"--logger {name} needs the {module} package: {how}")
    return loggers


def time_budget(minutes: float | None, set_total: Callable[[int], None] | None = None) -> list:
    """A TimeBudget callback for ``--time-limit`` (none without one); put it first in the callbacks."""
    from pwm_core.train.loop import TimeBudget

    if minutes is None:
        return []
    if minutes <= 0:
        raise fail(f"--time-limit must be > 0 minutes, got {minutes:g}")
    return [TimeBudget(minutes * 60.0, set_total)]


def training_callbacks(
    run: Path,
    command: str,
    save: Callable[[], None] | None,
    checkpoint_every: int,
    checkpoint_every_s: float,
    log_every: int,
    loggers: Sequence[str],
    name: str | None,
    config: dict | None,
    step_key: str = "step",
    rate_key: str = "steps_per_s",
) -> list:
    """pwm_core's standard run callbacks (status, metrics sinks, checkpoints); a missing logger package
    is one error line."""
    try:
        return run_callbacks(
            run,
            command,
            save,
            checkpoint_every=checkpoint_every,
            checkpoint_every_s=checkpoint_every_s,
            log_every=log_every,
            loggers=loggers,
            name=name,
            config=config,
            step_key=step_key,
            rate_key=rate_key,
        )
    except LoggerUnavailable as e:
        raise fail(str(e)) from None
