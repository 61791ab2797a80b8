"""Out-of-core pre-training: a dataset larger than RAM, windows streamed from Zarr on disk.

Builds (once, reused across runs) a synthetic MT30-shaped dataset (uncompressed 256-row chunks, the layout
``pwmctl data rechunk`` makes for streaming; ``--compression zstd`` for the writer's default) with the
project's own writer (``EpisodeWriter``; 30 tasks, obs 24 / action 6 columns, 501-row episodes, random-walk observations
in every column, so that the bytes on disk are those of a full-width dataset, not of zero padding) under
``--data-dir`` (default ``benchmarks/.outofcore/``, gitignored), timing the appends. The build is
resumable: a killed build continues from its committed episodes, writing the same episodes.
Then it measures:

- ``sampler``: ``OutOfCoreSampler.sample()`` windows/s at B=1024, H=16 with background prefetch, alone
  and while a pre-training step runs in the foreground (the prefetch thread overlaps the step);
- ``pretrain``: ``--steps`` updates of ``Pretrainer`` (``--size 1M``, all 30 tasks) on the whole dataset
  (out of core: the rows exceed the RAM budget) and on an in-RAM subset of the same dataset (the first
  ``--subset-episodes`` episodes), each in its own subprocess: s/step and the process's peak RSS.

Prints a markdown table and appends one JSON line to ``benchmarks/results.jsonl``.
Run: ``nice -n 19 python benchmarks/bench_outofcore.py [--gb 40 --steps 100]`` (the first run writes the
dataset: ~40 GB, tens of minutes on 2 cores; ``--build-only`` stops after it); ``--quick`` is a smoke run
(a ~60 MB dataset in a temporary folder, B=256, a few steps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_common import DEVICE_HELP, RESULTS, append_record, common_fields, devices, rounded
from pwm_core.data import EpisodeWriter, OutOfCoreSampler, open_dataset
from pwm_core.data.sampler import available_memory_bytes, default_ram_budget
from pwm_core.tasks import resolve_tasks

DATA_DIR = Path(__file__).resolve().parent / ".outofcore"
EPISODE_LENGTH = 500  # transitions; 501 rows, as TD-MPC2's MT30 episodes
BUILD_BATCH = 1024  # episodes per append (~8 shards of 65536 rows: few partial-shard rewrites)
CHUNK_ROWS = 256  # rows per chunk: a window rarely spans two (`pwmctl data rechunk`'s default)
COMPRESSION = "none"  # the streaming layout: rows at fixed offsets, one read per window and array


def synthetic_batch(index: int, n: int, seed: int = 0):
    """Episodes [index * BUILD_BATCH, ... + n) of the synthetic MT30 dataset; a function of (seed, index) only,
    so that a resumed build writes what an uninterrupted one would."""
    task_set = resolve_tasks("mt30")
    rng = np.random.default_rng([seed, index])
    L = EPISODE_LENGTH
    obs = np.cumsum(rng.standard_normal((n, L + 1, task_set.obs_dim), dtype=np.float32) * np.float32(0.05), axis=1)
    action = rng.random((n, L, task_set.act_dim), dtype=np.float32) * 2 - 1
    reward = rng.random((n, L), dtype=np.float32)
    task = np.asarray(task_set.ids)[rng.integers(0, len(task_set), size=n)]
    return obs, action, reward, task


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build_dataset(
    path: Path, target_bytes: float, chunk_rows: int = CHUNK_ROWS, compression: str = COMPRESSION, log=print
) -> dict:
    """Append synthetic batches to ``path`` until it holds ``target_bytes`` on disk; resumes a partial build.

    Returns (and keeps beside ``path``, in ``<name>.build.json``) the build's numbers: rows, bytes, seconds,
    rows/s, MB/s (counted over the batches this and earlier interrupted builds wrote)."""
    meta_path = path.with_suffix(".build.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"seconds": 0.0, "rows_written": 0}
    writer = (
        EpisodeWriter.open(path)
        if path.exists()
        else EpisodeWriter.create(
            path,
            resolve_tasks("mt30"),
            {"source": "bench_outofcore synthetic"},
            chunk_rows=chunk_rows,
            compression=compression,
        )
    )
    with writer as w:
        size, rows_at_size = dir_bytes(path), w.num_rows
        while size < target_bytes:
            index = w.num_episodes // BUILD_BATCH  # each batch is one commit: whole batches only
            obs, action, reward, task = synthetic_batch(index, BUILD_BATCH)
            t0 = time.perf_counter()
            w.append_episodes(obs, action, reward, task)
            meta["seconds"] += time.perf_counter() - t0
            meta["rows_written"] += obs.shape[0] * obs.shape[1]
            meta_path.write_text(json.dumps(meta))
            per_row = size / rows_at_size if rows_at_size else 126.0
            if index % 16 == 15 or size + per_row * (w.num_rows - rows_at_size) >= target_bytes:
                size, rows_at_size = dir_bytes(path), w.num_rows  # du every ~8M rows (~1 GB) and near the end
                log(
                    f"build: {w.num_episodes} episodes, {w.num_rows:,} rows, {size / 1e9:.1f} GB on disk, "
                    f"{meta['rows_written'] / meta['seconds']:,.0f} rows/s while appending"
                )
    ds = open_dataset(path)
    meta |= {
        "episodes": ds.num_episodes,
        "rows": ds.num_rows,
        "bytes_on_disk": dir_bytes(path),
        "chunk_rows": chunk_rows,
        "compression": compression,
        "rows_per_s": meta["rows_written"] / max(meta["seconds"], 1e-9),
    }
    meta["mb_per_s"] = meta["rows_per_s"] * 126 / 1e6  # raw bytes per row: 31 float32 columns + an int16 task
    meta_path.write_text(json.dumps(meta))
    return meta


def subset(big: Path, path: Path, batches: int, compression: str = COMPRESSION) -> Path:
    """The first ``batches`` build batches of the big dataset, written as their own dataset (the same episodes)."""
    if not path.exists():
        with EpisodeWriter.create(
            path,
            resolve_tasks("mt30"),
            {"source": "bench_outofcore subset"},
            chunk_rows=CHUNK_ROWS,
            compression=compression,
        ) as w:
            for i in range(batches):
                w.append_episodes(*synthetic_batch(i, BUILD_BATCH))
    return path


def disk_reads(path: Path, nbytes: int, threads: int, reads: int = 6000) -> float:
    """The device's ceiling for the sampler: ``pread`` s/s of ``nbytes`` (a window of obs rows) at random
    offsets of the dataset's obs shard files (random each call, so earlier calls warm no page)."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    files = sorted(p for p in (path / "data" / "obs").rglob("*") if p.is_file() and p.name != "zarr.json")
    sizes = [f.stat().st_size for f in files]

    def work(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(reads // threads):
            i = r.randrange(len(files))
            fd = os.open(files[i], os.O_RDONLY)
            try:
                os.pread(fd, nbytes, r.randrange(0, max(sizes[i] - nbytes, 1)))
            finally:
                os.close(fd)

    base = time.time_ns()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [base + i for i in range(threads)]))
    return reads // threads * threads / (time.perf_counter() - t0)


