"""Collection throughput: env steps/s with 1 and 2 worker processes, random policy.

Baseline measured in the same run: the raw environment stepped in a plain loop, no writer.

    python benchmarks/bench_collect.py [--task walker-walk] [--episodes 16]

Collect timings include starting the envs (and the worker processes), as a user sees them.

Prints a markdown table and appends one JSON line to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from pwm_core.collect import collect, random_policy
from pwm_core.data import EpisodeWriter
from pwm_core.envs import make_env, random_action
from pwm_core.tasks import resolve_tasks


def raw_env_steps_per_s(task: str, steps: int) -> float:
    env = make_env(task, seed=0)
    rng = np.random.default_rng(0)
    env.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, done, _ = env.step(random_action(env.spec, rng))
        if done:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def collect_steps_per_s(task: str, episodes: int, workers: int) -> float:
    ts = resolve_tasks(task)
    with tempfile.TemporaryDirectory() as tmp:
        writer = EpisodeWriter.create(Path(tmp) / "data.zarr", ts)
        t0 = time.perf_counter()
        result = collect(writer, {task: episodes}, ts, random_policy(0, ts.act_dim), workers=workers)
        dt = time.perf_counter() - t0
        writer.close()
    return result.env_steps / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="walker-walk")
    parser.add_argument("--episodes", type=int, default=16)
    args = parser.parse_args()
    steps = resolve_tasks(args.task).tasks[0].episode_length * 2
    rows = {"raw env loop (1 process)": raw_env_steps_per_s(args.task, steps)}
    for workers in (1, 2):
        rows[f"pwmctl collect, {workers} worker(s)"] = collect_steps_per_s(args.task, args.episodes, workers)
    base = rows["raw env loop (1 process)"]
    print(f"\n### collect throughput: {args.task}, {args.episodes} episodes, random policy\n")
    print("| setting | env steps/s | vs raw loop |\n|---|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.0f} | {v / base:.2f}x |")
    record = {"bench": "collect", "task": args.task, "episodes": args.episodes, "machine": platform.processor() or
              platform.machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **{k: round(v, 1) for k, v in rows.items()}}
    with open(Path(__file__).parent / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
