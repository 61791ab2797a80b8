"""Run every benchmark, then (re)write ``docs/benchmarks.md`` from ``benchmarks/results.jsonl``.

    python benchmarks/run_all.py                 # the full suite (make bench), then the report
    python benchmarks/run_all.py --quick         # smoke settings in every benchmark (make bench-quick)
    python benchmarks/run_all.py --report-only   # only rewrite docs/benchmarks.md from the results file

Each benchmark runs as its own subprocess, one after the other (they would disturb each other's
timings in parallel); ``--quick`` and ``--device`` pass through. Every script appends its JSON lines to
the results file; this script adds a ``machine`` line before the run (what the numbers depend on) and a
``run_all`` line after it (durations, failures). The report takes, per benchmark and device, the
newest line of the results file, so it can be regenerated at any time (:func:`write_report`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_common import RESULTS, append_record, machine, now  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"

# name in the results file, script, section title, what it measures; in the report's order.
BENCHES = [
    (
        "extract",
        "bench_extract.py",
        "1. Policy extraction (iterations/s)",
        "one full official PWM policy-extraction iteration (`Extractor.step()`: H=16 rollout through the frozen "
        "world model, actor step, TD(lambda) targets, 8 x 4 critic steps; our model-return metric runs every 10th "
        "update, outside the timed median, its FLOPs counted amortised) on synthetic "
        "start states; FLOPs per iteration counted analytically from the layer shapes (matmuls only), achieved "
        "FLOP/s as a fraction of a plain square matmul timed in the same run, in the same precision.",
    ),
    (
        "pretrain",
        "bench_pretrain.py",
        "2. World-model pre-training (steps/s)",
        "one full pre-training update (`Pretrainer.step()`: window sampling, world-model step, policy-prior "
        "step, Polyak) at H=16 on a small synthetic dataset; FLOPs and fraction of matmul peak as above.",
    ),
    (
        "sampler",
        "bench_sampler.py",
        "3. Window sampler (windows/s)",
        "windows of H+1 rows per second from the in-RAM `WindowSampler` and straight from the Zarr arrays on "
        "disk (per-window slices; one batched orthogonal gather per batch, nothing preloaded), against the "
        "windows a pre-training step consumes (B per step, at the steps/s of the newest pretrain line).",
    ),
    (
        "act_latency",
        "bench_act_latency.py",
        "4. Act latency: policy vs MPPI (batch 1)",
        "wall time of one action from a raw observation at batch 1: the extracted policy vs TD-MPC2's MPPI "
        "planner (6 iterations, 512 samples, H=3) on the same world model, with the world model's own "
        "prior/Q or with the policy's actor/critics.",
    ),
    (
        "eval",
        "bench_eval.py",
        "5. Evaluation throughput (env steps/s)",
        "env steps per second of `pwm_core.evaluate.evaluate` (what `pwmctl eval` runs) with 1 and 2 env "
        "worker processes, for the random actor and for an extracted-policy network (fp32 and bf16 autocast).",
    ),
    (
        "overheads",
        "bench_overheads.py",
        "6. Overheads removed: before/after in one run",
        "the overheads removed after profiling the 1M B=64 extraction iteration with torch.profiler (fp32, 2 "
        "threads, quiet machine: Mish forward + backward 32% of the CPU time, matmuls 30%, the critic phase roughly "
        "45% of the wall time, the model_return metric 12%, 32 Adam steps per update in torch's per-tensor loop): "
        "torch's fused Adam (`pwm_core.train.optim.adam`) and the model_return metric every 10th update instead of "
        "every update (`extract.model_return_every`), alone and together, in `Extractor.step()` (10 updates per timed "
        "block, one metric period) and `Pretrainer.step()`. Old and new paths run in interleaved rounds in the "
        "same process, so the ratios share the machine's load; compare ratios within this table, not its "
        "absolute seconds with section 1 (another process, four extractors alive at once). Mish, the largest "
        "cost, is section 8.",
    ),
    (
        "outofcore",
        "bench_outofcore.py",
        "7. Out-of-core pre-training (a dataset larger than RAM)",
        "pre-training (1M, B=1024, H=16, all 30 MT30 tasks) on a synthetic MT30-shaped dataset of 40 GB on disk, "
        "written once with `EpisodeWriter` (kept in `benchmarks/.outofcore/`), whose windows `pwmctl pretrain` streams "
        "from disk because the rows exceed the RAM budget (`OutOfCoreSampler`; uncompressed 256-row chunks, the "
        "layout `pwmctl data rechunk` makes: one `preadv` per window and array, prefetch), against the same "
        "configuration on an in-RAM subset, each run in its own process: s/step, the time `sample()` blocks a "
        "step, peak RSS, losses; the out-of-core sampler's windows/s alone and while steps run; the two layouts "
        "on the same rows; and the disk's random-read ceiling (`--disk-only`).",
    ),
    (
        "kernels",
        "bench_kernels.py",
        "8. Mish kernels: exact (ATen) vs fast (one exp) vs fused (compiled with LayerNorm)",
        "the Mish kernels (`pwm_core.nn.kernels`), forward + backward alone at an update's shapes and inside "
        "`Extractor.step()` and `Pretrainer.step()`, in interleaved rounds in one process. Mish after every hidden "
        "layer was a third of an update's CPU time (torch.profiler, pre-training 1M B=256 H=16 and extraction 1M "
        "B=64): ATen's kernel evaluates exp, log1p and tanh per element, forward and again backward; the fast one "
        "computes x n / (n + 2), n = e^x (e^x + 2), from one exp and its derivative from the saved e^x and n + 2 "
        "(equal to float32 ulps). An earlier one-exp version that recomputed everything in the backward measured "
        "0.56-0.78x at pre-training shapes; with the second core busy with another process, the fast kernel's "
        "many small ops lose (measured 0.07-0.7x, each op waiting for a busy core): the ratios below are for a "
        "machine to itself. The fused kernels trace the one-exp formula and the LayerNorm with its affine into "
        "`torch.compile` (inductor), one kernel forward and one backward per layer instead of a dozen eager ops "
        "each; ATen's Mish compiled this way was slower than eager (its exp, log1p and tanh per element).",
    ),
    (
        "official",
        "bench_official.py",
        "9. Against the official code (estimated from the side-by-side run)",
        "the extraction update (1M/5M B=64, 5M B=512) and the world-model update (1M B=256, 5M B=1024; H=16, "
        "rho=0.99) as they run now (default recipe: one-exp Mish compiled with LayerNorm, fused Adam; the official "
        "8 critic passes per extraction update on both sides) against the update timed beside the "
        "official code (ATen's Mish, Adam's per-tensor loop, no model_return metric), interleaved in one process; "
        "the published official / project ratio of that side-by-side run (an AMD EPYC with AVX-512) times this "
        "run's baseline / now ratio estimates the speed against the official code on this machine. fp32, plus the "
        "extraction at 5M B=512 under bf16 autocast where the CPU has native bf16 (without it autocast cannot pay "
        "off: section 1).",
    ),
    (
        "collect",
        "bench_collect.py",
        "Extra: data collection throughput (env steps/s)",
        "env steps per second of `pwmctl collect` with a random policy (1 and 2 workers) against the raw env "
        "loop; CPU only, no precision.",
    ),
]
# Execution order: pretrain before the sampler, which compares itself with the newest pretrain line.
RUN_ORDER = [
    "pretrain",
    "sampler",
    "extract",
    "act_latency",
    "eval",
    "collect",
    "overheads",
    "kernels",
    "official",
    "outofcore",
]
NO_DEVICE = {"collect", "overheads", "kernels", "official"}  # scripts without --device (CPU only)


# --- running ----------------------------------------------------------------------------------------


def run_benchmarks(names: list[str], quick: bool, device: str, results: Path) -> dict:
    """Run the named benchmarks one after the other; {name: {"seconds", "returncode", "command"}}."""
    scripts = {name: script for name, script, *_ in BENCHES}
    out = {}
    for name in names:
        args = [str(HERE / scripts[name])]
        if quick:
            args.append("--quick")
        if name not in NO_DEVICE:
            args += ["--device", device]
        if results.resolve() != RESULTS:
            args += ["--results", str(results)]
        shown = shlex.join(["python", f"benchmarks/{scripts[name]}", *args[1:]])
        print(f"\n=== {name}: {shown}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False
        ).returncode
        seconds = time.perf_counter() - t0
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f} s", flush=True)
        out[name] = {"seconds": round(seconds, 1), "returncode": rc, "command": shown}
    return out


# --- reading the results ----------------------------------------------------------------------------


def load_results(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "bench" in rec:
                records.append(rec)
    return records


def newest(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{bench: {device: newest record}} (file order is time order; old lines without a device are cpu)."""
    out: dict[str, dict[str, dict]] = {}
    for rec in records:
        out.setdefault(rec["bench"], {})[rec.get("device", "cpu")] = rec
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _range(values: list[float], fmt=_pct) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def _speedup(rows: list[dict], key: str, by: tuple[str, ...]) -> float | None:
    """Median over settings of rate(bf16) / rate(fp32), rows matched on ``by``."""
    fp32 = {tuple(r[k] for k in by): r[key] for r in rows if r.get("precision") == "fp32"}
    ratios = [
        r[key] / fp32[k]
        for r in rows
        if r.get("precision") == "bf16" and (k := tuple(r[k2] for k2 in by)) in fp32 and fp32[k] > 0
    ]
    return statistics.median(ratios) if ratios else None


