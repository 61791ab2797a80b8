"""Check an episode dataset and optionally remove what an interrupted append left behind."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pwm_core.data.episodes import (
    ACTION,
    DATA_ARRAYS,
    EPISODE_ENDS,
    EPISODE_TASK,
    OBS,
    REWARD,
    TASK,
    Layout,
    acquire_writer_lock,
    episode_starts,
    is_local,
    missing_storage,
    open_layout,
    read_commit_marker,
    read_episode_task,
    read_readable,
    release_writer_lock,
    row_blocks,
    structure_problems,
)
from pwm_core.data.writer import truncate_uncommitted
from pwm_core.errors import DatasetError


@dataclass
class FsckReport:
    """What ``fsck`` found. ``tail_rows``: entries past the committed ones, per array."""

    path: str
    committed_episodes: int
    committed_rows: int
    tail_rows: dict[str, int]
    problems: list[str] = field(default_factory=list)
    partial_files: list[str] = field(default_factory=list)  # temp files of killed chunk writes
    repaired: bool = False
    marker_damaged: bool = False  # meta/episode_ends lost or unreadable: nothing known to be committed
    repair_refused: str = ""  # why a requested repair was not done (damaged structure)

    @property
    def ok(self) -> bool:
        """No problems (an uncommitted tail is not a problem: readers ignore it)."""
        return not self.problems

    @property
    def has_tail(self) -> bool:
        return any(self.tail_rows.values()) or bool(self.partial_files)


def fsck(path: str | os.PathLike, repair: bool = False) -> FsckReport:
    """Check the structure and the committed content of a dataset.

    Problems: a lost or unreadable commit marker (``meta/episode_ends``), ``episode_ends`` not
    increasing, ``episode_task`` shorter than ``episode_ends``, data arrays shorter than the committed
    rows, lost, corrupt or truncated chunks (named with their rows), non-finite obs, non-finite
    action / reward outside row 0 or a non-NaN row 0, per-row task differing from its episode's task,
    task ids outside the task set. ``repair=True`` truncates every array back to the committed episodes
    and deletes leftover ``*.partial`` files; it does not touch committed rows, so it refuses
    (``repair_refused`` says why, nothing is changed) when the structure is damaged.
    """
    layout = open_layout(path, mode="r+" if repair else "r")
    partial = sorted(str(p) for p in Path(layout.path).rglob("*.partial")) if is_local(layout.path) else []
    try:
        ends = read_commit_marker(layout)
    except DatasetError as e:  # nothing is known to be committed, so nothing may be called a tail
        problem = str(e).removeprefix(f"{layout.path}: ")
        return FsckReport(
            layout.path,
            0,
            0,
            {},
            [problem],
            partial,
            marker_damaged=True,
            repair_refused=f"{layout.path}: not repaired, nothing changed: {problem}" if repair else "",
        )
    n_rows = int(ends[-1]) if ends.size else 0
    tail = {name: max(layout.arrays[name].shape[0] - n_rows, 0) for name in DATA_ARRAYS}
    tail[EPISODE_TASK] = max(layout.arrays[EPISODE_TASK].shape[0] - ends.size, 0)
    tail[EPISODE_ENDS] = layout.arrays[EPISODE_ENDS].shape[0] - ends.size
    structural = structure_problems(ends, layout.num_rows_stored, layout.arrays[EPISODE_TASK].shape[0])
    problems = structural or _content_problems(layout, ends)
    report = FsckReport(layout.path, int(ends.size), n_rows, tail, problems, partial)
    if repair and report.has_tail:
        if structural:  # inconsistent commits: nothing safe to cut
            report.repair_refused = f"{layout.path}: not repaired, nothing changed: {structural[0]}"
        else:
            _repair(layout, ends, partial)
            report.repaired = True
    return report


def _repair(layout: Layout, ends: np.ndarray, partial: list[str]) -> None:
    lock_fd = acquire_writer_lock(layout.path)  # never cut while a writer is appending
    try:
        truncate_uncommitted(layout, ends)
        for p in partial:
            Path(p).unlink(missing_ok=True)
    finally:
        release_writer_lock(lock_fd)


def _content_problems(layout: Layout, ends: np.ndarray) -> list[str]:
    """Scan the committed rows block by block (memory bounded by one block).

    Lost and unreadable chunks are reported by name; their rows are left out of the value checks.
    """
    arrays = layout.arrays
    problems = []
    try:
        episode_task = read_episode_task(layout, ends.size).astype(np.int64)
    except DatasetError as e:
        return [str(e).removeprefix(f"{layout.path}: ")]
    n_rows = int(ends[-1]) if ends.size else 0
    ok = np.ones(n_rows, bool)  # rows every data array could read
    for name in DATA_ARRAYS:
        for key, lo, hi in missing_storage(arrays[name], n_rows):
            problems.append(f"{name}: stored object {key} is missing, rows {lo}-{hi - 1} lost")
            ok[lo:hi] = False
    outside = np.setdiff1d(episode_task, layout.task_set.ids)
    if outside.size:
        problems.append(
            f"meta/episode_task holds task ids {outside.tolist()} outside the task set {layout.task_set.name!r}"
        )
    starts = episode_starts(ends)
    counts = dict.fromkeys(("obs", "transition", "row0", "task"), 0)
    for lo, hi in row_blocks(n_rows):
        block = {}
        for name in DATA_ARRAYS:
            block[name], readable, damaged = read_readable(arrays[name], name, lo, hi)
            ok[lo:hi] &= readable
            problems += damaged
        good = ok[lo:hi]
        rows = np.arange(lo, hi)
        episode = np.searchsorted(ends, rows, side="right")
        first = rows == starts[episode]
        trans = np.column_stack([block[ACTION], block[REWARD]])
        counts["obs"] += int((~np.isfinite(block[OBS]).all(axis=1) & good).sum())
        counts["transition"] += int((~np.isfinite(trans).all(axis=1) & good & ~first).sum())
        counts["row0"] += int((~np.isnan(trans).all(axis=1) & good & first).sum())
        counts["task"] += int(((block[TASK] != episode_task[episode]) & good).sum())
    messages = {
        "obs": "committed rows with NaN/inf obs",
        "transition": "committed rows with NaN/inf action or reward outside an episode's row 0",
        "row0": "episode first rows whose action/reward is not NaN (misaligned rows?)",
        "task": "rows whose data/task differs from meta/episode_task",
    }
    problems += [f"{counts[k]} {msg}" for k, msg in messages.items() if counts[k]]
    return problems
