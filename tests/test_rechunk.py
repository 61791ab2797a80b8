"""`pwmctl data rechunk` and `copy_dataset`: the same episodes in another storage layout, resumable, streamed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run, run_json
from test_data_export import TASKS, episode, make_dataset

from pwm_core.data import EpisodeWriter, OutOfCoreSampler, WindowSampler, open_dataset, writer
from pwm_core.data.episodes import ACTION, OBS
from pwm_core.data.shards import is_raw
from pwm_core.data.writer import copy_dataset
from pwm_core.errors import DatasetError
from registry import Registry


def source(tmp_path, n=7):
    path = tmp_path / "src.zarr"
    with EpisodeWriter.create(path, TASKS, {"source": "test"}, chunk_rows=16, shard_rows=64) as w:
        for i in range(n):
            task = ("walker-walk", "mw-reach")[i % 2]
            w.append_episode(*episode(i, task), task)
    return open_dataset(path)


def assert_same_episodes(a, b):
    x, y = a.load(), b.load()
    for key in ("obs", "action", "reward", "task", "episode_ends", "episode_task"):
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)  # NaN == NaN: bit for bit


def test_copy_changes_the_layout_not_the_episodes(tmp_path):
    src = source(tmp_path)
    copy_dataset(src, tmp_path / "raw.zarr", chunk_rows=8, shard_rows=32, compression="none", provenance={"x": 1})
    dst = open_dataset(tmp_path / "raw.zarr")
    assert_same_episodes(src, dst)
    assert is_raw(dst.array(OBS)) and not dst.compressed and src.compressed
    assert dst.array(ACTION).chunks[0] == 8 and dst.provenance == {"source": "test", "x": 1}
    # the raw copy streams the in-RAM sampler's windows
    ram, disk = WindowSampler(src, 4, 64, seed=2), OutOfCoreSampler(dst, 4, 64, seed=2)
    for _ in range(3):
        a, b = ram.sample(), disk.sample()
        assert torch.equal(a.obs, b.obs) and torch.equal(a.action, b.action) and torch.equal(a.reward, b.reward)
    disk.close()


def test_a_killed_copy_resumes_where_it_stopped(tmp_path, monkeypatch):
    src = source(tmp_path)
    monkeypatch.setattr(writer, "READ_BLOCK_ROWS", 40)  # several blocks of whole episodes

    def killed(done, total):
        if done > 60:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_dataset(src, tmp_path / "c.zarr", compression="none", progress=killed)
    partial = open_dataset(tmp_path / "c.zarr").num_episodes
    assert 0 < partial < src.num_episodes
    seen = []
    copy_dataset(src, tmp_path / "c.zarr", progress=lambda d, t: seen.append(d))
    assert seen[0] > 60 and seen[-1] == src.num_rows  # went on from the committed blocks
    assert_same_episodes(src, open_dataset(tmp_path / "c.zarr"))
    (tmp_path / "o").mkdir()
    other = source(tmp_path / "o", n=3)
    with pytest.raises(DatasetError, match="not a partial copy"):
        copy_dataset(other, tmp_path / "c.zarr")  # a longer copy of another dataset


def test_cli_publishes_the_copy_with_its_source_as_parent(tmp_path):
    ref = make_dataset(tmp_path)
    doc = run_json(tmp_path, "data", "rechunk", "mix", "--chunk-rows", "8", "--shard-rows", "64")
    assert doc["artifact"] == "dataset/mix-stream:v1" and doc["compression"] == "none" and doc["episodes"] == 6
    reg = Registry(tmp_path)
    art = reg.resolve("mix-stream", default_kind="dataset")
    assert_same_episodes(open_dataset(reg.resolve(ref).path / "data.zarr"), open_dataset(art.path / "data.zarr"))
    assert [p.artifact.ref for p in reg.lineage(art.ref).parents] == [ref]


@pytest.mark.parametrize(
    "args,message",
    [
        (["mix", "--compression", "lz4"], "--compression must be one of zstd, none"),
        (["mix", "--chunk-rows", "300"], "must be a multiple of --chunk-rows"),
        (["nosuch"], "no artifact dataset/nosuch"),
        (["mix", "--name", "bad name"], "dataset name"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    make_dataset(tmp_path)
    result = run(tmp_path, "data", "rechunk", *args, code=2)
    assert message in result.output, result.output
    assert Registry(tmp_path).resolve("mix", default_kind="dataset")  # nothing else published
    assert len([line for line in result.output.strip().splitlines() if line.startswith("error:")]) == 1


def test_pretrain_streaming_compressed_rows_points_to_rechunk_and_the_copy_streams_without_the_tip(tmp_path):
    make_dataset(tmp_path)
    run_json(tmp_path, "data", "rechunk", "mix", "--chunk-rows", "8", "--shard-rows", "64")
    tiny = ["--tasks", "walker-walk,mw-reach", "--size", "1M", "--batch-size", "4", "--horizon", "2", "--steps", "1"]
    tiny += ["--ram-budget", "0", "--set", "val_batches=1"]
    packed = run(tmp_path, "pretrain", *tiny, "--data", "dataset/mix", "--name", "packed")
    assert "windows stream from disk" in packed.stderr and "pwmctl data rechunk" in packed.stderr, packed.stderr
    raw = run(tmp_path, "pretrain", *tiny, "--data", "dataset/mix-stream", "--name", "raw")
    assert "windows stream from disk" in raw.stderr and "rechunk" not in raw.stderr, raw.stderr