def _flop_rate_reading(rec: dict, rate_key: str, share_key: str, share_label: str, unit: str) -> str:
    rows = rec["rows"]
    parts = []
    for prec in ("fp32", "bf16"):
        sel = [r for r in rows if r["precision"] == prec]
        if sel:
            best = max(sel, key=lambda r: r["fraction_of_matmul_peak"])
            parts.append(
                f"in {prec} the {unit} reaches {_range([r['fraction_of_matmul_peak'] for r in sel])} of the "
                f"{prec} matmul peak (best {best['size']} B={best['batch_size']}, "
                f"{best['gflop_per_s']:.0f} GFLOP/s)"
            )
    text = "; ".join(parts) + "."
    text = text[:1].upper() + text[1:]
    sp = _speedup(rows, rate_key, ("size", "batch_size"))
    if sp is not None:
        text += f" bf16 autocast runs at {sp:.2f}x the fp32 speed (median over settings)"
        if rec["matmul_bf16_gflop_per_s"] < rec["matmul_fp32_gflop_per_s"]:
            text += (
                f"; on this device even the plain bf16 matmul ({rec['matmul_bf16_gflop_per_s']:.0f} GFLOP/s) is "
                f"slower than fp32 ({rec['matmul_fp32_gflop_per_s']:.0f}), so autocast cannot pay off here"
            )
        elif rec["matmul_bf16_gflop_per_s"] > 2 * rec["matmul_fp32_gflop_per_s"]:
            ratio = rec["matmul_bf16_gflop_per_s"] / rec["matmul_fp32_gflop_per_s"]
            text += (
                f"; the plain bf16 matmul is {ratio:.1f}x "
                "the fp32 one, so the gap between the two is what the step leaves on the table"
            )
        text += "."
    by_b: dict[int, list[float]] = {}
    for r in rows:
        if r["precision"] == "fp32":
            by_b.setdefault(r["batch_size"], []).append(r["fraction_of_matmul_peak"])
    if len(by_b) > 1:
        small, large = min(by_b), max(by_b)
        s, l_ = statistics.median(by_b[small]), statistics.median(by_b[large])
        text += f" At B={small} the fp32 {unit} reaches a median {_pct(s)} of peak against {_pct(l_)} at B={large}" + (
            ": small batches are bound by per-op overhead (many small ops), large ones by the matmuls."
            if s < 0.8 * l_
            else "."
        )
    shares = [r["flop_share"] for r in rows if "flop_share" in r]
    if shares:
        main_part = max(shares[0], key=shares[0].get)
        vals = [sh.get(share_key, 0.0) for sh in shares]
        text += f" By FLOPs, {share_label} are {_range(vals)} of the {unit}"
        text += "." if main_part == share_key else f" (the largest part: {main_part.replace('_', ' ')})."
    return text


