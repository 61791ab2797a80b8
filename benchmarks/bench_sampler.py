"""Window sampling throughput: from RAM (WindowSampler) vs straight from Zarr on disk.

Builds a synthetic dataset (default 200 episodes x 501 rows, obs 24, mt30 padding) with the real
writer, timing the appends on the way, then measures windows/s at H=16, B=1024:

- ``ram``: ``WindowSampler.sample()`` (vectorised gather from tensors in RAM),
- ``zarr-slices``: one ``arr[s:s+H+1]`` read per window and array (what a naive Dataset does),
- ``zarr-gather``: one orthogonal-index read of all B*(H+1) rows per array and batch.

Prints a markdown table and appends one JSON line to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_sampler.py [--episodes 200 --length 500]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import zarr

from pwm_core.data import EpisodeWriter, WindowSampler, open_dataset
from pwm_core.data.episodes import ACTION, OBS, REWARD
from pwm_core.tasks import resolve_tasks

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def synthetic_episodes(n: int, L: int, seed: int = 0):
    """n episodes of L transitions: random-walk obs (compresses like real states), uniform actions."""
    rng = np.random.default_rng(seed)
    obs = np.cumsum(rng.normal(0, 0.05, size=(n, L + 1, 24)), axis=1).astype(np.float32)
    action = rng.uniform(-1, 1, size=(n, L, 6)).astype(np.float32)
    reward = rng.uniform(0, 1, size=(n, L)).astype(np.float32)
    return obs, action, reward, rng.integers(0, 30, size=n)


def bench_append(root: Path, episodes, batch: int) -> dict:
    obs, action, reward, task = episodes
    n = len(task)
    t0 = time.perf_counter()
    with EpisodeWriter.create(root / "single.zarr", resolve_tasks("mt30")) as w:
        for i in range(n):
            w.append_episode(obs[i], action[i], reward[i], int(task[i]))
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    with EpisodeWriter.create(root / "batched.zarr", resolve_tasks("mt30")) as w:
        for i in range(0, n, batch):
            w.append_episodes(obs[i:i + batch], action[i:i + batch], reward[i:i + batch], task[i:i + batch])
    batched = time.perf_counter() - t0
    rows = obs.shape[0] * obs.shape[1]
    return {"append_ms_per_episode": 1e3 * single / n, "append_rows_per_s": rows / single,
            "append_batched_rows_per_s": rows / batched, "append_batch_episodes": batch}


def bench_ram(path: Path, H: int, B: int, iters: int) -> dict:
    t0 = time.perf_counter()
    sampler = WindowSampler(open_dataset(path), horizon=H, batch_size=B, seed=0)
    load_s = time.perf_counter() - t0
    sampler.sample()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        sampler.sample()
    return {"ram_load_s": load_s, "ram_windows_per_s": iters * B / (time.perf_counter() - t0)}


def random_starts(ds, H: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n start rows uniform over valid window starts (the sampler's distribution)."""
    valid = np.concatenate([np.arange(s, e - H) for s, e in zip(ds.episode_starts, ds.episode_ends)])
    return rng.choice(valid, size=n)


def bench_zarr(path: Path, H: int, B: int, slice_windows: int, gather_batches: int) -> dict:
    ds = open_dataset(path)
    arrays = [zarr.open_array(Path(path) / name, mode="r") for name in (OBS, ACTION, REWARD)]
    rng = np.random.default_rng(0)
    starts = random_starts(ds, H, slice_windows, rng)
    t0 = time.perf_counter()
    for s in starts:
        [a[s:s + H + 1] for a in arrays]
    slices = slice_windows / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(gather_batches):
        rows = random_starts(ds, H, B, rng)[None, :] + np.arange(H + 1)[:, None]  # (H+1, B)
        unique, inverse = np.unique(rows, return_inverse=True)  # oindex wants sorted unique rows
        [torch.from_numpy(a.oindex[unique][inverse]) for a in arrays]
    gather = gather_batches * B / (time.perf_counter() - t0)
    return {"zarr_slices_windows_per_s": slices, "zarr_gather_windows_per_s": gather}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--length", type=int, default=500, help="transitions per episode (rows = length + 1)")
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--iters", type=int, default=200, help="RAM batches to time")
    p.add_argument("--slice-windows", type=int, default=500, help="zarr-slices windows to time")
    p.add_argument("--gather-batches", type=int, default=5, help="zarr-gather batches to time")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    H, B = args.horizon, args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        episodes = synthetic_episodes(args.episodes, args.length)
        res = bench_append(root, episodes, batch=100)
        res |= bench_ram(root / "single.zarr", H, B, args.iters)
        res |= bench_zarr(root / "single.zarr", H, B, args.slice_windows, args.gather_batches)
        res["dataset_mb_on_disk"] = open_dataset(root / "single.zarr").nbytes_on_disk() / 1e6
    record = {"bench": "sampler", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "cpus": torch.get_num_threads(), "torch": torch.__version__,
              "zarr": zarr.__version__, "episodes": args.episodes, "rows_per_episode": args.length + 1,
              "horizon": H, "batch_size": B, **{k: round(v, 3) for k, v in res.items()}}
    print(f"| source (H={H}, B={B}, {args.episodes} x {args.length + 1} rows) | windows/s |\n|---|---:|")
    for name, key in (("RAM (WindowSampler)", "ram_windows_per_s"),
                      ("Zarr, one slice per window", "zarr_slices_windows_per_s"),
                      ("Zarr, batched orthogonal gather", "zarr_gather_windows_per_s")):
        print(f"| {name} | {record[key]:,.0f} |")
    print(f"\nappend: {record['append_ms_per_episode']:.1f} ms per {args.length + 1}-row episode "
          f"({record['append_rows_per_s']:,.0f} rows/s); batched ({record['append_batch_episodes']} "
          f"episodes/write): {record['append_batched_rows_per_s']:,.0f} rows/s; "
          f"sampler load {record['ram_load_s']:.2f} s; {record['dataset_mb_on_disk']:.1f} MB on disk")
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
