"""Exact vs fast vs fused kernels (``pwm_core.nn.kernels``), measured in the same run, interleaved.

Mish runs after every hidden layer (world model, actor, critic). torch.profiler on this CPU put ATen's
``mish`` + ``mish_backward`` at about a third of an update (pre-training 1M B=256 H=16; extraction 1M
B=64): more than the matmuls. The ``fast`` kernel computes the same function from one ``exp``.

``fused`` runs each hidden layer's Mish and LayerNorm (with its affine) as one compiled kernel forward and
one backward (``torch.compile``; a lone Mish runs ``fast``'s kernel).

Measured, the modes alternating in every round so a change in machine load hits all alike: (1) Mish
forward + backward alone at the shapes an update uses; (2) the Mish + LayerNorm blocks forward + backward
(the critic's (3, 256, 400) and (3, 256, 200), the world model's (4096, 384)); (3) ``Extractor.step()`` at
1M and 5M, B=64 (the official recipe's 8 critic passes); (4) ``Pretrainer.step()`` at 1M B=256 (H=16) and
H=3; (5) the Q-heads' dropout (p = 0.01) forward + backward, ATen's against the sparse draw of the fast and
fused kernels. Compilation happens in the warm-up call, outside the timing. The table gives median seconds and the
ratios exact/fast and fast/fused (higher is faster), plus the largest difference of the Mish outputs.

Run: ``python benchmarks/bench_kernels.py [--quick] [--rounds 5]``; appends one JSON line to
``benchmarks/results.jsonl`` (bench ``kernels``).
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
from pwm_core.nn import WorldModel, world_model_config
from pwm_core.nn import kernels
from pwm_core.nn.kernels import mish, use_kernels
from pwm_core.tasks import resolve_tasks
from pwm_core.train.extract import ExtractConfig, Extractor

MODES = ("exact", "fast", "fused")


def interleaved(
    make: Callable[[str], Callable[[], object]], rounds: int, reps: int, modes: tuple[str, ...] = MODES
) -> dict[str, float]:
    """Median seconds per call of ``make(mode)()`` for each kernel mode, the modes alternating every round."""
    funcs = {m: make(m) for m in modes}
    for m, f in funcs.items():
        with use_kernels(m):
            f()  # warm-up (and, under fused, compilation)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for m, f in funcs.items():
            with use_kernels(m):
                t0 = time.perf_counter()
                for _ in range(reps):
                    f()
                times[m].append((time.perf_counter() - t0) / reps)
    return {m: statistics.median(ts) for m, ts in times.items()}


def mish_case(shape: tuple[int, ...]) -> Callable[[str], Callable[[], object]]:
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    g = torch.randn(shape)
    return lambda mode: lambda: torch.autograd.grad(mish(x), x, g)


def block_case(kind: str, shape: tuple[int, ...], affine: tuple[int, ...]) -> Callable[[str], Callable[[], object]]:
    """``kind`` (mish_norm: the actor's and critic's order; norm_mish: TD-MPC2's) forward + backward: the
    mode's eager ops, or the compiled block under ``fused``."""
    g0 = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g0) * 3).requires_grad_()
    w, b = torch.ones(affine, requires_grad=True), torch.zeros(affine, requires_grad=True)
    g = torch.randn(shape, generator=g0)

    def eager(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if kind == "mish_norm":
            return torch.nn.functional.layer_norm(mish(x), x.shape[-1:]) * w + b
        return mish(torch.nn.functional.layer_norm(x, x.shape[-1:]) * w + b)

    def make(mode: str) -> Callable[[], object]:
        def run() -> object:
            y = getattr(kernels, kind)(x, w, b) if mode == "fused" else eager(x, w, b)
            return torch.autograd.grad(y, (x, w, b), g)

        return run

    return make


def dropout_case(shape: tuple[int, ...], p: float) -> Callable[[str], Callable[[], object]]:
    """Dropout forward + backward (the mode's: ATen's under exact, the sparse mask otherwise)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    g = torch.randn(shape)
    return lambda mode: lambda: torch.autograd.grad(kernels.dropout(x, p), x, g)


def extractor_case(size: str, batch: int) -> Callable[[str], Callable[[], object]]:
    task_set = resolve_tasks("mt30")
    mcfg = world_model_config(size, task_set)
    model = WorldModel(mcfg)

    def make(mode: str):
        g = torch.Generator().manual_seed(0)
        cfg = ExtractConfig(batch_size=batch, seed=0, steps=10_000, kernels=mode)
        return Extractor(
            cfg, model, task_set.index("walker-walk"), lambda: torch.randn(batch, mcfg.obs_dim, generator=g)
        ).step

    return make


def pretrainer_case(size: str, batch: int, horizon: int, root: Path) -> Callable[[str], Callable[[], object]]:
    from bench_pretrain import synthetic_dataset  # the pretrain benchmark's data
    from pwm_core.train import PretrainConfig, Pretrainer, model_config

    task_set = resolve_tasks("mt30")
    root = root / f"{size}-b{batch}-h{horizon}"
    root.mkdir(parents=True, exist_ok=True)
    dataset = synthetic_dataset(root)

    def make(mode: str):
        cfg = PretrainConfig(
            size=size, batch_size=batch, horizon=horizon, device="cpu", val_fraction=0.0, seed=0, kernels=mode
        )
        return Pretrainer(cfg, model_config(cfg, task_set), [dataset], task_set).step

    return make


def max_difference() -> float:
    """Largest |fast - exact| of Mish over [-60, 60] (float32)."""
    x = torch.linspace(-60, 60, 200_001)
    with use_kernels("fast"):
        fast = mish(x)
    return float((fast - torch.nn.functional.mish(x)).abs().max())


def table(record: dict) -> str:
    lines = [
        f"{record.get('threads')} torch threads, fp32; median of {record['rounds']} interleaved rounds; "
        f"ratios: exact / fast and fast / fused (higher is faster); max |fast - exact| of Mish on [-60, 60]: "
        f"{record['max_abs_difference']:.2g}",
        "",
        "| what | exact s | fast s | fused s | exact / fast | fast / fused |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        s = r["seconds"]
        # none in records before the fused kernels; a lone Mish runs fast's kernel under fused (same kernel)
        if r["what"].startswith("Mish fwd"):
            s = {k: v for k, v in s.items() if k != "fused"}
        fused = f"{s['fused']:.4g}" if "fused" in s else "-"
        ratio = f"**{s['fast'] / s['fused']:.2f}x**" if "fused" in s else "-"
        lines.append(
            f"| {r['what']} | {s['exact']:.4g} | {s['fast']:.4g} | {fused} | {s['exact'] / s['fast']:.2f}x | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: Mish alone and extract 1M B=64, 1 round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick: 1)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, Callable[[], Callable[[str], Callable[[], object]]], int]] = [
            ("Mish fwd+bwd (64, 384): extraction", lambda: mish_case((64, 384)), 200),
            ("Mish fwd+bwd (4096, 384): pre-training 1M B=256 H=16", lambda: mish_case((4096, 384)), 5),
            (
                "Mish + LayerNorm fwd+bwd (3, 256, 400): critic, layer 1",
                lambda: block_case("mish_norm", (3, 256, 400), (3, 1, 400)),
                50,
            ),
            ("extract 1M B=64 (Extractor.step)", lambda: extractor_case("1M", 64), 5),
        ]
        if not args.quick:
            cases += [
                (
                    "Mish + LayerNorm fwd+bwd (3, 256, 200): critic, layer 2",
                    lambda: block_case("mish_norm", (3, 256, 200), (3, 1, 200)),
                    50,
                ),
                (
                    "LayerNorm + Mish fwd+bwd (4096, 384): world model 1M B=256 H=16",
                    lambda: block_case("norm_mish", (4096, 384), (384,)),
                    10,
                ),
                ("extract 5M B=64", lambda: extractor_case("5M", 64), 3),
                ("pretrain 1M B=256 H=16 (Pretrainer.step)", lambda: pretrainer_case("1M", 256, 16, Path(tmp)), 2),
                ("pretrain 1M B=256 H=3", lambda: pretrainer_case("1M", 256, 3, Path(tmp)), 5),
                (
                    "Dropout p=0.01 fwd+bwd (2, 4096, 384): Q-heads 1M B=256 H=16",
                    lambda: dropout_case((2, 4096, 384), 0.01),
                    5,
                ),
            ]
        rows = []
        for what, build, reps in cases:
            # a lone Mish runs the fast kernel under fused too: timing it again would only measure noise
            modes = MODES[:2] if what.startswith("Mish fwd") else MODES
            seconds = interleaved(build(), rounds, reps, modes)
            rows.append({"what": what, "reps_per_round": reps, "seconds": seconds})
            print(f"  {what}: " + ", ".join(f"{k} {v:.4g}s" for k, v in seconds.items()), flush=True)
    record = {
        "bench": "kernels",
        **common_fields(torch.device("cpu"), args.quick),
        "rounds": rounds,
        "max_abs_difference": max_difference(),
        "rows": [rounded(r) for r in rows],
    }
    print("\n" + table(record) + "\n", flush=True)
    append_record(args.results, record)


if __name__ == "__main__":
    main()