def sampler_alone(path: Path, H: int, B: int, batches: int, cache: bool = True) -> dict:
    """windows/s of back-to-back ``sample()`` calls with prefetch (nothing else running)."""
    kwargs = {} if cache else {"cache_bytes": 0}
    sampler = OutOfCoreSampler(open_dataset(path), H, B, seed=1, **kwargs)
    sampler.sample()
    t0 = time.perf_counter()
    for _ in range(batches):
        sampler.sample()
    dt = time.perf_counter() - t0
    sampler.close()
    return {"windows_per_s": batches * B / dt, "ms_per_batch": 1e3 * dt / batches}


# ------------------------------------------------------------------------ one training run per process
def train(args) -> dict:
    """``--steps`` pre-training updates; s/step, the sampler's share, losses and this process's peak RSS."""
    from pwm_core.train import PretrainConfig, Pretrainer, model_config

    torch.manual_seed(0)
    task_set = resolve_tasks("mt30")
    cfg = PretrainConfig(
        size="1M",
        batch_size=args.batch_size,
        horizon=args.horizon,
        device=args.device,
        val_every=10**9,
        checkpoint_every=10**9,
        ram_budget_gb=args.ram_budget_gb,
    )
    t0 = time.perf_counter()
    trainer = Pretrainer(cfg, model_config(cfg, task_set), [open_dataset(args.child_data)], task_set)
    setup_s = time.perf_counter() - t0
    sampler = trainer.sampler
    reads: list[float] = []  # seconds of each batch read (the prefetch thread's work), while steps run
    if isinstance(sampler, OutOfCoreSampler):
        read = sampler._read

        def timed_read(*a):
            t = time.perf_counter()
            out = read(*a)
            reads.append(time.perf_counter() - t)
            return out

        sampler._read = timed_read  # type: ignore[method-assign]
    waits, steps, losses = [], [], []
    sample = sampler.sample

    def timed_sample():
        t = time.perf_counter()
        out = sample()
        waits.append(time.perf_counter() - t)
        return out

    sampler.sample = timed_sample  # type: ignore[method-assign]
    for _ in range(args.steps):
        t = time.perf_counter()
        losses.append(trainer.step()["loss"])
        steps.append(time.perf_counter() - t)
    timed = steps[args.warmup :]
    B = args.batch_size
    return {
        "streaming": trainer.streaming,
        "rows_nbytes": trainer.data_nbytes,
        "setup_s": setup_s,
        "steps": len(timed),
        "s_per_step": statistics.median(timed),
        "s_per_step_mean": statistics.mean(timed),
        "sample_wait_s_per_step": statistics.median(waits[args.warmup :]),
        "read_windows_per_s_while_training": B * len(reads) / sum(reads) if reads else None,
        "read_ms_per_batch_while_training": 1e3 * statistics.median(reads) if reads else None,
        "loss_first": losses[0],
        "loss_last10_mean": statistics.mean(losses[-10:]),
        "loss_last10_std": statistics.pstdev(losses[-10:]),
        "losses": [round(x, 5) for x in losses],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }


