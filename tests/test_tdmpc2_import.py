"""TD-MPC2 ``.pt`` chunks -> episode format: exact round trip, task-set inference, clear errors."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from pwm_core.data.episodes import OBS
from pwm_core.data.shards import is_raw
from pwm_core.data import import_tdmpc2, open_dataset
from pwm_core.errors import DatasetError
from pwm_core.tasks import TASKS_BY_ID, resolve_tasks


def write_synthetic_tdmpc2_chunk(
    path: Path, n_episodes: int, length: int, task_ids: list[int], obs_dim: int = 24, seed: int = 0
) -> TensorDict:
    """Write a chunk in the published layout: TensorDict [N, L] of obs [N, L, D], action [N, L, 6],
    reward [N, L], task [N, L] int32. Obs / action are zero-padded past each task's dims; row 0's
    action / reward are TD-MPC2's fillers (garbage here, to prove they are not imported)."""
    g = torch.Generator().manual_seed(seed)
    task = torch.tensor([task_ids[i % len(task_ids)] for i in range(n_episodes)], dtype=torch.int32)
    obs = torch.zeros(n_episodes, length, obs_dim)
    action = torch.zeros(n_episodes, length, 6)
    for i, t in enumerate(task.tolist()):
        spec = TASKS_BY_ID[t]
        obs[i, :, : spec.obs_dim] = torch.randn(length, spec.obs_dim, generator=g)
        action[i, :, : spec.act_dim] = torch.rand(length, spec.act_dim, generator=g) * 2 - 1
    reward = torch.rand(n_episodes, length, generator=g)
    action[:, 0], reward[:, 0] = 123.0, -7.0  # fillers
    td = TensorDict(
        {"obs": obs, "action": action, "reward": reward, "task": task[:, None].expand(n_episodes, length).contiguous()},
        batch_size=[n_episodes, length],
    )
    torch.save(td, path)
    return td


def assert_imported_exactly(ds, chunks: list[TensorDict]) -> None:
    """Every value equal, except row 0 of action / reward, which must be NaN."""
    i = 0
    for td in chunks:
        for n in range(td.batch_size[0]):
            ep = ds.episode(i)
            np.testing.assert_array_equal(ep["obs"], td["obs"][n].numpy())
            np.testing.assert_array_equal(ep["action"][1:], td["action"][n, 1:, : ds.act_dim].numpy())
            np.testing.assert_array_equal(ep["reward"][1:], td["reward"][n, 1:].numpy())
            assert np.isnan(ep["action"][0]).all() and np.isnan(ep["reward"][0])
            assert (ep["task"] == int(td["task"][n, 0])).all()
            i += 1
    assert i == ds.num_episodes


def test_mt30_chunks_roundtrip_exactly_in_natural_order(tmp_path):
    src = tmp_path / "mt30"
    src.mkdir()
    # chunk_10 is written first and sorts first lexicographically; natural order puts chunk_2 first
    c10 = write_synthetic_tdmpc2_chunk(src / "chunk_10.pt", 3, 501, [0, 7, 29], seed=10)
    c2 = write_synthetic_tdmpc2_chunk(src / "chunk_2.pt", 3, 501, [3, 12, 1], seed=2)
    calls = []
    report = import_tdmpc2(
        [src],
        tmp_path / "d.zarr",
        task_set=None,
        provenance={"hf": "nicklashansen/tdmpc2"},
        progress=lambda done, total: calls.append((done, total)),
    )

    ds = open_dataset(tmp_path / "d.zarr")
    assert ds.task_set == resolve_tasks("mt30")  # inferred from obs dim 24
    assert_imported_exactly(ds, [c2, c10])
    assert (report.episodes, report.transitions, report.task_set) == (6, 6 * 500, "mt30")
    assert [Path(f).name for f in report.files] == ["chunk_2.pt", "chunk_10.pt"]
    assert calls[-1] == (6, 6)
    assert ds.provenance == {"source": "tdmpc2", "files": ["chunk_2.pt", "chunk_10.pt"], "hf": "nicklashansen/tdmpc2"}
    assert report.per_task == ds.per_task_counts()


def test_mt80_chunk_roundtrips_exactly(tmp_path):
    td = write_synthetic_tdmpc2_chunk(tmp_path / "chunk_0.pt", 4, 101, [2, 30, 64, 79], obs_dim=39)
    import_tdmpc2(tmp_path / "chunk_0.pt", tmp_path / "d.zarr", task_set=None)
    ds = open_dataset(tmp_path / "d.zarr")
    assert ds.task_set.name == "mt80" and (ds.obs_dim, ds.act_dim) == (39, 6)
    assert_imported_exactly(ds, [td])


def test_wrong_obs_dim_is_a_clear_error(tmp_path):
    write_synthetic_tdmpc2_chunk(tmp_path / "chunk_0.pt", 2, 11, [0], obs_dim=39)
    with pytest.raises(DatasetError, match="obs dim 39 but task set 'mt30' pads obs to 24"):
        import_tdmpc2([tmp_path / "chunk_0.pt"], tmp_path / "d.zarr", task_set=resolve_tasks("mt30"))
    assert not (tmp_path / "d.zarr").exists()  # validated before anything is written
    write_synthetic_tdmpc2_chunk(tmp_path / "odd.pt", 2, 11, [0], obs_dim=30)
    with pytest.raises(DatasetError, match="cannot infer the task set from obs dim 30"):
        import_tdmpc2([tmp_path / "odd.pt"], tmp_path / "d.zarr", task_set=None)


