"""Running the CLI in tests as a user would: `run(home, "collect", "walker-walk", "-n", "1")`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pwmctl.cli import app


def run(home: Path, *args: str, code: int | None = 0):
    """Invoke `pwmctl --home HOME ARGS...`; check the exit code unless ``code`` is None."""
    result = CliRunner().invoke(app, ["--home", str(home), *args], env={"NO_COLOR": "1", "COLUMNS": "200"})
    if code is not None:
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def run_json(home: Path, *args: str) -> dict:
    """The one JSON document `pwmctl --format json ARGS...` prints."""
    return json.loads(run(home, "--format", "json", *args).stdout)