def reading_extract(rec: dict, _: dict) -> str:
    return _flop_rate_reading(
        rec, "it_per_s", "critic_updates", "the 32 critic updates (3-head [400, 200] ensemble)", "iteration"
    )


def reading_pretrain(rec: dict, _: dict) -> str:
    return _flop_rate_reading(
        rec, "steps_per_s", "q_heads", "the Q-head ensemble's forward and backward passes", "update"
    )


def reading_sampler(rec: dict, _: dict) -> str:
    B = rec["batch_size"]
    text = (
        f"From RAM the sampler delivers {rec['ram_windows_per_s']:,.0f} windows/s "
        f"({1000 * B / rec['ram_windows_per_s']:.1f} ms per batch of {B}); straight from Zarr on disk, one batched "
        f"gather per batch gives {rec['zarr_gather_windows_per_s']:,.0f} windows/s and one slice per window "
        f"{rec['zarr_slices_windows_per_s']:,.0f} windows/s "
        f"({rec['zarr_gather_windows_per_s'] / max(rec['zarr_slices_windows_per_s'], 1e-9):.0f}x slower than the "
        "gather: per-call overhead dominates, not bytes)."
    )
    demand = rec.get("training_demand") or []
    if demand:
        fastest = max(demand, key=lambda d: d["consumed_windows_per_s"])
        ok = sum(d["zarr_gather_headroom"] >= 1 for d in demand)
        text += (
            f" The hungriest pre-training setting measured ({fastest['size']} B={fastest['batch_size']} "
            f"{fastest['precision']}) consumes {fastest['consumed_windows_per_s']:,.0f} windows/s, so RAM "
            f"sampling has {fastest['ram_headroom']:,.0f}x headroom (sampling is negligible next to the "
            f"update); the on-disk gather keeps up in {ok} of {len(demand)} settings "
            f"(headroom {_range([d['zarr_gather_headroom'] for d in demand], lambda x: f'{x:,.1f}x')})."
        )
    else:
        text += " (No pretrain line of this device to compare with.)"
    return text


