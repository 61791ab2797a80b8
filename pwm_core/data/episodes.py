"""The Zarr episode format: constants, layout, and the checks shared by writer, reader and fsck.

One Zarr v3 group per dataset, transitions concatenated along time (TD-MPC2's row alignment)::

    data/obs      float32 [N, O]   obs right-padded with zeros to the task set's max obs dim O
    data/action   float32 [N, A]   row t = action that led INTO obs t (NaN at each episode's row 0)
    data/reward   float32 [N]      row t = reward received on that transition (NaN at row 0)
    data/task     int16   [N]      global task id (TaskSpec.id)
    meta/episode_ends   int64 [E]  exclusive end row of each episode: the commit marker, written last
    meta/episode_task   int16 [E]

Root attrs: ``format``, ``format_version``, ``task_set`` (``TaskSet.to_dict()``), ``provenance``.

Readers trust only ``meta/episode_ends``: rows past its last entry are an interrupted append.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync

from pwm_core.errors import DatasetError
from pwm_core.tasks import TaskSet, TaskSpec, get_task

FORMAT = "pwm-episodes"
FORMAT_VERSION = 1

OBS, ACTION, REWARD, TASK = "data/obs", "data/action", "data/reward", "data/task"
EPISODE_ENDS, EPISODE_TASK = "meta/episode_ends", "meta/episode_task"
DATA_ARRAYS = (OBS, ACTION, REWARD, TASK)

# Chunk = unit of reading, shard = unit of writing (one file). 4096 rows x 24 floats = 384 KiB raw
# per chunk; a 65536-row shard holds ~130 episodes of 501 rows. Measured on local disk (zarr 3.1.6):
# one 501-row append costs ~10 ms per array at any shard fill with 65536-row shards, while
# 262144-row shards grow to ~33 ms as the shard fills (every append rewrites the whole shard).
CHUNK_ROWS = 4096
SHARD_ROWS = 65536
META_CHUNK = 16384  # episodes per chunk of meta/* (unsharded: a commit rewrites one small file)
READ_BLOCK_ROWS = 4 * SHARD_ROWS  # rows per block when scanning whole arrays (bounded memory)
ENDS_FILL = -1  # fill value of meta/episode_ends: an entry resized into existence but never written


@dataclass
class Layout:
    """An opened episode group: its arrays and the parsed root attributes."""

    path: str
    task_set: TaskSet
    provenance: dict
    arrays: dict[str, zarr.Array]

    @property
    def num_rows_stored(self) -> int:
        """Rows in the data arrays, committed or not (the shortest data array)."""
        return min(self.arrays[name].shape[0] for name in DATA_ARRAYS)


def is_local(path: str) -> bool:
    return "://" not in path


def normalize_path(path: str | os.PathLike) -> str:
    """A local path with ``~`` expanded, or a store URL (``s3://...``) as given."""
    path = os.fspath(path)
    return os.path.expanduser(path) if is_local(path) else path


def open_layout(path: str | os.PathLike, mode: Literal["r", "r+"] = "r") -> Layout:
    """Open and validate an episode group; every failure is a :class:`DatasetError`.

    Checks: the group exists, ``format`` is ours, ``format_version`` is not newer than this code,
    every array is present with the dtype and trailing dims the task set implies.
    """
    path = normalize_path(path)
    if is_local(path) and not Path(path).exists():
        raise DatasetError(f"no dataset at {path}")
    try:
        # Consolidated metadata goes stale after an append: always read the per-array zarr.json.
        group = zarr.open_group(path, mode=mode, use_consolidated=False)
    except FileNotFoundError:  # zarr's answer for an empty local directory as well
        if is_local(path):
            raise DatasetError(f"{path} is not a {FORMAT} dataset: no Zarr group there") from None
        raise DatasetError(f"no dataset at {path}") from None
    except (zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
        raise DatasetError(f"{path} is not a {FORMAT} dataset: no Zarr group there") from None
    attrs = dict(group.attrs)
    fmt = attrs.get("format")
    if fmt != FORMAT:
        raise DatasetError(
            f"{path} is a Zarr group but not a {FORMAT} dataset "
            f"(format={fmt!r}); import it with a pwmctl importer first"
        )
    version = attrs.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise DatasetError(f"{path}: invalid format_version {version!r}; the dataset is corrupt")
    if version > FORMAT_VERSION:
        raise DatasetError(
            f"{path} was written by a newer pwmctl (format_version {version}, this "
            f"pwmctl reads <= {FORMAT_VERSION}); upgrade pwmctl to read it"
        )
    task_set = task_set_from_dict(attrs.get("task_set"), path)
    # Commit marker's metadata first: an append racing this open can then only make the arrays
    # opened after it longer, never shorter than what the marker commits.
    arrays = {name: _get_array(group, name, path) for name in (EPISODE_ENDS, EPISODE_TASK, *DATA_ARRAYS)}
    _check_array_dims(arrays, task_set, path)
    provenance = attrs.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise DatasetError(f"{path}: provenance must be a mapping, got {provenance!r}; the dataset is corrupt")
    return Layout(path, task_set, dict(provenance), arrays)


def task_set_from_dict(d: Any, path: str) -> TaskSet:
    """Inverse of ``TaskSet.to_dict()``; the stored specs are authoritative for the dataset."""
    try:
        return TaskSet(d["name"], tuple(TaskSpec(**t) for t in d["tasks"]))  # a malformed d: caught below
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{path}: unreadable task_set attribute ({e}); the dataset is corrupt") from None


def _get_array(group: zarr.Group, name: str, path: str) -> zarr.Array:
    try:
        node = group[name]
    except KeyError:
        raise DatasetError(
            f"{path}: array {name} is missing; the dataset is incomplete (interrupted creation?) - recreate it"
        ) from None
    if not isinstance(node, zarr.Array):
        raise DatasetError(f"{path}: {name} is a group, expected an array")
    return node


def _check_array_dims(arrays: dict[str, zarr.Array], task_set: TaskSet, path: str) -> None:
    expected = {
        OBS: ("float32", (task_set.obs_dim,)),
        ACTION: ("float32", (task_set.act_dim,)),
        REWARD: ("float32", ()),
        TASK: ("int16", ()),
        EPISODE_ENDS: ("int64", ()),
        EPISODE_TASK: ("int16", ()),
    }
    for name, (dtype, trailing) in expected.items():
        arr = arrays[name]
        if str(arr.dtype) != dtype or tuple(arr.shape[1:]) != trailing:
            raise DatasetError(
                f"{path}: {name} is {arr.dtype} {list(arr.shape)}, expected {dtype} [n"
                + "".join(f", {d}" for d in trailing)
                + f"] for task set {task_set.name!r}"
            )


def committed_prefix(ends_raw: np.ndarray) -> np.ndarray:
    """The committed entries of ``meta/episode_ends``.

    A commit killed between its resize and its write leaves trailing fill values (-1); everything
    from the first fill value on is uncommitted.
    """
    unwritten = np.flatnonzero(ends_raw == ENDS_FILL)
    return ends_raw[: unwritten[0]] if unwritten.size else ends_raw


def structure_problems(ends: np.ndarray, num_rows_stored: int, num_episode_task: int) -> list[str]:
    """Problems that make the committed episodes unreadable (empty list = readable)."""
    problems = []
    if ends.size and (ends[0] < 1 or np.any(np.diff(ends) < 1)):
        problems.append("meta/episode_ends is not strictly increasing from >= 1")
    if ends.size and ends[-1] > num_rows_stored:
        problems.append(
            f"meta/episode_ends commits {int(ends[-1])} rows but the data arrays hold only {num_rows_stored}"
        )
    if num_episode_task < ends.size:
        problems.append(f"meta/episode_task has {num_episode_task} entries for {ends.size} committed episodes")
    return problems


def read_commit_marker(layout: Layout) -> np.ndarray:
    """The committed ``meta/episode_ends``, or a :class:`DatasetError` when the marker itself is damaged.

    A lost or unreadable marker chunk is corruption, never "no episodes committed": reading it as fill
    values would turn every stored episode into an uncommitted tail that fsck and ``EpisodeWriter.open``
    delete. (The writer stores a commit's entries before publishing the grown shape, so a chunk inside
    the shape is never legitimately absent.)
    """
    arr = layout.arrays[EPISODE_ENDS]
    for key, lo, hi in missing_storage(arr, arr.shape[0]):
        raise DatasetError(
            f"{layout.path}: the commit marker {EPISODE_ENDS} is damaged: its chunk {key} "
            f"(episodes {lo}-{hi - 1}) is missing; the stored rows are kept untouched - "
            "restore the dataset from a copy (or re-publish it)"
        )
    try:
        raw = np.asarray(arr[:])
    except Exception as e:  # see read_rows
        raise DatasetError(
            f"{layout.path}: the commit marker {EPISODE_ENDS} is damaged: its chunk "
            f"{storage_key(arr, 0)} is unreadable ({type(e).__name__}: {_one_line(e)}); the "
            "stored rows are kept untouched - restore the dataset from a copy (or "
            "re-publish it)"
        ) from None
    ends = committed_prefix(raw)
    if np.any(raw[ends.size :] != ENDS_FILL):
        raise DatasetError(
            f"{layout.path}: the commit marker {EPISODE_ENDS} is damaged: entry {ends.size} "
            "was never written but later ones were; the stored rows are kept untouched - "
            "restore the dataset from a copy (or re-publish it)"
        )
    return ends


def read_episode_task(layout: Layout, num_episodes: int) -> np.ndarray:
    """``meta/episode_task`` of the committed episodes; a lost or unreadable chunk is a DatasetError."""
    arr = layout.arrays[EPISODE_TASK]
    stop = min(num_episodes, arr.shape[0])
    for key, lo, hi in missing_storage(arr, stop):
        raise DatasetError(
            f"{layout.path}: {EPISODE_TASK} chunk {key} (episodes {lo}-{hi - 1}) is "
            "missing; the dataset is corrupt - restore it from a copy (or re-publish it)"
        )
    return read_rows(arr, EPISODE_TASK, 0, stop, layout.path)


def storage_rows(arr: zarr.Array) -> int:
    """Rows per stored object (file): a shard for sharded arrays, else a chunk."""
    return int((arr.shards or arr.chunks)[0])


def storage_key(arr: zarr.Array, row: int) -> str:
    """The store key of the object (shard or chunk) holding ``row``, e.g. ``c/0/0``."""
    return arr.metadata.encode_chunk_key((row // storage_rows(arr),) + (0,) * (arr.ndim - 1))


def missing_storage(arr: zarr.Array, stop: int) -> list[tuple[str, int, int]]:
    """``(key, lo, hi)`` for every stored object covering rows ``[0, stop)`` that is absent.

    Zarr reads an absent object as fill values (NaN rows, -1 ids) without complaint; this tells a
    lost file apart from stored data.
    """
    size = storage_rows(arr)
    missing = []
    for lo in range(0, stop, size):
        key = storage_key(arr, lo)
        if not sync((arr.store_path / key).exists()):
            missing.append((key, lo, min(lo + size, stop)))
    return missing


def read_rows(arr: zarr.Array, name: str, lo: int, hi: int, path: str) -> np.ndarray:
    """``arr[lo:hi]``, with a corrupt or truncated chunk as a :class:`DatasetError` naming it."""
    try:
        return np.asarray(arr[lo:hi])  # zarr types a read as array-like or scalar; a slice is an ndarray
    except Exception as e:  # zarr/numcodecs raise ValueError, RuntimeError, SystemError... on bad bytes
        raise DatasetError(
            f"{path}: {name} rows {lo}-{hi - 1} are unreadable (stored object "
            f"{storage_key(arr, lo)}: {type(e).__name__}: {_one_line(e)}); the dataset is "
            "corrupt - `pwmctl data fsck` lists every damaged chunk"
        ) from None


def read_readable(arr: zarr.Array, name: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows ``[lo, hi)`` read chunk by chunk where a block read fails, for fsck.

    Returns the values (unreadable rows hold the fill value), a (hi-lo,) bool mask of readable rows,
    and one problem per damaged stored object, naming the array, the object and its unreadable rows.
    """
    try:
        return np.asarray(arr[lo:hi]), np.ones(hi - lo, bool), []
    except Exception:
        pass
    values = np.full((hi - lo, *arr.shape[1:]), arr.fill_value, dtype=arr.dtype)
    ok = np.ones(hi - lo, bool)
    bad: dict[str, tuple[int, int, str]] = {}  # key -> first row, last row + 1, first error
    step = int(arr.chunks[0])
    for c_lo in range(lo - lo % step, hi, step):
        a, b = max(c_lo, lo), min(c_lo + step, hi)
        try:
            values[a - lo : b - lo] = arr[a:b]
        except Exception as e:
            ok[a - lo : b - lo] = False
            key = storage_key(arr, a)
            first, _, err = bad.get(key, (a, b, f"{type(e).__name__}: {_one_line(e)}"))
            bad[key] = (first, b, err)
    problems = [
        f"{name}: stored object {key} is corrupt or truncated, rows {a}-{b - 1} unreadable ({err})"
        for key, (a, b, err) in bad.items()
    ]
    return values, ok, problems


def _one_line(e: BaseException) -> str:
    """The first sentence of an error, on one line (codec errors append raw bytes after it)."""
    return " ".join(str(e).split()).split(". ")[0][:160]


def episode_starts(ends: np.ndarray) -> np.ndarray:
    """(E,) first row of each episode, from the exclusive ends."""
    return np.concatenate([[0], ends[:-1]]).astype(np.int64)


def row_blocks(stop: int, block: int = READ_BLOCK_ROWS) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` row ranges covering ``[0, stop)``, aligned to ``block`` (whole shards)."""
    for lo in range(0, stop, block):
        yield lo, min(lo + block, stop)


def resolve_task_ids(tasks: Sequence[int | str]) -> np.ndarray:
    """Task names or global ids -> (k,) int64 global ids (unknown names raise UnknownTaskError)."""
    return np.array([get_task(t).id if isinstance(t, str) else int(t) for t in tasks], np.int64)


def acquire_writer_lock(path: str) -> int | None:
    """Advisory exclusive lock on a local dataset directory: one writer at a time.

    The kernel drops a flock when its holder dies, so a killed writer never leaves a stale lock.
    Remote stores (``s3://...``) are not locked; returns None for them.
    """
    if not is_local(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatasetError(f"{path} is open by another writer; wait for it to finish") from None
    return fd


def release_writer_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock
