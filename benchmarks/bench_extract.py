"""Policy-extraction throughput: iterations/s, FLOPs per iteration and achieved FLOP/s.

For each world-model shape (1M: enc [256], dyn/rew [384, 384], latent 128; 5M: enc [256], dyn/rew
[512, 512], latent 512; MT30 padding obs 24 / action 6), start-state batch (64, 512) and precision
(fp32, bf16 autocast), times ``Extractor.step()`` at H=16: the whole official update (rollout, actor
step, targets, 8 x 4 critic steps) plus our model_return metric, from synthetic start states.

FLOPs are counted analytically from the layer shapes (2 per multiply-accumulate, matmuls only):
forward passes count 1x; backward passes 1x per gradient kind computed: input gradients only through
the frozen world model and the bootstrap critic (only V(z_H) enters the loss), input + weight
gradients (2x) for the actor and the trained critics. The official code also computes the world
model's and critics' weight gradients in the actor backward pass; they are not counted (not computed).
A square matmul (2048^3 by default) in fp32 and bf16, timed in the same run, is the reference peak.

Prints a markdown table and appends one JSON line to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_extract.py [--sizes 1M,5M --batches 64,512 --steps 3]``;
``--quick`` is a smoke run (B=64 only, 2 timed iterations, 1024^3 reference matmul).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from pwm_core.nn import WorldModel, WorldModelConfig, world_model_config
from pwm_core.tasks import resolve_tasks
from pwm_core.train.extract import ExtractConfig, Extractor

from bench_pretrain import matmul_flops_per_s, mlp_macs, time_steps  # same timing and counting helpers

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def iteration_flops(m: WorldModelConfig, cfg: ExtractConfig) -> float:
    """Matmul FLOPs of one ``Extractor.step()`` (see the module docstring for the counting rule)."""
    Z, E, A, H, B = m.latent_dim, m.task_dim, m.act_dim, cfg.horizon, cfg.batch_size
    enc = mlp_macs([m.obs_dim + E, *[m.enc_dim] * max(m.num_enc_layers - 1, 1), Z])
    dyn = mlp_macs([Z + E + A, m.mlp_dim, m.mlp_dim, Z])
    rew = mlp_macs([Z + E + A, m.mlp_dim, m.mlp_dim, m.num_bins])
    actor = mlp_macs([Z, *cfg.actor_units, A])
    critic = cfg.num_critics * mlp_macs([Z, *cfg.critic_units, 1])  # all heads
    rollout = B * enc + H * B * (actor + dyn + rew + critic)  # forward
    backward = H * B * (2 * actor + dyn + rew) + B * critic  # frozen WM: input grads; V(z_H) only
    critic_steps = cfg.critic_iterations * H * B * 3 * critic  # every rollout latent once per pass
    metric = cfg.return_states * (enc + H * (actor + dyn + rew + critic))  # model_return, no grad
    return 2.0 * (rollout + backward + critic_steps + metric)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1M,5M")
    p.add_argument("--batches", default="64,512")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed iterations per setting (median)")
    p.add_argument("--matmul", type=int, default=2048, help="n of the n^3 reference matmul")
    p.add_argument("--quick", action="store_true", help="smoke run: B=64, 2 timed iterations, 1024^3 matmul")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.quick:
        args.batches, args.steps, args.matmul = "64", 2, 1024
    device, task_set = torch.device(args.device), resolve_tasks("mt30")
    peak = {"fp32": matmul_flops_per_s(args.matmul, torch.float32, device, 5),
            "bf16": matmul_flops_per_s(args.matmul, torch.bfloat16, device, 5)}
    rows = []
    for size in args.sizes.split(","):
        mcfg = world_model_config(size, task_set)
        model = WorldModel(mcfg)
        for B in map(int, args.batches.split(",")):
            g = torch.Generator().manual_seed(0)
            start_states = lambda B=B, g=g: torch.randn(B, mcfg.obs_dim, generator=g)  # noqa: E731
            for precision in args.precisions.split(","):
                cfg = ExtractConfig(batch_size=B, horizon=args.horizon, device=str(device),
                                    amp="bf16" if precision == "bf16" else None)
                extractor = Extractor(cfg, model, task_set.index("walker-walk"), start_states)
                seconds = time_steps(extractor, args.warmup, args.steps)
                flops = iteration_flops(mcfg, cfg)
                rows.append({"size": size, "batch_size": B, "precision": precision, "it_per_s": 1 / seconds,
                             "s_per_it": seconds, "gflop_per_it": flops / 1e9, "gflop_per_s": flops / seconds / 1e9,
                             "fraction_of_matmul_peak": flops / seconds / peak[precision]})
                print(f"  {size} B={B} {precision}: {seconds:.3f} s/it", flush=True)
    print(f"\nH={args.horizon}, device {device}, {torch.get_num_threads()} threads; reference "
          f"{args.matmul}^3 matmul: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s\n")
    print("| size | B | precision | it/s | s/it | GFLOP/it | GFLOP/s | % of matmul peak |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['batch_size']} | {r['precision']} | {r['it_per_s']:.2f} | {r['s_per_it']:.3f} | "
              f"{r['gflop_per_it']:.1f} | {r['gflop_per_s']:.1f} | {100 * r['fraction_of_matmul_peak']:.0f}% |")
    record = {"bench": "extract", "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "horizon": args.horizon, "quick": args.quick, "steps_timed": args.steps,
              "matmul_n": args.matmul, "matmul_fp32_gflop_per_s": round(peak["fp32"] / 1e9, 1),
              "matmul_bf16_gflop_per_s": round(peak["bf16"] / 1e9, 1),
              "rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