def reading_act_latency(rec: dict, latest: dict) -> str:
    rows = rec["rows"]
    peak = _peak_of(latest, rec.get("device", "cpu"))
    parts = []
    for size, prec in dict.fromkeys((r["size"], r["precision"]) for r in rows):
        sel = {r["actor"]: r for r in rows if r["size"] == size and r["precision"] == prec}
        pol, mppi = sel.get("policy"), sel.get("mppi-wm")
        if pol and mppi:
            gflops = mppi["mflop_per_action"] / mppi["p50_ms"]  # MFLOP/ms = GFLOP/s
            frac = f", {_pct(gflops * 1e9 / peak[prec])} of the matmul peak" if peak and prec in peak else ""
            parts.append(
                f"{size} {prec}: policy {pol['p50_ms']:.2f} ms vs MPPI {mppi['p50_ms']:.0f} ms "
                f"({mppi['p50_ms'] / pol['p50_ms']:,.0f}x; MPPI runs at {gflops:.0f} GFLOP/s{frac})"
            )
    text = "Median latency per action, " + "; ".join(parts) + "." if parts else ""
    fracs = []
    for r in rows:
        if r["actor"].startswith("mppi") and peak and r["precision"] in peak:
            fracs.append(r["mflop_per_action"] / r["p50_ms"] * 1e9 / peak[r["precision"]])
    if fracs and max(fracs) < 0.3:
        ratios = [
            m["mflop_per_action"] / p_["mflop_per_action"]
            for m in rows
            for p_ in rows
            if m["actor"] == "mppi-wm" and p_["actor"] == "policy" and m["size"] == p_["size"]
        ]
        text += (
            f" A plan costs {_range(ratios, lambda x: f'{x:,.0f}')}x the policy's FLOPs, yet runs far from "
            "the matmul peak: "
            "its many small ops (6 iterations x H=3 world-model steps on 512-row batches, Q-heads, top-k, "
            "sampling) are overhead-bound; the policy's call (a few small matmuls) is pure per-op overhead."
        )
    elif fracs:
        text += (
            " MPPI's latency follows its FLOPs (it runs near the matmul peak); the policy's call is per-op overhead."
        )
    pairs = [
        (r, m)
        for r in rows
        for m in rows
        if r["actor"] == "policy"
        and m["actor"] == "policy-modules"
        and (r["size"], r["precision"]) == (m["size"], m["precision"])
    ]
    if pairs:
        text += (
            " The policy's `act` runs its layers as functional ops bound to the parameters (bit-equal to the module "
            f"calls): {_range([m['p50_ms'] / r['p50_ms'] for r, m in pairs], lambda x: f'{x:.2f}')}x faster than "
            "the same computation through `nn.Module` calls (`policy-modules`, same run)."
        )
    slow = [r for r in rows if r["actor"] == "policy" and r["p50_ms"] > 10]
    if slow:
        text += (
            f" A policy call of {_range([r['p50_ms'] for r in slow], lambda x: f'{x:.0f}')} ms for under 1 MFLOP "
            f"({', '.join(sorted({r['precision'] for r in slow}))}) is not compute: torch's intra-op threads "
            "wait for cores that other processes hold; `--threads 1` shows the uncontended latency."
        )
    if any(r["p95_ms"] > 3 * r["p50_ms"] for r in rows):
        text += " p95 several times p50 means some calls were disturbed (busy cores): trust the medians."
    return text


