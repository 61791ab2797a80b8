"""Crash-safe append-only writer for the Zarr episode format.

Write protocol (one writer per dataset, enforced with an advisory lock on local disk):

1. every ``data/*`` array is resized and its new rows written,
2. ``meta/episode_task`` is resized and written,
3. ``meta/episode_ends`` gets its new entries LAST: the commit marker (entries first, then the new
   shape, so an entry inside the shape is never unwritten and a lost chunk reads as damage).

A kill anywhere before step 3 completes leaves rows past ``episode_ends[-1]``, which readers ignore
and :meth:`EpisodeWriter.open` / ``fsck(repair=True)`` truncate. Each chunk/shard file is replaced
atomically by zarr's LocalStore, so committed rows sharing a shard with a torn append survive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pwm_core.data.episodes import (
    ACTION,
    CHUNK_ROWS,
    DATA_ARRAYS,
    ENDS_FILL,
    EPISODE_ENDS,
    EPISODE_TASK,
    FORMAT,
    FORMAT_VERSION,
    META_CHUNK,
    OBS,
    READ_BLOCK_ROWS,
    REWARD,
    SHARD_ROWS,
    TASK,
    Layout,
    acquire_writer_lock,
    is_local,
    normalize_path,
    open_layout,
    read_commit_marker,
    release_writer_lock,
    structure_problems,
)
from pwm_core.data.shards import write_rows
from pwm_core.errors import DatasetError
from pwm_core.tasks import TaskSet

if TYPE_CHECKING:
    from pwm_core.data.reader import EpisodeDataset

# Bit-shuffled zstd compresses float32 columns better than plain zstd at the same speed (measured).
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),)
# "none": rows at fixed offsets in the shard files, so a training window is one read per array, no decoding
# (the out-of-core sampler's fast path, for datasets streamed from disk); ~1.2x the bytes of "zstd" on random data
COMPRESSIONS = ("zstd", "none")


class EpisodeWriter:
    """Appends whole episodes to an episode dataset; use :meth:`create` or :meth:`open`.

    Attributes: ``path``, ``task_set``, ``num_episodes`` and ``num_rows`` (committed).
    """

    def __init__(self, layout: Layout, lock_fd: int | None) -> None:
        self._layout = layout
        self._lock_fd = lock_fd
        self.path = layout.path
        self.task_set: TaskSet = layout.task_set
        ends = read_commit_marker(layout)
        self.num_episodes = int(ends.size)
        self.num_rows = int(ends[-1]) if ends.size else 0

    # ----------------------------------------------------------------------------- open / create
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        task_set: TaskSet,
        provenance: dict | None = None,
        *,
        chunk_rows: int = CHUNK_ROWS,
        shard_rows: int = SHARD_ROWS,
        compression: str = "zstd",
    ) -> EpisodeWriter:
        """Create an empty dataset at ``path`` (which must not exist) and open it for appending.

        ``compression``: ``"zstd"`` (blosc, bit-shuffled) or ``"none"`` for the data arrays (see COMPRESSIONS)."""
        path = normalize_path(path)
        if is_local(path) and Path(path).exists():
            raise DatasetError(f"{path} already exists; choose a new path, or append with EpisodeWriter.open")
        if chunk_rows < 1 or shard_rows % chunk_rows:
            raise ValueError(f"shard_rows ({shard_rows}) must be a multiple of chunk_rows ({chunk_rows}) >= 1")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        attrs: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task_set": task_set.to_dict(),
            "provenance": dict(provenance or {}),
        }
        json.dumps(attrs)  # fail before touching the disk if provenance is not JSON-serialisable
        group = zarr.open_group(path, mode="w-", zarr_format=3, attributes=attrs)
        O, A = task_set.obs_dim, task_set.act_dim
        for name, cols, dtype, fill in (
            (OBS, (O,), "float32", np.nan),
            (ACTION, (A,), "float32", np.nan),
            (REWARD, (), "float32", np.nan),
            (TASK, (), "int16", -1),
        ):
            group.create_array(
                name,
                shape=(0, *cols),
                chunks=(chunk_rows, *cols),
                shards=(shard_rows, *cols),
                dtype=dtype,
                fill_value=fill,
                compressors=_COMPRESSORS if compression == "zstd" else None,
            )
        group.create_array(
            EPISODE_TASK, shape=(0,), chunks=(META_CHUNK,), dtype="int16", fill_value=-1, compressors=_COMPRESSORS
        )
        group.create_array(
            EPISODE_ENDS,
            shape=(0,),
            chunks=(META_CHUNK,),
            dtype="int64",
            fill_value=ENDS_FILL,
            compressors=_COMPRESSORS,
        )
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> EpisodeWriter:
        """Open an existing dataset for appending; first truncates any uncommitted tail.

        A damaged commit marker (lost or unreadable ``meta/episode_ends`` chunk) is refused with a
        :class:`DatasetError` and nothing is truncated.
        """
        layout = open_layout(path, mode="r+")
        lock_fd = acquire_writer_lock(layout.path)
        try:
            ends = read_commit_marker(layout)
            problems = structure_problems(ends, layout.num_rows_stored, layout.arrays[EPISODE_TASK].shape[0])
            if problems:
                raise DatasetError(f"{layout.path}: cannot append: {problems[0]}; run `pwmctl data fsck` on it")
            truncate_uncommitted(layout, ends)
            return cls(layout, lock_fd)
        except BaseException:
            release_writer_lock(lock_fd)
            raise

    def close(self) -> None:
        """Release the writer lock. Every appended episode is already committed."""
        release_writer_lock(self._lock_fd)
        self._lock_fd = None
        self._layout = None  # type: ignore[assignment]

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def truncate(self, num_episodes: int) -> None:
        """Keep only the first ``num_episodes`` committed episodes (commit marker first, so a kill during
        it still leaves a valid dataset); how a resumed writer undoes episodes recorded after its checkpoint."""
        if self._layout is None:
            raise DatasetError(f"{self.path}: the writer is closed")
        if not 0 <= num_episodes <= self.num_episodes:
            raise DatasetError(f"cannot keep {num_episodes} of {self.num_episodes} episodes")
        ends = read_commit_marker(self._layout)[:num_episodes]
        truncate_uncommitted(self._layout, ends)
        self.num_episodes, self.num_rows = int(ends.size), int(ends[-1]) if ends.size else 0

    # ----------------------------------------------------------------------------------- append
    def append_episode(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, task: int | str) -> None:
        """Append one episode of L transitions.

        Args:
            obs: (L+1, o) observations, o <= O (right-padded with zeros here); must be finite.
            action: (L+1, a) in TD-MPC2 alignment (row 0 is a filler and is stored as NaN) or
                (L, a) = the actions that led into obs 1..L; a <= A (padded with zeros).
            reward: (L+1,) or (L,), aligned like ``action``.
            task: global task id or task name; must belong to the dataset's task set.
        """
        self.append_episodes(np.asarray(obs)[None], np.asarray(action)[None], np.asarray(reward)[None], [task])

    def append_episodes(
        self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, task: Sequence[int | str] | np.ndarray
    ) -> None:
        """Append N episodes of equal length L in one write (one commit for all of them).

        Args:
            obs: (N, L+1, o); action: (N, L+1, a) or (N, L, a); reward: (N, L+1) or (N, L);
            task: (N,) global ids or names. Same conventions as :meth:`append_episode`.
        """
        if self._layout is None:
            raise DatasetError(f"{self.path}: the writer is closed")
        obs_rows, L = self._obs_rows(obs)
        N = obs_rows.shape[0] // (L + 1)
        A = self.task_set.act_dim
        action = np.asarray(action, dtype=np.float32)
        reward = np.asarray(reward, dtype=np.float32)
        if action.ndim != 3 or action.shape[0] != N or action.shape[2] > A:
            raise DatasetError(f"action must be (N, L or L+1, a) with N = {N}, a <= {A}; got {list(action.shape)}")
        if reward.ndim != 2 or reward.shape[0] != N:
            raise DatasetError(f"reward must be (N, L or L+1) with N = {N}; got {list(reward.shape)}")
        action_rows = self._transition_rows(action, L, "action", A)
        reward_rows = self._transition_rows(reward[..., None], L, "reward", 1)[:, 0]
        ep_task = self._task_ids(task, N)
        ends = self.num_rows + (L + 1) * np.arange(1, N + 1, dtype=np.int64)
        self._write(
            {OBS: obs_rows, ACTION: action_rows, REWARD: reward_rows, TASK: np.repeat(ep_task, L + 1)}, ep_task, ends
        )

    def append_stored(self, rows: dict[str, np.ndarray], lengths: np.ndarray, ep_task: np.ndarray) -> None:
        """Append whole episodes given as stored rows (what :meth:`EpisodeDataset.read_range` returns for a
        range of whole episodes of a dataset with the same obs / action widths): ``rows`` obs (n, O), action
        (n, A), reward (n,), task (n,); ``lengths`` (k,) rows per episode (L + 1), summing to n; ``ep_task``
        (k,) global task ids. One commit for all of them."""
        if self._layout is None:
            raise DatasetError(f"{self.path}: the writer is closed")
        lengths = np.asarray(lengths, np.int64)
        n = int(lengths.sum())
        O, A = self.task_set.obs_dim, self.task_set.act_dim
        shapes = {OBS: (n, O), ACTION: (n, A), REWARD: (n,), TASK: (n,)}
        got = {
            name: rows[key].shape
            for key, name in (("obs", OBS), ("action", ACTION), ("reward", REWARD), ("task", TASK))
        }
        if lengths.size == 0 or (lengths < 2).any() or any(got[k] != shapes[k] for k in shapes):
            raise DatasetError(f"stored rows {got} do not hold episodes of lengths summing to {n} with O={O}, A={A}")
        ep_task = self._task_ids(ep_task, lengths.size)
        self._write(
            {OBS: rows["obs"], ACTION: rows["action"], REWARD: rows["reward"], TASK: rows["task"]},
            ep_task,
            self.num_rows + np.cumsum(lengths),
        )

    def _write(self, rows: dict[str, np.ndarray], ep_task: np.ndarray, ends: np.ndarray) -> None:
        """Data first, then episode_task, then the commit marker."""
        n0, n1 = self.num_rows, int(ends[-1])
        for name in DATA_ARRAYS:
            _write_range(self._layout.arrays[name], n0, n1, rows[name])
        e0, e1 = self.num_episodes, self.num_episodes + ends.size
        _write_range(self._layout.arrays[EPISODE_TASK], e0, e1, ep_task)
        self._commit(e0, ends)
        self.num_rows, self.num_episodes = n1, e1

    def _commit(self, e0: int, ends: np.ndarray) -> None:
        """Commit marker written last: episodes exist for readers once their ends are stored.

        The entries go into their chunk first, through a view of the grown array, and the new shape
        is published after them (one atomic metadata write): a kill in between leaves the old shape,
        so no entry inside the shape is ever unwritten and a missing chunk always means damage.
        """
        arr = self._layout.arrays[EPISODE_ENDS]
        e1 = e0 + ends.size
        # zarr's metadata TypeVar is constrained to V2 or V3 and rejects the union that .metadata returns
        grown = zarr.Array(
            zarr.AsyncArray(
                arr.metadata.update_shape((e1,)),  # type: ignore[type-var]
                arr.store_path,
                arr.config,
            )
        )
        grown[e0:e1] = ends
        arr.resize((e1,))

    # ------------------------------------------------------------------------------- validation
    def _obs_rows(self, obs: np.ndarray) -> tuple[np.ndarray, int]:
        """(N, L+1, o) -> (N*(L+1), O) float32 rows, zero-padded; returns them and L."""
        obs = np.asarray(obs, dtype=np.float32)
        O = self.task_set.obs_dim
        if obs.ndim != 3 or obs.shape[0] < 1 or obs.shape[1] < 2 or obs.shape[2] > O:
            raise DatasetError(f"obs must be (N, L+1, o) with N >= 1, L >= 1, o <= {O}; got {list(obs.shape)}")
        if not np.isfinite(obs).all():
            raise DatasetError("obs contains NaN or inf; refusing to store it")
        N, L1, o = obs.shape
        if o < O:  # right-pad to the task set's obs dim, as TD-MPC2's multi-task wrapper does
            obs = np.concatenate([obs, np.zeros((N, L1, O - o), np.float32)], axis=2)
        return obs.reshape(N * L1, O), L1 - 1

    @staticmethod
    def _transition_rows(x: np.ndarray, L: int, name: str, width: int) -> np.ndarray:
        """(N, L+1 or L, w) float32 -> (N*(L+1), width) rows with row 0 of each episode NaN."""
        N = x.shape[0]
        if x.shape[1] not in (L, L + 1):
            raise DatasetError(
                f"{name} has {x.shape[1]} rows per episode; expected {L} (transitions "
                f"1..L) or {L + 1} (TD-MPC2 alignment, row 0 a filler) for obs of "
                f"{L + 1} rows"
            )
        x = x[:, x.shape[1] - L :]  # drop TD-MPC2's row-0 filler when L+1 rows were given
        if not np.isfinite(x).all():
            raise DatasetError(f"{name} contains NaN or inf outside row 0; refusing to store it")
        out = np.zeros((N, L + 1, width), np.float32)
        out[:, 0] = np.nan  # row alignment: no action/reward leads into an episode's first obs
        out[:, 1:, : x.shape[2]] = x
        return out.reshape(N * (L + 1), width)

    def _task_ids(self, task: Sequence[int | str] | np.ndarray, N: int) -> np.ndarray:
        """Task names / global ids -> (N,) int16 global ids, all inside the task set."""
        tasks = list(task) if not isinstance(task, np.ndarray) else task.tolist()
        if len(tasks) != N:
            raise DatasetError(f"got {len(tasks)} task labels for {N} episodes")
        by_name = {t.name: t.id for t in self.task_set}
        ids = np.array([by_name.get(t, -1) if isinstance(t, str) else int(t) for t in tasks], np.int64)
        outside = sorted({t for t, ok in zip(tasks, np.isin(ids, self.task_set.ids)) if not ok}, key=str)
        if outside:
            raise DatasetError(f"task(s) {outside} not in the dataset's task set {self.task_set.name!r}")
        return ids.astype(np.int16)


def copy_dataset(
    src: EpisodeDataset,
    dst: str | os.PathLike,
    *,
    chunk_rows: int = CHUNK_ROWS,
    shard_rows: int = SHARD_ROWS,
    compression: str = "zstd",
    provenance: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EpisodeWriter:
    """Copy every committed episode of ``src`` into a new dataset at ``dst`` with another storage layout
    (chunk rows, shard rows, compression), streamed in blocks of whole episodes (bounded memory; a kill
    leaves ``dst`` holding the blocks committed so far, and a later call on the same ``dst`` goes on from
    there). ``progress(rows_done, rows_total)`` after each block. Returns the closed writer (its counts)."""
    dst = normalize_path(dst)
    if is_local(dst) and (Path(dst) / "zarr.json").exists():
        writer = EpisodeWriter.open(dst)
        if writer.task_set.to_dict() != src.task_set.to_dict():
            writer.close()
            raise DatasetError(f"{dst} holds another task set; give a new path")
    else:
        writer = EpisodeWriter.create(
            dst,
            src.task_set,
            {**src.provenance, **(provenance or {})},
            chunk_rows=chunk_rows,
            shard_rows=shard_rows,
            compression=compression,
        )
    with writer:
        ends, starts = src.episode_ends, src.episode_starts
        if writer.num_episodes > src.num_episodes or (
            writer.num_episodes and int(ends[writer.num_episodes - 1]) != writer.num_rows
        ):
            raise DatasetError(f"{dst} is not a partial copy of {src.path}; give a new path")
        e = writer.num_episodes
        while e < src.num_episodes:
            lo = int(starts[e])  # whole episodes, about one read block
            f = max(int(np.searchsorted(ends, lo + READ_BLOCK_ROWS, side="right")), e + 1)
            hi = int(ends[f - 1])
            writer.append_stored(src.read_range(lo, hi), src.episode_lengths[e:f], src.episode_task[e:f])
            e = f
            if progress is not None:
                progress(hi, src.num_rows)
    return writer


def truncate_uncommitted(layout: Layout, ends: np.ndarray) -> dict[str, int]:
    """Shrink every array to the committed episodes; returns the rows removed per array.

    Order: the commit marker's unwritten entries first, then episode_task, then data, so a kill
    during the repair itself still leaves a valid dataset.
    """
    n_rows = int(ends[-1]) if ends.size else 0
    targets = {EPISODE_ENDS: ends.size, EPISODE_TASK: ends.size, **dict.fromkeys(DATA_ARRAYS, n_rows)}
    removed = {}
    for name, n in targets.items():
        arr = layout.arrays[name]
        removed[name] = max(arr.shape[0] - n, 0)
        if removed[name]:
            arr.resize((n, *arr.shape[1:]))
    return removed


def _write_range(arr: zarr.Array, lo: int, hi: int, values: np.ndarray) -> None:
    """Resize ``arr`` to ``hi`` rows (zarr writes the new shape first) and fill rows [lo, hi) (whole shards
    encoded directly, byte for byte what zarr writes, ~10x faster: :mod:`pwm_core.data.shards`)."""
    arr.resize((hi, *arr.shape[1:]))
    write_rows(arr, lo, hi, values)
