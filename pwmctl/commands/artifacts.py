"""`pwmctl ls | show | rm | verify`: the local artifact registry."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from pwmctl.console import emit, fail, human_size, render_table, state

KINDS = ("dataset", "worldmodel", "policy", "report")


def _summary(a) -> dict:
    return {
        "ref": a.ref,
        "kind": a.kind,
        "name": a.name,
        "version": a.version,
        "created": a.created,
        "tasks": a.tasks,
        "parents": a.parents,
        "size_bytes": a.size_bytes,
        "metrics": a.metrics,
        "path": str(a.path),
    }


def ls(
    ctx: typer.Context,
    kind: str = typer.Argument(None, help="dataset | worldmodel | policy | report [default: all]."),
    task: str = typer.Option(None, "--task", help="Only artifacts covering this task."),
    all_versions: bool = typer.Option(False, "--all", "-a", help="Every version, not only the latest of each name."),
) -> None:
    """List artifacts, newest version of each name first."""
    st = state(ctx)
    if kind is not None and kind not in KINDS:
        raise fail(f"unknown artifact kind {kind!r}: use one of {', '.join(KINDS)}")
    if task is not None:
        from pwm_core.tasks import get_task

        get_task(task)  # a typo gets a suggestion instead of an empty list
    artifacts = st.registry().list(kind=kind, task=task)
    if not all_versions:
        seen: set[tuple[str, str]] = set()
        artifacts = [a for a in artifacts if (a.kind, a.name) not in seen and not seen.add((a.kind, a.name))]

    def human() -> None:
        if st.verbosity < 0:  # -q: refs only, for scripts
            typer.echo("\n".join(a.ref for a in artifacts))
            return
        if not artifacts:
            typer.echo(
                "no artifacts"
                + (f" of kind {kind}" if kind else "")
                + (f" for {task}" if task else "")
                + f" in {st.home}"
            )
            return
        table = Table()
        table.add_column("artifact", no_wrap=True)
        table.add_column("created", no_wrap=True)
        for col in ("tasks", "size", "summary"):
            table.add_column(col)
        for a in artifacts:
            tasks = ", ".join(a.tasks[:3]) + (f" +{len(a.tasks) - 3}" if len(a.tasks) > 3 else "")
            table.add_row(a.ref, a.created[:19].replace("T", " "), tasks, human_size(a.size_bytes), _metrics_line(a))
        typer.echo(render_table(table))

    emit(st, {"home": str(st.home), "artifacts": [_summary(a) for a in artifacts]}, human)


def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Artifact ref: kind/name[:vN]."),
    lineage_only: bool = typer.Option(False, "--lineage", help="Only the parent tree, with Hub ids."),
) -> None:
    """Manifest, files and lineage of one artifact version."""
    st = state(ctx)
    reg = st.registry()
    a = reg.resolve(ref)
    lineage = reg.lineage(a.ref)
    children = [c.ref for c in reg.children(a.ref)]
    hub = [{"hub_id": r.hub_id, **r.to_dict(), "url": r.url} for r in lineage.remotes]
    doc = {**_summary(a), "manifest": a.manifest, "children": children, "hub": hub, "lineage": _lineage_dict(lineage)}

    def human() -> None:
        if lineage_only:
            typer.echo("\n".join(_lineage_lines(lineage)))
            return
        typer.echo(f"{a.ref}  created {a.created}  {human_size(a.size_bytes)}  {a.path}")
        for r in lineage.remotes:
            typer.echo(f"hub: {r.hub_id}  commit {r.commit_sha}  {r.url}")
        if a.tasks:
            typer.echo(f"tasks: {', '.join(a.tasks)}")
        for key in ("config", "metrics"):
            if a.manifest.get(key):
                typer.echo(f"{key}: {json.dumps(a.manifest[key], default=str)}")
        files = a.manifest.get("files", {})
        typer.echo(f"files: {len(files)} ({human_size(sum(f['size'] for f in files.values()))})")
        for path, f in list(files.items())[:10]:
            typer.echo(f"  {path}  {human_size(f['size'])}  sha256 {f['sha256'][:12]}")
        if len(files) > 10:
            typer.echo(f"  ... {len(files) - 10} more (--format json lists all)")
        typer.echo("lineage:")
        for line in _lineage_lines(lineage):
            typer.echo("  " + line)
        if children:
            typer.echo(f"used by: {', '.join(children)}")

    emit(st, doc, human)


def rm(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Artifact ref: kind/name:vN (a version must be named)."),
    force: bool = typer.Option(False, "--force", help="Remove even if other artifacts name it as a parent."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete one artifact version from the registry (also an index entry whose folder is gone)."""
    from registry.refs import parse_ref

    st = state(ctx)
    reg = st.registry()
    parsed = parse_ref(ref)
    if parsed.version is None:  # never "whichever is newest" for a deletion
        versions = [f"v{a.version}" for a in reg.list(parsed.kind, name=parsed.name)]
        have = f" ({parsed.kind}/{parsed.name} has {', '.join(reversed(versions))})" if versions else ""
        raise fail(f"name the version to delete: `pwmctl rm {parsed.kind}/{parsed.name}:vN`{have}")
    a = reg.find(parsed)
    present = a.path.is_dir()
    what = human_size(a.size_bytes) if present else "its folder is already gone"
    if not yes and not typer.confirm(f"delete {a.ref} ({what})?", err=True):
        raise typer.Exit(1)
    reg.remove(a.ref, force=force)
    emit(
        st,
        {"removed": a.ref, "folder_was_missing": not present},
        lambda: typer.echo(f"removed {a.ref}" + ("" if present else " (index entry; its folder was already gone)")),
    )


