"""The out-of-core sampler: the in-RAM sampler's windows read from disk, prefetched, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from pwm_core.data import EpisodeWriter, WindowSampler, open_dataset
from pwm_core.data import outofcore
from pwm_core.data.outofcore import OutOfCoreSampler
from pwm_core.data.sampler import choose_sampler, in_ram_nbytes
from pwm_core.errors import DatasetError
from pwm_core.tasks import TASKS, resolve_tasks

TWO_TASKS = resolve_tasks("walker-walk,cartpole-swingup")
WALK, CART = TASKS["walker-walk"].id, TASKS["cartpole-swingup"].id
LENGTHS = [30, 5, 12, 41, 20, 3, 60, 17]  # transitions per episode; 5 and 3 are shorter than H=8


def coded_episode(e: int, L: int, obs_dim: int = 24, act_dim: int = 6):
    """obs[t] = (e, t, e + t / 100, ...), action[t] = reward[t] = 1000 e + t for t = 1..L."""
    t = np.arange(L + 1, dtype=np.float32)
    obs = np.zeros((L + 1, obs_dim), np.float32)
    obs[:, 0], obs[:, 1], obs[:, 2:] = e, t, (e + t / 100)[:, None]
    code = 1000 * e + t[1:]
    return obs, np.repeat(code[:, None], act_dim, axis=1), code


COMPRESSION = {"value": "zstd"}  # what write() stores; the reader fixture sets it


def write(path, task_set, episodes, chunk_rows=16, shard_rows=64):
    """Small chunks and shards, so windows cross chunks and shards."""
    with EpisodeWriter.create(
        path, task_set, chunk_rows=chunk_rows, shard_rows=shard_rows, compression=COMPRESSION["value"]
    ) as w:
        for e, L, task in episodes:
            spec = TASKS[task] if isinstance(task, str) else next(t for t in task_set if t.id == task)
            w.append_episode(*coded_episode(e, L, spec.obs_dim, spec.act_dim), task=task)
    return open_dataset(path)


@pytest.fixture
def dataset(tmp_path, reader):
    return write(tmp_path / "d.zarr", TWO_TASKS, [(e, L, WALK if e % 2 == 0 else CART) for e, L in enumerate(LENGTHS)])


@pytest.fixture(params=["pread", "raw", "zarr"])
def reader(request, monkeypatch):
    """Every reader: pread + blosc on the writer's local layout, one read per window on its uncompressed
    layout, and zarr's own path."""
    monkeypatch.setitem(COMPRESSION, "value", "none" if request.param == "raw" else "zstd")
    if request.param == "zarr":
        monkeypatch.setattr(outofcore, "local_shards", lambda arr: None)
    return request.param


