"""Episode datasets as Parquet: a streamed export of a whole dataset, and small previews for the Hub.

One Parquet row per stored row of the Zarr format (TD-MPC2's alignment: step 0 is an episode's first
observation, with NaN action and reward; step t holds the action that led into obs t and its reward):

    episode  int64                     the episode's index in the dataset
    step     int32                     row within the episode, from 0
    task_id  int16                     TD-MPC2 task id
    task     string (dictionary)       task name
    obs      fixed_size_list<float32>  (O,) zero-padded to the task set's obs dim
    action   fixed_size_list<float32>  (A,) zero-padded; NaN at step 0
    reward   float32                   NaN at step 0

The schema metadata key ``pwm`` holds JSON: format, format_version, task_set (``TaskSet.to_dict()``),
provenance and the caller's ``source``, so an export says what it is. Values are copied bit for bit:
:func:`read_parquet` gives back exactly the arrays :meth:`EpisodeDataset.load` gives.

Needs pyarrow (``pip install 'pwmctl[parquet]'``), imported on first use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pwm_core.data.episodes import FORMAT, FORMAT_VERSION, READ_BLOCK_ROWS, task_set_from_dict
from pwm_core.data.reader import EpisodeDataset
from pwm_core.errors import DatasetError, PwmError

METADATA_KEY = b"pwm"
ROWS_PER_GROUP = READ_BLOCK_ROWS  # rows per Parquet row group: one read block, whole episodes
PREVIEW_EPISODES = 5  # the preview holds at most the first 5 episodes ...
PREVIEW_MAX_ROWS = 5000  # ... and at most this many rows (always at least one episode)
COMPRESSION = "zstd"


@dataclass
class ExportReport:
    path: str
    episodes: int
    rows: int
    row_groups: int
    bytes: int


def export_parquet(
    ds: EpisodeDataset,
    path: str | os.PathLike,
    *,
    rows_per_group: int = ROWS_PER_GROUP,
    source: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write every committed episode of ``ds`` to one Parquet file, streaming whole episodes.

    Memory stays bounded by one row group (``rows_per_group`` rows, or one episode if longer). The
    file is written as ``<path>.part`` and renamed when complete, so ``path`` is never half-written.
    ``progress(rows_done, rows_total)`` is called after each row group.
    """
    pq = _pyarrow()[1]
    if rows_per_group < 1:
        raise PwmError(f"rows_per_group must be >= 1, got {rows_per_group}")
    path = Path(path)
    part = path.with_name(path.name + ".part")
    schema = _schema(ds, source)
    groups = 0
    try:
        with pq.ParquetWriter(part, schema, compression=COMPRESSION) as writer:
            for first, last in _episode_groups(ds.episode_ends, rows_per_group):
                writer.write_table(_table(ds, first, last, schema), row_group_size=None)
                groups += 1
                if progress is not None:
                    progress(int(ds.episode_ends[last - 1]), ds.num_rows)
        os.replace(part, path)
    except BaseException:  # Ctrl-C included: never leave a half-written export behind
        part.unlink(missing_ok=True)
        raise
    return ExportReport(str(path), ds.num_episodes, ds.num_rows, groups, path.stat().st_size)


def preview_tables(
    ds: EpisodeDataset,
    source: dict[str, Any] | None = None,
    episodes: int = PREVIEW_EPISODES,
    max_rows: int = PREVIEW_MAX_ROWS,
) -> tuple[bytes, bytes, str]:
    """Two small Parquet files for the Hub's dataset viewer, and a line saying what the first holds.

    The first: the first ``episodes`` episodes (fewer if they pass ``max_rows`` rows; at least one),
    in the export's schema. The second: :meth:`EpisodeDataset.task_summary`, one row per task.
    """
    pa, pq = _pyarrow()
    if ds.num_episodes == 0:
        raise DatasetError(f"{ds.path} has no committed episode to preview")
    rows = np.cumsum(ds.episode_lengths[:episodes])
    n = max(1, int(np.searchsorted(rows, max_rows, side="right")))
    schema = _schema(ds, source)
    first = _parquet_bytes(pq, _table(ds, 0, n, schema))
    summary = pa.Table.from_pylist(
        ds.task_summary(),
        schema=pa.schema(
            [
                ("task", pa.string()),
                ("task_id", pa.int16()),
                ("episodes", pa.int64()),
                ("rows", pa.int64()),
                ("transitions", pa.int64()),
                ("return_mean", pa.float64()),
                ("return_std", pa.float64()),
                ("return_min", pa.float64()),
                ("return_max", pa.float64()),
            ],
            metadata=schema.metadata,
        ),
    )
    what = (
        f"the first {n} of {ds.num_episodes} episodes ({int(rows[n - 1])} rows, one per step: episode, step, "
        f"task_id, task, obs ({ds.obs_dim}), action ({ds.act_dim}), reward)"
    )
    return first, _parquet_bytes(pq, summary), what


