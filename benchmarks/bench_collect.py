"""Collection throughput: env steps/s with 1 and 2 worker processes, random policy.

Baseline measured in the same run: the raw environment stepped in a plain loop, no writer.

    python benchmarks/bench_collect.py [--task walker-walk] [--episodes 16]

Collect timings include starting the envs (and the worker processes), as a user sees them. CPU only
(the random policy uses no torch); ``--quick`` is a smoke run (2 episodes).

Prints a markdown table and appends one JSON line to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import RESULTS, append_record, common_fields
from pwm_core.collect import collect, random_policy
from pwm_core.data import EpisodeWriter
from pwm_core.envs import make_env, random_action
from pwm_core.tasks import resolve_tasks

RAW = "raw env loop (1 process)"


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


def table(record: dict) -> str:
    """The markdown table of one ``collect`` record (its settings are the keys naming a setting)."""
    rows = {k: v for k, v in record.items() if k == RAW or k.startswith("pwmctl collect")}
    base = rows.get(RAW)
    lines = [
        f"{record['task']}, {record['episodes']} episodes, random policy",
        "",
        "| setting | env steps/s | vs raw loop |",
        "|---|---:|---:|",
    ]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.0f} | {v / base:.2f}x |" if base else f"| {k} | {v:.0f} | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="walker-walk")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per setting (default 16; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 episodes, 1 episode of raw loop")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    episodes = args.episodes or (2 if args.quick else 16)
    steps = resolve_tasks(args.task).tasks[0].episode_length * (1 if args.quick else 2)
    rows = {RAW: raw_env_steps_per_s(args.task, steps)}
    for workers in (1, 2):
        rows[f"pwmctl collect, {workers} worker(s)"] = collect_steps_per_s(args.task, episodes, workers)
    fields = common_fields(None, args.quick)
    record = {
        "bench": "collect",
        "task": args.task,
        "episodes": episodes,
        "machine": platform.processor() or platform.machine(),
        **fields,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "utc_time": fields["time"],
        "device": "cpu",
        **{k: round(v, 1) for k, v in rows.items()},
    }
    print(f"\n### collect throughput\n\n{table(record)}\n")
    append_record(args.results, record)


if __name__ == "__main__":
    main()