def reading_eval(rec: dict, _: dict) -> str:
    rows = rec["rows"]
    parts = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sel = [r for r in rows if r["task"] == task]
        rnd = {r["workers"]: r for r in sel if r["actor"] == "random"}
        if 1 in rnd and 2 in rnd:
            parts.append(
                f"{task}, random actor: {rnd[1]['steps_per_s']:,.0f} env steps/s with 1 worker, "
                f"{rnd[2]['steps_per_s']:,.0f} with 2 ({rnd[2]['stepping_steps_per_s']:,.0f} while stepping, "
                f"i.e. without the {rnd[2]['wall_s'] - rnd[2]['stepping_s']:.1f} s of env and worker "
                "start-up)"
            )
        pol = [r for r in sel if r["actor"] == "policy"]
        if pol:
            best = max(pol, key=lambda r: r["steps_per_s"])
            parts.append(
                f"{task}, policy: best {best['steps_per_s']:,.0f} env steps/s ({best['precision']}, "
                f"{best['workers']} worker(s)); the actor takes "
                f"{_range([r['actor_share_of_wall'] for r in pol])} of the wall time "
                f"({_range([r['actor_ms_per_call'] for r in pol], lambda x: f'{x:.2f}')} ms per call)"
            )
    text = "; ".join(parts) + "."
    pol = [r["actor_share_of_wall"] for r in rows if r["actor"] == "policy"]
    if pol and statistics.median(pol) > 0.5:
        text += (
            " The policy's calls dominate the wall time: with a few envs per call each lockstep step is one "
            "tiny batch, so per-call overhead (on busy cores also torch's thread synchronisation) outweighs "
            "the physics."
        )
        if any(r["actor_ms_per_call"] > 10 for r in rows if r["actor"] == "policy"):
            text += (
                " Tens of ms per call for a sub-MFLOP network is thread contention (torch's intra-op threads "
                "wait for busy cores, here shared with the env workers); `--threads 1` shows the "
                "uncontended cost."
            )
    else:
        text += " Env stepping, inter-process transfer and start-up dominate; the actor's share is small."
    gains = [
        (r1["steps_per_s"], r2["steps_per_s"])
        for r1 in rows
        for r2 in rows
        if r1["workers"] == 1
        and r2["workers"] == 2
        and (r1["task"], r1["actor"], r1["precision"]) == (r2["task"], r2["actor"], r2["precision"])
    ]
    if gains and sum(b > a for a, b in gains) < len(gains) / 2:
        text += (
            " A second worker process does not pay off at this scale: spawning it (it imports MuJoCo and "
            "builds its envs) and moving observations between processes cost more than the second core gives "
            "back for a few hundred steps per env."
        )
    elif gains:
        text += " A second worker process pays off in most settings."
    return text


def reading_collect(rec: dict, _: dict) -> str:
    rows = {k: v for k, v in rec.items() if k.startswith(("pwmctl collect", "raw env loop"))}
    raw = next((v for k, v in rows.items() if k.startswith("raw")), None)
    coll = {k: v for k, v in rows.items() if k.startswith("pwmctl")}
    if not raw or not coll:
        return ""
    best = max(coll, key=coll.get)
    return (
        f"The raw env loop steps {raw:,.0f} times/s; the best collect setting ({best}) reaches "
        f"{coll[best]:,.0f} ({coll[best] / raw:.2f}x), the rest being writer, padding and process start-up."
    )


def reading_overheads(rec: dict, _: dict) -> str:
    rows = {r["what"]: r["seconds"] for r in rec["rows"]}
    steps = [(w, s["before"] / s["after"]) for w, s in rows.items() if w.startswith(("extract", "pretrain"))]
    if not steps:
        return ""
    text = (
        "Removing both overheads speeds up "
        + ", ".join(f"{w.split(' (')[0]} {r:.2f}x" for w, r in steps)
        + " (before/after, same run)."
    )
    flat = [w.split(" (")[0] for w, r in steps if 0.95 <= r <= 1.05]
    if flat:
        text += (
            f" {', '.join(flat)}: no change beyond the noise of a few rounds (only the fused Adam applies "
            "there, and its optimiser steps are a small part of the update)."
        )
    kernels = [(w, s["before"] / s["after"]) for w, s in rows.items() if not w.startswith(("extract", "pretrain"))]
    if kernels:
        text += " Alone: " + "; ".join(f"{w} {r:.1f}x" for w, r in kernels) + "."
    return text


