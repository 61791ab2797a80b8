"""Small file-system helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """``write(file)`` into a temporary file next to ``path``, fsync, then rename it over ``path``:
    a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike, fmt: str, version: int, what: str) -> dict[str, Any]:
    """Read a torch checkpoint written by pwmctl (no code is unpickled: ``weights_only=True``) and check
    its ``format`` is ``fmt`` and its ``version`` at most ``version``; every problem is one PwmError
    naming ``what`` (e.g. "extraction")."""
    import torch

    from pwm_core.errors import PwmError

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PwmError(f"no checkpoint at {os.fspath(path)}") from None
    except Exception as e:  # torch raises several types for truncated zips and foreign pickles
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PwmError(f"cannot read {os.fspath(path)} as a {what} checkpoint: {first}") from None
    if not isinstance(sd, dict) or sd.get("format") != fmt:
        raise PwmError(f"{os.fspath(path)} is not a pwmctl {what} checkpoint")
    if sd.get("version", 0) > version:
        raise PwmError(
            f"{os.fspath(path)} was written by a newer pwmctl (checkpoint version {sd['version']}); "
            "upgrade pwmctl to resume it"
        )
    return sd
