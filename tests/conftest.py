"""Shared test settings."""

import torch

# The models under test are tiny: one thread avoids OpenMP overhead and contention on 2-core machines.
torch.set_num_threads(1)
