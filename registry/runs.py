"""Run folders: `runs/<prefix>-<UTC yyyymmdd-hhmmss>-<random>` holds one command's work in progress
(checkpoints, logs, metrics), found again by its id to resume, watch or clean it up.

A run folder is not an artifact: nothing indexes it, and `pwmctl runs gc` removes old ones by how
long nothing has written to them (`newest_mtime`).
"""

from __future__ import annotations

import difflib
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from registry.errors import RegistryError, disk_errors
from registry.refs import check_name, name_problem


def make_run_dir(runs_dir: Path, prefix: str) -> Path:
    """Create `runs_dir`/<prefix>-<UTC yyyymmdd-hhmmss>-<random> for a run's work in progress."""
    check_name(prefix, "run prefix")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"{prefix}-{stamp}-{secrets.token_hex(3)}"
    with disk_errors(path):
        path.mkdir()
    return path


def find_run_dir(runs_dir: Path, run_id: str) -> Path:
    """The folder of an existing run.

    Raises:
        RegistryError: there is no such run (the message suggests close run ids).
    """
    path = runs_dir / run_id
    if name_problem(run_id) is None and path.is_dir():
        return path
    runs = sorted((p.name for p in runs_dir.glob("*") if p.is_dir()), reverse=True)
    started = [run for run in runs if run.startswith(run_id)]  # newest first
    close = list(dict.fromkeys(started + difflib.get_close_matches(run_id, runs)))[:3]
    hint = f"did you mean {' or '.join(close)}?" if close else f"it holds {len(runs)} runs"
    raise RegistryError(f"no run {run_id!r} in {runs_dir}: {hint}")


def newest_mtime(path: Path) -> float:
    """Latest modification time of `path` and everything under it; now if it vanishes."""
    try:
        newest = path.lstat().st_mtime
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    except FileNotFoundError:
        return time.time()
    return newest