def assert_same_batches(a, b, n=5):
    for _ in range(n):
        x, y = a.sample(), b.sample()
        for name in ("obs", "action", "reward", "task"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def test_same_seed_gives_the_in_ram_samplers_windows(dataset, reader):
    ram = WindowSampler(dataset, horizon=8, batch_size=256, seed=3)
    disk = OutOfCoreSampler(dataset, horizon=8, batch_size=256, seed=3, cache_bytes=4096)  # a tiny cache: reads
    assert disk.num_windows == ram.num_windows and disk.num_episodes == ram.num_episodes
    assert_same_batches(ram, disk)
    disk.close()


def test_windows_are_aligned_and_inside_one_episode(dataset, reader):
    H = 8
    b = OutOfCoreSampler(dataset, horizon=H, batch_size=512, seed=1).sample()
    episode, row = b.obs[..., 0], b.obs[..., 1]
    assert (episode == episode[0]).all() and (row == row[0] + torch.arange(H + 1)[:, None]).all()
    assert (row[-1] <= torch.tensor(LENGTHS, dtype=torch.float32)[episode[0].long()]).all()
    code = 1000 * episode[1:] + row[1:]
    assert (b.action[..., 0] == code).all() and (b.reward == code).all()


def test_several_datasets_tasks_splits_and_padding_match_the_in_ram_sampler(tmp_path, dataset, reader):
    small = write(
        tmp_path / "cart.zarr",
        resolve_tasks("cartpole-swingup"),
        [(70, 40, CART), (71, 25, CART)],
        chunk_rows=8,
        shard_rows=32,
    )  # obs 5 / action 1: padded to 24 / 6
    kw = dict(
        horizon=6,
        batch_size=300,
        seed=11,
        tasks=[CART],
        obs_dim=24,
        act_dim=6,
        episodes=[np.array([1, 3, 5, 7]), np.array([0, 1])],
    )
    disk = OutOfCoreSampler([dataset, small], **kw)
    assert_same_batches(WindowSampler([dataset, small], **kw), disk)
    obs = disk.sample().obs
    assert (obs[0, :, 0] >= 70).any() and (obs[:, obs[0, :, 0] >= 70, 5:] == 0).all()  # zero padding


def test_state_resumes_with_the_next_batch_despite_prefetch(dataset):
    a = OutOfCoreSampler(dataset, horizon=8, batch_size=64, seed=5, prefetch=3)
    for _ in range(4):
        a.sample()
    state = a.get_state()  # 3 batches already drawn and read ahead: the state is before them
    expected = [a.sample() for _ in range(3)]
    b = OutOfCoreSampler(dataset, horizon=8, batch_size=64, seed=99)
    b.set_state(state)
    ram = WindowSampler(dataset, horizon=8, batch_size=64)
    ram.set_state(state)  # and the in-RAM sampler continues the same stream
    for batch in expected:
        assert torch.equal(b.sample().obs, batch.obs) and torch.equal(ram.sample().obs, batch.obs)
    b.manual_seed(5)
    ram.manual_seed(5)
    assert_same_batches(ram, b, 2)
    for s in (a, b):
        s.close()


def test_start_frequencies_agree_with_the_in_ram_sampler(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 80, size=40)
    ds = write(tmp_path / "many.zarr", TWO_TASKS, [(e, int(L), WALK) for e, L in enumerate(lengths)])
    ram = WindowSampler(ds, horizon=4, batch_size=4096, seed=0)
    disk = OutOfCoreSampler(ds, horizon=4, batch_size=4096, seed=0)

    def starts(s):
        b = s.sample().obs[0]
        return torch.bincount((b[:, 0] * 100 + b[:, 1]).long(), minlength=4000)

    assert torch.equal(starts(ram), starts(disk))  # the same windows, so the same frequencies
    disk.close()


def test_nan_in_a_sampled_episode_is_refused_when_its_chunk_is_read(tmp_path, reader):
    task_set = resolve_tasks("cartpole-balance")
    ds = write(
        tmp_path / "d.zarr", task_set, [(e, 10, "cartpole-balance") for e in range(3)], chunk_rows=8, shard_rows=16
    )
    zarr.open_group(tmp_path / "d.zarr", mode="r+")["data/obs"][2 * 11 + 7, 3] = np.inf
    ds = open_dataset(tmp_path / "d.zarr")
    with pytest.raises(DatasetError, match=r"episode 2 row 7 holds NaN or inf \(obs\)"):
        sampler = OutOfCoreSampler(ds, horizon=3, batch_size=64)
        for _ in range(10):
            sampler.sample()
    clean = OutOfCoreSampler(ds, horizon=3, batch_size=64, episodes=[np.array([0, 1])])  # a shared chunk: fine
    for _ in range(5):
        assert torch.isfinite(clean.sample().obs).all()


def test_a_damaged_chunk_is_one_clear_error(dataset, tmp_path, reader):
    shard = tmp_path / "d.zarr" / "data" / "obs" / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    if reader == "raw":  # raw bytes carry no checksum: damage the shard's index (crc32c) instead
        data[-5] ^= 0xFF
        message = r"data/obs stored object c/1/0 has a damaged shard index"
    else:
        data[10:40] = b"\0" * 30  # the first chunk's blosc header and bytes
        message = r"data/obs rows \d+-\d+ are unreadable \(stored object c/1/0"
    shard.write_bytes(bytes(data))
    sampler = OutOfCoreSampler(open_dataset(tmp_path / "d.zarr"), horizon=8, batch_size=256)
    with pytest.raises(DatasetError, match=message):
        for _ in range(5):
            sampler.sample()


def test_raw_windows_are_one_read_each_and_missing_chunks_fall_back(tmp_path, monkeypatch):
    monkeypatch.setitem(COMPRESSION, "value", "none")
    ds = write(tmp_path / "d.zarr", TWO_TASKS, [(e, L, WALK if e % 2 == 0 else CART) for e, L in enumerate(LENGTHS)])
    ram = WindowSampler(ds, horizon=8, batch_size=256, seed=5)
    disk = OutOfCoreSampler(ds, horizon=8, batch_size=256, seed=5, read_threads=2)
    calls = {"windows": 0, "chunks": 0}
    for name in ("read_windows", "read"):
        method = getattr(outofcore._ChunkedArray, name)

        def counted(self, *a, _m=method, _n=name, **k):
            calls["windows" if _n == "read_windows" else "chunks"] += 1
            return _m(self, *a, **k)

        monkeypatch.setattr(outofcore._ChunkedArray, name, counted)
    assert_same_batches(ram, disk, n=3)
    assert calls["windows"] > 0 and calls["chunks"] == 0
    disk.close()
    # a chunk missing in the middle of a shard (not stored: zarr's fill value): that shard is read chunk by chunk
    ram.manual_seed(5)
    disk = OutOfCoreSampler(ds, horizon=8, batch_size=256, seed=5)
    disk._sources[0]._arrays["obs"]._dense[0] = (0, 16)  # as if shard 0 were contiguous for one chunk only
    assert_same_batches(ram, disk, n=3)
    assert calls["chunks"] > 0
    disk.close()


def test_rows_beyond_the_ram_budget_are_streamed(dataset):
    nbytes = in_ram_nbytes(dataset)
    assert nbytes == WindowSampler(dataset, 8, 16).nbytes + 8 * 24  # rows + the per-episode index
    assert choose_sampler(nbytes, ram_budget=nbytes) is WindowSampler
    assert choose_sampler(nbytes, ram_budget=nbytes - 1) is OutOfCoreSampler
