"""The Zarr episode format: round trip, row alignment, validation, crash safety, fsck."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pwm_core.data import FORMAT, FORMAT_VERSION, EpisodeWriter, fsck, open_dataset
from pwm_core.errors import DatasetError
from pwm_core.tasks import TASKS, resolve_tasks

REPO = Path(__file__).resolve().parents[1]
TWO_TASKS = resolve_tasks("walker-walk,cartpole-swingup")  # obs 24 / 5, act 6 / 1 -> O=24, A=6


def episode_arrays(i: int):
    """Episode i of the crash tests: every value encodes (episode, row); lengths vary with i."""
    import numpy as np  # self-contained: its source also runs in the crash tests' subprocess

    L = 40 + 7 * (i % 5)
    rows = np.arange(L + 1, dtype=np.float32)
    obs = (1000 * i + rows)[:, None] + np.arange(24, dtype=np.float32)[None] / 100
    action = -(1000 * i + rows[1:, None]) + np.zeros((1, 6), np.float32)
    reward = i + rows[1:] / 1000
    return obs, action, reward


def assert_episode_equal(ds, i: int) -> None:
    obs, action, reward = episode_arrays(i)
    ep = ds.episode(i)
    np.testing.assert_array_equal(ep["obs"], obs)
    assert np.isnan(ep["action"][0]).all() and np.isnan(ep["reward"][0])
    np.testing.assert_array_equal(ep["action"][1:], action)
    np.testing.assert_array_equal(ep["reward"][1:], reward.astype(np.float32))


# ------------------------------------------------------------------------------------ round trip
def test_roundtrip_exact_values_alignment_and_padding(tmp_path):
    rng = np.random.default_rng(0)
    cart_obs = rng.normal(size=(11, 5)).astype(np.float32)  # L = 10 transitions, obs dim 5
    cart_act = rng.uniform(-1, 1, size=(10, 1)).astype(np.float32)  # actions 1..L only
    cart_rew = rng.uniform(size=10).astype(np.float32)
    walk_obs = rng.normal(size=(8, 24)).astype(np.float32)
    walk_act = rng.uniform(-1, 1, size=(8, 6)).astype(np.float32)  # TD-MPC2 alignment: row 0 filler
    walk_rew = rng.uniform(size=8).astype(np.float32)
    with EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS, {"seed": 3}) as w:
        w.append_episode(cart_obs, cart_act, cart_rew, "cartpole-swingup")
        w.append_episode(walk_obs, walk_act, walk_rew, TASKS["walker-walk"].id)
        assert (w.num_episodes, w.num_rows) == (2, 19)

    ds = open_dataset(tmp_path / "d.zarr")
    assert ds.task_set == TWO_TASKS and ds.provenance == {"seed": 3}
    assert (ds.obs_dim, ds.act_dim) == (24, 6)
    assert (ds.num_episodes, ds.num_rows, ds.num_transitions) == (2, 19, 17)
    np.testing.assert_array_equal(ds.episode_ends, [11, 19])
    np.testing.assert_array_equal(ds.episode_task, [TASKS["cartpole-swingup"].id, TASKS["walker-walk"].id])

    cart = ds.episode(0)
    np.testing.assert_array_equal(cart["obs"][:, :5], cart_obs)
    assert (cart["obs"][:, 5:] == 0).all()  # obs right-padded with zeros
    assert np.isnan(cart["action"][0]).all() and np.isnan(cart["reward"][0])  # row 0: nothing led here
    np.testing.assert_array_equal(cart["action"][1:, :1], cart_act)
    assert (cart["action"][1:, 1:] == 0).all()  # action padded with zeros
    np.testing.assert_array_equal(cart["reward"][1:], cart_rew)
    assert (cart["task"] == TASKS["cartpole-swingup"].id).all()

    walk = ds.episode(-1)
    np.testing.assert_array_equal(walk["obs"], walk_obs)
    assert np.isnan(walk["action"][0]).all() and np.isnan(walk["reward"][0])  # filler replaced
    np.testing.assert_array_equal(walk["action"][1:], walk_act[1:])
    np.testing.assert_array_equal(walk["reward"][1:], walk_rew[1:])

    np.testing.assert_allclose(ds.episode_returns(), [cart_rew.sum(), walk_rew[1:].sum()], rtol=1e-6)
    assert ds.per_task_counts() == {"walker-walk": 1, "cartpole-swingup": 1}
    assert ds.nbytes_on_disk() > 0


def test_group_attrs_and_array_layout(tmp_path):
    with EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS, {"source": "test"}) as w:
        w.append_episode(*episode_arrays(0), task="walker-walk")
    g = zarr.open_group(tmp_path / "d.zarr", mode="r", use_consolidated=False)
    assert g.attrs["format"] == FORMAT == "pwm-episodes" and g.attrs["format_version"] == FORMAT_VERSION
    assert g.attrs["task_set"] == TWO_TASKS.to_dict() and g.attrs["provenance"] == {"source": "test"}
    n = 41
    expected = {
        "data/obs": ("float32", (n, 24)),
        "data/action": ("float32", (n, 6)),
        "data/reward": ("float32", (n,)),
        "data/task": ("int16", (n,)),
        "meta/episode_ends": ("int64", (1,)),
        "meta/episode_task": ("int16", (1,)),
    }
    for name, (dtype, shape) in expected.items():
        assert (str(g[name].dtype), g[name].shape) == (dtype, shape), name
    assert np.isnan(g["data/obs"].fill_value)


def test_load_selects_tasks_and_rebases_episode_ends(tmp_path):
    with EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS) as w:
        for i in range(5):
            w.append_episode(*episode_arrays(i), task="walker-walk" if i % 2 else "cartpole-swingup")
    ds = open_dataset(tmp_path / "d.zarr")
    everything = ds.load()
    assert everything["obs"].shape == (ds.num_rows, 24)
    np.testing.assert_array_equal(everything["episode_ends"], ds.episode_ends)

    walker = ds.load(tasks=[TASKS["walker-walk"].id])
    np.testing.assert_array_equal(walker["episode_index"], [1, 3])
    lengths = [len(episode_arrays(i)[0]) for i in (1, 3)]
    np.testing.assert_array_equal(walker["episode_ends"], np.cumsum(lengths))
    np.testing.assert_array_equal(walker["obs"], np.concatenate([episode_arrays(1)[0], episode_arrays(3)[0]]))
    assert (walker["task"] == TASKS["walker-walk"].id).all()
    assert ds.load(tasks=["walker-walk"])["obs"].shape == walker["obs"].shape


def test_append_after_reopen_and_in_batches(tmp_path):
    path = tmp_path / "d.zarr"
    with EpisodeWriter.create(path, TWO_TASKS) as w:
        w.append_episode(*episode_arrays(0), task="walker-walk")
    with EpisodeWriter.open(path) as w:
        assert w.num_episodes == 1
        obs = np.stack([episode_arrays(i)[0] for i in (1, 6)])  # equal lengths (i % 5 == 1)
        act = np.stack([episode_arrays(i)[1] for i in (1, 6)])
        rew = np.stack([episode_arrays(i)[2] for i in (1, 6)])
        w.append_episodes(obs, act, rew, ["walker-walk", "walker-walk"])
    ds = open_dataset(path)
    assert ds.num_episodes == 3
    assert_episode_equal(ds, 0)
    np.testing.assert_array_equal(ds.episode(2)["obs"], episode_arrays(6)[0])


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "obs, action, reward, task, match",
    [
        (np.full((5, 24), np.nan), np.zeros((4, 6)), np.zeros(4), "walker-walk", "obs contains NaN"),
        (np.zeros((5, 30)), np.zeros((4, 6)), np.zeros(4), "walker-walk", "o <= 24"),
        (np.zeros((5, 24)), np.zeros((3, 6)), np.zeros(4), "walker-walk", "action has 3 rows"),
        (np.zeros((5, 24)), np.zeros((4, 7)), np.zeros(4), "walker-walk", "a <= 6"),
        (np.zeros((5, 24)), np.zeros((4, 6)), np.zeros(6), "walker-walk", "reward has 6 rows"),
        (np.zeros((5, 24)), np.zeros((4, 6)), np.full(4, np.inf), "walker-walk", "reward contains NaN or inf"),
        (np.zeros((5, 24)), np.zeros((4, 6)), np.zeros(4), "cheetah-run", "not in the dataset's task set"),
        (np.zeros((5, 24)), np.zeros((4, 6)), np.zeros(4), 79, "not in the dataset's task set"),
        (np.zeros((1, 24)), np.zeros((0, 6)), np.zeros(0), "walker-walk", "L >= 1"),
    ],
)
def test_append_rejects_bad_episode_and_writes_nothing(tmp_path, obs, action, reward, task, match):
    with EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS) as w:
        with pytest.raises(DatasetError, match=match):
            w.append_episode(obs, action, reward, task)
        assert w.num_episodes == 0
    assert zarr.open_array(tmp_path / "d.zarr/data/obs", mode="r").shape == (0, 24)


def test_create_refuses_an_existing_path(tmp_path):
    EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS).close()
    with pytest.raises(DatasetError, match="already exists"):
        EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS)


def test_second_writer_is_refused_while_the_first_is_open(tmp_path):
    with EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS):
        with pytest.raises(DatasetError, match="another writer"):
            EpisodeWriter.open(tmp_path / "d.zarr")
    EpisodeWriter.open(tmp_path / "d.zarr").close()  # released on close


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=f"no dataset at {tmp_path / 'nope.zarr'}"):
        open_dataset(tmp_path / "nope.zarr")


def test_directory_without_zarr_group_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not a pwm-episodes dataset: no Zarr group"):
        open_dataset(tmp_path)


def test_foreign_zarr_group_is_a_clear_error(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w", attributes={"format": "lerobot"})
    with pytest.raises(DatasetError, match="not a pwm-episodes dataset \\(format='lerobot'\\)"):
        open_dataset(tmp_path / "other.zarr")


def test_newer_format_version_asks_to_upgrade(tmp_path):
    EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS).close()
    g = zarr.open_group(tmp_path / "d.zarr", mode="r+", use_consolidated=False)
    g.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(DatasetError, match="written by a newer pwmctl.*upgrade"):
        open_dataset(tmp_path / "d.zarr")
    with pytest.raises(DatasetError, match="newer pwmctl"):
        EpisodeWriter.open(tmp_path / "d.zarr")


def test_missing_array_is_a_clear_error(tmp_path):
    EpisodeWriter.create(tmp_path / "d.zarr", TWO_TASKS).close()
    for f in (tmp_path / "d.zarr/meta/episode_ends").iterdir():
        f.unlink()
    (tmp_path / "d.zarr/meta/episode_ends").rmdir()
    with pytest.raises(DatasetError, match="array meta/episode_ends is missing"):
        open_dataset(tmp_path / "d.zarr")


# ------------------------------------------------------------------------- commit marker and fsck
def test_rows_past_the_commit_marker_are_ignored_and_repaired(tmp_path):
    path = tmp_path / "d.zarr"
    with EpisodeWriter.create(path, TWO_TASKS) as w:
        w.append_episode(*episode_arrays(0), task="walker-walk")
    # The state a kill inside the commit leaves: data and episode_task appended, episode_ends
    # resized (zarr writes the new shape first) but its new entry never written.
    g = zarr.open_group(path, mode="r+", use_consolidated=False)
    for name in ("data/obs", "data/action", "data/reward", "data/task"):
        g[name].resize((g[name].shape[0] + 30, *g[name].shape[1:]))
    g["meta/episode_task"].resize((2,))
    g["meta/episode_ends"].resize((2,))

    ds = open_dataset(path)
    assert (ds.num_episodes, ds.num_rows) == (1, 41)
    report = fsck(path)
    assert report.ok and report.committed_episodes == 1 and report.committed_rows == 41
    assert report.tail_rows == {
        "data/obs": 30,
        "data/action": 30,
        "data/reward": 30,
        "data/task": 30,
        "meta/episode_task": 1,
        "meta/episode_ends": 1,
    }
    repaired = fsck(path, repair=True)
    assert repaired.repaired
    assert not fsck(path).has_tail
    assert zarr.open_array(path / "data/obs", mode="r").shape == (41, 24)
    assert_episode_equal(open_dataset(path), 0)


def test_fsck_reports_content_problems(tmp_path):
    path = tmp_path / "d.zarr"
    with EpisodeWriter.create(path, TWO_TASKS) as w:
        for i in range(2):
            w.append_episode(*episode_arrays(i), task="walker-walk")
    g = zarr.open_group(path, mode="r+", use_consolidated=False)
    g["data/obs"][3, 0] = np.nan
    g["data/reward"][41] = 1.0  # row 0 of episode 1 must be NaN
    g["data/task"][5] = TASKS["cartpole-swingup"].id
    g["meta/episode_task"][1] = 77
    problems = " | ".join(fsck(path).problems)
    assert "1 committed rows with NaN/inf obs" in problems
    assert "1 episode first rows whose action/reward is not NaN" in problems
    assert "task ids [77] outside the task set" in problems
    assert "rows whose data/task differs from meta/episode_task" in problems


def test_non_increasing_episode_ends_is_reported_and_not_opened(tmp_path):
    path = tmp_path / "d.zarr"
    with EpisodeWriter.create(path, TWO_TASKS) as w:
        for i in range(2):
            w.append_episode(*episode_arrays(i), task="walker-walk")
    zarr.open_array(path / "meta/episode_ends", mode="r+")[1] = 10
    assert "not strictly increasing" in fsck(path).problems[0]
    with pytest.raises(DatasetError, match="not strictly increasing.*fsck"):
        open_dataset(path)


# ------------------------------------------------------------------------------- real SIGKILL
CHILD = """
import sys, time
from pwm_core.data import EpisodeWriter
{episode_src}
path, hang_at = sys.argv[1], int(sys.argv[2])
if hang_at >= 0:  # hang inside the append of episode `hang_at`: data written, commit not yet
    commit = EpisodeWriter._commit
    def hanging_commit(self, e0, ends):
        if e0 == hang_at:
            print("inside", flush=True)
            time.sleep(120)
        commit(self, e0, ends)
    EpisodeWriter._commit = hanging_commit
