"""Before/after ratios of the overhead removals, each pair measured in the same run, interleaved.

What was removed (found with the profiler on the 1M extraction iteration, CPU, fp32):

* **Mish**: ATen's CPU kernel (tanh and log1p(exp) per element) was a third of an iteration's time,
  forward and backward; ``pwm_core.nn.activations.mish`` computes it from one exp and in-place
  arithmetic (before: ``use_aten_mish(True)``).
* **Adam's per-tensor loop**: the critic takes 32 Adam steps per iteration; ``pwm_core.train.optim.adam``
  uses torch's fused kernel (before: ``use_fused_adam(False)``).

Measured here: (1) the two kernels alone (Mish forward+backward on a critic activation; one Adam step
of the 3-head critic), (2) ``Extractor.step()`` at 1M/5M x B, (3) ``Pretrainer.step()`` at 1M B=256,
each under ``before`` (both old paths), ``mish`` (new Mish only), ``adam`` (fused Adam only) and
``after`` (both new). The variants run in rounds, one timed block of each per round, so a change in
machine load hits all of them alike; the table gives the median seconds and the ratio before/variant.

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
import torch.nn.functional as F

from bench_common import RESULTS, append_record, common_fields, rounded
from pwm_core.nn import CriticEnsemble, WorldModel, world_model_config
from pwm_core.nn.activations import mish, use_aten_mish
from pwm_core.tasks import resolve_tasks
from pwm_core.train.extract import ExtractConfig, Extractor
from pwm_core.train.optim import use_fused_adam

VARIANTS = {"before": (True, False), "mish": (False, False), "adam": (True, True), "after": (False, True)}  # aten, fused


def set_variant(name: str) -> None:
    aten, fused = VARIANTS[name]
    use_aten_mish(aten)
    use_fused_adam(fused)


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


def mish_kernel(shape: tuple[int, ...]) -> dict[str, Callable]:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = torch.randn(*shape)

    def make(fn):
        def run():
            fn(x).backward(g)
        return lambda: run

    return {"before": make(F.mish), "after": make(mish)}


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

    def make():
        g = torch.Generator().manual_seed(0)
        extractor = Extractor(ExtractConfig(batch_size=batch, seed=0), model, task_set.index("walker-walk"),
                              lambda: torch.randn(batch, mcfg.obs_dim, generator=g))
        return extractor.step

    return dict.fromkeys(VARIANTS, make)


def pretrainer_step(size: str, batch: int, root: Path) -> dict[str, Callable]:
    from bench_pretrain import synthetic_dataset  # the pretrain benchmark's data
    from pwm_core.train import PretrainConfig, Pretrainer, model_config

    task_set = resolve_tasks("mt30")
    dataset = synthetic_dataset(root)

    def make():
        cfg = PretrainConfig(size=size, batch_size=batch, device="cpu", val_fraction=0.0, seed=0)
        return Pretrainer(cfg, model_config(cfg, task_set), [dataset], task_set).step

    return dict.fromkeys(VARIANTS, make)


def table(record: dict) -> str:
    lines = [f"{record.get('threads')} torch threads, fp32; median of {record['rounds']} interleaved rounds; "
             "ratio = before / variant (higher is faster)", "",
             "| what | before s | Mish only | fused Adam only | after (both) | ratio before/after |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in record["rows"]:
        s = r["seconds"]
        cell = lambda k: f"{s[k]:.4g} ({s['before'] / s[k]:.2f}x)" if k in s else "-"  # noqa: E731
        lines.append(f"| {r['what']} | {s['before']:.4g} | {cell('mish')} | {cell('adam')} | {cell('after')} | "
                     f"**{s['before'] / s['after']:.2f}x** |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: kernels and 1M B=64 only, 2 rounds")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick: 2)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    cases = [("Mish fwd+bwd, (3, 256, 400) fp32", lambda: mish_kernel((3, 256, 400)), 20),
             ("Adam step, 3-head critic [400, 200] on z=128", lambda: adam_kernel(128), 50),
             ("extract 1M B=64 (Extractor.step)", lambda: extractor_step("1M", 64), 2)]
    if not args.quick:
        cases += [("extract 1M B=512", lambda: extractor_step("1M", 512), 1),
                  ("extract 5M B=64", lambda: extractor_step("5M", 64), 2),
                  ("pretrain 1M B=256 (Pretrainer.step)", lambda: pretrainer_step("1M", 256, Path(tmp)), 2)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for what, build, reps in cases:
            seconds = interleaved(build(), rounds, reps)
            rows.append({"what": what, "reps_per_round": reps, "seconds": seconds})
            print(f"  {what}: " + ", ".join(f"{k} {v:.4g}s" for k, v in seconds.items()), flush=True)
    record = {"bench": "overheads", **common_fields(torch.device("cpu"), args.quick), "rounds": rounds,
              "rows": [rounded(r) for r in rows]}
    print("\n" + table(record) + "\n", flush=True)
    append_record(args.results, record)


if __name__ == "__main__":
    main()