def verify(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Artifact ref: kind/name[:vN]."),
    remote: bool = typer.Option(
        False,
        "--remote",
        help="Also compare with the manifest.json of each Hub commit it was pushed to or pulled from.",
    ),
) -> None:
    """Re-hash every file of an artifact version against its manifest (and its Hub copies')."""
    st = state(ctx)
    reg = st.registry()
    a = reg.resolve(ref)
    problems = reg.verify(a.ref)
    doc = {
        "ref": a.ref,
        "ok": not problems,
        "files": len(a.manifest.get("files", {})),
        "problems": [{"path": p.path, "problem": p.problem} for p in problems],
    }
    remotes = []
    if remote:
        from registry.hub import verify_remote

        remotes = verify_remote(reg, a.ref)
        doc["remotes"] = [
            {
                "hub_id": r.hub_id,
                **r.to_dict(),
                "ok": not bad,
                "problems": [{"path": p.path, "problem": p.problem, "detail": p.detail} for p in bad],
            }
            for r, bad in remotes
        ]
        doc["ok"] = doc["ok"] and all(not bad for _, bad in remotes)

    def human() -> None:
        if not problems:
            typer.echo(f"{a.ref}: ok, {doc['files']} files match the manifest")
        for p in problems:
            typer.echo(f"{a.ref}: {p.path}: {p.problem}")
        for r, bad in remotes:
            if not bad:
                typer.echo(f"{a.ref}: ok, same files as {r.hub_id} (commit {r.commit_sha[:12]})")
            for p in bad:
                typer.echo(f"{a.ref}: {p.path}: {p.problem} vs {r.hub_id} ({p.detail})")

    emit(st, doc, human)
    if not doc["ok"]:
        raise typer.Exit(1)


# The metrics worth a glance in `ls`, per kind (all of them are in `show` and --format json).
_SUMMARY_KEYS = {
    "dataset": ("episodes", "transitions", "mean_return"),
    "worldmodel": ("steps", "val/consistency", "val/reward_mae"),
}


def _metrics_line(a) -> str:
    m = a.metrics or {}
    keys = _SUMMARY_KEYS.get(a.kind) or [k for k, v in m.items() if isinstance(v, (int, float))][:3]
    parts = [
        f"{k.removeprefix('val/')} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in keys if k in m
    ]
    return ", ".join(parts)


def _lineage_dict(node) -> dict:
    return {
        "ref": node.ref,
        "local": node.exists,
        "hub": [r.hub_id for r in node.remotes],
        "parents": [_lineage_dict(p) for p in node.parents],
    }


def _lineage_lines(node, depth: int = 0, seen: set[str] | None = None) -> list[str]:
    """The parent tree, one line per node; a node drawn before is named again without its parents."""
    seen = set() if seen is None else seen
    hub = ", ".join(f"{r.hub_id} ({r.commit_sha[:8]})" for r in node.remotes)
    if node.exists:
        mark = f"  hub: {hub}" if hub else ""
    else:
        mark = f"  (not in this registry; on the Hub: {hub})" if hub else "  (not in this registry)"
    prefix = "  " * (depth - 1) + "└─ " if depth else ""
    if node.ref in seen and node.parents:
        return [prefix + node.ref + "  (see above)"]
    seen.add(node.ref)
    lines = [prefix + node.ref + mark]
    for p in node.parents:
        lines.extend(_lineage_lines(p, depth + 1, seen))
    return lines
