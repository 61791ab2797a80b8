"""Data-parallel pre-training: 2 CPU ranks over gloo stay in lockstep while sampling their own windows."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from pwm_core.data import open_dataset
from pwm_core.train import Pretrainer
from pwm_core.train import distributed

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import TASKS, tiny_config, tiny_model_config, write_linear_system  # noqa: E402

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, root: str) -> None:
    """What `torchrun --nproc-per-node 2` gives each process: env vars, then the trainer."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.device.type) == (rank, WORLD, "cpu")
    try:
        # gradients are averaged over ranks
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.full((3,), float(rank + 1))
        distributed.all_reduce_gradients([p])
        assert torch.equal(p.grad, torch.full((3,), 1.5))

        datasets = [open_dataset(Path(root) / name) for name in ("walker.zarr", "cartpole.zarr")]
        trainer = Pretrainer(tiny_config(), tiny_model_config(), datasets, TASKS)
        first_batch = trainer.sampler.sample().obs  # the next windows this rank will train on
        trainer.sampler.generator.manual_seed(trainer.cfg.seed + rank)
        for _ in range(3):
            trainer.step()
        trainer.save_checkpoint(Path(root) / f"checkpoint-from-rank{rank}.pt")  # rank 0 only writes
        torch.save(
            {
                "params": {k: v for k, v in trainer.model.state_dict().items()},
                "scale": trainer.scale.value,
                "first_batch": first_batch,
            },
            Path(root) / f"rank{rank}.pt",
        )
        distributed.barrier()
    finally:
        distributed.cleanup()


def test_two_gloo_ranks_keep_identical_weights(tmp_path):
    write_linear_system(tmp_path / "walker.zarr", "walker-walk", 24, 6, seed=0)
    write_linear_system(tmp_path / "cartpole.zarr", "cartpole-swingup", 5, 1, seed=1)
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # each rank draws its own windows
    for key, value in r0["params"].items():  # parameters, target Qs and buffers
        assert torch.equal(value, r1["params"][key]), key
    assert torch.equal(r0["scale"], r1["scale"])  # running Q scale from the gathered batch
    assert (tmp_path / "checkpoint-from-rank0.pt").exists()
    assert not (tmp_path / "checkpoint-from-rank1.pt").exists()

    single = Pretrainer(
        tiny_config(),
        tiny_model_config(),
        [open_dataset(tmp_path / n) for n in ("walker.zarr", "cartpole.zarr")],
        TASKS,
    )
    for _ in range(3):
        single.step()
    moved = [not torch.equal(v, single.model.state_dict()[k]) for k, v in r0["params"].items()]
    assert np.mean(moved) > 0.5  # the ranks trained on different data than one process would
