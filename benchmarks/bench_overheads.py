"""Before/after ratios of the overhead removals, each pair measured in the same run, interleaved.

What was removed (found with torch.profiler on the 1M B=64 extraction iteration, CPU, fp32, 2 threads):

* **Adam's per-tensor loop**: the critic takes 32 Adam steps per iteration; ``pwm_core.train.optim.adam``
  uses torch's fused kernel (before: ``use_fused_adam(False)``). Also in pre-training and SHAC.
* **The model_return metric every update**: a no-grad H=16 rollout from 64 fixed states, about 12% of a
  B=64 iteration; now at update 1, every 10th and the last (``ExtractConfig.model_return_every``; before: 1).

Tried and reverted (kept here as a record): a Mish computed from one exp with in-place arithmetic was
1.04x ATen's kernel (forward + backward) at the critic's shapes and 0.56-0.78x at pre-training shapes.

Measured: (1) one Adam step of the 3-head critic alone; (2) ``Extractor.step()`` at 1M/5M x B under
``before`` (both old paths), ``adam`` (fused Adam only), ``metric`` (sparse model_return only) and
``after`` (both new), 10 updates per timed block (one model_return period); (3) ``Pretrainer.step()`` at
1M B=256, before vs after (only Adam applies). The
variants run in rounds, one timed block of each per round, so a change in machine load hits all of
them alike; the table gives median seconds and the ratio before/variant.

Run: ``python benchmarks/bench_overheads.py [--quick] [--rounds 5]``; appends one JSON line to
``benchmarks/results.jsonl`` (bench ``overheads``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench_common import RESULTS, append_record, common_fields, rounded
from pwm_core.nn import CriticEnsemble, WorldModel, world_model_config
from pwm_core.tasks import resolve_tasks
from pwm_core.train.extract import ExtractConfig, Extractor
from pwm_core.train.optim import use_fused_adam

# name: (fused Adam, model_return_every)
VARIANTS = {"before": (False, 1), "adam": (True, 1), "metric": (False, 10), "after": (True, 10)}


def set_variant(name: str) -> None:
    use_fused_adam(VARIANTS[name][0])


def interleaved(makers: dict[str, Callable[[], Callable[[], None]]], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each variant's function, timed in ``rounds`` rounds of ``reps`` calls, the
    variants one after the other in every round. ``makers[name]()`` builds the function under its variant."""
    funcs = {}
    for name, make in makers.items():
        set_variant(name)
        funcs[name] = make()
        funcs[name]()  # warm-up (allocations, first-call paths)
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, f in funcs.items():
            set_variant(name)
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[name].append((time.perf_counter() - t0) / reps)
    set_variant("after")
    return {name: statistics.median(ts) for name, ts in times.items()}


def adam_kernel(latent: int) -> dict[str, Callable]:
    from pwm_core.train.optim import adam

    def make():
        critic = CriticEnsemble(latent, 3, (400, 200))
        for p in critic.parameters():
            p.grad = torch.randn_like(p)
        return adam(critic.parameters(), lr=1e-3, betas=(0.7, 0.95)).step

    return {"before": make, "after": make}


def extractor_step(size: str, batch: int) -> dict[str, Callable]:
    task_set = resolve_tasks("mt30")
    mcfg = world_model_config(size, task_set)
    model = WorldModel(mcfg)

    def make(variant: str):
        g = torch.Generator().manual_seed(0)
        cfg = ExtractConfig(batch_size=batch, seed=0, steps=10_000, model_return_every=VARIANTS[variant][1])
        extractor = Extractor(
            cfg, model, task_set.index("walker-walk"), lambda: torch.randn(batch, mcfg.obs_dim, generator=g)
        )
        return extractor.step

    return {name: (lambda name=name: make(name)) for name in VARIANTS}


def pretrainer_step(size: str, batch: int, root: Path) -> dict[str, Callable]:
    from bench_pretrain import synthetic_dataset  # the pretrain benchmark's data
    from pwm_core.train import PretrainConfig, Pretrainer, model_config

    task_set = resolve_tasks("mt30")
    dataset = synthetic_dataset(root)

    def make():
        cfg = PretrainConfig(size=size, batch_size=batch, device="cpu", val_fraction=0.0, seed=0)
        return Pretrainer(cfg, model_config(cfg, task_set), [dataset], task_set).step

    return {"before": make, "after": make}


def _cell(s: dict, k: str) -> str:
    """Variant ``k``'s median seconds and its speed-up over ``before``; "-" when it was not measured."""
    return f"{s[k]:.4g} ({s['before'] / s[k]:.2f}x)" if k in s else "-"


def table(record: dict) -> str:
    lines = [
        f"{record.get('threads')} torch threads, fp32; median of {record['rounds']} interleaved rounds; "
        "ratio = before / variant (higher is faster)",
        "",
        "| what | before s | fused Adam only | sparse model_return only | after (both) | ratio before/after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        s = r["seconds"]
        lines.append(
            f"| {r['what']} | {s['before']:.4g} | {_cell(s, 'adam')} | {_cell(s, 'metric')} | "
            f"{_cell(s, 'after')} | **{s['before'] / s['after']:.2f}x** |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: the Adam step and 1M B=64 only, 2 rounds")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    cases = [
        ("Adam step, 3-head critic [400, 200] on z=128", lambda: adam_kernel(128), 50),
        ("extract 1M B=64 (Extractor.step)", lambda: extractor_step("1M", 64), 10),
    ]
    if not args.quick:
        cases += [
            ("extract 5M B=64", lambda: extractor_step("5M", 64), 10),
            ("pretrain 1M B=256 (Pretrainer.step)", lambda: pretrainer_step("1M", 256, Path(tmp)), 2),
        ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for what, build, reps in cases:
            seconds = interleaved(build(), rounds, reps)
            rows.append({"what": what, "reps_per_round": reps, "seconds": seconds})
            print(f"  {what}: " + ", ".join(f"{k} {v:.4g}s" for k, v in seconds.items()), flush=True)
    record = {
        "bench": "overheads",
        **common_fields(torch.device("cpu"), args.quick),
        "rounds": rounds,
        "rows": [rounded(r) for r in rows],
    }
    print("\n" + table(record) + "\n", flush=True)
    append_record(args.results, record)


if __name__ == "__main__":
    main()
