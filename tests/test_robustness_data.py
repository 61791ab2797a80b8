"""`pwmctl data` on damaged datasets: one error line and exit 2, or a report naming the damage."""

from __future__ import annotations

from helpers import run, run_json
from test_data_format import _two_episode_dataset as _dataset


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_fsck_repair_refuses_a_lost_commit_marker_and_keeps_every_row(tmp_path):
    path = _dataset(tmp_path)
    (path / "meta/episode_ends/c/0").unlink()
    line = _one_error_line(run(tmp_path / "home", "data", "fsck", "--repair", str(path), code=2))
    assert "not repaired, nothing changed" in line and "commit marker" in line
    assert (path / "data/obs/c/0/0").exists() and (path / "meta/episode_task/c/0").exists()
    checked = run(tmp_path / "home", "data", "fsck", str(path), code=1)
    assert "commit marker damaged" in checked.stdout and "problem: the commit marker" in checked.stdout


def test_data_info_on_a_corrupt_chunk_is_one_error_line(tmp_path):
    path = _dataset(tmp_path)
    shard = path / "data/reward/c/0"
    shard.write_bytes(shard.read_bytes()[:100])
    line = _one_error_line(run(tmp_path / "home", "data", "info", str(path), code=2))
    assert "data/reward rows 0-88 are unreadable" in line
    report = run(tmp_path / "home", "data", "fsck", str(path), code=1)
    assert "problem: data/reward: stored object c/0 is corrupt or truncated, rows 0-88" in report.stdout


def test_a_pickled_chunk_is_refused_with_advice_that_works(tmp_path):
    """The refusal names no option that does not exist: its re-save command, run as given, yields a
    chunk that `data import-tdmpc2` accepts."""
    import datetime
    import shlex
    import subprocess
    import sys

    import torch
    from test_tdmpc2_import import write_synthetic_tdmpc2_chunk

    chunk = tmp_path / "c.pt"
    td = write_synthetic_tdmpc2_chunk(chunk, 2, 11, [0])
    torch.save({**td.to_dict(), "created": datetime.date(2024, 1, 1)}, chunk)
    home = tmp_path / "home"
    line = _one_error_line(run(home, "data", "import-tdmpc2", str(chunk), code=2))
    assert "re-run allowing pickle" not in line and "weights_only=True" in line
    command = shlex.split(line.split("`")[1])
    assert command[0] == "python"
    subprocess.run([sys.executable, *command[1:]], check=True, timeout=120)
    doc = run_json(home, "data", "import-tdmpc2", str(chunk) + ".plain.pt", "--name", "plain")
    assert doc["artifact"] == "dataset/plain:v1" and doc["episodes"] == 2