with EpisodeWriter.open(path) as w:
    i = w.num_episodes
    while True:
        w.append_episode(*episode_arrays(i), task="walker-walk")
        print("committed", i, flush=True)
        i += 1
"""


def _start_appender(path: Path, hang_at: int) -> subprocess.Popen:
    script = CHILD.format(episode_src=textwrap.dedent(inspect.getsource(episode_arrays)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(hang_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen, line: str) -> list[str]:
    lines = []
    while (got := proc.stdout.readline().strip()) != line:
        if not got:
            proc.kill()
            pytest.fail(f"appender exited early: {proc.stderr.read()}")
        lines.append(got)
    return lines


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _check_recovers(path: Path, at_least: int) -> None:
    """Readable with every committed episode intact; fsck cuts the tail; appending works again."""
    ds = open_dataset(path)
    assert ds.num_episodes >= at_least
    for i in range(ds.num_episodes):
        assert_episode_equal(ds, i)
    report = fsck(path, repair=True)
    assert report.ok, report.problems
    assert report.committed_episodes == ds.num_episodes
    after = fsck(path)
    assert not after.has_tail and after.ok
    with EpisodeWriter.open(path) as w:
        w.append_episode(*episode_arrays(ds.num_episodes), task="walker-walk")
    ds = open_dataset(path)
    assert_episode_equal(ds, ds.num_episodes - 1)


def test_append_crash_leaves_dataset_readable(tmp_path):
    """SIGKILL a writer inside an append (data rows written, commit marker not): the dataset
    keeps every committed episode, fsck reports and removes the tail, appending resumes."""
    path = tmp_path / "d.zarr"
    EpisodeWriter.create(path, TWO_TASKS).close()
    proc = _start_appender(path, hang_at=5)
    _read_until(proc, "inside")
    _kill(proc)

    assert open_dataset(path).num_episodes == 5
    report = fsck(path)
    rows_of_5 = len(episode_arrays(5)[0])
    assert report.ok and report.committed_episodes == 5
    assert report.tail_rows["data/obs"] == report.tail_rows["data/reward"] == rows_of_5
    assert report.tail_rows["meta/episode_task"] == 1 and report.tail_rows["meta/episode_ends"] == 0
    _check_recovers(path, at_least=5)


@pytest.mark.parametrize("trial", range(3))
def test_append_killed_at_a_random_time_leaves_dataset_readable(tmp_path, trial):
    path = tmp_path / "d.zarr"
    EpisodeWriter.create(path, TWO_TASKS).close()
    proc = _start_appender(path, hang_at=-1)
    _read_until(proc, "committed 2")
    time.sleep(float(np.random.default_rng(trial).uniform(0.0, 0.25)))  # ~0-8 appends more
    _kill(proc)
    _check_recovers(path, at_least=3)


def test_pink_noise_has_unit_variance_and_a_one_over_f_spectrum():
    from pwm_core.collect import pink_noise

    x = pink_noise(np.random.default_rng(0), 4096, 3)
    assert x.shape == (4096, 3)
    np.testing.assert_allclose(x.std(0), 1.0, rtol=1e-6)
    power = np.abs(np.fft.rfft(x[:, 0])) ** 2
    low, high = power[1:33].mean(), power[1024:2048].mean()  # f ~ 1/4096..32/4096 vs 1024..2048/4096
    assert low / high > 50  # 1/f: about (1536 / 16) ~ 100x more power at the low frequencies


# ------------------------------------------------------------------------ damaged commit marker
def _two_episode_dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.zarr"
    with EpisodeWriter.create(path, TWO_TASKS) as w:
        for i in range(2):
            w.append_episode(*episode_arrays(i), task="walker-walk")
    return path


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _damage(file: Path, how: str) -> None:
    if how == "lost":
        file.unlink()
    else:  # bytes overwritten inside the compressed stream
        b = bytearray(file.read_bytes())
        b[5:20] = b"\xff" * 15
        file.write_bytes(bytes(b))


@pytest.mark.parametrize("how", ["lost", "corrupt"])
def test_damaged_commit_marker_is_corruption_and_nothing_is_truncated(tmp_path, how):
    """A lost or unreadable meta/episode_ends chunk is not "0 committed episodes": reading, repairing
    and reopening for append all refuse, and every stored byte stays."""
    path = _two_episode_dataset(tmp_path)
    _damage(path / "meta/episode_ends/c/0", how)
    before = _files(path)
    with pytest.raises(DatasetError, match="commit marker meta/episode_ends is damaged"):
        open_dataset(path)
    with pytest.raises(DatasetError, match="commit marker meta/episode_ends is damaged"):
        EpisodeWriter.open(path)
    report = fsck(path)
    assert report.marker_damaged and not report.ok and "commit marker" in report.problems[0]
    repaired = fsck(path, repair=True)
    assert not repaired.repaired and "not repaired, nothing changed" in repaired.repair_refused
    assert _files(path) == before


@pytest.mark.parametrize("shape_written", [False, True])
def test_a_commit_killed_around_its_shape_write_leaves_a_readable_dataset(tmp_path, monkeypatch, shape_written):
    """The commit stores its entries before growing meta/episode_ends, so a kill just before or just
    after the shape write (even in the very first commit) leaves the previous or the new commit,
    never a shape whose chunk was not written."""
    resize = zarr.Array.resize

    def killed_at_the_shape_write(self, shape, *a, **k):
        if self.path == "meta/episode_ends" and shape[0] > self.shape[0]:
            if shape_written:
                resize(self, shape, *a, **k)
            raise KeyboardInterrupt
        return resize(self, shape, *a, **k)

    for committed in (0, 1):
        path = tmp_path / f"d{committed}.zarr"
        w = EpisodeWriter.create(path, TWO_TASKS)
        for i in range(committed):
            w.append_episode(*episode_arrays(i), task="walker-walk")
        with monkeypatch.context() as m:
            m.setattr(zarr.Array, "resize", killed_at_the_shape_write)
            with pytest.raises(KeyboardInterrupt):
                w.append_episode(*episode_arrays(committed), task="walker-walk")
        w.close()
        assert open_dataset(path).num_episodes == committed + shape_written
        assert fsck(path, repair=True).ok
        with EpisodeWriter.open(path) as w:
            if w.num_episodes == committed:
                w.append_episode(*episode_arrays(committed), task="walker-walk")
        for i in range(committed + 1):
            assert_episode_equal(open_dataset(path), i)


# -------------------------------------------------------------------------- damaged data chunks
@pytest.mark.parametrize("how", ["lost", "corrupt", "truncated"])
def test_fsck_names_a_damaged_data_chunk_and_its_rows(tmp_path, how):
    path = _two_episode_dataset(tmp_path)
    shard = path / "data/reward/c/0"
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        _damage(shard, how)
    report = fsck(path)
    assert not report.ok
    assert any(p.startswith("data/reward: stored object c/0 is ") and "rows 0-88" in p for p in report.problems), (
        report.problems
    )
    # the lost/unreadable rows are not counted a second time as NaN values
    assert not any("NaN/inf" in p for p in report.problems), report.problems
    if how != "lost":
        with pytest.raises(DatasetError, match=r"data/reward rows 0-88 are unreadable \(stored object c/0"):
            open_dataset(path).episode_returns()


def test_a_damaged_chunk_in_one_shard_spares_the_others(tmp_path):
    path = tmp_path / "d.zarr"
    with EpisodeWriter.create(path, TWO_TASKS, chunk_rows=16, shard_rows=32) as w:
        for i in range(2):
            w.append_episode(*episode_arrays(i), task="walker-walk")
    _damage(path / "data/obs/c/1/0", "corrupt")  # rows 32-63
    problems = fsck(path).problems
    assert [p for p in problems if p.startswith("data/obs")] == [
        p for p in problems if p.startswith("data/obs: stored object c/1/0 is corrupt or truncated, rows 32-")
    ]
    assert len(problems) == 1, problems
