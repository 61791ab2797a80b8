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

import numpy as np
import zarr
import zarr.errors

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


def open_layout(path: str | os.PathLike, mode: str = "r") -> Layout:
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
        raise DatasetError(f"{path} is a Zarr group but not a {FORMAT} dataset "
                           f"(format={fmt!r}); import it with a pwmctl importer first")
    version = attrs.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise DatasetError(f"{path}: invalid format_version {version!r}; the dataset is corrupt")
    if version > FORMAT_VERSION:
        raise DatasetError(f"{path} was written by a newer pwmctl (format_version {version}, this "
                           f"pwmctl reads <= {FORMAT_VERSION}); upgrade pwmctl to read it")
    task_set = task_set_from_dict(attrs.get("task_set"), path)
    # Commit marker's metadata first: an append racing this open can then only make the arrays
    # opened after it longer, never shorter than what the marker commits.
    arrays = {name: _get_array(group, name, path) for name in (EPISODE_ENDS, EPISODE_TASK, *DATA_ARRAYS)}
    _check_array_dims(arrays, task_set, path)
    return Layout(path, task_set, dict(attrs.get("provenance") or {}), arrays)


def task_set_from_dict(d: object, path: str) -> TaskSet:
    """Inverse of ``TaskSet.to_dict()``; the stored specs are authoritative for the dataset."""
    try:
        return TaskSet(d["name"], tuple(TaskSpec(**t) for t in d["tasks"]))  # type: ignore[index]
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{path}: unreadable task_set attribute ({e}); the dataset is corrupt") from None


def _get_array(group: zarr.Group, name: str, path: str) -> zarr.Array:
    try:
        node = group[name]
    except KeyError:
        raise DatasetError(f"{path}: array {name} is missing; the dataset is incomplete "
                           "(interrupted creation?) - recreate it") from None
    if not isinstance(node, zarr.Array):
        raise DatasetError(f"{path}: {name} is a group, expected an array")
    return node


def _check_array_dims(arrays: dict[str, zarr.Array], task_set: TaskSet, path: str) -> None:
    expected = {
        OBS: ("float32", (task_set.obs_dim,)), ACTION: ("float32", (task_set.act_dim,)),
        REWARD: ("float32", ()), TASK: ("int16", ()),
        EPISODE_ENDS: ("int64", ()), EPISODE_TASK: ("int16", ()),
    }
    for name, (dtype, trailing) in expected.items():
        arr = arrays[name]
        if str(arr.dtype) != dtype or tuple(arr.shape[1:]) != trailing:
            raise DatasetError(
                f"{path}: {name} is {arr.dtype} {list(arr.shape)}, expected {dtype} [n"
                + "".join(f", {d}" for d in trailing) + f"] for task set {task_set.name!r}")


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
        problems.append(f"meta/episode_ends commits {int(ends[-1])} rows but the data arrays hold "
                        f"only {num_rows_stored}")
    if num_episode_task < ends.size:
        problems.append(f"meta/episode_task has {num_episode_task} entries for {ends.size} "
                        "committed episodes")
    return problems


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