def reading_outofcore(rec: dict, latest: dict) -> str:
    ooc, ram, s, b = rec["runs"]["outofcore"], rec["runs"]["in_ram_subset"], rec["sampler"], rec["build"]
    B = rec["batch_size"]
    text = (
        f"Streaming {ooc['rows_nbytes'] / 1e9:.1f} GB of rows ({b['bytes_on_disk'] / 1e9:.1f} GB on disk) with "
        f"{rec['ram_gb']:.0f} GB of RAM, pre-training peaks at {ooc['peak_rss_gb']:.1f} GB RSS (in-RAM subset: "
        f"{ram['peak_rss_gb']:.1f} GB) and runs at {rec['s_per_step_ratio']:.2f}x the in-RAM s/step "
        f"({ooc['s_per_step']:.2f} vs {ram['s_per_step']:.2f} s); a step waits "
        f"{1e3 * ooc['sample_wait_s_per_step']:.0f} ms for its batch (the prefetch thread reads the next ones "
        f"while the step runs). The sampler delivers {s['windows_per_s']:,.0f} windows/s alone and "
        f"{ooc['read_windows_per_s_while_training']:,.0f} while steps run, against the "
        f"{B / ooc['s_per_step']:,.0f} windows/s a step consumes here."
    )
    lay = rec.get("sampler_by_layout")
    if lay:
        text += (
            f" On rows in the page cache the uncompressed layout gives {lay['none']['windows_per_s']:,.0f} "
            f"windows/s, {lay['none']['windows_per_s'] / lay['zstd']['windows_per_s']:.1f}x the zstd chunks' "
            f"{lay['zstd']['windows_per_s']:,.0f} (one `preadv` per window and array instead of ~1 chunk decode)."
        )
    disk = latest.get("outofcore_disk", {}).get(rec.get("device", "cpu"))
    if s["windows_per_s"] < 20_000 and disk:
        best = max(v for k, v in disk.items() if k.startswith("reads_per_s_"))
        text += (
            f" Below 20,000 windows/s out of core because the disk is: random {disk['read_bytes']}-byte reads of "
            f"the {disk['dataset_gb']:.0f} GB dataset peak at {best:,.0f}/s on this VM's disk (1 / 4 / 16 threads: "
            f"{disk['reads_per_s_1_threads']:,.0f} / {disk['reads_per_s_4_threads']:,.0f} / "
            f"{disk['reads_per_s_16_threads']:,.0f}, `--disk-only`), and a window is 3 reads, so ~"
            f"{best / 3:,.0f} windows/s is the ceiling the sampler is near; 20,000 windows/s needs ~60,000 random "
            "reads/s (NVMe class) or rows in RAM."
        )
    return text


def reading_kernels(rec: dict, _: dict) -> str:
    rows = {r["what"]: r["seconds"] for r in rec["rows"]}

    def ratios(a: str, b: str, prefixes: tuple[str, ...], cut: str) -> list[tuple[str, float]]:
        return [(w.split(cut)[0], s[a] / s[b]) for w, s in rows.items() if w.startswith(prefixes) and b in s]

    steps, fused = (
        ratios("exact", "fast", ("extract", "pretrain"), " ("),
        ratios("fast", "fused", ("extract", "pretrain"), " ("),
    )
    alone = [(w.removeprefix("Mish fwd+bwd "), r) for w, r in ratios("exact", "fast", ("Mish fwd",), ":")]
    blocks = ratios("fast", "fused", ("Mish + LayerNorm", "LayerNorm + Mish"), ":")
    text = "The fast kernel speeds up " + ", ".join(f"{w} {r:.2f}x" for w, r in steps) if steps else ""
    if alone:
        lead = "; Mish forward + backward alone " if text else "Mish forward + backward alone "
        text += lead + ", ".join(f"{w} {r:.1f}x" for w, r in alone)
    if not text:
        return ""
    text += f" (max |fast - exact| {rec['max_abs_difference']:.1g} on [-60, 60])."
    if fused:
        text += (
            " The fused kernels (Mish and LayerNorm compiled as one kernel per layer) over the fast one: "
            + ", ".join(f"{w} {r:.2f}x" for w, r in fused)
            + "; the blocks alone "
            + ", ".join(f"{w} {r:.1f}x" for w, r in blocks)
            + ". Pre-training and the default extraction recipe run the fused kernels; the official recipe keeps "
            "ATen's."
        )
    else:
        text += " Pre-training and the default extraction recipe run it; the official recipe keeps ATen's."
    return text