def read_parquet(path: str | os.PathLike) -> dict[str, Any]:
    """An export read back whole: the arrays of :meth:`EpisodeDataset.load` (obs, action, reward, task,
    episode_ends, episode_task) plus ``metadata``, the ``pwm`` schema metadata with ``task_set`` as a
    :class:`~pwm_core.tasks.TaskSet`."""
    pq = _pyarrow()[1]
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DatasetError(f"{path} is not a pwmctl Parquet export (no '{METADATA_KEY.decode()}' schema metadata)")
    meta = json.loads(raw)
    meta["task_set"] = task_set_from_dict(meta.get("task_set"), str(path))
    episode = table.column("episode").to_numpy()
    starts = np.flatnonzero(np.diff(episode, prepend=-1)) if len(episode) else np.zeros(0, np.int64)
    ends = np.append(starts[1:], len(episode)).astype(np.int64) if len(episode) else np.zeros(0, np.int64)
    task = table.column("task_id").to_numpy().astype(np.int16)
    return {
        "obs": _matrix(table.column("obs"), meta["task_set"].obs_dim),
        "action": _matrix(table.column("action"), meta["task_set"].act_dim),
        "reward": table.column("reward").to_numpy().astype(np.float32),
        "task": task,
        "episode_ends": ends,
        "episode_task": task[starts],
        "metadata": meta,
    }


# ---- helpers -------------------------------------------------------------------------------


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PwmError("Parquet needs pyarrow: pip install 'pwmctl[parquet]'") from None
    return pa, pq


def _schema(ds: EpisodeDataset, source: dict[str, Any] | None):
    pa = _pyarrow()[0]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task_set": ds.task_set.to_dict(),
        "provenance": ds.provenance,
        "source": source or {},
    }
    return pa.schema(
        [
            ("episode", pa.int64()),
            ("step", pa.int32()),
            ("task_id", pa.int16()),
            ("task", pa.dictionary(pa.int16(), pa.string())),
            ("obs", pa.list_(pa.float32(), ds.obs_dim)),
            ("action", pa.list_(pa.float32(), ds.act_dim)),
            ("reward", pa.float32()),
        ],
        metadata={METADATA_KEY: json.dumps(meta, default=str).encode()},
    )


def _episode_groups(ends: np.ndarray, rows_per_group: int) -> Iterator[tuple[int, int]]:
    """(first, last) episode index ranges, each of whole episodes and at most ``rows_per_group`` rows
    (one episode if it alone is longer)."""
    first, start = 0, 0
    while first < len(ends):
        last = max(first + 1, int(np.searchsorted(ends, start + rows_per_group, side="right")))
        yield first, last
        first, start = last, int(ends[last - 1])


def _table(ds: EpisodeDataset, first: int, last: int, schema):
    """Episodes ``[first, last)`` as an Arrow table of ``schema``."""
    pa = _pyarrow()[0]
    lo, hi = int(ds.episode_starts[first]), int(ds.episode_ends[last - 1])
    rows = ds.read_range(lo, hi)
    lengths = ds.episode_lengths[first:last]
    episode = np.repeat(np.arange(first, last, dtype=np.int64), lengths)
    step = (np.arange(hi - lo) - np.repeat(ds.episode_starts[first:last] - lo, lengths)).astype(np.int32)
    ids = rows["task"].astype(np.int16)
    names = {t.id: t.name for t in ds.task_set}
    present = np.unique(ids)
    dictionary = pa.array([names.get(int(i), f"task {int(i)}") for i in present], pa.string())
    task = pa.DictionaryArray.from_arrays(pa.array(np.searchsorted(present, ids).astype(np.int16)), dictionary)
    return pa.Table.from_arrays(
        [
            pa.array(episode),
            pa.array(step),
            pa.array(ids),
            task,
            _fixed_list(pa, rows["obs"], ds.obs_dim),
            _fixed_list(pa, rows["action"], ds.act_dim),
            pa.array(rows["reward"].astype(np.float32)),
        ],
        schema=schema,
    )


def _fixed_list(pa, matrix: np.ndarray, width: int):
    flat = pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _matrix(column, width: int) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(-1, width)


def _parquet_bytes(pq, table) -> bytes:
    import io

    sink = io.BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION)
    return sink.getvalue()
