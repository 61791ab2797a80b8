"""Read-only view of an episode dataset: committed episodes only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from pwm_core.data.episodes import (
    ACTION,
    DATA_ARRAYS,
    EPISODE_ENDS,
    EPISODE_TASK,
    OBS,
    REWARD,
    TASK,
    Layout,
    episode_starts,
    is_local,
    open_layout,
    read_commit_marker,
    read_episode_task,
    read_rows,
    resolve_task_ids,
    row_blocks,
    structure_problems,
)
from pwm_core.data.shards import is_raw
from pwm_core.errors import DatasetError
from pwm_core.tasks import TaskSet

# load() / read_rows_into() keys -> arrays
FIELDS = {"obs": OBS, "action": ACTION, "reward": REWARD, "task": TASK}


def open_dataset(path: str | os.PathLike, mode: Literal["r", "r+"] = "r") -> EpisodeDataset:
    """Open an episode dataset for reading; every problem is a :class:`DatasetError`.

    Validates that the path exists, holds a ``pwm-episodes`` group of a format version this code
    reads, and that the arrays and the committed ``meta/episode_ends`` are consistent.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r} (append with EpisodeWriter.open)")
    layout = open_layout(path, mode)
    ends = read_commit_marker(layout)
    problems = structure_problems(ends, layout.num_rows_stored, layout.arrays[EPISODE_TASK].shape[0])
    if problems:
        raise DatasetError(f"{layout.path}: {problems[0]}; run `pwmctl data fsck` on it")
    return EpisodeDataset(layout, ends, read_episode_task(layout, ends.size))


