"""Refusals of `rm`, `show`, `push`, `pull`: one error line, exit 2, nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run, run_json

from registry import Registry


def _publish(home: Path, kind: str, name: str) -> str:
    with Registry(home).stage(kind, name) as staging:
        (staging.path / "payload.bin").write_bytes(b"abc")
        return staging.publish().ref


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@pytest.mark.parametrize("ref", ["dataset/x", "dataset/x:latest"])
def test_rm_without_a_version_is_refused_and_deletes_nothing(tmp_path, ref):
    home = tmp_path / "home"
    refs = [_publish(home, "dataset", "x") for _ in range(2)]
    line = _one_error_line(run(home, "rm", ref, "--yes", code=2))
    assert "name the version to delete" in line and "dataset/x has v1, v2" in line
    assert [a.ref for a in Registry(home).list()] == refs[::-1]


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_rm_removes_an_index_entry_whose_folder_is_gone(tmp_path, force):
    home = tmp_path / "home"
    ref = _publish(home, "dataset", "x")
    reg = Registry(home)
    os.rename(reg.find(ref).path, tmp_path / "moved")
    doc = run_json(home, "rm", ref, "--yes", *force)
    assert doc == {"removed": ref, "folder_was_missing": True}
    assert reg.list() == []


@pytest.mark.parametrize("command", [["show"], ["rm", "--yes"], ["verify"]])
def test_a_huge_version_number_is_one_error_line(tmp_path, command):
    _publish(tmp_path / "home", "dataset", "x")
    line = _one_error_line(run(tmp_path / "home", *command, "dataset/x:v99999999999999999999", code=2))
    assert "is too large" in line


def test_a_300_character_hub_repo_is_one_error_line(tmp_path):
    home = tmp_path / "home"
    ref = _publish(home, "dataset", "x")
    repo = "me/" + "a" * 300
    for args in (["push", ref, "--repo", repo, "--dry-run"], ["push", ref, "--repo", repo], ["pull", repo]):
        line = _one_error_line(run(home, *args, code=2))
        assert "bad Hub repo" in line and "1-96" in line, args
