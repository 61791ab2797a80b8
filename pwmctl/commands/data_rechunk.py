"""`pwmctl data rechunk`: a dataset copied into another storage layout (chunk rows, compression), e.g. for
streaming it from disk during pre-training (see pwm_core/data/outofcore.py)."""

from __future__ import annotations

import typer

from pwmctl.commands.collect import DATASET_DIR
from pwmctl.commands.data import _open, check_compression
from pwmctl.console import Progress, emit, fail, human_size, state

# What a dataset streamed from disk reads fastest: rows at fixed offsets (one read per window and array, no
# decoding; docs/benchmarks.md section 7), in chunks small enough that a window rarely spans two
STREAM_CHUNK_ROWS = 256


def rechunk(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Dataset ref (name, dataset/name:v2) or a path to a .zarr folder."),
    name: str = typer.Option(None, "--name", help="Name of the new dataset \\[default: NAME-stream]."),
    chunk_rows: int = typer.Option(STREAM_CHUNK_ROWS, "--chunk-rows", min=1, help="Rows per chunk."),
    shard_rows: int = typer.Option(
        65536, "--shard-rows", min=1, help="Rows per shard file (a multiple of --chunk-rows)."
    ),
    compression: str = typer.Option(
        "none",
        "--compression",
        help="none (fastest to stream from disk: one read per window) | zstd (smaller; the writer's default).",
    ),
) -> None:
    """Copy every committed episode into a new dataset with another storage layout, streamed in bounded memory.

    The default layout (256-row uncompressed chunks) is what `pretrain` streams fastest when a dataset exceeds
    its --ram-budget; the source is left untouched and the copy is published as a new dataset with the source
    as its parent."""
    from pwm_core.data.writer import copy_dataset
    from registry.refs import check_name

    st = state(ctx)
    check_compression(compression)
    if shard_rows % chunk_rows:
        raise fail(f"--shard-rows ({shard_rows}) must be a multiple of --chunk-rows ({chunk_rows})")
    ds, label = _open(st, ref)
    if ds.num_episodes == 0:
        raise fail(f"{label} holds no committed episode: nothing to copy")
    default = (label.removeprefix("dataset/").split(":")[0] if label.startswith("dataset/") else "dataset") + "-stream"
    name = check_name(name or default, "dataset name")
    reg = st.registry()
    layout = {"chunk_rows": chunk_rows, "shard_rows": shard_rows, "compression": compression}
    with reg.stage("dataset", name) as staging:
        with Progress(st, f"rechunk {label}", total=ds.num_rows, unit="rows") as bar:
            done = [0]

            def advance(rows: int, total: int) -> None:
                bar.update(rows - done[0])
                done[0] = rows

            copy_dataset(
                ds, staging.path / DATASET_DIR, progress=advance, provenance={"rechunked_from": label}, **layout
            )
        size = sum(f.stat().st_size for f in (staging.path / DATASET_DIR).rglob("*") if f.is_file())
        artifact = staging.publish(
            parents=[label] if label.startswith("dataset/") else [],
            tasks=sorted(ds.per_task_counts()),
            config={"source": label, **layout},
            metrics={"episodes": ds.num_episodes, "transitions": ds.num_transitions, "bytes": size},
        )
    emit(
        st,
        {"artifact": artifact.ref, "source": label, **layout, "episodes": ds.num_episodes, "bytes": size},
        lambda: typer.echo(
            f"published {artifact.ref}: {ds.num_episodes} episodes of {label} in {chunk_rows}-row chunks, "
            f"compression {compression}, {human_size(size)}"
        ),
    )