def run_child(data: Path, args, ram_budget_gb: float | None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child-data",
        str(data),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--horizon",
        str(args.horizon),
        "--device",
        args.device,
    ]
    if ram_budget_gb is not None:
        cmd += ["--ram-budget-gb", str(ram_budget_gb)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(record: dict) -> str:
    """The markdown tables of one ``outofcore`` record."""
    b, H, B = record["build"], record["horizon"], record["batch_size"]
    ooc, ram = record["runs"]["outofcore"], record["runs"]["in_ram_subset"]
    lines = [
        f"Dataset: {b['episodes']:,} episodes, {b['rows']:,} rows, {b['bytes_on_disk'] / 1e9:.1f} GB on disk "
        f"({b['chunk_rows']}-row chunks, compression {b.get('compression', 'zstd')}), RAM {record['ram_gb']:.1f} GB "
        "(available at the start "
        f"{record['available_gb']:.1f} GB, default budget {record['default_budget_gb']:.1f} GB); written by "
        f"`EpisodeWriter` at {b['rows_per_s']:,.0f} rows/s ({b['mb_per_s']:.1f} MB/s of raw rows).",
        "",
        f"| pre-training 1M, B={B}, H={H} | rows | windows | s/step (median) | sampler wait / step | "
        "peak RSS | loss, last 10 steps |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in (("whole dataset (out of core)", ooc), ("in-RAM subset", ram)):
        lines.append(
            f"| {name} | {r['rows_nbytes'] / 1e9:.1f} GB | {'streamed' if r['streaming'] else 'in RAM'} | "
            f"{r['s_per_step']:.2f} | {1e3 * r['sample_wait_s_per_step']:.0f} ms | "
            f"{r['peak_rss_gb']:.2f} GB | {r['loss_last10_mean']:.3f} ± {r['loss_last10_std']:.3f} |"
        )
    s = record["sampler"]
    lines += [
        "",
        f"Out-of-core sampler, B={B}, H={H}, prefetch: alone {s['windows_per_s']:,.0f} windows/s "
        f"({s['ms_per_batch']:.0f} ms per batch); while a training step runs "
        f"{ooc['read_windows_per_s_while_training']:,.0f} windows/s "
        f"({ooc['read_ms_per_batch_while_training']:.0f} ms per batch read in the background). "
        f"s/step out of core / in RAM: {record['s_per_step_ratio']:.2f}.",
    ]
    if "disk" in record:
        d = record["disk"]
        lines.append(
            f"The disk's ceiling, random reads of one window's obs rows: {d['reads_per_s_1_threads']:,.0f}/s on one "
            f"thread, {d['reads_per_s_4_threads']:,.0f}/s on 4, {d['reads_per_s_16_threads']:,.0f}/s on 16; a "
            "window is 3 reads (obs, action, reward)."
        )
    if "sampler_by_layout" in record:
        lay = record["sampler_by_layout"]
        lines.append(
            f"The two layouts on the same rows (the in-RAM subset's episodes, from the page cache, no chunk cache): "
            f"uncompressed {lay['none']['windows_per_s']:,.0f} windows/s, zstd {lay['zstd']['windows_per_s']:,.0f} "
            f"windows/s ({lay['none']['windows_per_s'] / lay['zstd']['windows_per_s']:.1f}x)."
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the dataset is built and kept (default {DATA_DIR}; --quick: a temporary folder)",
    )
    p.add_argument("--gb", type=float, default=None, help="dataset size on disk, GB (default 40; --quick: 0.06)")
    p.add_argument("--steps", type=int, default=None, help="pre-training updates per run (default 40; --quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first updates (default 3; --quick: 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 1024; --quick: 256")
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument(
        "--subset-batches",
        type=int,
        default=None,
        help=f"the in-RAM subset: this many build batches of {BUILD_BATCH} episodes (default 4; --quick: 1)",
    )
    p.add_argument("--sampler-batches", type=int, default=None, help="batches timed alone (default 30; --quick: 3)")
    p.add_argument("--build-only", action="store_true", help="build (or finish building) the dataset, then stop")
    p.add_argument(
        "--disk-only",
        action="store_true",
        help="measure only the disk's random-read ceiling on the built dataset (its own record)",
    )
    p.add_argument(
        "--no-build",
        action="store_true",
        help="measure the dataset as it stands, even if an interrupted build left it under --gb",
    )
    p.add_argument(
        "--ram-budget",
        type=float,
        default=None,
        help="GB, the out-of-core run's --ram-budget (default: pretrain's own default, half the available "
        "memory; a dataset under it would be loaded, so a partial build needs a smaller one)",
    )
    p.add_argument(
        "--compression",
        default=COMPRESSION,
        choices=("none", "zstd"),
        help="the big dataset's layout (default none: what `pwmctl data rechunk` makes for streaming)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: a ~60 MB dataset in a temporary folder")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (the first one is used)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--child-data", type=Path, help=argparse.SUPPRESS)  # internal: one training run
    p.add_argument("--ram-budget-gb", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    q = args.quick
    args.steps = args.steps or (3 if q else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.batch_size = args.batch_size or (256 if q else 1024)
    args.device = str(devices(args.device)[0])
    if args.child_data is not None:
        print(json.dumps(train(args)))
        return
    gb = args.gb or (0.06 if q else 40.0)
    tmp = tempfile.mkdtemp(prefix="pwm-outofcore-") if q and args.data_dir is None else None
    root = Path(tmp) if tmp else (args.data_dir or DATA_DIR)
    root.mkdir(parents=True, exist_ok=True)
    try:
        run(args, root, gb)
    finally:
        if tmp:
            shutil.rmtree(tmp)


def run(args, root: Path, gb: float) -> None:
    q = args.quick
    available = available_memory_bytes()
    suffix = "" if args.compression == "zstd" else f"-{args.compression}"
    big = root / f"mt30-{gb:g}gb{suffix}.zarr"
    build = build_dataset(big, 0 if args.no_build else gb * 1e9, compression=args.compression)
    if args.build_only:
        print(json.dumps(build))
        return
    window = (args.horizon + 1) * resolve_tasks("mt30").obs_dim * 4
    disk = {f"reads_per_s_{t}_threads": disk_reads(big, window, t) for t in (1, 4, 16)}
    print(f"disk, random {window}-byte reads: " + ", ".join(f"{k}: {v:,.0f}" for k, v in disk.items()), flush=True)
    if args.disk_only:
        record = {"bench": "outofcore_disk", **common_fields(torch.device("cpu"), q), "read_bytes": window}
        record |= {"dataset_gb": round(build["bytes_on_disk"] / 1e9, 1), **rounded(disk, 0)}
        append_record(args.results, record)
        return
    n_sub = args.subset_batches or (1 if q else 4)
    small = subset(big, root / f"mt30-subset-{n_sub}{suffix}.zarr", n_sub, args.compression)
    batches = args.sampler_batches or (3 if q else 30)
    sampler = sampler_alone(big, args.horizon, args.batch_size, batches)
    print(f"sampler alone: {sampler['windows_per_s']:,.0f} windows/s", flush=True)
    # the layouts side by side on the same rows (the subset, read from the page cache: decoding and calls only)
    layouts = {}
    for compression in ("none", "zstd"):
        path = root / f"mt30-subset-{n_sub}{'' if compression == 'zstd' else '-' + compression}.zarr"
        layouts[compression] = sampler_alone(
            subset(big, path, n_sub, compression), args.horizon, args.batch_size, batches, cache=False
        )
        print(f"subset, {compression}: {layouts[compression]['windows_per_s']:,.0f} windows/s", flush=True)
    # --quick: the small dataset fits any budget, so it is streamed by a budget of 0
    ooc = run_child(big, args, 0.0 if q else args.ram_budget)
    print(f"out of core: {ooc['s_per_step']:.2f} s/step, peak RSS {ooc['peak_rss_gb']:.2f} GB", flush=True)
    ram = run_child(small, args, None)
    print(f"in RAM: {ram['s_per_step']:.2f} s/step, peak RSS {ram['peak_rss_gb']:.2f} GB", flush=True)
    fields = common_fields(torch.device(args.device), q)
    with open("/proc/meminfo") as f:
        ram_gb = int(dict(line.split(":", 1) for line in f)["MemTotal"].split()[0]) * 1024 / 1e9
    record = {
        "bench": "outofcore",
        **fields,
        "horizon": args.horizon,
        "batch_size": args.batch_size,
        "size": "1M",
        "ram_gb": ram_gb,
        "available_gb": available / 1e9,
        "default_budget_gb": default_ram_budget() / 1e9,
        "build": rounded(build, 3),
        "sampler": rounded(sampler, 1),
        "sampler_by_layout": {k: rounded(v, 1) for k, v in layouts.items()},
        "disk": rounded(disk, 0),
        "runs": {"outofcore": rounded(ooc, 4), "in_ram_subset": rounded(ram, 4)},
        "s_per_step_ratio": round(ooc["s_per_step"] / ram["s_per_step"], 4),
    }
    print("\n" + table(record) + "\n", flush=True)
    append_record(args.results, record)


if __name__ == "__main__":
    main()
