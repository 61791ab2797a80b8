"""What every study shares: headless matplotlib, and writing the results JSON and figure into one folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pwm_core.io import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def default_out_dir(home: str | os.PathLike, name: str) -> Path:
    """``<home>/studies/<name>-<YYYYmmdd-HHMMSS>/`` (a new folder per run)."""
    return Path(home) / "studies" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_json(path: Path, results: dict[str, Any]) -> Path:
    """The results document, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return path


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, restored after. The studies' models are
    tiny: extra threads only spin (2 threads doubled the CPU time for no speed-up; docs/algorithm.md#speed)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
