"""Act latency at batch 1: a PWM policy's action vs an MPPI plan on the same world model.

For each world-model shape (1M: enc [256], dyn/rew [384, 384], latent 128, 2 Q-heads; 5M: enc [256],
dyn/rew [512, 512], latent 512, 5 Q-heads; MT30 padding obs 24 / action 6, task walker-walk; random init)
and precision (fp32, bf16 autocast), times one env's action from a raw observation, as ``pwmctl eval``
calls it (numpy in, numpy out):

- ``policy``: the extracted policy's ``act`` (encoder + actor, deterministic, through functional ops bound to
  the parameters);
- ``policy-modules``: the same computation through the ``nn.Module`` calls (``act`` before; bit-equal);
- ``mppi-wm``: TD-MPC2's MPPI with the world model's own prior and Q (``PlannerActor``);
- ``mppi-policy``: the same planner with the policy's actor and critics as prior and value.

MPPI uses TD-MPC2's settings (6 iterations, 512 samples, 64 elites, 24 prior trajectories, H = 3) unless
``--iterations`` / ``--samples`` say otherwise. MFLOP/action counts the matmuls of one call analytically
(2 per multiply-accumulate; every Q-head is evaluated, as in TD-MPC2).

On the CPU and, when CUDA is present, on the GPU (``--device``); the actors return numpy on the CPU,
so every timed call ends synchronised.

Prints a markdown table and appends one JSON line per device to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_act_latency.py [--sizes 1M,5M --precisions fp32,bf16 --calls 10 --device auto]``;
``--quick`` is a smoke run (1M only, 1 warm-up and 2 timed plans).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_common import DEVICE_HELP, RESULTS, append_record, autocast, common_fields, devices, rounded
from bench_pretrain import mlp_macs  # same counting helper

from pwm_core.nn import WorldModel, WorldModelConfig, world_model_config
from pwm_core.plan import MPPI, MPPIConfig, PlannerActor, PolicyPrior
from pwm_core.tasks import get_task, resolve_tasks
from pwm_core.train.extract import ExtractConfig, Extractor, Policy

TASK = "walker-walk"


def policy_flops(m: WorldModelConfig, cfg: ExtractConfig) -> float:
    enc = mlp_macs([m.obs_dim + m.task_dim, *[m.enc_dim] * max(m.num_enc_layers - 1, 1), m.latent_dim])
    return 2.0 * (enc + mlp_macs([m.latent_dim, *cfg.actor_units, m.act_dim]))


def mppi_flops(m: WorldModelConfig, cfg: MPPIConfig, prior: str, ext: ExtractConfig) -> float:
    """Matmul FLOPs of one plan: encoder, prior trajectories, then per iteration H x (dynamics + reward)
    and one prior action + value on every sample."""
    Z, E, A, H, N, P = m.latent_dim, m.task_dim, m.act_dim, cfg.horizon, cfg.num_samples, cfg.num_pi_trajs
    enc = mlp_macs([m.obs_dim + E, *[m.enc_dim] * max(m.num_enc_layers - 1, 1), Z])
    dyn = mlp_macs([Z + E + A, m.mlp_dim, m.mlp_dim, Z])
    rew = mlp_macs([Z + E + A, m.mlp_dim, m.mlp_dim, m.num_bins])
    if prior == "wm":
        pi = mlp_macs([Z + E, m.mlp_dim, m.mlp_dim, 2 * A])
        value = pi + m.num_q * mlp_macs([Z + E + A, m.mlp_dim, m.mlp_dim, m.num_bins])
    else:
        pi = mlp_macs([Z, *ext.actor_units, A])
        value = ext.num_critics * mlp_macs([Z, *ext.critic_units, 1])
    prior_trajs = P * (H * pi + (H - 1) * dyn)
    return 2.0 * (enc + prior_trajs + cfg.iterations * N * (H * (dyn + rew) + value))


def time_calls(act, warmup: int, calls: int, device: torch.device) -> list[float]:
    """Per-call wall times in ms (the actors return numpy on the CPU, so each call ends synchronised)."""
    for _ in range(warmup):
        act()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        act()
        times.append(1000 * (time.perf_counter() - t0))
    return times


def table(record: dict) -> str:
    """The markdown table of one ``act_latency`` record."""
    cfg = record["mppi"]
    lines = [
        f"batch 1, task {record.get('task')}, device {record.get('device', 'cpu')}, {record.get('threads')} "
        f"threads; MPPI: {cfg['iterations']} iterations, {cfg['num_samples']} samples, {cfg['num_elites']} "
        f"elites, {cfg['num_pi_trajs']} prior trajectories, H={cfg['horizon']}",
        "",
        "| size | precision | actor | calls | mean ms | p50 ms | p95 ms | actions/s | MFLOP/action "
        "| p50 / policy p50 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {(r["size"], r["precision"]): r["p50_ms"] for r in record["rows"] if r["actor"] == "policy"}
    for r in record["rows"]:
        ratio = r["p50_ms"] / base[r["size"], r["precision"]] if (r["size"], r["precision"]) in base else float("nan")
        times = f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"
        lines.append(
            f"| {r['size']} | {r['precision']} | {r['actor']} | {r['calls']} | {r['mean_ms']:.2f} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['hz']:.1f} | {r['mflop_per_action']:.1f} | {times} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="comma list of presets (default 1M,5M; --quick: 1M)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument(
        "--calls",
        type=int,
        default=None,
        help="timed MPPI plans per setting, policy: 20x as many (default 10; --quick: 2)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2; --quick: 1)")
    p.add_argument("--iterations", type=int, default=None, help="MPPI iterations (TD-MPC2: 6)")
    p.add_argument("--samples", type=int, default=None, help="MPPI samples (TD-MPC2: 512)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1M only, 1 warm-up and 2 timed plans")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = (args.sizes or ("1M" if args.quick else "1M,5M")).split(",")
    n_calls = args.calls or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    task_set, spec = resolve_tasks("mt30"), get_task(TASK)
    cfg = MPPIConfig() if args.samples is None else MPPIConfig().with_samples(args.samples)
    if args.iterations is not None:
        cfg.iterations = args.iterations
    for device in devices(args.device):
        rng = np.random.default_rng(0)
        rows = []
        for size in sizes:
            mcfg = world_model_config(size, task_set)
            wm = WorldModel(mcfg).to(device)
            ext = ExtractConfig(batch_size=1, return_states=1, device=str(device))
            extractor = Extractor(
                ext,
                wm,
                task_set.index(TASK),
                lambda mcfg=mcfg, device=device: torch.randn(1, mcfg.obs_dim, device=device),
            )
            policy = Policy.from_extractor(extractor).to(device)
            obs = rng.standard_normal((1, mcfg.obs_dim)).astype(np.float32)
            for precision in args.precisions.split(","):
                amp = "bf16" if precision == "bf16" else None
                planners = {
                    "mppi-wm": MPPI(wm, replace(cfg, amp=amp)),
                    "mppi-policy": MPPI(wm, replace(cfg, amp=amp), PolicyPrior.from_policy(wm, policy)),
                }

                def act_policy(precision=precision, policy=policy, obs=obs, device=device) -> np.ndarray:
                    with autocast(device, precision):
                        return policy.act(obs)

                @torch.no_grad()
                def act_modules(precision=precision, policy=policy, obs=obs, device=device) -> np.ndarray:
                    with autocast(device, precision):  # act before its bound functional ops: module calls
                        a = policy.actor(policy.encode(policy._obs(obs)), deterministic=True)
                        return a[..., : spec.act_dim].float().cpu().numpy()

                actors = {
                    "policy": (act_policy, n_calls * 20, policy_flops(mcfg, ext)),
                    "policy-modules": (act_modules, n_calls * 20, policy_flops(mcfg, ext)),
                }
                for name, planner in planners.items():
                    actor = PlannerActor(planner, mcfg.task_names, spec.act_dim)
                    actors[name] = (
                        lambda actor=actor, obs=obs: actor(obs, [spec], np.zeros(1, int), np.zeros(1, bool)),
                        n_calls,
                        mppi_flops(mcfg, cfg, name.split("-")[1], ext),
                    )
                for name, (act, calls, flops) in actors.items():
                    ms = time_calls(act, warmup, calls, device)
                    mean = float(np.mean(ms))
                    rows.append(
                        {
                            "size": size,
                            "precision": precision,
                            "actor": name,
                            "calls": calls,
                            "mean_ms": mean,
                            "p50_ms": float(np.percentile(ms, 50)),
                            "p95_ms": float(np.percentile(ms, 95)),
                            "hz": 1000 / mean,
                            "mflop_per_action": flops / 1e6,
                        }
                    )
                    print(f"  {device} {size} {precision} {name}: {mean:.2f} ms", flush=True)
        record = {
            "bench": "act_latency",
            **common_fields(device, args.quick),
            "task": TASK,
            "mppi": cfg.to_dict(),
            "rows": [rounded(r) for r in rows],
        }
        print("\n" + table(record) + "\n", flush=True)
        append_record(args.results, record)


if __name__ == "__main__":
    main()
