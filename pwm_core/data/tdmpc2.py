"""Import TD-MPC2's released multi-task datasets (mt30 / mt80 ``chunk_<i>.pt``) into the episode format.

A chunk is a ``torch.save``d TensorDict with batch size [N_episodes, L] and keys obs [N, L, D]
(D = 24 mt30 / 39 mt80, zero-padded per task), action [N, L, 6], reward [N, L], task [N, L].
TD-MPC2 and this format share the row alignment (row t holds the action/reward that led into
obs t), so rows map one to one; only row 0's action/reward fillers become NaN.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pwm_core.data.episodes import CHUNK_ROWS
from pwm_core.data.writer import EpisodeWriter
from pwm_core.errors import DatasetError
from pwm_core.tasks import TaskSet, resolve_tasks

TDMPC2_ACT_DIM = 6  # TD-MPC2 pads every action to 6 dims in both mt30 and mt80
OBS_DIM_TO_TASK_SET = {24: "mt30", 39: "mt80"}
IMPORT_SHARD_ROWS = 2**18  # bulk writes: big shards keep mt80 under ~2k files per array
IMPORT_BATCH_ROWS = 2**18  # rows per write; memory stays bounded by one batch, not one chunk
# Where TD-MPC2 published the chunks (docs/algorithm.md#released-data-and-checkpoints-on-the-hub):
# the Hub dataset repo HUB_REPO, files <set>/chunk_<i>.pt for i < HUB_CHUNKS[set].
HUB_REPO = "nicklashansen/tdmpc2"
HUB_CHUNKS = {"mt30": 4, "mt80": 20}


@dataclass
class ImportReport:
    path: str
    task_set: str
    files: list[str]
    episodes: int
    transitions: int
    seconds: float
    per_task: dict[str, int] = field(default_factory=dict)  # task name -> episodes


def import_tdmpc2(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    task_set: TaskSet | None = None,
    provenance: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    allow_pickle: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    compression: str = "zstd",
) -> ImportReport:
    """Convert TD-MPC2 ``.pt`` chunks into a new episode dataset at ``out_path``.

    Args:
        paths: chunk files and/or directories (a directory means its ``*.pt`` files in natural
            order, chunk_2 before chunk_10); processed in the order given.
        out_path: the new dataset (must not exist).
        task_set: the task set the chunks belong to; None infers it from the obs dim
            (24 -> mt30, 39 -> mt80).
        provenance: extra entries for the dataset's provenance attribute.
        progress: called as ``progress(episodes_done, episodes_total)`` after every write.
        allow_pickle: load with ``weights_only=False``. Only for files you trust: unpickling can
            run arbitrary code. The default loads with ``weights_only=True``, which works for
            TensorDict pickles because tensordict allow-lists its reconstructors (including the
            dict-based layout of tensordict <= 0.4 that the released chunks may use).
        chunk_rows, compression: the dataset's storage layout (``EpisodeWriter.create``); 256 and "none" make
            the layout the out-of-core sampler streams fastest.

    Memory is bounded by one write batch: chunks are memory-mapped (``torch.load(mmap=True)``).
    Every batch is committed through :class:`EpisodeWriter`, so an interrupted import leaves a
    readable dataset of the episodes committed so far.
    """
    t0 = time.perf_counter()
    files = expand_chunk_paths(paths)
    shapes = {f: _chunk_shape(_load_chunk(f, allow_pickle), f) for f in files}  # validate first
    obs_dims = {shape[2] for shape in shapes.values()}
    if len(obs_dims) > 1:
        raise DatasetError(
            f"chunks disagree on obs dim ({sorted(obs_dims)}); import mt30 and mt80 into separate datasets"
        )
    D = obs_dims.pop()
    inferred = task_set is None
    task_set = task_set or _infer_task_set(D)
    if D != task_set.obs_dim:
        raise DatasetError(
            f"chunks have obs dim {D} but task set {task_set.name!r} pads obs to "
            f"{task_set.obs_dim} (mt30 chunks have 24, mt80 chunks 39)"
        )
    total = sum(shape[0] for shape in shapes.values())
    provenance = {"source": "tdmpc2", "files": [Path(f).name for f in files], **(provenance or {})}
    done, counts = 0, np.zeros(max(task_set.ids) + 1, np.int64)
    with EpisodeWriter.create(
        out_path, task_set, provenance, shard_rows=IMPORT_SHARD_ROWS, chunk_rows=chunk_rows, compression=compression
    ) as writer:
        for f in files:
            for obs, action, reward, ep_task in _episode_batches(_load_chunk(f, allow_pickle), f, task_set, inferred):
                writer.append_episodes(obs, action, reward, ep_task)
                counts += np.bincount(ep_task, minlength=counts.size)
                done += len(ep_task)
                if progress is not None:
                    progress(done, total)
        rows = writer.num_rows
    return ImportReport(
        os.fspath(out_path),
        task_set.name,
        [str(f) for f in files],
        done,
        rows - done,
        time.perf_counter() - t0,
        {t.name: int(counts[t.id]) for t in task_set if counts[t.id]},
    )


def append_chunk(
    writer: EpisodeWriter,
    path: str | os.PathLike,
    *,
    skip_episodes: int = 0,
    progress: Callable[[int, int], None] | None = None,
    allow_pickle: bool = False,
) -> int:
    """Append one chunk's episodes to an open dataset of the chunk's task set; returns the chunk's episodes.

    ``skip_episodes``: the chunk's first episodes are already in the dataset (an interrupted import
    committed them), so the import resumes after them. ``progress(done, total)`` counts the chunk's
    episodes. Every batch is committed, as in :func:`import_tdmpc2`.
    """
    path = Path(path)
    td = _load_chunk(path, allow_pickle)
    N, _, D = _chunk_shape(td, path)
    task_set = writer.task_set
    if D != task_set.obs_dim:
        raise DatasetError(
            f"{path}: obs dim {D}, but the dataset's task set {task_set.name!r} pads obs to "
            f"{task_set.obs_dim} (mt30 chunks have 24, mt80 chunks 39)"
        )
    if not 0 <= skip_episodes <= N:
        raise DatasetError(f"{path}: {skip_episodes} of its episodes are said to be imported, but it holds {N}")
    done = skip_episodes
    for obs, action, reward, ep_task in _episode_batches(td, path, task_set, False, start=skip_episodes):
        writer.append_episodes(obs, action, reward, ep_task)
        done += len(ep_task)
        if progress is not None:
            progress(done, N)
    return N


def expand_chunk_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files in the order given; a directory expands to its ``*.pt`` files in natural order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.pt"), key=_natural_key)
            if not found:
                raise DatasetError(f"no *.pt chunks in directory {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"no TD-MPC2 chunk at {p}")
    if not files:
        raise DatasetError("no TD-MPC2 chunk given")
    return files


def _natural_key(path: Path) -> list:
    """chunk_2 < chunk_10: compare digit runs as numbers."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def _infer_task_set(obs_dim: int) -> TaskSet:
    if obs_dim not in OBS_DIM_TO_TASK_SET:
        raise DatasetError(
            f"cannot infer the task set from obs dim {obs_dim} (mt30 chunks have "
            "24, mt80 chunks 39); pass the task set explicitly"
        )
    return resolve_tasks(OBS_DIM_TO_TASK_SET[obs_dim])


