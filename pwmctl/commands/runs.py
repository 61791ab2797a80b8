"""`pwmctl runs ls | show | rm | gc`: runs in progress, interrupted or finished, watched from any terminal."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import typer
from rich.table import Table

from pwmctl.console import emit, fail, render_table, state
from pwmctl.runs import METRICS, PLAN, read_jsonl, read_status

app = typer.Typer(help="Runs in progress or finished: their state, step and latest metrics.", no_args_is_help=True)

SHOWN_METRICS = (
    "consistency",
    "reward_ce",
    "val/consistency",
    "actor_loss",
    "model_return",
    "eval_return",
    "explore_return",
    "wm_loss",
)


def run_summary(run: Path) -> dict:
    """A run's command, state, progress and latest metrics, from its plan.json, status.json and metrics.jsonl.

    State: running | interrupted | finished | published | died (a running status whose process is gone)
    | unknown (no status: an older run, or one that stopped before its first step).
    """
    plan = _read_json(run / PLAN) or {}
    status = read_status(run) or {}
    st = status.get("state", "unknown")
    if st == "running" and not _alive(status.get("pid")):
        st = "died"
    if plan.get("published") or (st == "finished" and plan.get("command") == "collect"):
        st = "published"
    metrics = dict(status.get("metrics") or {})
    if not metrics and (run / METRICS).exists():
        for row in read_jsonl(run / METRICS):
            metrics.update({k: v for k, v in row.items() if isinstance(v, (int, float))})
    return {
        "run": run.name,
        "command": plan.get("command") or run.name.split("-")[0],
        "state": st,
        "step": status.get("step"),
        "total": status.get("total"),
        "updated": status.get("updated"),
        "elapsed_s": status.get("elapsed_s"),
        "steps_per_s": status.get("steps_per_s"),
        "name": plan.get("name") or plan.get("task"),
        "metrics": metrics,
        "path": str(run),
    }


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _ago(t: float | None) -> str:
    if t is None:
        return "-"
    s = max(time.time() - t, 0)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def _brief(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in SHOWN_METRICS and isinstance(v, float))


@app.command("ls")
def ls(
    ctx: typer.Context,
    active: bool = typer.Option(False, "--active", help="Only runs still running."),
) -> None:
    """List runs (newest first): command, state, step / total, last update, latest metrics."""
    st = state(ctx)
    reg = st.registry()
    runs = (
        sorted((p for p in reg.runs_dir.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        if reg.runs_dir.is_dir()
        else []
    )
    rows = [run_summary(p) for p in runs]
    if active:
        rows = [r for r in rows if r["state"] == "running"]

    def human():
        table = Table(title=f"{len(rows)} run(s) in {reg.runs_dir}")
        for col in ("run", "state", "step", "updated", "metrics"):
            table.add_column(col)
        for r in rows:
            step = "-" if r["step"] is None else f"{r['step']}" + (f"/{r['total']}" if r["total"] else "")
            table.add_row(r["run"], r["state"], step, _ago(r["updated"]), _brief(r["metrics"]))
        typer.echo(render_table(table))

    emit(st, {"runs": rows}, human)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: str = typer.Argument(
        ..., help="A run id (or its unique start), e.g. pretrain-20261207-0102.", show_default=False
    ),
    tail: int = typer.Option(5, "--tail", min=0, help="Metrics rows to show."),
) -> None:
    """A run's plan, state, speed and its latest metrics rows (works while it runs)."""
    st = state(ctx)
    run = st.registry().run_dir(run_id)
    summary = run_summary(run)
    plan = _read_json(run / PLAN) or {}
    rows = read_jsonl(run / METRICS) if (run / METRICS).exists() else []
    doc = {**summary, "plan": plan, "rows": rows[-tail:] if tail else []}

    def human():
        step = (
            "-"
            if summary["step"] is None
            else f"{summary['step']}" + (f"/{summary['total']}" if summary["total"] else "")
        )
        rate = f", {summary['steps_per_s']:.3g} steps/s" if summary.get("steps_per_s") else ""
        typer.echo(
            f"{run.name}: {summary['command']} {summary['state']}, step {step}{rate}, "
            f"updated {_ago(summary['updated'])}"
        )
        typer.echo(f"path: {run}")
        for row in doc["rows"]:
            typer.echo("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))

    emit(st, doc, human)


@app.command("rm")
def rm(
    ctx: typer.Context,
    run_ids: list[str] = typer.Argument(..., help="Run ids to delete.", show_default=False),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete run folders (checkpoints, logs, uncommitted episodes). Refuses a run still running."""
    st = state(ctx)
    reg = st.registry()
    runs = [reg.run_dir(r) for r in run_ids]
    busy = [r.name for r in runs if run_summary(r)["state"] == "running"]
    if busy:
        raise fail(f"{', '.join(busy)} still running: stop it first (Ctrl-C or kill its process)")
    if not yes and not typer.confirm(f"delete {len(runs)} run folder(s)?", err=True):
        raise typer.Exit(1)
    for r in runs:
        shutil.rmtree(r)
    emit(st, {"removed": [r.name for r in runs]}, lambda: typer.echo("\n".join(f"removed {r.name}" for r in runs)))


@app.command("gc")
def gc(
    ctx: typer.Context,
    older_than: float = typer.Option(
        24.0, "--older-than", min=0, metavar="HOURS", help="Only runs nothing has written to for this many hours."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete old run folders that are not running (died, interrupted, finished, published, unknown),
    e.g. those failed commands left behind. An interrupted run can no longer be resumed once removed."""
    from registry.runs import newest_mtime

    st = state(ctx)
    reg = st.registry()
    runs = sorted(p for p in reg.runs_dir.glob("*") if p.is_dir()) if reg.runs_dir.is_dir() else []
    now, listed = time.time(), []
    for run in runs:
        idle_h = (now - newest_mtime(run)) / 3600
        if idle_h <= older_than:
            continue
        run_state = run_summary(run)["state"]
        if run_state != "running":  # a live process may write seldom
            listed.append({"run": run.name, "state": run_state, "idle_h": round(idle_h, 1), "path": str(run)})
    verb = "would remove" if dry_run else "removed"

    def human() -> None:
        if not listed:
            typer.echo(f"nothing to remove: no run in {reg.runs_dir} is idle for over {older_than:g} h and not running")
        for r in listed:
            typer.echo(f"{verb} {r['run']} ({r['state']}, idle {r['idle_h']:g} h)")

    if listed and not dry_run and not yes:
        for r in listed:
            typer.echo(f"{r['run']} ({r['state']}, idle {r['idle_h']:g} h)", err=True)
        if not typer.confirm(f"delete these {len(listed)} run folder(s)?", err=True):
            raise typer.Exit(1)
    if not dry_run:
        for r in listed:
            shutil.rmtree(r["path"])
    emit(st, {"dry_run": dry_run, "older_than_h": older_than, "removed": listed}, human)
