"""Evaluation throughput: env steps/s of ``pwm_core.evaluate.evaluate`` with 1 and 2 env worker processes.

For each task (walker-walk, cartpole-balance), actor and worker count, one ``evaluate`` call runs one
episode on each of ``--seeds`` envs (all in one lockstep wave: ``envs_per_worker = ceil(seeds /
workers)``), as ``pwmctl eval`` does: MT30-padded observations (24 dims), the task's own action dims.
Actors:

- ``random``: ``random_actor`` (numpy, the baseline ``pwmctl eval random`` uses);
- ``policy``: an extracted-policy network of the ``--size`` world-model shape (encoder + SimNorm +
  [400, 200, 100] actor, random init), called through ``Policy.act`` as ``pwmctl eval`` calls it, in fp32
  and under bf16 autocast, on the CPU and, when CUDA is present, on the GPU (``--device``).

Columns: env steps/s over the whole call (env construction and, with 2 workers, spawning the worker
processes included, as a user sees it), env steps/s while stepping (from the first reset to the last
step: the longest episode's wall time), the actor's ms per lockstep call and its share of the call's
wall time (the rest is env stepping, inter-process transfer and start-up).

Prints a markdown table and appends one JSON line per device to ``benchmarks/results.jsonl``.
Run: ``python benchmarks/bench_eval.py [--tasks walker-walk,cartpole-balance --seeds 8 --device auto]``;
``--quick`` is a smoke run (walker-walk, 2 envs).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bench_common import DEVICE_HELP, RESULTS, append_record, autocast, common_fields, devices, rounded
from pwm_core.evaluate import evaluate, random_actor
from pwm_core.nn import WorldModel, world_model_config
from pwm_core.tasks import get_task, resolve_tasks
from pwm_core.train.extract import ExtractConfig, Extractor, Policy

PADDED = "mt30"  # the policies' task set: obs padded to its 24 dims


def make_policy(size: str, task: str, device: torch.device) -> Policy:
    """A random-init extracted policy for ``task`` on a ``size`` world model's encoder shape."""
    task_set = resolve_tasks(PADDED)
    mcfg = world_model_config(size, task_set)
    torch.manual_seed(0)
    extractor = Extractor(
        ExtractConfig(batch_size=1, return_states=1, device="cpu"),
        WorldModel(mcfg),
        task_set.index(task),
        lambda: torch.randn(1, mcfg.obs_dim),
    )
    return Policy.from_extractor(extractor).to(device)


def run_one(actor, label: str, task: str, seeds: int, workers: int, obs_dim: int, act_dim: int) -> dict:
    per_worker = math.ceil(seeds / workers)
    t0 = time.perf_counter()
    ev = evaluate(
        {label: actor},
        [task],
        list(range(seeds)),
        1,
        obs_dim=obs_dim,
        act_dim=act_dim,
        workers=workers,
        envs_per_worker=per_worker,
    )
    wall = time.perf_counter() - t0
    steps = sum(r.length for r in ev.episodes)
    stepping = max(r.seconds for r in ev.episodes)
    lat = ev.latency[label]
    return {
        "env_steps": steps,
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "stepping_s": stepping,
        "stepping_steps_per_s": steps / stepping,
        "actor_calls": lat.calls,
        "actor_ms_per_call": lat.ms_per_call,
        "actor_share_of_wall": lat.seconds / wall,
    }


def table(record: dict) -> str:
    """The markdown table of one ``eval`` record."""
    lines = [
        f"device {record.get('device', 'cpu')}, {record.get('threads')} torch threads in the main process, "
        f"{record['seeds']} envs x 1 episode per call, policy shape {record['policy_size']}",
        "",
        "| task | actor | precision | workers | env steps | wall s | env steps/s | while stepping | "
        "actor ms/call | actor share |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['task']} | {r['actor']} | {r['precision']} | {r['workers']} | {r['env_steps']} | "
            f"{r['wall_s']:.2f} | {r['steps_per_s']:,.0f} | {r['stepping_steps_per_s']:,.0f} | "
            f"{r['actor_ms_per_call']:.3f} | {100 * r['actor_share_of_wall']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tasks", default=None, help="comma list (default walker-walk,cartpole-balance; --quick: walker-walk)"
    )
    p.add_argument("--seeds", type=int, default=None, help="envs (one episode each) per call (default 8; --quick: 2)")
    p.add_argument("--workers", default="1,2", help="comma list of env worker-process counts")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--size", default="1M", help="world-model preset whose encoder shape the policy takes")
    p.add_argument("--quick", action="store_true", help="smoke run: walker-walk, 2 envs")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = (args.tasks or ("walker-walk" if args.quick else "walker-walk,cartpole-balance")).split(",")
    seeds = args.seeds or (2 if args.quick else 8)
    workers = [int(w) for w in args.workers.split(",")]
    obs_dim = resolve_tasks(PADDED).obs_dim
    for device in devices(args.device):
        rows = []
        for task in tasks:
            act_dim = get_task(task).act_dim
            actors = []
            if device.type == "cpu":  # the random actor is numpy: device-independent
                actors.append(("random", "-", random_actor(act_dim, seed=0)))
            policy = make_policy(args.size, task, device)
            for precision in args.precisions.split(","):

                def act(obs, specs, precision=precision, policy=policy, device=device):
                    with autocast(device, precision):
                        return policy.act(obs)

                actors.append(("policy", precision, act))
            for name, precision, actor in actors:
                for w in workers:
                    res = run_one(actor, name, task, seeds, w, obs_dim, act_dim)
                    rows.append({"task": task, "actor": name, "precision": precision, "workers": w, **res})
                    print(
                        f"  {device} {task} {name} {precision} workers={w}: {res['steps_per_s']:,.0f} env steps/s",
                        flush=True,
                    )
        record = {
            "bench": "eval",
            **common_fields(device, args.quick),
            "seeds": seeds,
            "episodes": 1,
            "policy_size": args.size,
            "obs_dim": obs_dim,
            "rows": [rounded(r) for r in rows],
        }
        print("\n" + table(record) + "\n", flush=True)
        append_record(args.results, record)


if __name__ == "__main__":
    main()