def _load_chunk(path: Path, allow_pickle: bool):
    """Memory-mapped TensorDict (or dict) of one chunk; tensors are paged in on access."""
    import tensordict  # noqa: F401  (registers TensorDict's reconstructors as weights_only-safe)

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1]
        raise DatasetError(
            f"{path}: refused by torch.load(weights_only=True): {reason}. pwmctl never "
            "unpickles; if you trust this file (unpickling can execute code), re-save its "
            f"tensors as a plain dict and import that: `{_resave_command(path)}` (or call "
            "pwm_core.data.import_tdmpc2(..., allow_pickle=True) from Python)"
        ) from None
    except (RuntimeError, OSError) as e:
        raise DatasetError(f"{path}: not a readable torch.save file ({e})") from None


def _resave_command(path: Path) -> str:
    """A shell command writing ``<path>.plain.pt``: the chunk's four tensors, loadable with weights_only."""
    code = (
        f"import torch; d = torch.load({str(path)!r}, mmap=True, weights_only=False); "
        "torch.save({k: v for k, v in d.items() if k in ('obs', 'action', 'reward', 'task')}, "
        f"{str(path) + '.plain.pt'!r})"
    )
    return f"python -c {shlex.quote(code)}"


def _chunk_shape(td, path: Path) -> tuple[int, int, int]:
    """(N, L, D) of a chunk, after checking its keys and the action dim."""
    missing = [k for k in ("obs", "action", "reward", "task") if k not in td.keys()]
    if missing:
        raise DatasetError(
            f"{path}: missing key(s) {missing}; a TD-MPC2 chunk has obs, action, "
            f"reward, task (found {sorted(td.keys())})"
        )
    obs, action = td["obs"], td["action"]
    if obs.ndim != 3 or obs.shape[1] < 2:
        raise DatasetError(f"{path}: obs must be [episodes, L >= 2, D], got {list(obs.shape)}")
    if tuple(action.shape) != (*obs.shape[:2], TDMPC2_ACT_DIM):
        raise DatasetError(
            f"{path}: action must be {[*obs.shape[:2], TDMPC2_ACT_DIM]} (TD-MPC2 pads "
            f"actions to 6), got {list(action.shape)}"
        )
    for key in ("reward", "task"):  # [N, L], or [N, L, 1]
        if tuple(td[key].shape) not in (tuple(obs.shape[:2]), (*obs.shape[:2], 1)):
            raise DatasetError(f"{path}: {key} must be {list(obs.shape[:2])}, got {list(td[key].shape)}")
    return tuple(obs.shape)


def _episode_batches(td, path: Path, task_set: TaskSet, inferred: bool, start: int = 0):
    """Yield (obs, action, reward, episode_task) numpy batches of whole episodes, from episode ``start``."""
    N, L, _ = td["obs"].shape
    A = task_set.act_dim
    per_batch = max(1, IMPORT_BATCH_ROWS // L)
    for i0 in range(start, N, per_batch):
        sl = slice(i0, min(i0 + per_batch, N))
        action = td["action"][sl].numpy()
        task = td["task"][sl].reshape(-1, L).numpy()
        if (task != task[:, :1]).any():
            bad = i0 + int(np.flatnonzero((task != task[:, :1]).any(axis=1))[0])
            raise DatasetError(f"{path}: episode {bad} changes task id along the episode")
        ep_task = task[:, 0].astype(np.int64)
        outside = np.setdiff1d(ep_task, task_set.ids)
        if outside.size:
            how = f" (inferred from obs dim {task_set.obs_dim})" if inferred else ""
            raise DatasetError(f"{path}: task ids {outside.tolist()} are not in task set {task_set.name!r}{how}")
        if A < TDMPC2_ACT_DIM and np.any(action[:, 1:, A:] != 0):
            raise DatasetError(f"{path}: actions use more than the task set's {A} action dims")
        yield (td["obs"][sl].numpy(), action[..., :A], td["reward"][sl].reshape(-1, L).numpy(), ep_task)
