"""Policy-extraction throughput: iterations/s, FLOPs per iteration and achieved FLOP/s.

For each world-model shape (1M: enc [256], dyn/rew [384, 384], latent 128; 5M: enc [256], dyn/rew
[512, 512], latent 512; 48M: enc [1792] x 3, dyn/rew [1792, 1792], latent 768; MT30 padding obs 24 /
action 6), start-state batch (64, 512) and precision (fp32, bf16 autocast), times ``Extractor.step()``
at H=16: the whole official update (rollout, actor step, targets, 8 x 4 critic steps) plus our
model_return metric (every 10th update: the median of the timed updates leaves it out, its FLOPs are
counted amortised), from synthetic start states, on the CPU and, when CUDA is present, on the GPU.

FLOPs are counted analytically from the layer shapes (2 per multiply-accumulate, matmuls only):
forward passes count 1x; backward passes 1x per gradient kind computed: input gradients only through
the frozen world model and the bootstrap critic (only V(z_H) enters the loss), input + weight
gradients (2x) for the actor and the trained critics. The official code also computes the world
model's and critics' weight gradients in the actor backward pass; they are not counted (not computed).
A square matmul (2048^3 by default on the CPU, at least 8192^3 on a GPU) in fp32 and bf16, timed in
the same run, is the reference peak.

Prints a markdown table and appends one JSON line per device to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_extract.py [--sizes 1M,5M,48M --batches 64,512 --steps 3 --device auto]``;
``--quick`` is a smoke run (1M, B=64 only, 2 timed iterations, 1024^3 reference matmul).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench_common import DEVICE_HELP, RESULTS, append_record, common_fields, devices, rounded
from bench_pretrain import matmul_peaks, mlp_macs, release, time_steps  # same timing and counting helpers
from pwm_core.nn import WorldModel, WorldModelConfig, world_model_config
from pwm_core.tasks import resolve_tasks
from pwm_core.train.extract import ExtractConfig, Extractor


def iteration_flops_parts(m: WorldModelConfig, cfg: ExtractConfig) -> dict[str, float]:
    """Matmul FLOPs of one ``Extractor.step()`` by part (see the module docstring for the counting rule)."""
    Z, E, A, H, B = m.latent_dim, m.task_dim, m.act_dim, cfg.horizon, cfg.batch_size
    enc = mlp_macs([m.obs_dim + E, *[m.enc_dim] * max(m.num_enc_layers - 1, 1), Z])
    dyn = mlp_macs([Z + E + A, m.mlp_dim, m.mlp_dim, Z])
    rew = mlp_macs([Z + E + A, m.mlp_dim, m.mlp_dim, m.num_bins])
    actor = mlp_macs([Z, *cfg.actor_units, A])
    critic = cfg.num_critics * mlp_macs([Z, *cfg.critic_units, 1])  # all heads
    return {
        "rollout": 2.0 * (B * enc + H * B * (actor + dyn + rew + critic)),  # forward
        "actor_backward": 2.0 * (H * B * (2 * actor + dyn + rew) + B * critic),  # frozen WM: input grads
        "critic_updates": 2.0 * cfg.critic_iterations * H * B * 3 * critic,  # every latent once per pass
        # no grad, every model_return_every-th update: amortised per update
        "model_return": 2.0
        * cfg.return_states
        * (enc + H * (actor + dyn + rew + critic))
        / max(cfg.model_return_every, 1)
        * (cfg.model_return_every > 0),
    }


def iteration_flops(m: WorldModelConfig, cfg: ExtractConfig) -> float:
    """Matmul FLOPs of one ``Extractor.step()``."""
    return sum(iteration_flops_parts(m, cfg).values())


def table(record: dict) -> str:
    """The markdown table of one ``extract`` record (old records too)."""
    lines = [
        f"H={record.get('horizon')}, device {record.get('device', 'cpu')}, {record.get('threads')} threads; "
        f"reference {record.get('matmul_n')}^3 matmul: fp32 {record['matmul_fp32_gflop_per_s']:,.0f} GFLOP/s, "
        f"bf16 {record['matmul_bf16_gflop_per_s']:,.0f} GFLOP/s; median of {record.get('steps_timed')} iterations",
        "",
        "| size | B | precision | it/s | s/it | GFLOP/it | critic-update share of FLOPs | GFLOP/s | % of matmul peak |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        share = r.get("flop_share", {}).get("critic_updates")
        lines.append(
            f"| {r['size']} | {r['batch_size']} | {r['precision']} | {r['it_per_s']:.2f} | "
            f"{r['s_per_it']:.3f} | "
            f"{r['gflop_per_it']:.1f} | {'-' if share is None else f'{100 * share:.0f}%'} | "
            f"{r['gflop_per_s']:.1f} | {100 * r['fraction_of_matmul_peak']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma list of presets (default 1M,5M,48M; --quick: 1M)")
    p.add_argument("--batches", default=None, help="default 64,512; --quick: 64")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--steps", type=int, default=None, help="timed iterations per setting, median (default 3; --quick: 2)"
    )
    p.add_argument(
        "--matmul", type=int, default=None, help="n of the n^3 reference matmul (default 2048; --quick: 1024)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1M, B=64, 2 timed iterations, 1024^3 matmul")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    q = args.quick
    sizes = (args.sizes or ("1M" if q else "1M,5M,48M")).split(",")
    batches = [int(b) for b in (args.batches or ("64" if q else "64,512")).split(",")]
    steps = args.steps or (2 if q else 3)
    matmul_n = args.matmul or (1024 if q else 2048)
    task_set = resolve_tasks("mt30")
    for device in devices(args.device):
        n, peak = matmul_peaks(matmul_n, device)
        rows = []
        for size in sizes:
            mcfg = world_model_config(size, task_set)
            model = WorldModel(mcfg)
            for B in batches:
                g = torch.Generator().manual_seed(0)
                start_states = lambda B=B, g=g, O=mcfg.obs_dim: torch.randn(B, O, generator=g)  # noqa: E731
                for precision in args.precisions.split(","):
                    cfg = ExtractConfig(
                        batch_size=B,
                        horizon=args.horizon,
                        device=str(device),
                        amp="bf16" if precision == "bf16" else None,
                    )
                    extractor = Extractor(cfg, model, task_set.index("walker-walk"), start_states)
                    seconds = time_steps(extractor, args.warmup, steps)
                    del extractor
                    release(device)
                    parts = iteration_flops_parts(mcfg, cfg)
                    flops = sum(parts.values())
                    rows.append(
                        {
                            "size": size,
                            "batch_size": B,
                            "precision": precision,
                            "it_per_s": 1 / seconds,
                            "s_per_it": seconds,
                            "gflop_per_it": flops / 1e9,
                            "gflop_per_s": flops / seconds / 1e9,
                            "fraction_of_matmul_peak": flops / seconds / peak[precision],
                            "flop_share": {k: round(v / flops, 3) for k, v in parts.items()},
                        }
                    )
                    print(f"  {device} {size} B={B} {precision}: {seconds:.3f} s/it", flush=True)
            del model
            release(device)
        record = {
            "bench": "extract",
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
