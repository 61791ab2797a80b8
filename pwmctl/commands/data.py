"""`pwmctl data ...`: import, inspect and check episode datasets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from pwmctl.commands.collect import DATASET_DIR
from pwmctl.console import Progress, emit, fail, human_size, render_table, state

app = typer.Typer(help="Import, inspect and check episode datasets.", no_args_is_help=True)


@app.command("import-tdmpc2")
def import_tdmpc2(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(None, help="TD-MPC2 chunk files (chunk_0.pt ...) or the folder holding them."),
    tasks: str = typer.Option(None, "--tasks", help="mt30 | mt80 \\[default: inferred from the chunks]."),
    name: str = typer.Option(None, "--name", help="Dataset name \\[default: the task set, e.g. mt30]."),
    from_hub: str = typer.Option(
        None,
        "--from-hub",
        metavar="SET",
        help="mt30 | mt80: download the published chunks from the Hub, one at a time (re-run to resume).",
    ),
    hub_endpoint: str = typer.Option(
        None,
        "--hub-endpoint",
        envvar="PWMCTL_HUB_ENDPOINT",
        help="Hub URL (default: config hub.endpoint, else HF_ENDPOINT, else https://huggingface.co).",
    ),
    chunk_rows: int = typer.Option(4096, "--chunk-rows", min=1, help="Rows per chunk (256 for streaming)."),
    compression: str = typer.Option(
        "zstd",
        "--compression",
        help="zstd | none (none + --chunk-rows 256: the layout pretrain streams fastest, see `data rechunk`).",
    ),
) -> None:
    """Convert TD-MPC2's published MT30/MT80 `.pt` chunks into a dataset, one chunk at a time."""
    from pwm_core.data.tdmpc2 import IMPORT_SHARD_ROWS
    from pwm_core.data.tdmpc2 import import_tdmpc2 as run_import
    from pwm_core.tasks import resolve_tasks

    st = state(ctx)
    check_compression(compression)
    if IMPORT_SHARD_ROWS % chunk_rows:
        raise fail(f"--chunk-rows must divide the import's {IMPORT_SHARD_ROWS}-row shards (e.g. 256, 4096)")
    layout = {"chunk_rows": chunk_rows, "compression": compression}
    if from_hub is not None:
        from pwmctl.commands.data_hub import import_from_hub
        from pwmctl.commands.hub import _endpoint

        if paths or (tasks and tasks != from_hub):
            raise fail(
                f"--from-hub downloads the chunks itself: pass no chunk files, and no --tasks other than {from_hub}"
            )
        return import_from_hub(st, from_hub, name, _endpoint(st, hub_endpoint), layout)
    if not paths:
        raise fail("name the chunk files or their folder, or download them with --from-hub mt30|mt80")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise fail(f"no such file or folder: {', '.join(missing)}")
    task_set = resolve_tasks(tasks) if tasks else None
    reg = st.registry()
    with reg.stage("dataset", name or (task_set.name if task_set else "tdmpc2")) as staging:
        with Progress(st, "import chunks", total=None) as bar:
            report = run_import(
                paths,
                staging.path / DATASET_DIR,
                task_set,
                provenance={"source": "TD-MPC2 chunks", "files": [p.name for p in paths]},
                progress=lambda done, total: bar.update(1, chunk=f"{done}/{total}"),
                **layout,
            )
        staging.name = name or report.task_set  # without --tasks, the inferred set (mt30/mt80) names it
        artifact = staging.publish(
            tasks=sorted(report.per_task),
            config={"source": "tdmpc2", "files": [str(p) for p in paths]},
            metrics={"episodes": report.episodes, "transitions": report.transitions},
        )
    emit(
        st,
        {
            "artifact": artifact.ref,
            "episodes": report.episodes,
            "transitions": report.transitions,
            "files": len(report.files),
            "seconds": round(report.seconds, 2),
        },
        lambda: typer.echo(
            f"published {artifact.ref}: {report.episodes} episodes, {report.transitions} "
            f"transitions from {len(report.files)} chunk(s) in {report.seconds:.1f}s"
        ),
    )


