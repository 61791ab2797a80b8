"""`pwmctl plot`: PNG figures of world models, policies and evaluation reports."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pwmctl.console import emit, fail, state


def plot(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(..., help="Artifact refs: worldmodel (losses), policy (learning curve), "
                                     "report (IQM with CIs, per-task returns).", show_default=False),
    out: Path = typer.Option(Path("plots"), "--out", "-o", help="Folder for the PNGs."),
) -> None:
    """Plot learning curves and evaluation results from artifacts' metrics and reports (headless)."""
    st = state(ctx)
    reg = st.registry()
    artifacts = [reg.resolve(r) for r in refs]
    for a in artifacts:
        if a.kind not in ("worldmodel", "policy", "report"):
            raise fail(f"{a.ref} is a {a.kind}: plot takes world models, policies and reports")
    written = [str(plot_artifact(a, out)) for a in artifacts]
    emit(st, {"files": written}, lambda: typer.echo("\n".join(f"wrote {p}" for p in written)))


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
