"""World-model pre-training throughput: steps/s, FLOPs per step and achieved FLOP/s.

For each size (1M, 5M, 48M; MT30 padding obs 24 / action 6), batch (256, 1024) and precision (fp32,
bf16 autocast), times ``Pretrainer.step()`` at H=16 (window sampling, world-model step,
policy-prior step, Polyak: the whole update) on a small synthetic dataset, on the CPU and, when
CUDA is present, on the GPU (``--device``).

FLOPs are counted analytically from the layer shapes (2 per multiply-accumulate, matmuls only):
forward passes without gradient count 1x, trained modules 3x (backward = 2x forward), and the
policy step's detached Q-heads 2x (backward to their inputs only). A plain square matmul
(2048^3 by default on the CPU, at least 8192^3 on a GPU) in fp32 and bf16, timed in the same run,
is the reference peak.

Prints a markdown table and appends one JSON line per device to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_pretrain.py [--sizes 1M,5M,48M --batches 256,1024 --steps 3 --device auto]``;
``--quick`` is a smoke run (1M, B=256, 2 timed updates, 1024^3 reference matmul).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_common import DEVICE_HELP, RESULTS, append_record, common_fields, devices, rounded, sync
from pwm_core.data import EpisodeWriter, open_dataset
from pwm_core.nn import WorldModelConfig
from pwm_core.tasks import resolve_tasks
from pwm_core.train import PretrainConfig, Pretrainer, model_config

CUDA_MATMUL_N = 8192  # smaller square matmuls do not fill a large GPU


def mlp_macs(dims: list[int]) -> int:
    """Multiply-accumulates per row of an MLP with layer widths ``dims``."""
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def update_flops_parts(m: WorldModelConfig, B: int, H: int) -> dict[str, float]:
    """Matmul FLOPs of one pre-training update by part (see the module docstring for the counting rule)."""
    Z, E, A = m.latent_dim, m.task_dim, m.act_dim
    hidden = [m.mlp_dim, m.mlp_dim]
    enc = mlp_macs([m.obs_dim + E, *[m.enc_dim] * max(m.num_enc_layers - 1, 1), Z])
    dyn = mlp_macs([Z + E + A, *hidden, Z])
    rew = mlp_macs([Z + E + A, *hidden, m.num_bins])
    pi = mlp_macs([Z + E, *hidden, 2 * A])
    q = mlp_macs([Z + E + A, *hidden, m.num_bins])  # one head
    return {
        "targets": 2.0 * H * B * (enc + pi + 2 * q),  # no grad: z'_t, pi(z'_t), 2 target heads
        "world_model": 2.0 * 3 * (B * enc + H * B * (dyn + rew)),  # encoder + rollout, fwd + bwd
        "q_heads": 2.0 * 3 * H * B * m.num_q * q,  # every Q-head trained
        "policy": 2.0 * (H + 1) * B * (3 * pi + 2 * 2 * q),
    }  # pi trained; 2 detached heads, input grads


def update_flops(m: WorldModelConfig, B: int, H: int) -> float:
    """Matmul FLOPs of one pre-training update."""
    return sum(update_flops_parts(m, B, H).values())


def synthetic_dataset(root: Path, episodes: int = 40, length: int = 100):
    """MT30-padded random-walk episodes of the first 30 tasks."""
    rng = np.random.default_rng(0)
    obs = np.cumsum(rng.normal(0, 0.05, (episodes, length + 1, 24)), axis=1).astype(np.float32)
    action = rng.uniform(-1, 1, (episodes, length, 6)).astype(np.float32)
    reward = rng.uniform(0, 1, (episodes, length)).astype(np.float32)
    with EpisodeWriter.create(root / "bench.zarr", resolve_tasks("mt30")) as w:
        w.append_episodes(obs, action, reward, np.arange(episodes) % 30)
    return open_dataset(root / "bench.zarr")


def time_steps(trainer, warmup: int, steps: int) -> float:
    """Median seconds per ``trainer.step()`` (anything with ``step()`` and ``device``)."""
    for _ in range(warmup):
        trainer.step()
    times = []
    for _ in range(steps):
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.step()
        sync(trainer.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops_per_s(n: int, dtype: torch.dtype, device: torch.device, reps: int) -> float:
    """FLOP/s of a plain n x n x n matmul (median of ``reps``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def matmul_peaks(n: int, device: torch.device) -> tuple[int, dict[str, float]]:
    """The reference square-matmul size on ``device`` and its fp32 / bf16 FLOP/s."""
    n = max(n, CUDA_MATMUL_N) if device.type == "cuda" else n
    return n, {
        "fp32": matmul_flops_per_s(n, torch.float32, device, 5),
        "bf16": matmul_flops_per_s(n, torch.bfloat16, device, 5),
    }


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def table(record: dict) -> str:
    """The markdown table of one ``pretrain`` record (old records too)."""
    lines = [
        f"H={record.get('horizon')}, device {record.get('device', 'cpu')}, {record.get('threads')} threads; "
        f"reference {record.get('matmul_n')}^3 matmul: fp32 {record['matmul_fp32_gflop_per_s']:,.0f} GFLOP/s, "
        f"bf16 {record['matmul_bf16_gflop_per_s']:,.0f} GFLOP/s; median of {record.get('steps_timed')} updates",
        "",
        "| size | B | precision | steps/s | s/step | GFLOP/step | GFLOP/s | % of matmul peak | windows/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['size']} | {r['batch_size']} | {r['precision']} | {r['steps_per_s']:.2f} | "
            f"{r['s_per_step']:.3f} | {r['gflop_per_step']:.1f} | {r['gflop_per_s']:.1f} | "
            f"{100 * r['fraction_of_matmul_peak']:.0f}% | {r['batch_size'] * r['steps_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma list of presets (default 1M,5M,48M; --quick: 1M)")
    p.add_argument("--batches", default=None, help="default 256,1024; --quick: 256")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="timed updates per setting, median (default 3; --quick: 2)")
    p.add_argument(
        "--matmul", type=int, default=None, help="n of the n^3 reference matmul (default 2048; --quick: 1024)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1M, B=256, 2 timed updates, 1024^3 matmul")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    q = args.quick
    sizes = (args.sizes or ("1M" if q else "1M,5M,48M")).split(",")
    batches = [int(b) for b in (args.batches or ("256" if q else "256,1024")).split(",")]
    steps = args.steps or (2 if q else 3)
    matmul_n = args.matmul or (1024 if q else 2048)
    task_set = resolve_tasks("mt30")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_dataset(Path(tmp))
        for device in devices(args.device):
            n, peak = matmul_peaks(matmul_n, device)
            rows = []
            for size in sizes:
                for B in batches:
                    for precision in args.precisions.split(","):
                        amp = "bf16" if precision == "bf16" else None
                        cfg = PretrainConfig(
                            size=size, batch_size=B, horizon=args.horizon, device=str(device), amp=amp, val_fraction=0.0
                        )
                        mcfg = model_config(cfg, task_set)
                        trainer = Pretrainer(cfg, mcfg, [dataset], task_set)
                        seconds = time_steps(trainer, args.warmup, steps)
                        del trainer
                        release(device)
                        parts = update_flops_parts(mcfg, B, args.horizon)
                        flops = sum(parts.values())
                        rows.append(
                            {
                                "size": size,
                                "batch_size": B,
                                "precision": precision,
                                "steps_per_s": 1 / seconds,
                                "s_per_step": seconds,
                                "gflop_per_step": flops / 1e9,
                                "gflop_per_s": flops / seconds / 1e9,
                                "fraction_of_matmul_peak": flops / seconds / peak[precision],
                                "flop_share": {k: round(v / flops, 3) for k, v in parts.items()},
                            }
                        )
                        print(f"  {device} {size} B={B} {precision}: {seconds:.3f} s/step", flush=True)
            record = {
                "bench": "pretrain",
                **common_fields(device, q),
                "horizon": args.horizon,
                "steps_timed": steps,
                "matmul_n": n,
                "matmul_fp32_gflop_per_s": round(peak["fp32"] / 1e9, 1),
                "matmul_bf16_gflop_per_s": round(peak["bf16"] / 1e9, 1),
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "rows": [rounded(r) for r in rows],
            }
            print("\n" + table(record) + "\n", flush=True)
            append_record(args.results, record)


if __name__ == "__main__":
    main()
