"""Window sampling throughput: from RAM (WindowSampler) vs straight from Zarr on disk, vs training demand.

Builds a synthetic dataset (default 200 episodes x 501 rows, obs 24, mt30 padding) with the real
writer, timing the appends on the way, then measures windows/s at H=16, B=1024:

- ``ram``: ``WindowSampler.sample()`` (vectorised gather from tensors in RAM, the batch moved to the
  device, as pre-training does),
- ``zarr-slices``: one ``arr[s:s+H+1]`` read per window and array (what a naive Dataset does),
- ``zarr-gather``: one orthogonal-index read of all B*(H+1) rows per array and batch, straight from the
  Zarr arrays on disk (nothing loaded into RAM beforehand; the OS page cache may hold the files).

Against what training consumes: one pre-training step uses B windows, so at s seconds per step it
consumes B / s windows/s. The newest ``pretrain`` line of the results file for the same device gives
s; each of its settings is listed with the sampler's headroom (sampler windows/s / consumed windows/s)
and the share of a step that sampling its batch would take. Run ``bench_pretrain.py`` first.

Prints a markdown table and appends one JSON line per device to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_sampler.py [--episodes 200 --length 500 --device auto]``;
``--quick`` is a smoke run (20 episodes x 201 rows, B=256, few batches).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from bench_common import DEVICE_HELP, RESULTS, append_record, common_fields, devices, sync
from pwm_core.data import EpisodeWriter, WindowSampler, open_dataset
from pwm_core.data.episodes import ACTION, OBS, REWARD
from pwm_core.tasks import resolve_tasks


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
            w.append_episodes(obs[i : i + batch], action[i : i + batch], reward[i : i + batch], task[i : i + batch])
    batched = time.perf_counter() - t0
    rows = obs.shape[0] * obs.shape[1]
    return {
        "append_ms_per_episode": 1e3 * single / n,
        "append_rows_per_s": rows / single,
        "append_batched_rows_per_s": rows / batched,
        "append_batch_episodes": batch,
    }


def bench_ram(path: Path, H: int, B: int, iters: int, device: torch.device) -> dict:
    t0 = time.perf_counter()
    sampler = WindowSampler(open_dataset(path), horizon=H, batch_size=B, seed=0, device=device)
    load_s = time.perf_counter() - t0
    sampler.sample()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        sampler.sample()
    sync(device)
    return {"ram_load_s": load_s, "ram_windows_per_s": iters * B / (time.perf_counter() - t0)}


def random_starts(ds, H: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n start rows uniform over valid window starts (the sampler's distribution)."""
    valid = np.concatenate([np.arange(s, e - H) for s, e in zip(ds.episode_starts, ds.episode_ends)])
    return rng.choice(valid, size=n)


def bench_zarr(path: Path, H: int, B: int, slice_windows: int, gather_batches: int, device: torch.device) -> dict:
    ds = open_dataset(path)
    arrays = [zarr.open_array(Path(path) / name, mode="r") for name in (OBS, ACTION, REWARD)]
    rng = np.random.default_rng(0)
    starts = random_starts(ds, H, slice_windows, rng)
    t0 = time.perf_counter()
    for s in starts:
        [a[s : s + H + 1] for a in arrays]
    slices = slice_windows / (time.perf_counter() - t0)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(gather_batches):
        rows = random_starts(ds, H, B, rng)[None, :] + np.arange(H + 1)[:, None]  # (H+1, B)
        unique, inverse = np.unique(rows, return_inverse=True)  # oindex wants sorted unique rows
        [torch.from_numpy(a.oindex[unique][inverse]).to(device) for a in arrays]
    sync(device)
    gather = gather_batches * B / (time.perf_counter() - t0)
    return {"zarr_slices_windows_per_s": slices, "zarr_gather_windows_per_s": gather}


def newest_pretrain(results: Path, device: torch.device) -> dict | None:
    """The newest ``pretrain`` record of ``device`` in the results file (old lines count as cpu)."""
    newest = None
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("bench") == "pretrain" and rec.get("device", "cpu") == str(device):
                newest = rec
    return newest


def training_demand(res: dict, pretrain: dict | None) -> list[dict]:
    """Per pre-training setting: windows/s it consumes, and the sampler's headroom over that."""
    out = []
    for r in (pretrain or {}).get("rows", []):
        consumed = r["batch_size"] / r["s_per_step"]
        out.append(
            {
                "size": r["size"],
                "batch_size": r["batch_size"],
                "precision": r["precision"],
                "s_per_step": r["s_per_step"],
                "windows_per_step": r["batch_size"],
                "consumed_windows_per_s": round(consumed, 1),
                "ram_headroom": round(res["ram_windows_per_s"] / consumed, 1),
                "zarr_gather_headroom": round(res["zarr_gather_windows_per_s"] / consumed, 2),
                "ram_share_of_step": round(r["batch_size"] / res["ram_windows_per_s"] / r["s_per_step"], 5),
                "zarr_gather_share_of_step": round(
                    r["batch_size"] / res["zarr_gather_windows_per_s"] / r["s_per_step"], 4
                ),
            }
        )
    return out