def reading_official(rec: dict, _: dict) -> str:
    rows = rec["rows"]
    met = [r for r in rows if r["estimated_vs_official"] >= r["target"]]
    missed = [r for r in rows if r["estimated_vs_official"] < r["target"]]
    text = "Estimated against the official code: " + ", ".join(
        f"{r['what']} {r['estimated_vs_official']:.2f}x (target {r['target']:g}x)" for r in rows
    )
    text += f"; {len(met)} of {len(rows)} targets met."
    compiled = [r for r in rows if "compiled_s" in r]
    if compiled:
        text += (
            " With `--compile` (extraction: the rollout step and the critic loss compiled; pre-training: the loss): "
            + ", ".join(f"{r['what']} {r['estimated_vs_official_compiled']:.2f}x" for r in compiled)
        )
        text += (
            f" ({sum(r['estimated_vs_official_compiled'] >= r['target'] for r in compiled)} of {len(compiled)} "
            "targets met; compiling takes tens of seconds on the first update, outside these timings)."
        )
    fp32 = [r for r in rows if not r["what"].endswith("bf16")]  # a bf16 row's FLOP/s is not against fp32's peak
    if missed and fp32:
        best = max(fp32, key=lambda r: r["fraction_of_fp32_peak"])
        text += (
            f" The fp32 update now runs at {min(r['fraction_of_fp32_peak'] for r in fp32):.0%}-"
            f"{best['fraction_of_fp32_peak']:.0%} of the fp32 matmul peak timed in the same run (best "
            f"{best['what']}): what is left at fp32 is the elementwise work between the small matmuls "
            "(LayerNorm, Mish, Adam) and the matmuls' own efficiency at these shapes."
        )
    return text


READINGS = {
    "extract": reading_extract,
    "pretrain": reading_pretrain,
    "sampler": reading_sampler,
    "act_latency": reading_act_latency,
    "eval": reading_eval,
    "collect": reading_collect,
    "overheads": reading_overheads,
    "kernels": reading_kernels,
    "official": reading_official,
    "outofcore": reading_outofcore,
}


def _peak_of(latest: dict, device: str) -> dict[str, float] | None:
    for bench in ("extract", "pretrain"):
        rec = latest.get(bench, {}).get(device)
        if rec:
            return {"fp32": rec["matmul_fp32_gflop_per_s"] * 1e9, "bf16": rec["matmul_bf16_gflop_per_s"] * 1e9}
    return None


def _table(name: str, rec: dict) -> str:
    script = {n: s for n, s, *_ in BENCHES}[name]
    return importlib.import_module(script[:-3]).table(rec)


# --- the report -------------------------------------------------------------------------------------


def machine_section(m: dict | None) -> list[str]:
    if m is None:
        m = {**machine(), "time": now()}
        when = "described when this page was written: the results file holds no machine line"
    else:
        when = f"recorded at {m.get('time')} when the run started"
    cuda = m.get("cuda")
    rows = [
        (
            "CPU",
            m.get("cpu_model")
            + (
                f" (family {m['cpu_family']}, model {m['cpu_model_number']}, stepping {m.get('cpu_stepping')})"
                if m.get("cpu_family")
                else ""
            ),
        ),
        (
            "cores",
            f"{m.get('logical_cpus')} logical ({m.get('usable_cpus')} usable), torch threads {m.get('torch_threads')}",
        ),
        ("vector / matrix flags", ", ".join(m.get("cpu_flags") or []) or "none of avx2/avx512/amx"),
        ("AMX", "yes" if any(f.startswith("amx") for f in m.get("cpu_flags") or []) else "no"),
        ("RAM", f"{m.get('ram_gib')} GiB"),
        ("load average (1, 5, 15 min) at the start", ", ".join(map(str, m.get("load_average") or []))),
        (
            "GPU",
            "none (CUDA not available)"
            if not cuda
            else f"{cuda['name']} x{cuda['count']}, {cuda['memory_gib']} GiB, CUDA {cuda['version']}, "
            f"sm {cuda['capability']}",
        ),
        (
            "software",
            f"Python {m.get('python')}, torch {m.get('torch')}, numpy {m.get('numpy')}, "
            f"zarr {m.get('zarr')}; {m.get('os')}",
        ),
    ]
    return [
        f"## Machine\n\n{when[:1].upper() + when[1:]}.\n",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]


