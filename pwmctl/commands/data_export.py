"""`pwmctl data export`: a whole dataset as one Parquet file, streamed (see pwm_core/data/parquet.py)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from pwmctl.commands.data import _open
from pwmctl.console import Progress, emit, fail, human_size, state

FORMATS = ("parquet",)  # the file formats; `--format` takes them besides the global human | json


def export(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Dataset ref (name, dataset/name:v2) or a path to a .zarr folder."),
    format: str = typer.Option(
        "parquet",
        "--format",
        help="File format: parquet (needs pwmctl\\[parquet]). The "
        "global --format human|json still chooses what is printed.",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output file \\[default: NAME-vN.parquet here]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    rows_per_group: int = typer.Option(
        262144,
        "--rows-per-group",
        min=1,
        help="Rows per Parquet row group (whole episodes; memory is bounded by one group).",
    ),
) -> None:
    """Export every committed episode as Parquet: one row per step (episode, step, task_id, task, obs,
    action, reward), values bit for bit, streamed in bounded memory."""
    from pwm_core.data.parquet import export_parquet

    st = state(ctx)
    if format not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    ds, label = _open(st, ref)
    out = (out or Path(_default_name(label))).expanduser()
    if out.is_dir():
        raise fail(f"{out} is a folder: give --out a file name, e.g. {out / _default_name(label)}")
    if not out.parent.is_dir():
        raise fail(f"no folder {out.parent} to write {out.name} into: create it, or pass another --out")
    if out.exists() and not force:
        raise fail(f"{out} exists: pass --force to replace it, or another --out")
    with Progress(st, f"export {label}", total=ds.num_rows) as bar:
        done = [0]

        def advance(rows: int, total: int) -> None:
            bar.update(rows - done[0])
            done[0] = rows

        report = export_parquet(
            ds, out, rows_per_group=rows_per_group, progress=advance, source={"dataset": label, "path": str(ds.path)}
        )
    doc = {
        "dataset": label,
        "format": format,
        "path": report.path,
        "episodes": report.episodes,
        "rows": report.rows,
        "row_groups": report.row_groups,
        "bytes": report.bytes,
    }
    emit(
        st,
        doc,
        lambda: typer.echo(
            f"exported {label} to {report.path}: {report.episodes} episodes, "
            f"{report.rows} rows in {report.row_groups} row group(s), "
            f"{human_size(report.bytes)}"
        ),
    )


def _default_name(label: str) -> str:
    """`dataset/mix:v2` -> mix-v2.parquet; a path -> its folder's name (without .zarr)."""
    if ":" in label and label.startswith("dataset/"):
        name, version = label.removeprefix("dataset/").split(":")
        return f"{name}-{version}.parquet"
    stem = Path(label.rstrip("/")).name.removesuffix(".zarr") or "dataset"
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) + ".parquet"