def test_task_outside_the_set_is_a_clear_error(tmp_path):
    td = write_synthetic_tdmpc2_chunk(tmp_path / "chunk_0.pt", 2, 11, [0, 1])
    td["task"][1] = 45  # a Meta-World id inside a 24-dim (mt30) chunk
    torch.save(td, tmp_path / "chunk_0.pt")
    with pytest.raises(DatasetError, match=r"task ids \[45\] are not in task set 'mt30' \(inferred"):
        import_tdmpc2([tmp_path / "chunk_0.pt"], tmp_path / "d.zarr", task_set=None)


def test_task_changing_along_an_episode_is_a_clear_error(tmp_path):
    td = write_synthetic_tdmpc2_chunk(tmp_path / "chunk_0.pt", 2, 11, [0])
    td["task"][1, 5:] = 2
    torch.save(td, tmp_path / "chunk_0.pt")
    with pytest.raises(DatasetError, match="episode 1 changes task id"):
        import_tdmpc2([tmp_path / "chunk_0.pt"], tmp_path / "d.zarr", task_set=None)


def test_wrong_action_dim_and_missing_key_are_clear_errors(tmp_path):
    td = write_synthetic_tdmpc2_chunk(tmp_path / "c.pt", 2, 11, [0])
    torch.save(TensorDict({**td.to_dict(), "action": torch.zeros(2, 11, 4)}, batch_size=[2, 11]), tmp_path / "c.pt")
    with pytest.raises(DatasetError, match="action must be \\[2, 11, 6\\]"):
        import_tdmpc2([tmp_path / "c.pt"], tmp_path / "d.zarr", task_set=None)
    torch.save({"obs": td["obs"], "action": td["action"]}, tmp_path / "c.pt")
    with pytest.raises(DatasetError, match="missing key\\(s\\) \\['reward', 'task'\\]"):
        import_tdmpc2([tmp_path / "c.pt"], tmp_path / "d.zarr", task_set=None)


def test_arbitrary_pickles_are_refused_by_default(tmp_path):
    td = write_synthetic_tdmpc2_chunk(tmp_path / "c.pt", 2, 11, [0])
    torch.save({**td.to_dict(), "created": datetime.date(2024, 1, 1)}, tmp_path / "c.pt")
    with pytest.raises(DatasetError, match="weights_only=True"):
        import_tdmpc2([tmp_path / "c.pt"], tmp_path / "d.zarr", task_set=None)
    report = import_tdmpc2([tmp_path / "c.pt"], tmp_path / "d.zarr", task_set=None, allow_pickle=True)
    assert report.episodes == 2


def test_interrupted_import_leaves_the_committed_chunks_readable(tmp_path):
    first = write_synthetic_tdmpc2_chunk(tmp_path / "chunk_0.pt", 3, 51, [4], seed=0)
    write_synthetic_tdmpc2_chunk(tmp_path / "chunk_1.pt", 3, 51, [5], seed=1)

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_tdmpc2([tmp_path], tmp_path / "d.zarr", task_set=None, progress=interrupt)
    assert_imported_exactly(open_dataset(tmp_path / "d.zarr"), [first])


def test_missing_chunk_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no TD-MPC2 chunk at"):
        import_tdmpc2([tmp_path / "chunk_9.pt"], tmp_path / "d.zarr", task_set=None)
    with pytest.raises(DatasetError, match="no \\*.pt chunks in directory"):
        import_tdmpc2([tmp_path], tmp_path / "d.zarr", task_set=None)


def test_cli_import_publishes_a_dataset_that_round_trips(tmp_path):
    """`pwmctl data import-tdmpc2 FOLDER` as a user runs it: the set is inferred and named mt30."""
    import json

    from typer.testing import CliRunner

    from pwmctl.cli import app

    folder = tmp_path / "mt30"
    folder.mkdir()
    chunks = [write_synthetic_tdmpc2_chunk(folder / f"chunk_{i}.pt", 3, 501, [1, 8, 26], seed=i) for i in range(2)]
    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["--home", str(home), "--format", "json", "data", "import-tdmpc2", str(folder)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["artifact"] == "dataset/mt30:v1" and doc["episodes"] == 6 and doc["transitions"] == 6 * 500
    ds = open_dataset(home / "artifacts" / "dataset" / "mt30" / "v1" / "data.zarr")
    assert_imported_exactly(ds, chunks)

    # the streaming layout (uncompressed 256-row chunks), the same episodes
    args = ["--home", str(home), "data", "import-tdmpc2", str(folder), "--name", "raw"]
    result = CliRunner().invoke(app, [*args, "--compression", "none", "--chunk-rows", "256"])
    assert result.exit_code == 0, result.stderr
    raw = open_dataset(home / "artifacts" / "dataset" / "raw" / "v1" / "data.zarr")
    assert_imported_exactly(raw, chunks)
    assert is_raw(raw._layout.arrays[OBS]) and raw._layout.arrays[OBS].chunks[0] == 256
    for flags, message in (
        (["--compression", "lz4"], "--compression must be one of zstd, none"),
        (["--chunk-rows", "300"], "--chunk-rows must divide"),
    ):
        result = CliRunner().invoke(app, [*args, *flags])
        assert result.exit_code == 2 and message in result.stderr, result.stderr

    bad = tmp_path / "bad.pt"
    write_synthetic_tdmpc2_chunk(bad, 2, 101, [1], obs_dim=30)
    result = CliRunner().invoke(app, ["--home", str(home), "data", "import-tdmpc2", str(bad)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in (home / "tmp").iterdir()] == []  # nothing half-written left behind
