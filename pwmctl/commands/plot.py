"""`pwmctl plot`: PNG figures of world models, policies and evaluation reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from pwmctl.console import emit, fail, info, state


def plot(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(
        ...,
        help="Artifact refs: worldmodel (losses), policy (learning curve), "
        "report (IQM with CIs, per-task returns); or run ids (`pwmctl runs ls`), "
        "running or finished.",
        show_default=False,
    ),
    out: Path = typer.Option(Path("plots"), "--out", "-o", help="Folder for the PNGs."),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Re-draw the runs' figures every --every seconds until they stop running (Ctrl-C to leave).",
    ),
    every: float = typer.Option(30.0, "--every", min=1.0, help="Seconds between re-draws with --follow."),
) -> None:
    """Plot learning curves and evaluation results from artifacts' metrics and reports, or from runs in
    progress (headless PNGs)."""
    st = state(ctx)
    reg = st.registry()
    targets = [_run_or_artifact(reg, r) for r in refs]
    for t in targets:
        if not isinstance(t, Path) and t.kind not in ("worldmodel", "policy", "report"):
            raise fail(f"{t.ref} is a {t.kind}: plot takes world models, policies and reports (or run ids)")

    def draw() -> list[str]:
        return [str(plot_run(t, out) if isinstance(t, Path) else plot_artifact(t, out)) for t in targets]

    written = draw()
    if follow:
        from pwmctl.commands.runs import run_summary

        info(
            st,
            "\n".join(f"wrote {p}" for p in written) + f"\nre-drawing every {every:g}s while running (Ctrl-C to stop)",
        )
        try:
            while any(isinstance(t, Path) and run_summary(t)["state"] == "running" for t in targets):
                time.sleep(every)
                written = draw()
        except KeyboardInterrupt:
            pass
    emit(st, {"files": written}, lambda: typer.echo("\n".join(f"wrote {p}" for p in written)))


def _run_or_artifact(reg, ref: str):
    """A run folder when ``ref`` names a run (no kind prefix, found under runs/), else the artifact."""
    if "/" not in ref and ":" not in ref and (reg.runs_dir / ref).is_dir():
        return reg.runs_dir / ref
    if "/" not in ref and ":" not in ref:
        if reg.runs_dir.is_dir() and any(p.name.startswith(ref) for p in reg.runs_dir.iterdir()):
            return reg.run_dir(ref)
        raise fail(f"{ref!r} is neither a run (`pwmctl runs ls` lists them) nor an artifact ref KIND/NAME[:vN]")
    return reg.resolve(ref)


def plot_run(run: Path, out: Path) -> Path:
    """One PNG of a run's metrics so far: world-model losses for pretrain, the learning curve otherwise."""
    from pwmctl import plots
    from pwmctl.commands.runs import run_summary
    from pwmctl.runs import METRICS

    rows = plots.read_jsonl(run / METRICS)
    if not rows:
        raise fail(f"run {run.name} has no metrics yet ({METRICS}); try again after its first logged step")
    summary = run_summary(run)
    title = f"{run.name} ({summary['state']}, step {summary['step']})"
    path = out / f"run-{run.name}.png"
    if summary["command"] == "pretrain":
        return plots.plot_world_model(rows, title, path)
    x = "step" if any("step" in r for r in rows) else "epoch"
    curve = [[r[x], r["eval_return"]] for r in rows if "eval_return" in r and x in r]
    return plots.plot_policy(rows, curve, title, path)


def plot_artifact(artifact, out: Path) -> Path:
    """One PNG for one artifact, named <kind>-<name>-v<N>.png under ``out``."""
    from pwmctl import plots

    path = out / f"{artifact.kind}-{artifact.name}-v{artifact.version}.png"
    title = artifact.ref
    if artifact.kind == "worldmodel":
        rows = plots.read_jsonl(artifact.path / "metrics.jsonl")
        if not rows:
            raise fail(f"{artifact.ref} has no training metrics (metrics.jsonl) to plot; imported models have none")
        return plots.plot_world_model(rows, title, path)
    if artifact.kind == "policy":
        curve = artifact.manifest.get("metrics", {}).get("learning_curve", [])
        return plots.plot_policy(plots.read_jsonl(artifact.path / "metrics.jsonl"), curve, title, path)
    results = json.loads((artifact.path / "results.json").read_text())
    return plots.plot_report(results, title, path)
