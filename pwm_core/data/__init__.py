"""The Zarr episode format: crash-safe writer, reader, fsck, H-step window samplers (in RAM, out of core),
TD-MPC2 import.

``WindowSampler`` / ``OutOfCoreSampler`` / ``Batch`` and ``import_tdmpc2`` need torch; they are imported on first use so
that reading, writing and checking datasets (``pwmctl data ...``) does not pay torch's import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pwm_core.data.episodes import FORMAT, FORMAT_VERSION
from pwm_core.data.fsck import FsckReport, fsck
from pwm_core.data.reader import EpisodeDataset, open_dataset
from pwm_core.data.writer import EpisodeWriter

if TYPE_CHECKING:
    from pwm_core.data.outofcore import OutOfCoreSampler
    from pwm_core.data.sampler import Batch, WindowSampler
    from pwm_core.data.tdmpc2 import ImportReport, import_tdmpc2

_LAZY = {
    "Batch": "sampler",
    "WindowSampler": "sampler",
    "OutOfCoreSampler": "outofcore",
    "ImportReport": "tdmpc2",
    "import_tdmpc2": "tdmpc2",
}

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Batch",
    "EpisodeDataset",
    "EpisodeWriter",
    "FsckReport",
    "ImportReport",
    "OutOfCoreSampler",
    "WindowSampler",
    "fsck",
    "import_tdmpc2",
    "open_dataset",
]


def __getattr__(name: str) -> Any:  # PEP 562: lazy re-export of the torch-dependent parts
    if name in _LAZY:
        return getattr(importlib.import_module(f"pwm_core.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pwm_core.data' has no attribute {name!r}")