@app.command("info")
def data_info(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Dataset ref (name, dataset/name:v2) or a path to a .zarr folder."),
) -> None:
    """Episodes, transitions, per-task counts, return statistics and size on disk."""
    import numpy as np

    st = state(ctx)
    ds, label = _open(st, ref)
    returns = ds.episode_returns()
    lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
    per_task = []
    for task_id in np.unique(ds.episode_task):
        sel = ds.episode_task == task_id
        r = returns[sel]
        per_task.append(
            {
                "task": _task_name(int(task_id)),
                "episodes": int(sel.sum()),
                "rows": int(lengths[sel].sum()),
                "return_mean": float(r.mean()),
                "return_std": float(r.std()),
                "return_min": float(r.min()),
                "return_max": float(r.max()),
            }
        )
    doc = {
        "dataset": label,
        "path": str(ds.path),
        "task_set": ds.task_set.name,
        "obs_dim": ds.obs_dim,
        "act_dim": ds.act_dim,
        "episodes": ds.num_episodes,
        "rows": ds.num_rows,
        "transitions": ds.num_transitions,
        "episode_rows": sorted({int(x) for x in lengths}),
        "size_bytes": ds.nbytes_on_disk(),
        "tasks": per_task,
        "provenance": ds.provenance,
    }

    def human() -> None:
        lens = doc["episode_rows"]
        rows = lens[0] if len(lens) == 1 else f"{min(lens)}-{max(lens)}"
        typer.echo(
            f"{label}: {ds.num_episodes} episodes of {rows} rows, {ds.num_transitions} transitions, "
            f"obs {ds.obs_dim} / act {ds.act_dim}, "
            f"{human_size(doc['size_bytes'])} on disk"
        )
        table = Table()
        for col in ("task", "episodes", "rows", "return mean", "std", "min", "max"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for t in per_task:
            table.add_row(
                t["task"],
                str(t["episodes"]),
                str(t["rows"]),
                f"{t['return_mean']:.1f}",
                f"{t['return_std']:.1f}",
                f"{t['return_min']:.1f}",
                f"{t['return_max']:.1f}",
            )
        typer.echo(render_table(table))

    emit(st, doc, human)


@app.command("fsck")
def data_fsck(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Dataset ref or a path to a .zarr folder (e.g. a run's data.zarr)."),
    repair: bool = typer.Option(False, "--repair", help="Remove the uncommitted tail left by an interrupted write."),
) -> None:
    """Check a dataset's consistency; with --repair, truncate rows past the last committed episode.

    A registered version is immutable: repair works on run folders and plain paths only.
    """
    from pwm_core.data import fsck

    st = state(ctx)
    path = _path(st, ref, for_repair=repair)
    report = fsck(path, repair=repair)
    if report.repair_refused:
        raise fail(report.repair_refused)
    doc = {
        "path": str(path),
        "committed_episodes": report.committed_episodes,
        "committed_rows": report.committed_rows,
        "tail_rows": report.tail_rows,
        "problems": report.problems,
        "repaired": report.repaired,
        "marker_damaged": report.marker_damaged,
    }

    def human() -> None:
        tail = {k: v for k, v in report.tail_rows.items() if v}
        if report.marker_damaged:
            typer.echo(f"{path}: commit marker damaged, committed episodes unknown (nothing was changed)")
        else:
            typer.echo(f"{path}: {report.committed_episodes} committed episodes, {report.committed_rows} rows")
        if tail:
            typer.echo(
                ("removed" if report.repaired else "uncommitted tail (run with --repair to remove)")
                + ": "
                + ", ".join(f"{k} {v} rows" for k, v in tail.items())
            )
        for p in report.problems:
            typer.echo(f"problem: {p}")
        if not tail and not report.problems:
            typer.echo("ok")

    emit(st, doc, human)
    if report.problems:
        raise typer.Exit(1)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.endswith(".zarr")


def _path(st, ref: str, for_repair: bool = False) -> Path:
    p = Path(ref).expanduser()
    if p.exists():
        if for_repair:
            _refuse_published(st, p)
        return p
    if _looks_like_path(ref):
        raise fail(f"no dataset at {ref}")
    artifact = st.registry().resolve(ref, default_kind="dataset")
    if for_repair:
        raise fail(f"{artifact.ref} is a published, immutable version; --repair works on a run folder's data.zarr")
    return artifact.path / DATASET_DIR


def _refuse_published(st, path: Path) -> None:
    """Refuse to repair a path inside a published version (named by its path, or by a link to it)."""
    artifacts = st.registry().artifacts_dir.resolve()
    real = path.resolve()
    if not real.is_relative_to(artifacts):
        return
    parts = real.relative_to(artifacts).parts
    where = (
        f"{parts[0]}/{parts[1]}:{parts[2]}, a published, immutable version"
        if len(parts) >= 3
        else f"{artifacts}, which holds published, immutable versions"
    )
    raise fail(
        f"{path} is in {where}; --repair works on a run folder's data.zarr (to repair a published "
        f"dataset, copy it out, repair the copy and publish that)"
    )


def check_compression(compression: str) -> None:
    """Refuse a ``--compression`` the writer does not know (one error line, exit 2)."""
    from pwm_core.data.writer import COMPRESSIONS

    if compression not in COMPRESSIONS:
        raise fail(f"--compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")


def _open(st, ref: str):
    from pwm_core.data import open_dataset

    p = Path(ref).expanduser()
    if p.exists():
        return open_dataset(p), str(p)
    if _looks_like_path(ref):
        raise fail(f"no dataset at {ref}")
    artifact = st.registry().resolve(ref, default_kind="dataset")
    return open_dataset(artifact.path / DATASET_DIR), artifact.ref


def _task_name(task_id: int) -> str:
    from pwm_core.tasks import TASKS_BY_ID

    t = TASKS_BY_ID.get(task_id)
    return t.name if t else f"task {task_id}"
