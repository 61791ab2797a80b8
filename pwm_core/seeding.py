"""One seed for python, numpy and torch."""

import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (env seeds are passed explicitly)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
