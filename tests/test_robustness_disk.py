"""The registry's home under stress: a busy index, a published version reached by its path, old run
folders, a full or read-only disk. Each refusal is one error line, exit 2, nothing changed."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from helpers import run, run_json
from test_data_format import _two_episode_dataset
from typer.testing import CliRunner

import registry.store
from pwm_core.data import EpisodeWriter, open_dataset
from pwm_core.train.loop import write_status
from pwmctl.cli import app
from registry import Registry, RegistryError


def _publish(home: Path, kind: str, name: str) -> str:
    with Registry(home).stage(kind, name) as staging:
        (staging.path / "payload.bin").write_bytes(b"abc")
        return staging.publish().ref


def _one_error_line(result) -> str:
    """The error: one line, the last on stderr (after any progress lines), exit code 2, no traceback."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == 2 and errors == lines[-1:], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return errors[0]


# ---- a busy index ----------------------------------------------------------------------------


def test_an_index_held_by_another_writer_is_one_error_line(tmp_path, monkeypatch):
    home = tmp_path / "home"
    ref = _publish(home, "dataset", "x")
    monkeypatch.setattr(registry.store, "BUSY_TIMEOUT_S", 0.2)  # instead of waiting 30 s
    other = sqlite3.connect(Registry(home).index_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another pwmctl in the middle of a publish
    try:
        line = _one_error_line(run(home, "rm", ref, "--yes", code=2))
        with pytest.raises(RegistryError, match="is busy"):
            _publish(home, "dataset", "y")
        assert [a.ref for a in Registry(home).list()] == [ref]  # readers are not blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert "registry index" in line and "is busy (another pwmctl is writing" in line and "try again" in line
    assert [a.ref for a in Registry(home).list()] == [ref] and Registry(home).verify(ref) == []


# ---- data fsck --repair on a published version -----------------------------------------------


@pytest.mark.parametrize("via", ["its path", "a link to it"])
def test_fsck_repair_refuses_a_published_dataset_named_by_path(tmp_path, via):
    home = tmp_path / "home"
    reg = Registry(home)
    with reg.stage("dataset", "d") as staging:
        shutil.copytree(_two_episode_dataset(tmp_path), staging.path / "data.zarr")
        artifact = staging.publish()
    target = artifact.path / "data.zarr"
    if via == "a link to it":
        (tmp_path / "link.zarr").symlink_to(target)
        target = tmp_path / "link.zarr"
    line = _one_error_line(run(home, "data", "fsck", "--repair", str(target), code=2))
    assert "dataset/d:v1, a published, immutable version" in line and "--repair works on a run folder" in line
    assert reg.verify(artifact.ref) == []
    assert "2 committed episodes" in run(home, "data", "fsck", str(target)).stdout  # checking is allowed


# ---- runs gc ---------------------------------------------------------------------------------


def _run_folder(reg: Registry, prefix: str, state: str | None, idle_hours: float) -> Path:
    """A run folder whose files were last written `idle_hours` ago; `state` None: no status.json."""
    folder = reg.new_run_dir(prefix)
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    if state is not None:
        write_status(folder, {"state": state, "pid": os.getpid() if state == "running" else 2**22 + 1})
    then = time.time() - idle_hours * 3600
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (then, then))
    return folder


def test_runs_gc_removes_old_runs_that_are_not_running(tmp_path):
    home = tmp_path / "home"
    reg = Registry(home)
    old = {
        state: _run_folder(reg, state or "nostatus", state, 30)
        for state in ("finished", "interrupted", "running", None)
    }
    old["died"] = _run_folder(reg, "died", "running", 30)
    status = old["died"] / "status.json"
    status.write_text(status.read_text().replace(str(os.getpid()), str(2**22 + 1)))  # its process is gone
    os.utime(status, (time.time() - 30 * 3600,) * 2)
    young = _run_folder(reg, "young", "finished", 2)
    doomed = {
        old["finished"].name: "finished",
        old["interrupted"].name: "interrupted",
        old[None].name: "unknown",
        old["died"].name: "died",
    }

    plan = run_json(home, "runs", "gc", "--dry-run")
    assert {r["run"]: r["state"] for r in plan["removed"]} == doomed and plan["dry_run"]
    assert all(r["idle_h"] == 30 for r in plan["removed"])
    assert all(p.is_dir() for p in [*old.values(), young])  # a dry run removes nothing

    refused = CliRunner().invoke(app, ["--home", str(home), "runs", "gc"], input="n\n")  # asks first
    assert refused.exit_code == 1
    assert all(name in refused.stderr for name in doomed) and all(p.is_dir() for p in old.values())

    out = run(home, "runs", "gc", "--yes").stdout
    assert sorted(line.split()[1] for line in out.splitlines()) == sorted(doomed)
    assert all(line.startswith("removed ") for line in out.splitlines())
    assert sorted(p.name for p in reg.runs_dir.iterdir()) == sorted([old["running"].name, young.name])

    assert "nothing to remove" in run(home, "runs", "gc", "--yes").stdout
    gone = run_json(home, "runs", "gc", "--older-than", "1", "--yes")["removed"]
    assert [r["run"] for r in gone] == [young.name] and old["running"].is_dir()


