"""Uniform H-step window sampler over episodes held in RAM (TD-MPC2's strict-length slices)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pwm_core.data.episodes import resolve_task_ids
from pwm_core.data.reader import EpisodeDataset
from pwm_core.errors import DatasetError

if TYPE_CHECKING:
    from pwm_core.data.outofcore import OutOfCoreSampler

RAM_BUDGET_FRACTION = 0.5  # default budget of the in-RAM sampler: this share of the available memory


@dataclass
class Batch:
    """H-step windows. obs[0] is the start state; action[t] / reward[t] lead from obs[t] to obs[t+1]."""

    obs: torch.Tensor  # (H+1, B, O) float32
    action: torch.Tensor  # (H, B, A) float32
    reward: torch.Tensor  # (H, B) float32
    task: torch.Tensor  # (B,) int64 global task ids

    def to(self, device: str | torch.device) -> Batch:
        return Batch(self.obs.to(device), self.action.to(device), self.reward.to(device), self.task.to(device))


class WindowSampler:
    """Samples windows of H+1 consecutive rows from one episode, uniformly over valid start rows.

    A start row s of an episode ending (exclusive) at e is valid when s + H + 1 <= e. The window
    gives obs[s..s+H] and action/reward[s+1..s+H] (row alignment: row t holds the action/reward
    that led into obs t, so an episode's NaN row 0 is never returned). All datasets are loaded into
    RAM once; they must share the padded obs/action dims.
    """

    def __init__(
        self,
        dataset: EpisodeDataset | Sequence[EpisodeDataset],
        horizon: int,
        batch_size: int,
        tasks: Sequence[int | str] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        *,
        episodes: Sequence[np.ndarray] | None = None,
        obs_dim: int | None = None,
        act_dim: int | None = None,
    ) -> None:
        """``episodes``: per dataset, the episode indices to use (e.g. a train / held-out split),
        combined with ``tasks``. ``obs_dim`` / ``act_dim``: zero-pad every dataset's rows to these
        dims (a model's task-set dims), so that datasets of different padding compose; by default
        the datasets must share their dims."""
        datasets = [dataset] if isinstance(dataset, EpisodeDataset) else list(dataset)
        if horizon < 1 or batch_size < 1:
            raise ValueError(f"horizon and batch_size must be >= 1, got {horizon}, {batch_size}")
        self.horizon, self.batch_size, self.device = horizon, batch_size, torch.device(device)
        self.obs_dim, self.act_dim = target_dims(datasets, obs_dim, act_dim)
        self.generator = torch.Generator().manual_seed(seed)
        self._load(datasets, tasks, episodes)
        self._index_windows()

    def _load(
        self, datasets: list[EpisodeDataset], tasks: Sequence[int | str] | None, episodes: Sequence[np.ndarray] | None
    ) -> None:
        """Concatenate the selected episodes of every dataset into preallocated RAM arrays."""
        selections = select_episodes(datasets, tasks, episodes)
        n_rows = sum(ds.rows_of(sel) for ds, sel in zip(datasets, selections))
        n_episodes = sum(sel.size for sel in selections)
        _check_memory(sampler_nbytes(n_rows, n_episodes, self.obs_dim, self.act_dim), tasks)
        padded = any((ds.obs_dim, ds.act_dim) != (self.obs_dim, self.act_dim) for ds in datasets)
        alloc = np.zeros if padded else np.empty  # zero padding, as TD-MPC2's multi-task wrapper
        obs = alloc((n_rows, self.obs_dim), np.float32)
        action = alloc((n_rows, self.act_dim), np.float32)
        reward = np.empty(n_rows, np.float32)
        lengths, episode_task, pos = [], [], 0
        for ds, sel in zip(datasets, selections):
            k = ds.rows_of(sel)
            ds.read_rows_into(
                sel,
                {
                    "obs": obs[pos : pos + k, : ds.obs_dim],
                    "action": action[pos : pos + k, : ds.act_dim],
                    "reward": reward[pos : pos + k],
                },
            )
            _check_finite(ds, sel, obs[pos : pos + k], action[pos : pos + k], reward[pos : pos + k])
            lengths.append(ds.episode_lengths[sel])
            episode_task.append(ds.episode_task[sel])
            pos += k
        self.obs, self.action, self.reward = map(torch.from_numpy, (obs, action, reward))
        self.episode_lengths = torch.from_numpy(np.concatenate(lengths).astype(np.int64))
        self.episode_task = torch.from_numpy(np.concatenate(episode_task).astype(np.int64))

    def _index_windows(self) -> None:
        self.index = WindowIndex(self.episode_lengths, self.episode_task, self.horizon)
        self.num_windows, self.num_episodes = self.index.num_windows, self.index.num_episodes

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held in RAM."""
        return sum(t.numel() * t.element_size() for t in (self.obs, self.action, self.reward))

    def sample(self) -> Batch:
        """B windows drawn uniformly (with replacement) over all valid start rows."""
        episode, offset = self.index.draw(self.generator, self.batch_size)
        s = self.index.starts[episode] + offset  # (B,) start rows
        rows = s[None, :] + torch.arange(self.horizon + 1)[:, None]  # (H+1, B) vectorised gather index
        batch = Batch(
            obs=self.obs[rows],
            action=self.action[rows[1:]],
            reward=self.reward[rows[1:]],
            task=self.index.task[episode],
        )
        return batch.to(self.device)

    # The stream's state, for checkpoints (the out-of-core sampler has the same three methods)
    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def manual_seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def close(self) -> None:
        """Nothing to release (the out-of-core sampler stops its threads here)."""


class WindowIndex:
    """The valid window starts of a list of episodes laid end to end, and the uniform draw over them.

    Per episode, the number of valid starts and their cumulative count (no per-row index). Both
    samplers draw through it, so the same seed gives the same windows from RAM or from disk.
    """

    def __init__(self, lengths: torch.Tensor, episode_task: torch.Tensor, horizon: int) -> None:
        """``lengths``: (E,) rows per episode; ``episode_task``: (E,) global task ids."""
        H = horizon
        starts = torch.cumsum(lengths, 0) - lengths
        n_windows = (lengths - H).clamp(min=0)  # starts s with s + H + 1 <= end
        self.keep = n_windows > 0  # (E,) episodes long enough for a window
        if not self.keep.any():
            raise DatasetError(
                f"no episode has the {H + 1} rows a window of horizon {H} needs (longest: {int(lengths.max())} rows)"
            )
        self.starts, self.task = starts[self.keep], episode_task[self.keep]  # per kept episode
        self._n_windows = n_windows[self.keep]
        self._cum_windows = torch.cumsum(self._n_windows, 0)
        self.num_windows = int(self._cum_windows[-1])
        self.num_episodes = int(self.keep.sum())

    def draw(self, generator: torch.Generator, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """B windows uniform over all valid starts (with replacement): their kept-episode index (B,) and
        start offset inside that episode (B,)."""
        u = torch.randint(self.num_windows, (B,), generator=generator)
        episode = torch.searchsorted(self._cum_windows, u, right=True)  # window u -> its episode
        offset = u - (self._cum_windows[episode] - self._n_windows[episode])  # window inside it
        return episode, offset


def select_episodes(
    datasets: list[EpisodeDataset], tasks: Sequence[int | str] | None, episodes: Sequence[np.ndarray] | None
) -> list[np.ndarray]:
    """Per dataset, the sorted indices of the episodes of ``tasks`` (None: all) that ``episodes`` (per
    dataset; None: all) holds; a DatasetError when none is left."""
    if episodes is not None and len(episodes) != len(datasets):
        raise ValueError(f"episodes must hold one index array per dataset ({len(datasets)}), got {len(episodes)}")
    selections = [ds.select_episodes(tasks) for ds in datasets]
    if episodes is not None:
        selections = [np.intersect1d(sel, np.asarray(ep, np.int64)) for sel, ep in zip(selections, episodes)]
    if sum(sel.size for sel in selections) == 0:
        wanted = "" if tasks is None else f" of tasks {resolve_task_ids(tasks).tolist()}"
        raise DatasetError(f"no episodes{wanted} in {[ds.path for ds in datasets]}")
    return selections


def sampler_nbytes(n_rows: int, n_episodes: int, obs_dim: int, act_dim: int) -> int:
    """RAM the in-RAM sampler takes for these rows: float32 obs, action, reward + per-episode index."""
    return n_rows * 4 * (obs_dim + act_dim + 1) + n_episodes * 24


def _check_finite(ds: EpisodeDataset, sel: np.ndarray, obs: np.ndarray, action: np.ndarray, reward: np.ndarray) -> None:
    """Refuse NaN / inf values (training on them diverges, or overflows an index), naming the episode and
    row; the NaN action and reward of each episode's first row are the format's, not damage."""
    lengths = np.asarray(ds.episode_lengths[sel], np.int64)
    first = np.zeros(len(reward), bool)
    first[np.cumsum(lengths) - lengths] = True
    bad = ~np.isfinite(obs).all(1) | (~first & ~(np.isfinite(action).all(1) & np.isfinite(reward)))
    if bad.any():
        row = int(np.argmax(bad))
        i = int(np.searchsorted(np.cumsum(lengths), row, side="right"))
        in_episode = row - int(np.cumsum(lengths)[i] - lengths[i])
        what = "obs" if not np.isfinite(obs[row]).all() else "action/reward"
        raise nan_error(ds, int(sel[i]), in_episode, what)


def nan_error(ds: EpisodeDataset, episode: int, row: int, what: str) -> DatasetError:
    return DatasetError(
        f"{ds.path}: episode {episode} row {row} holds NaN or inf ({what}); training refuses it: "
        "collect the data again or drop that episode"
    )


def target_dims(datasets: list[EpisodeDataset], obs_dim: int | None, act_dim: int | None) -> tuple[int, int]:
    if not datasets:
        raise DatasetError("no dataset given to the sampler")
    if obs_dim is None and act_dim is None:
        return _common_dims(datasets)
    obs_dim = max(ds.obs_dim for ds in datasets) if obs_dim is None else obs_dim
    act_dim = max(ds.act_dim for ds in datasets) if act_dim is None else act_dim
    for ds in datasets:
        if ds.obs_dim > obs_dim or ds.act_dim > act_dim:
            raise DatasetError(
                f"{ds.path} has obs {ds.obs_dim} / action {ds.act_dim} dims, more than "
                f"the {obs_dim} / {act_dim} it should be padded to"
            )
    return obs_dim, act_dim


def _common_dims(datasets: list[EpisodeDataset]) -> tuple[int, int]:
    dims = {(ds.obs_dim, ds.act_dim) for ds in datasets}
    if len(dims) > 1:
        listing = ", ".join(f"{ds.path} (obs {ds.obs_dim}, action {ds.act_dim})" for ds in datasets)
        raise DatasetError(f"datasets differ in padded obs/action dims and cannot be sampled together: {listing}")
    return dims.pop()


def available_memory_bytes() -> int:
    """RAM available to this process: MemAvailable, capped by a cgroup v2 limit if one is set."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f_max, open("/sys/fs/cgroup/memory.current") as f_cur:
            limit = f_max.read().strip()
            if limit != "max":
                available = min(available, int(limit) - int(f_cur.read()))
    except (OSError, ValueError):
        pass
    return available


def _check_memory(needed: int, tasks: Sequence[int | str] | None) -> None:
    available = available_memory_bytes()
    if needed > available:
        hint = "" if tasks is not None else "; sample a subset of tasks with the task filter (--tasks)"
        raise DatasetError(
            f"the sampler needs {needed / 1e9:.1f} GB of RAM for these episodes but "
            f"only {available / 1e9:.1f} GB is available{hint}"
        )


def default_ram_budget() -> int:
    """Bytes the in-RAM sampler may take by default: half the memory available now (the model, the
    optimiser, other processes and the page cache need the rest)."""
    return int(RAM_BUDGET_FRACTION * available_memory_bytes())


def in_ram_nbytes(
    datasets: EpisodeDataset | Sequence[EpisodeDataset],
    tasks: Sequence[int | str] | None = None,
    episodes: Sequence[np.ndarray] | None = None,
    obs_dim: int | None = None,
    act_dim: int | None = None,
) -> int:
    """Bytes a :class:`WindowSampler` of these arguments would hold in RAM (nothing is read)."""
    ds_list = [datasets] if isinstance(datasets, EpisodeDataset) else list(datasets)
    O, A = target_dims(ds_list, obs_dim, act_dim)
    selections = select_episodes(ds_list, tasks, episodes)
    return sampler_nbytes(
        sum(ds.rows_of(s) for ds, s in zip(ds_list, selections)), sum(s.size for s in selections), O, A
    )


def choose_sampler(nbytes: int, ram_budget: int | None = None) -> type[WindowSampler] | type[OutOfCoreSampler]:
    """:class:`WindowSampler` when ``nbytes`` of rows (:func:`in_ram_nbytes`) fit in ``ram_budget`` bytes (None:
    :func:`default_ram_budget`), else :class:`~pwm_core.data.outofcore.OutOfCoreSampler`, which reads them from
    disk. Both take the same arguments and draw the same windows for the same seed."""
    from pwm_core.data.outofcore import OutOfCoreSampler

    return WindowSampler if nbytes <= (default_ram_budget() if ram_budget is None else ram_budget) else OutOfCoreSampler
