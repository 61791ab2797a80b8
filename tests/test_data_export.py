"""`pwmctl data export --format parquet` and the Parquet previews: exact round trips, streaming in row
groups of whole episodes, nothing half-written, one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from helpers import run, run_json

from pwm_core.data import EpisodeWriter, open_dataset
from pwm_core.tasks import get_task, resolve_tasks
from pwmctl.cli import hoist_global_options
from registry import Registry

pq = pytest.importorskip("pyarrow.parquet")
from pwm_core.data import parquet  # noqa: E402  (needs pyarrow)

TASKS = resolve_tasks("walker-walk,mw-reach")  # obs 24 / 39, act 6 / 4 -> O=39, A=6


def episode(i: int, task: str):
    """Episode i: values encode (episode, row); lengths and tasks vary with i."""
    L = 10 + 3 * i
    rows = np.arange(L + 1, dtype=np.float32)
    o, a = get_task(task).obs_dim, get_task(task).act_dim
    obs = (100 * i + rows)[:, None] + np.arange(o, dtype=np.float32)[None] / 64
    action = np.tanh(-(100 * i + rows[1:, None]) / 1e3 + np.arange(a, dtype=np.float32)[None] / 8)
    return obs, action, (i + rows[1:] / 7).astype(np.float32)


def make_dataset(home: Path, name: str = "mix", episodes: int = 6) -> str:
    """A registered dataset of `episodes` episodes alternating the two tasks; its ref."""
    reg = Registry(home)
    with reg.stage("dataset", name) as staging:
        with EpisodeWriter.create(staging.path / "data.zarr", TASKS, {"source": "test"}) as w:
            for i in range(episodes):
                task = ("walker-walk", "mw-reach")[i % 2]
                w.append_episode(*episode(i, task), task)
        return staging.publish(tasks=list(TASKS.names), metrics={"episodes": episodes}).ref


def assert_same_as_zarr(home: Path, ref: str, back: dict) -> None:
    loaded = open_dataset(Registry(home).resolve(ref).path / "data.zarr").load()
    for key in ("obs", "action", "reward", "task", "episode_ends", "episode_task"):
        assert back[key].dtype == loaded[key].dtype, key
        np.testing.assert_array_equal(back[key], loaded[key], err_msg=key)  # NaN == NaN here: bit for bit


def test_export_round_trips_a_dataset_exactly(tmp_path):
    ref = make_dataset(tmp_path)
    out = tmp_path / "mix.parquet"
    doc = run_json(tmp_path, "data", "export", "mix", "--format", "parquet", "-o", str(out), "--rows-per-group", "40")
    assert doc["episodes"] == 6 and doc["rows"] == sum(11 + 3 * i for i in range(6)) and doc["path"] == str(out)
    back = parquet.read_parquet(out)
    assert_same_as_zarr(tmp_path, ref, back)
    assert back["metadata"]["task_set"].names == TASKS.names and back["metadata"]["source"]["dataset"] == ref
    assert np.isnan(back["action"][back["episode_ends"][:-1]]).all()  # each episode's first row: NaN filler

    table = pq.read_table(out)
    first = table.slice(0, 11).to_pydict()
    assert first["episode"] == [0] * 11 and first["step"] == list(range(11)) and set(first["task"]) == {"walker-walk"}
    # streamed: row groups of whole episodes, at most 40 rows unless one episode alone is longer
    meta = pq.ParquetFile(out).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert doc["row_groups"] == len(sizes) > 1 and sum(sizes) == doc["rows"]
    lengths = [11 + 3 * i for i in range(6)]
    assert all(s <= 40 or s in lengths for s in sizes)
    assert np.isin(np.cumsum(sizes), np.cumsum(lengths)).all()  # group boundaries are episode boundaries


def test_default_name_and_paths(tmp_path, monkeypatch):
    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    human = run(tmp_path, "data", "export", "dataset/mix:v1").stdout
    assert "exported dataset/mix:v1 to mix-v1.parquet: 6 episodes" in human and (tmp_path / "mix-v1.parquet").exists()
    zarr = Registry(tmp_path).resolve("dataset/mix").path / "data.zarr"  # a plain path works too
    doc = run_json(tmp_path, "data", "export", str(zarr), "-o", str(tmp_path / "p.parquet"))
    assert doc["episodes"] == 6


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    make_dataset(tmp_path)
    out = tmp_path / "x.parquet"
    out.write_bytes(b"keep me")
    for args, words in [
        (["-o", str(out)], "exists: pass --force"),
        (["-o", str(tmp_path / "no" / "x.parquet")], "no folder"),
        (["-o", str(tmp_path)], "is a folder"),
        (["--format", "parquet", "-o", str(tmp_path / "y.parquet"), "--rows-per-group", "0"], "rows-per-group"),
    ]:
        result = run(tmp_path, "data", "export", "mix", *args, code=2)
        assert words in result.stderr, result.stderr
    missing = run(tmp_path, "data", "export", "nosuch", "-o", str(tmp_path / "z.parquet"), code=2).stderr
    assert missing.startswith("error: no artifact dataset/nosuch") and missing.count("\n") == 1
    assert out.read_bytes() == b"keep me" and not (tmp_path / "y.parquet").exists()
    assert sorted(p.name for p in tmp_path.glob("*.parquet*")) == ["x.parquet"]
    run(tmp_path, "data", "export", "mix", "-o", str(out), "--force")
    assert out.read_bytes()[:4] == b"PAR1"


def test_an_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    ref = make_dataset(tmp_path)
    ds = open_dataset(Registry(tmp_path).resolve(ref).path / "data.zarr")
    calls = []

    def stop_after_first_group(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    out = tmp_path / "cut.parquet"
    with pytest.raises(KeyboardInterrupt):
        parquet.export_parquet(ds, out, rows_per_group=20, progress=stop_after_first_group)
    assert calls and not out.exists() and not list(tmp_path.glob("*.part"))


def test_preview_holds_the_first_episodes_and_a_task_summary(tmp_path):
    ref = make_dataset(tmp_path, episodes=6)
    ds = open_dataset(Registry(tmp_path).resolve(ref).path / "data.zarr")
    episodes, tasks, what = parquet.preview_tables(ds, episodes=5, max_rows=50)
    first = pq.read_table(io.BytesIO(episodes))
    assert sorted(set(first.column("episode").to_pylist())) == [0, 1, 2]  # 11 + 14 + 17 rows <= 50 < + 20
    assert first.num_rows == 42 and "first 3 of 6 episodes (42 rows" in what
    summary = pq.read_table(io.BytesIO(tasks)).to_pylist()
    returns = ds.episode_returns()
    assert [(r["task"], r["episodes"]) for r in summary] == [("walker-walk", 3), ("mw-reach", 3)]
    assert summary[0]["return_mean"] == pytest.approx(returns[[0, 2, 4]].mean(), rel=1e-12)
    assert summary[1]["return_max"] == pytest.approx(returns[[1, 3, 5]].max(), rel=1e-12)
    one, _, _ = parquet.preview_tables(ds, episodes=5, max_rows=5)  # always at least one episode
    assert pq.read_table(io.BytesIO(one)).num_rows == 11


def test_format_parquet_stays_with_its_command():
    assert hoist_global_options(["data", "export", "x", "--format", "parquet", "--format", "json"]) == [
        "--format",
        "json",
        "data",
        "export",
        "x",
        "--format",
        "parquet",
    ]
    assert hoist_global_options(["ls", "--format=json"]) == ["--format=json", "ls"]
    assert hoist_global_options(["data", "export", "x", "--format=parquet"]) == [
        "data",
        "export",
        "x",
        "--format=parquet",
    ]
