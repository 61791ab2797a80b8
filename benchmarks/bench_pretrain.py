"""World-model pre-training throughput: steps/s, FLOPs per step and achieved FLOP/s.

For each size (1M, 5M; MT30 padding obs 24 / action 6), batch (256, 1024) and precision (fp32,
bf16 autocast), times ``Pretrainer.step()`` at H=16 (window sampling, world-model step,
policy-prior step, Polyak: the whole update) on a small synthetic dataset.

FLOPs are counted analytically from the layer shapes (2 per multiply-accumulate, matmuls only):
forward passes without gradient count 1x, trained modules 3x (backward = 2x forward), and the
policy step's detached Q-heads 2x (backward to their inputs only). A plain square matmul
(2048^3 by default) in fp32 and bf16, timed in the same run, is the reference peak.

Prints a markdown table and appends one JSON line to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_pretrain.py [--sizes 1M,5M --batches 256,1024 --steps 3]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pwm_core.data import EpisodeWriter, open_dataset
from pwm_core.nn import WorldModelConfig
from pwm_core.tasks import resolve_tasks
from pwm_core.train import PretrainConfig, Pretrainer, model_config

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def mlp_macs(dims: list[int]) -> int:
    """Multiply-accumulates per row of an MLP with layer widths ``dims``."""
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def update_flops(m: WorldModelConfig, B: int, H: int) -> float:
    """Matmul FLOPs of one pre-training update (see the module docstring for the counting rule)."""
    Z, E, A = m.latent_dim, m.task_dim, m.act_dim
    hidden = [m.mlp_dim, m.mlp_dim]
    enc = mlp_macs([m.obs_dim + E, *[m.enc_dim] * max(m.num_enc_layers - 1, 1), Z])
    dyn = mlp_macs([Z + E + A, *hidden, Z])
    rew = mlp_macs([Z + E + A, *hidden, m.num_bins])
    pi = mlp_macs([Z + E, *hidden, 2 * A])
    q = mlp_macs([Z + E + A, *hidden, m.num_bins])  # one head
    targets = H * B * (enc + pi + 2 * q)  # no grad: z'_t, pi(z'_t), 2 target heads
    model = 3 * (B * enc + H * B * (dyn + rew + m.num_q * q))  # rollout and heads, fwd + bwd
    policy = (H + 1) * B * (3 * pi + 2 * 2 * q)  # pi trained; 2 detached heads, input grads only
    return 2.0 * (targets + model + policy)


def synthetic_dataset(root: Path, episodes: int = 40, length: int = 100):
    """MT30-padded random-walk episodes of the first 30 tasks."""
    rng = np.random.default_rng(0)
    obs = np.cumsum(rng.normal(0, 0.05, (episodes, length + 1, 24)), axis=1).astype(np.float32)
    action = rng.uniform(-1, 1, (episodes, length, 6)).astype(np.float32)
    reward = rng.uniform(0, 1, (episodes, length)).astype(np.float32)
    with EpisodeWriter.create(root / "bench.zarr", resolve_tasks("mt30")) as w:
        w.append_episodes(obs, action, reward, np.arange(episodes) % 30)
    return open_dataset(root / "bench.zarr")


def time_steps(trainer: Pretrainer, warmup: int, steps: int) -> float:
    """Median seconds per update."""
    for _ in range(warmup):
        trainer.step()
    times = []
    for _ in range(steps):
        _sync(trainer.device)
        t0 = time.perf_counter()
        trainer.step()
        _sync(trainer.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops_per_s(n: int, dtype: torch.dtype, device: torch.device, reps: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1M,5M")
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed updates per setting (median)")
    p.add_argument("--matmul", type=int, default=2048, help="n of the n^3 reference matmul")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    device, task_set = torch.device(args.device), resolve_tasks("mt30")
    peak = {"fp32": matmul_flops_per_s(args.matmul, torch.float32, device, 5),
            "bf16": matmul_flops_per_s(args.matmul, torch.bfloat16, device, 5)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_dataset(Path(tmp))
        for size in args.sizes.split(","):
            for B in map(int, args.batches.split(",")):
                for precision in args.precisions.split(","):
                    amp = "bf16" if precision == "bf16" else None
                    cfg = PretrainConfig(size=size, batch_size=B, horizon=args.horizon, device=str(device),
                                         amp=amp, val_fraction=0.0)
                    mcfg = model_config(cfg, task_set)
                    trainer = Pretrainer(cfg, mcfg, [dataset], task_set)
                    seconds = time_steps(trainer, args.warmup, args.steps)
                    flops = update_flops(mcfg, B, args.horizon)
                    rows.append({"size": size, "batch_size": B, "precision": precision,
                                 "steps_per_s": 1 / seconds, "s_per_step": seconds,
                                 "gflop_per_step": flops / 1e9,
                                 "gflop_per_s": flops / seconds / 1e9,
                                 "fraction_of_matmul_peak": flops / seconds / peak[precision]})
                    print(f"  {size} B={B} {precision}: {seconds:.3f} s/step", flush=True)
    print(f"\nH={args.horizon}, device {device}, {torch.get_num_threads()} threads; reference "
          f"{args.matmul}^3 matmul: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s\n")
    print("| size | B | precision | steps/s | s/step | GFLOP/step | GFLOP/s | % of matmul peak |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['batch_size']} | {r['precision']} | {r['steps_per_s']:.2f} | "
              f"{r['s_per_step']:.3f} | {r['gflop_per_step']:.1f} | {r['gflop_per_s']:.1f} | "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% |")
    record = {"bench": "pretrain", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "horizon": args.horizon, "steps_timed": args.steps,
              "matmul_n": args.matmul, "matmul_fp32_gflop_per_s": round(peak["fp32"] / 1e9, 1),
              "matmul_bf16_gflop_per_s": round(peak["bf16"] / 1e9, 1),
              "rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
