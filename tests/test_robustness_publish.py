"""A collection killed during its publish: the episodes stay in the run folder until the index row is
committed, so `collect --resume` publishes them; a run killed after its publish is never published twice."""

from __future__ import annotations

from pathlib import Path

from helpers import run, run_json

from registry import store


def _runs(home: Path) -> list[Path]:
    return sorted((home / "runs").glob("collect-*"))


def test_a_collection_killed_before_its_index_row_is_resumed_and_published(tmp_path, monkeypatch):
    at_death = []

    def die(self, *args, **kwargs):  # a SIGKILL after staging, before the index transaction: no cleanup runs
        at_death.append([(f / "data.zarr").is_dir() for f in _runs(tmp_path)])
        raise SystemExit(137)

    monkeypatch.setattr(store.Staging, "publish", die)
    run(tmp_path, "collect", "cartpole-balance", "-n", "2", "--name", "c", code=None)
    monkeypatch.undo()
    assert at_death == [[True]]  # the committed episodes were still in the run when it died
    [folder] = _runs(tmp_path)
    doc = run_json(tmp_path, "collect", "--resume", folder.name)
    assert doc["artifact"] == "dataset/c:v1" and run_json(tmp_path, "data", "info", "dataset/c")["episodes"] == 2
    assert not _runs(tmp_path)


def test_a_collection_killed_after_its_publish_is_not_published_again(tmp_path, monkeypatch):
    import pwmctl.commands.collect as collect_cmd

    monkeypatch.setattr(collect_cmd.shutil, "rmtree", lambda *a, **k: None)  # dies before removing its run
    run(tmp_path, "collect", "cartpole-balance", "-n", "1", "--name", "c")
    monkeypatch.undo()
    [folder] = _runs(tmp_path)
    result = run(tmp_path, "collect", "--resume", folder.name, code=2)
    assert "already published dataset/c:v1" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [a["ref"] for a in run_json(tmp_path, "ls", "dataset", "--all")["artifacts"]] == ["dataset/c:v1"]
    assert not _runs(tmp_path)