# ---- a full or read-only disk ------------------------------------------------------------------

TASK = "cartpole-balance"


def _fill_disk_after(monkeypatch, episodes: int) -> None:
    """The writer's next append after `episodes` finds the disk full, as zarr's store would report it."""
    real, calls = EpisodeWriter.append_episode, []

    def append(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > episodes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(self.path, "data/obs/c/0/0"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EpisodeWriter, "append_episode", append)


def test_a_full_disk_during_collect_keeps_the_committed_episodes_for_resume(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _fill_disk_after(monkeypatch, 2)
    line = _one_error_line(run(home, "collect", TASK, "-n", "4", code=2))
    [folder] = Registry(home).runs_dir.iterdir()
    assert "data.zarr/data/obs/c/0/0 is full" in line and "free some space" in line
    assert f"the 2 episodes committed so far are kept in run {folder.name}" in line
    assert f"`pwmctl collect --resume {folder.name}`" in line
    assert Registry(home).list() == [] and open_dataset(folder / "data.zarr").num_episodes == 2
    monkeypatch.undo()  # space freed
    assert run_json(home, "collect", "--resume", folder.name)["artifact"] == f"dataset/{TASK}:v1"
    assert open_dataset(Registry(home).resolve(f"dataset/{TASK}").path / "data.zarr").num_episodes == 4


def test_a_full_disk_while_publishing_keeps_the_episodes_for_resume(tmp_path, monkeypatch):
    home = tmp_path / "home"

    def full(folder, manifest):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "manifest.json"))

    monkeypatch.setattr(registry.store, "write_manifest", full)
    line = _one_error_line(run(home, "collect", TASK, "-n", "2", code=2))
    [folder] = Registry(home).runs_dir.iterdir()
    assert "manifest.json is full" in line and f"the 2 episodes committed so far are kept in run {folder.name}" in line
    assert Registry(home).list() == [] and list(Registry(home).tmp_dir.iterdir()) == []
    monkeypatch.undo()
    assert run_json(home, "collect", "--resume", folder.name)["episodes"] == 0  # all there: just published
    assert [a.ref for a in Registry(home).list()] == [f"dataset/{TASK}:v1"]


def test_a_full_disk_before_any_episode_leaves_no_run_behind(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _fill_disk_after(monkeypatch, 0)
    line = _one_error_line(run(home, "collect", TASK, "-n", "2", code=2))
    assert "is full" in line and "nothing was collected" in line
    assert list(Registry(home).runs_dir.iterdir()) == []


@pytest.fixture
def read_only_home(tmp_path, monkeypatch):
    """A home with one dataset, then made read-only: by chmod, or, for root (whom chmod does not
    stop), by making the calls that would write there fail as a read-only file system does."""
    home = tmp_path / "home"
    ref = _publish(home, "dataset", "x")
    folders = [home, *(p for p in home.iterdir() if p.is_dir())]
    if os.geteuid() != 0:
        for folder in folders:
            folder.chmod(0o555)
        yield home, ref, "is not writable by you"
        for folder in folders:
            folder.chmod(0o755)
        return

    def refused(path) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    class Unopenable(sqlite3.Connection):  # SQLite cannot make the WAL index's -shm file next to it
        def execute(self, sql, *args):
            if sql.startswith("PRAGMA foreign_keys"):  # a setting of the connection: no file access
                return super().execute(sql, *args)
            raise sqlite3.OperationalError("unable to open database file")

    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        return real_connect(*args, factory=Unopenable, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        raise refused(dir)

    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(home) and not self.is_dir():
            raise refused(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    yield home, ref, "is on a read-only file system"
    monkeypatch.undo()


def test_a_read_only_home_is_reported_as_such(read_only_home):
    home, ref, expected = read_only_home
    for args in (["ls"], ["show", ref], ["rm", ref, "--yes"]):
        line = _one_error_line(run(home, *args, code=2))
        assert f"{home} {expected}" in line and "not a registry index" not in line, (args, line)
    line = _one_error_line(run(home, "collect", TASK, "-n", "1", code=2))
    assert expected in line and "nothing was collected" in line
    assert list(Registry(home).runs_dir.iterdir()) == []
