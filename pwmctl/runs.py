"""Run folders ($PWM_HOME/runs/<run-id>/): the plan a command resumes from, and its metrics log."""

from __future__ import annotations

import json
from pathlib import Path

from pwmctl.console import fail

PLAN = "plan.json"  # the resolved inputs of a run; `--resume RUN` reads them back
METRICS = "metrics.jsonl"  # one JSON object per line, appended as the run goes


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


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
