"""One seed for python, numpy and torch; capturing and restoring their states for bitwise resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (env seeds are passed explicitly)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def global_rng_state() -> dict[str, Any]:
    """torch / numpy / python global generators (model init and user code; the update has its own)."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the global generator is the legacy MT19937: (name, keys, pos, ...)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def derived_seed(seed: int, rank: int, step: int) -> int:
    """An independent seed for (run seed, rank, step), e.g. to re-seed after a resume on another device."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