def table(record: dict) -> str:
    """The markdown tables of one ``sampler`` record (old records too)."""
    H, B = record["horizon"], record["batch_size"]
    lines = [
        f"| source (H={H}, B={B}, {record['episodes']} x {record['rows_per_episode']} rows, "
        f"device {record.get('device', 'cpu')}) | windows/s | ms per batch of {B} |",
        "|---|---:|---:|",
    ]
    for name, key in (
        ("RAM (WindowSampler)", "ram_windows_per_s"),
        ("Zarr on disk, one slice per window", "zarr_slices_windows_per_s"),
        ("Zarr on disk, batched orthogonal gather", "zarr_gather_windows_per_s"),
    ):
        lines.append(f"| {name} | {record[key]:,.0f} | {1000 * B / record[key]:,.1f} |")
    lines.append(
        f"\nappend: {record['append_ms_per_episode']:.1f} ms per {record['rows_per_episode']}-row episode "
        f"({record['append_rows_per_s']:,.0f} rows/s); batched ({record['append_batch_episodes']} "
        f"episodes/write): {record['append_batched_rows_per_s']:,.0f} rows/s; "
        f"sampler load {record['ram_load_s']:.2f} s; {record['dataset_mb_on_disk']:.1f} MB on disk"
    )
    demand = record.get("training_demand")
    if demand:
        lines += [
            "",
            f"Against what pre-training consumes (B windows per step; steps/s from the pretrain line of "
            f"{record.get('pretrain_time', '?')}, same device):",
            "",
            "| size | B | precision | s/step | windows/s consumed | RAM headroom | Zarr-gather headroom | "
            "Zarr-gather time / step |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for d in demand:
            lines.append(
                f"| {d['size']} | {d['batch_size']} | {d['precision']} | {d['s_per_step']:.3f} | "
                f"{d['consumed_windows_per_s']:,.0f} | {d['ram_headroom']:,.0f}x | "
                f"{d['zarr_gather_headroom']:,.1f}x | {100 * d['zarr_gather_share_of_step']:.1f}% |"
            )
    elif "training_demand" in record:
        lines.append(
            "\n(no pretrain line for this device in the results file: run bench_pretrain.py first "
            "to compare with what a training step consumes)"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=None, help="default 200; --quick: 20")
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help="transitions per episode, rows = length + 1 (default 500; --quick: 200)",
    )
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=None, help="default 1024; --quick: 256")
    p.add_argument("--iters", type=int, default=None, help="RAM batches to time (default 200; --quick: 20)")
    p.add_argument(
        "--slice-windows", type=int, default=None, help="zarr-slices windows to time (default 500; --quick: 50)"
    )
    p.add_argument(
        "--gather-batches", type=int, default=None, help="zarr-gather batches to time (default 5; --quick: 2)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small dataset, B=256, few batches")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    q = args.quick
    n_episodes = args.episodes or (20 if q else 200)
    length = args.length or (200 if q else 500)
    H, B = args.horizon, args.batch_size or (256 if q else 1024)
    iters = args.iters or (20 if q else 200)
    slice_windows = args.slice_windows or (50 if q else 500)
    gather_batches = args.gather_batches or (2 if q else 5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        episodes = synthetic_episodes(n_episodes, length)
        append = bench_append(root, episodes, batch=100)
        mb_on_disk = open_dataset(root / "single.zarr").nbytes_on_disk() / 1e6
        for device in devices(args.device):
            res = dict(append)
            res |= bench_ram(root / "single.zarr", H, B, iters, device)
            res |= bench_zarr(root / "single.zarr", H, B, slice_windows, gather_batches, device)
            res["dataset_mb_on_disk"] = mb_on_disk
            pretrain = newest_pretrain(args.results, device)
            fields = common_fields(device, q)
            record = {
                "bench": "sampler",
                **fields,
                "cpus": fields["threads"],
                "zarr": zarr.__version__,
                "episodes": n_episodes,
                "rows_per_episode": length + 1,
                "horizon": H,
                "batch_size": B,
                **{k: round(v, 3) for k, v in res.items()},
                "windows_per_step": B,
                "pretrain_time": pretrain["time"] if pretrain else None,
                "training_demand": training_demand(res, pretrain),
            }
            print("\n" + table(record) + "\n", flush=True)
            append_record(args.results, record)


if __name__ == "__main__":
    main()