class EpisodeDataset:
    """The committed episodes of one dataset. Rows past ``episode_ends[-1]`` are never read."""

    def __init__(self, layout: Layout, episode_ends: np.ndarray, episode_task: np.ndarray) -> None:
        self._layout = layout
        self.path: str = layout.path
        self.task_set: TaskSet = layout.task_set
        self.provenance: dict = layout.provenance
        self.obs_dim: int = layout.task_set.obs_dim
        self.act_dim: int = layout.task_set.act_dim
        self.episode_ends: np.ndarray = episode_ends.astype(np.int64)  # (E,) exclusive ends
        self.episode_task: np.ndarray = episode_task.astype(np.int16)  # (E,) global task ids
        self._starts = episode_starts(self.episode_ends)

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.size)

    @property
    def num_rows(self) -> int:
        """Stored rows: one per observation (transitions + one first row per episode)."""
        return int(self.episode_ends[-1]) if self.episode_ends.size else 0

    @property
    def num_transitions(self) -> int:
        return self.num_rows - self.num_episodes

    @property
    def episode_starts(self) -> np.ndarray:
        """(E,) first row of each episode."""
        return self._starts

    @property
    def episode_lengths(self) -> np.ndarray:
        """(E,) rows per episode (transitions + 1)."""
        return self.episode_ends - self._starts

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({self.path!r}, task_set={self.task_set.name!r}, "
            f"episodes={self.num_episodes}, transitions={self.num_transitions})"
        )

    # ---------------------------------------------------------------------------------- queries
    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Rows of episode ``i``: obs (L+1, O), action (L+1, A), reward (L+1,), task (L+1,).

        Row 0 of action / reward is NaN (nothing leads into the first observation).
        """
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range for {self.num_episodes} episodes")
        i %= self.num_episodes
        lo, hi = int(self.episode_starts[i]), int(self.episode_ends[i])
        return {key: self._read(name, lo, hi) for key, name in FIELDS.items()}

    def episode_returns(self) -> np.ndarray:
        """(E,) float64 sum of rewards of each episode (row 0, the NaN filler, excluded)."""
        returns = np.zeros(self.num_episodes, np.float64)
        for lo, hi in row_blocks(self.num_rows):
            rows = np.arange(lo, hi)
            episode = np.searchsorted(self.episode_ends, rows, side="right")
            r = np.nan_to_num(self._read(REWARD, lo, hi).astype(np.float64), nan=0.0)  # nansum
            r[rows == self._starts[episode]] = 0.0  # row 0 is a filler, not a transition
            returns += np.bincount(episode, weights=r, minlength=self.num_episodes)
        return returns

    def task_summary(self) -> list[dict]:
        """Per task present, in task-set order: name, id, episodes, rows, transitions and the mean,
        std (ddof 0), min and max of its episode returns."""
        returns, lengths = self.episode_returns(), self.episode_lengths
        rows = []
        for t in self.task_set:
            sel = self.episode_task == t.id
            if not sel.any():
                continue
            r = returns[sel]
            rows.append(
                {
                    "task": t.name,
                    "task_id": t.id,
                    "episodes": int(sel.sum()),
                    "rows": int(lengths[sel].sum()),
                    "transitions": int(lengths[sel].sum() - sel.sum()),
                    "return_mean": float(r.mean()),
                    "return_std": float(r.std()),
                    "return_min": float(r.min()),
                    "return_max": float(r.max()),
                }
            )
        return rows

    def per_task_counts(self) -> dict[str, int]:
        """Task name -> number of episodes, for the tasks present, in task-set order."""
        ids, counts = np.unique(self.episode_task, return_counts=True)
        by_id = dict(zip(ids.tolist(), counts.tolist()))
        return {t.name: by_id[t.id] for t in self.task_set if t.id in by_id}

    def nbytes_on_disk(self) -> int:
        """Bytes stored: every file under a local dataset directory, else the arrays' stored bytes."""
        if is_local(self.path):
            return sum(f.stat().st_size for f in Path(self.path).rglob("*") if f.is_file())
        return sum(int(self.array(name).nbytes_stored()) for name in DATA_ARRAYS + (EPISODE_ENDS, EPISODE_TASK))

    # ---------------------------------------------------------------------------------- loading
    def select_episodes(self, tasks: Sequence[int | str] | None = None) -> np.ndarray:
        """(k,) indices of the episodes of ``tasks`` (names or global ids; None = all)."""
        if tasks is None:
            return np.arange(self.num_episodes)
        return np.flatnonzero(np.isin(self.episode_task, resolve_task_ids(tasks)))

    def read_range(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Stored rows ``[lo, hi)`` of committed episodes (``hi <= num_rows``): obs (n, O), action (n, A),
        reward (n,), task (n,). Read ranges of whole episodes to stream a dataset in bounded memory."""
        if not 0 <= lo <= hi <= self.num_rows:
            raise IndexError(f"rows [{lo}, {hi}) out of range for {self.num_rows} committed rows")
        return {key: self._read(name, lo, hi) for key, name in FIELDS.items()}

    def read_rows_into(self, episodes: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """Copy the rows of ``episodes`` (sorted indices) into ``out``, in dataset order.

        ``out`` maps some of ``obs``/``action``/``reward``/``task`` to preallocated arrays with
        exactly as many rows as the episodes hold. Reads whole shard-aligned blocks, skipping
        blocks without a selected episode, so memory stays bounded by ``out`` plus one block.
        """
        selected = np.zeros(self.num_episodes, bool)
        selected[episodes] = True
        pos = 0
        for lo, hi in row_blocks(self.num_rows):
            keep = selected[np.searchsorted(self.episode_ends, np.arange(lo, hi), side="right")]
            k = int(keep.sum())
            if k == 0:
                continue
            for key, dst in out.items():
                block = self._read(FIELDS[key], lo, hi)
                dst[pos : pos + k] = block if k == hi - lo else block[keep]
            pos += k

    def array(self, name: str) -> zarr.Array:
        """The stored array ``name`` (``obs``, ``action``, ``reward``, ``task``, ...) for readers that go
        below rows, e.g. the out-of-core sampler's shard reads."""
        return self._layout.arrays[name]

    @property
    def compressed(self) -> bool:
        """Whether the observations are stored compressed (not the raw layout ``data rechunk
        --compression none`` writes, whose windows stream with one read each)."""
        return not is_raw(self.array(OBS))

    def _read(self, name: str, lo: int, hi: int) -> np.ndarray:
        return read_rows(self.array(name), name, lo, hi, self.path)

    def rows_of(self, episodes: np.ndarray) -> int:
        """Number of rows held by ``episodes``."""
        return int(self.episode_lengths[episodes].sum())

    def load(self, tasks: Sequence[int | str] | None = None) -> dict[str, np.ndarray]:
        """Committed rows in RAM, optionally only the episodes of ``tasks``.

        Returns obs (n, O), action (n, A), reward (n,), task (n,) int16, and per loaded episode
        episode_ends (k,) int64 (exclusive, into the loaded rows), episode_task (k,) int16,
        episode_index (k,) int64 (its index in this dataset).
        """
        episodes = self.select_episodes(tasks)
        n = self.rows_of(episodes)
        out: dict[str, np.ndarray] = {
            "obs": np.empty((n, self.obs_dim), np.float32),
            "action": np.empty((n, self.act_dim), np.float32),
            "reward": np.empty(n, np.float32),
            "task": np.empty(n, np.int16),
        }
        self.read_rows_into(episodes, out)
        lengths = self.episode_lengths[episodes]
        return {
            **out,
            "episode_ends": np.cumsum(lengths).astype(np.int64),
            "episode_task": self.episode_task[episodes],
            "episode_index": episodes.astype(np.int64),
        }
