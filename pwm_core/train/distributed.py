"""Data-parallel training under ``torchrun``: one process per device, gradients averaged.

``torchrun --nproc-per-node N ...`` sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``;
:func:`setup` joins the process group (NCCL on CUDA, gloo on CPU). The trainer then

- broadcasts its initial parameters and buffers from rank 0 (:func:`broadcast_module`),
- samples its own windows on every rank (seed + rank),
- averages gradients after ``backward()`` and before clipping (:func:`all_reduce_gradients`: flat
  buckets, one ``all_reduce`` each). The world model is called through several methods (encode,
  next, reward, Q, pi) per update, which ``DistributedDataParallel``'s forward-hook design does not
  fit; explicit averaging keeps every rank's weights bitwise identical,
- checkpoints and publishes on rank 0 only (:func:`is_main`).

Outside ``torchrun`` every helper is a no-op for a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pwm_core.config import check_device_available

BUCKET_BYTES = 25 * 2**20  # gradient bytes per all_reduce (DDP's default bucket size)


@dataclass(frozen=True)
class DistContext:
    """Where this process trains: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def setup(device: str | torch.device = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` with WORLD_SIZE > 1, and pick the device.

    ``device``: "auto" picks CUDA when present. CUDA ranks use NCCL and train on
    ``cuda:LOCAL_RANK``; CPU ranks use gloo. Without torchrun: rank 0 of 1, nothing is joined.
    """
    device = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank(), world_size(), local_rank(), device)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> this rank's CUDA device (LOCAL_RANK) when there is one, else CPU."""
    if str(device) != "auto":
        return torch.device(check_device_available(str(device)))  # one clear line, not a CUDA traceback
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (or without a process group): the rank that logs, checkpoints, publishes."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank (e.g. one rank was asked to stop)."""
    if world_size() <= 1:
        return flag
    device = f"cuda:{local_rank()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_ints(value: int) -> list[int]:
    """Every rank's ``value``, in rank order, on every rank (e.g. the step each rank's checkpoint resumed)."""
    if world_size() <= 1:
        return [value]
    device = f"cuda:{local_rank()}" if dist.get_backend() == "nccl" else "cpu"
    return all_gather(torch.tensor([value], dtype=torch.int64, device=device)).tolist()


def broadcast_path(path: Path | None) -> Path:
    """Rank 0's ``path`` on every rank (e.g. the run folder only rank 0 created)."""
    box = [path]
    if world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        raise ValueError("broadcast_path: rank 0 passed no path")
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module``."""
    if world_size() <= 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average ``p.grad`` over the ranks, in flat buckets (one ``all_reduce`` per bucket).

    Parameters without a gradient take part with zeros, so every rank issues the same collectives
    even if one rank's loss did not reach a parameter.
    """
    world = world_size()
    if world <= 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets(params, bucket_bytes):
        grads = [g for p in bucket if (g := p.grad) is not None]  # all of them: zero-filled above
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenation along dim 0 of every rank's ``x`` (same shape on all ranks), rank order."""
    world = world_size()
    if world <= 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _buckets(params: list[torch.nn.Parameter], bucket_bytes: int) -> list[list[torch.nn.Parameter]]:
    """Consecutive runs of same-dtype, same-device parameters of at most ~bucket_bytes."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        last = buckets[-1] if buckets else None
        if last is None or size + nbytes > bucket_bytes or last[0].dtype != p.dtype or last[0].device != p.device:
            buckets.append([p])
            size = nbytes
        else:
            last.append(p)
            size += nbytes
    return buckets
