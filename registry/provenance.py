"""Provenance: the code that made an artifact, recorded as `code_version` in its manifest.

The pwmctl version the caller passes, plus the git commit and dirtiness of the checkout this
package runs from (None when it is installed, not run from a checkout of this project).
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any


def code_version_info(pwmctl_version: str | None) -> dict[str, Any]:
    """{"pwmctl", "git_sha", "git_dirty"}: the code that made an artifact (git keys None when
    not running from a git checkout of this project)."""
    return {"pwmctl": pwmctl_version, **_git_state()}


@cache
def _git_state() -> dict[str, Any]:
    """HEAD sha and dirtiness of the checkout this package runs from (looked up once)."""
    package_dir = Path(__file__).resolve().parent
    unknown = {"git_sha": None, "git_dirty": None}
    try:
        top = _git(package_dir, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != package_dir.parent:  # installed inside someone else's repo
            return unknown
        sha = _git(package_dir, "rev-parse", "HEAD")
        dirty = bool(_git(package_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"git_sha": sha, "git_dirty": dirty}


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10)
    return result.stdout.strip()
