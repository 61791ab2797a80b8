"""The H-step window sampler: windows inside one episode, TD-MPC2 row alignment, filters, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pwm_core.data import EpisodeWriter, WindowSampler, open_dataset
from pwm_core.data import sampler as sampler_module
from pwm_core.errors import DatasetError
from pwm_core.tasks import TASKS, resolve_tasks

TWO_TASKS = resolve_tasks("walker-walk,cartpole-swingup")
WALK, CART = TASKS["walker-walk"].id, TASKS["cartpole-swingup"].id
LENGTHS = [30, 5, 12, 41, 20, 3]  # transitions per episode; 5 and 3 are shorter than H=8


def coded_episode(e: int, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """obs[t] = (e, t, 0...), action[t] = reward[t] = 1000 e + t for t = 1..L."""
    t = np.arange(L + 1, dtype=np.float32)
    obs = np.zeros((L + 1, 24), np.float32)
    obs[:, 0], obs[:, 1] = e, t
    code = 1000 * e + t[1:]
    return obs, np.repeat(code[:, None], 6, axis=1), code


@pytest.fixture
def dataset(tmp_path):
    with EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS) as w:
        for e, L in enumerate(LENGTHS):
            w.append_episode(*coded_episode(e, L), task=WALK if e % 2 == 0 else CART)
    return open_dataset(tmp_path / "d.zarr")


def test_batch_shapes_and_dtypes(dataset):
    batch = WindowSampler(dataset, horizon=8, batch_size=64).sample()
    assert batch.obs.shape == (9, 64, 24) and batch.obs.dtype == torch.float32
    assert batch.action.shape == (8, 64, 6) and batch.action.dtype == torch.float32
    assert batch.reward.shape == (8, 64) and batch.reward.dtype == torch.float32
    assert batch.task.shape == (64,) and batch.task.dtype == torch.int64


def test_windows_never_cross_episode_boundaries_and_are_aligned(dataset):
    H = 8
    sampler = WindowSampler(dataset, horizon=H, batch_size=256, seed=1)
    for _ in range(20):
        b = sampler.sample()
        episode, row = b.obs[..., 0], b.obs[..., 1]  # (H+1, B)
        assert (episode == episode[0]).all()  # one episode per window
        assert (row == row[0] + torch.arange(H + 1)[:, None]).all()  # consecutive rows
        lengths = torch.tensor(LENGTHS, dtype=torch.float32)[episode[0].long()]
        assert (row[-1] <= lengths).all()  # s + H + 1 <= episode end
        code = 1000 * episode[1:] + row[1:]  # action/reward[t] led from obs[t] into obs[t+1]
        assert (b.action == code[..., None]).all() and (b.reward == code).all()
        assert torch.isfinite(b.action).all() and torch.isfinite(b.reward).all()  # never row 0
        expected_task = torch.where(episode[0] % 2 == 0, WALK, CART).long()
        assert (b.task == expected_task).all()


def test_short_episodes_are_never_sampled_and_starts_are_uniform(dataset):
    H = 8
    sampler = WindowSampler(dataset, horizon=H, batch_size=4096, seed=2)
    obs = sampler.sample().obs
    episodes = obs[0, :, 0].long()
    assert not torch.isin(episodes, torch.tensor([1, 5])).any()  # 6 and 4 rows < H+1 = 9
    assert sampler.num_windows == sum(L + 1 - H for L in LENGTHS if L + 1 >= H + 1)
    # uniform over start rows: each (episode, start) pair equally likely
    keys = episodes * 100 + obs[0, :, 1].long()
    counts = torch.bincount(keys, minlength=600)[torch.bincount(keys, minlength=600) > 0]
    assert counts.numel() == sampler.num_windows
    expected = 4096 / sampler.num_windows
    assert ((counts - expected) ** 2 / expected).sum() < 2 * sampler.num_windows  # loose chi-square


def test_task_filter_by_id_and_name(dataset):
    for tasks in ([CART], ["cartpole-swingup"]):
        b = WindowSampler(dataset, horizon=8, batch_size=128, tasks=tasks).sample()
        assert (b.task == CART).all() and (b.obs[0, :, 0] % 2 == 1).all()


def test_task_filter_without_episodes_is_an_error(dataset):
    with pytest.raises(DatasetError, match="no episodes of tasks \\[3\\]"):
        WindowSampler(dataset, horizon=8, batch_size=8, tasks=["cheetah-run"])


def test_same_seed_same_batches(dataset):
    a, b, c = (WindowSampler(dataset, horizon=8, batch_size=32, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        ba, bb, bc = a.sample(), b.sample(), c.sample()
        assert torch.equal(ba.obs, bb.obs) and torch.equal(ba.task, bb.task)
        assert not torch.equal(ba.obs, bc.obs)


def test_no_episode_long_enough_is_an_error(dataset):
    with pytest.raises(DatasetError, match="no episode has the 43 rows"):
        WindowSampler(dataset, horizon=42, batch_size=8)


def test_several_datasets_compose(tmp_path, dataset):
    with EpisodeWriter.create(tmp_path / "more.zarr", TWO_TASKS) as w:
        w.append_episode(*coded_episode(50, 10), task=WALK)
    sampler = WindowSampler([dataset, open_dataset(tmp_path / "more.zarr")], horizon=8, batch_size=2048)
    episodes = sampler.sample().obs[0, :, 0]
    assert (episodes == 50).any() and (episodes == 0).any()
    assert sampler.num_windows == sum(L + 1 - 8 for L in LENGTHS if L >= 8) + 3


def test_datasets_with_different_padding_cannot_compose(tmp_path, dataset):
    EpisodeWriter.create(tmp_path / "mw.zarr", resolve_tasks("mw-reach")).close()  # obs 39, act 4
    with pytest.raises(DatasetError, match="differ in padded obs/action dims"):
        WindowSampler([dataset, open_dataset(tmp_path / "mw.zarr")], horizon=8, batch_size=8)


def test_not_enough_ram_is_a_clear_error(dataset, monkeypatch):
    monkeypatch.setattr(sampler_module, "available_memory_bytes", lambda: 1000)
    with pytest.raises(DatasetError, match=r"needs 0\.0 GB of RAM .* only 0\.0 GB .*task filter"):
        WindowSampler(dataset, horizon=8, batch_size=8)


def test_nan_or_inf_rows_are_refused_with_the_episode_and_row(tmp_path):
    import numpy as np

    task_set = resolve_tasks("cartpole-balance")
    w = EpisodeWriter.create(tmp_path / "d.zarr", task_set)
    rng = np.random.default_rng(0)
    for _ in range(3):
        w.append_episode(
            rng.normal(size=(11, 5)).astype(np.float32),
            rng.uniform(-1, 1, (10, 1)).astype(np.float32),
            rng.random(10).astype(np.float32),
            task_set.ids[0],
        )
    w.close()
    import zarr

    zarr.open_group(tmp_path / "d.zarr", mode="r+")["data/obs"][2 * 11 + 7, 3] = np.inf  # imported or damaged data
    ds = open_dataset(tmp_path / "d.zarr")
    with pytest.raises(DatasetError, match=r"episode 2 row 7 holds NaN or inf \(obs\)"):
        WindowSampler(ds, horizon=3, batch_size=4)
    WindowSampler(ds, horizon=3, batch_size=4, episodes=[np.array([0, 1])])  # the clean episodes train