def _short_command(cmd: str) -> str:
    """The command with a long ``--note`` text elided (the note is quoted above the machine table)."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return cmd
    out, skip = [], False
    for w in words:
        if skip:
            out.append("...")
            skip = False
        elif w == "--note":
            out.append(w)
            skip = True
        elif w.startswith("--note="):
            out.append("--note=...")
        else:
            out.append(w)
    return shlex.join(out)


def render_report(records: list[dict]) -> str:
    latest = newest(records)
    m = next((r for r in reversed(records) if r["bench"] == "machine"), None)
    run = next((r for r in reversed(records) if r["bench"] == "run_all"), None)
    shown = [rec for name, *_ in BENCHES for rec in latest.get(name, {}).values()]
    quick = any(rec.get("quick") for rec in shown)
    out = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py` from `benchmarks/results.jsonl` (newest line per benchmark "
        "and device); `python benchmarks/run_all.py --report-only` rewrites this page from that file without "
        "running anything. `make bench` runs the full suite, `make bench-quick` the smoke settings.",
        "",
    ]
    notes = [n for n in ((m or {}).get("note"), (run or {}).get("note")) if n]
    if quick or notes:
        out.append(
            "> **Read these numbers with care.** "
            + (" ".join(dict.fromkeys(notes)) + " " if notes else "")
            + (
                "Sections marked *quick* come from a smoke run (`--quick`: smallest sizes and batches, 2 "
                "timed iterations): they show that the benchmarks run, not how fast the code is. "
                if quick
                else ""
            )
            + "Compare ratios measured within one run, and re-run `make bench` on an idle machine for "
            "numbers to quote."
        )
        out.append("")
    out += machine_section(m)
    if run:
        per = ", ".join(
            f"{k} {v['seconds']:.0f} s" + ("" if v["returncode"] == 0 else " (FAILED)")
            for k, v in run["benchmarks"].items()
        )
        out += [
            f"Last suite run: `{_short_command(run['command'])}`, {run['time']}, "
            f"{run['total_seconds']:.0f} s in all ({per}).",
            "",
        ]
    for name, script, title, measures in BENCHES:
        out += [f"## {title}", "", f"Measures {measures}", ""]
        recs = latest.get(name, {})
        if not recs:
            out += [f"No result yet: run `python benchmarks/{script}`.", ""]
            continue
        for device, rec in recs.items():
            cmd = rec.get("command") or f"python benchmarks/{script}  (flags not recorded in this older line)"
            flag = " — *quick smoke run*" if rec.get("quick") else ""
            out += [f"### {device}{flag}", "", f"`{cmd}` — {rec.get('time', '?')}, host {rec.get('host', '?')}", ""]
            try:
                out += [_table(name, rec), ""]
            except (KeyError, TypeError, ValueError) as e:
                out += [f"(could not tabulate this line: {type(e).__name__}: {e})", ""]
            try:
                reading = READINGS[name](rec, latest)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
                reading = f"(no reading: {type(e).__name__}: {e})"
            if reading:
                out += [f"**Reading.** {reading}", ""]
    return "\n".join(out).rstrip() + "\n"


def write_report(results: Path = RESULTS, doc: Path = DOC) -> Path:
    """(Re)write ``doc`` from the results file alone; returns its path."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render_report(load_results(results)))
    return doc


def main() -> None:
    names = [n for n, *_ in BENCHES]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (smoke settings)")
    p.add_argument(
        "--device",
        default="auto",
        help="passed to every benchmark that has one (auto: CPU, and the GPU too when CUDA is present)",
    )
    p.add_argument("--only", default=None, help=f"comma list of benchmarks to run (of {','.join(names)})")
    p.add_argument("--report-only", action="store_true", help="run nothing; rewrite the report from the results")
    p.add_argument("--note", default=None, help="a remark on the run for the report, e.g. 'busy machine'")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=DOC)
    args = p.parse_args()
    failed = []
    if not args.report_only:
        chosen = RUN_ORDER if args.only is None else [n for n in RUN_ORDER if n in args.only.split(",")]
        unknown = set((args.only or "").split(",")) - set(names) - {""}
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {', '.join(sorted(unknown))}: choose from {', '.join(names)}")
        cmd = shlex.join(["python", "benchmarks/run_all.py", *sys.argv[1:]])
        append_record(
            args.results, {"bench": "machine", "time": now(), "quick": args.quick, "note": args.note, **machine()}
        )
        t0 = time.perf_counter()
        runs = run_benchmarks(chosen, args.quick, args.device, args.results)
        total = time.perf_counter() - t0
        failed = [n for n, r in runs.items() if r["returncode"] != 0]
        append_record(
            args.results,
            {
                "bench": "run_all",
                "time": now(),
                "quick": args.quick,
                "note": args.note,
                "command": cmd,
                "total_seconds": round(total, 1),
                "failed": failed,
                "benchmarks": runs,
            },
        )
        print(f"\nall benchmarks done in {total:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    path = write_report(args.results, args.doc)
    print(f"wrote {path}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
