"""The learning benchmark: what a user gets from the public commands within a wall-clock budget on this machine.

Two protocols (issue 13), each run only through `pwmctl` commands in a registry of its own:

- **P1, one task from nothing**: ``pwmctl quickstart --task T --budget-minutes 15 --recipe R`` (collection,
  pre-training, extraction inside the budget), then ``pwmctl eval POLICY random --planner mppi`` with a
  CPU-cheap MPPI on the same world model (2 iterations, 64 samples), 10 seeds. ``--finetune-share F`` gives F of
  the budget to online fine-tuning, ``--extract-seeds K`` splits the extraction minutes over K seeds and keeps the
  best (the quickstart's options; each a job and a table row of its own).
- **P2, one world model, many policies** (PWM's own setting): ``collect`` the four tasks, ``pretrain`` one
  multi-task world model with ``--time-limit`` (30 minutes in all with the collection), ``extract`` each task
  with a 5-minute ``--time-limit``, then evaluate every policy, its MPPI and random on each task. Episodes per
  task, model size, batch sizes, horizons and critic passes are the quickstart's recipe (``pwmctl quickstart
  --recipe R``).

Every job appends one JSON line to ``benchmarks/results.jsonl`` (``"bench": "learning"``) with the IQM, 95% CI
and mean return of each method, P(PWM > random) and P(PWM > MPPI), the act latencies and the minutes. Jobs are
resumable: a job already recorded for this commit is skipped, and a killed job continues at its next stage
(stage outputs are kept in ``--home``). ``--report`` rewrites docs/learning.md (tables + a figure) from the
newest record of each job. ``make bench-learn`` runs both protocols and the report (about 2 hours on 2 cores;
evaluation time comes on top of the training budgets).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import RESULTS, append_record, machine, now

from pwm_core.evaluate import stats

from pwmctl.commands.quickstart import RECIPES, Recipe
from registry import Registry

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "learning.md"
FIGURE = ROOT / "docs" / "img" / "learning.png"
P1_TASKS = ("cartpole-swingup", "finger-spin", "cup-catch", "cheetah-run")
P2_TASKS = ("cartpole-balance", "finger-spin", "cup-catch", "cheetah-run")  # action sizes 1, 2, 2, 6
MPPI_CHEAP = ["--mppi-iterations", "2", "--mppi-samples", "64"]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Job:
    """One benchmark cell in its own registry; ``stage(name, args)`` runs `pwmctl ARGS` once (its JSON output
    is kept, so a re-run after a kill skips the stages already done)."""

    def __init__(self, home: Path, key: dict) -> None:
        self.key = key
        self.home = home / "-".join(str(v) for v in key.values()).replace(",", "_")
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_path = self.home / "stages.json"
        self.stages = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def stage(self, name: str, *args: str) -> dict:
        if name in self.stages:
            return self.stages[name]["out"]
        line = "pwmctl " + " ".join(args)
        print(f"[{self.home.name}] $ {line}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        env = {**os.environ, "PWM_HOME": str(self.home / "registry")}
        proc = subprocess.run(
            [sys.executable, "-m", "pwmctl", "--format", "json", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"`{line}` failed (exit {proc.returncode}); re-run to continue from this stage")
        out = json.loads(proc.stdout)
        self.stages[name] = {"out": out, "seconds": round(time.monotonic() - t0, 1), "command": line}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stages, indent=1))
        os.replace(tmp, self.state_path)
        return out

    def seconds(self, *names: str) -> float:
        return sum(self.stages[n]["seconds"] for n in names if n in self.stages)


def summarise(ev: dict, policy: str, task: str) -> dict:
    """Per-method IQM, CI, mean return on ``task`` from an `eval ... random --planner mppi` document."""
    labels = {"pwm": policy, "mppi": f"{policy}+mppi", "random": "random"}
    out: dict = {}
    for method, label in labels.items():
        s = ev["summaries"][label]
        t = s["tasks"][task]
        out[method] = {
            "iqm": s["aggregate"]["iqm"],
            "return_mean": t["return_mean"],
            "return_std": t["return_std"],
            "n": t["n"],
        }
    pairs = {(p["x"], p["y"]): p for p in ev["comparison"]["pairs"]}
    for other, label in (("random", "random"), ("mppi", f"{policy}+mppi")):
        p, q = pairs.get((policy, label)), pairs.get((label, policy))
        out[f"p_pwm_gt_{other}"] = (
            {"poi": p["poi"], "lo": p["lo"], "hi": p["hi"]}
            if p
            else {"poi": 1 - q["poi"], "lo": 1 - q["hi"], "hi": 1 - q["lo"]}
            if q
            else None
        )
    out["latency_ms"] = ev.get("latency_ms", {})
    return out


def done_keys() -> set[str]:
    keys = set()
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("bench") == "learning":
                keys.add(json.dumps(r["key"], sort_keys=True))
    return keys


def eval_args(policy: str, seeds: int) -> list[str]:
    return ["eval", policy, "random", "--planner", "mppi", *MPPI_CHEAP, "--seeds", str(seeds)]


def run_p1(args, task: str, commit: str) -> None:
    key = {
        "protocol": "P1",
        "task": task,
        "recipe": args.recipe,
        "minutes": args.p1_minutes,
        "seed": args.seed,
        "commit": commit,
    }
    if args.finetune_share:  # a key of its own only when on: older records stay the same cells
        key["finetune_share"] = args.finetune_share
    if args.extract_seeds > 1:
        key["extract_seeds"] = args.extract_seeds
    if json.dumps(key, sort_keys=True) in done_keys() and not args.force:
        print(f"skip {key} (recorded)", file=sys.stderr)
        return
    job = Job(args.home, key)
    qs = job.stage(
        "quickstart",
        "quickstart",
        "--task",
        task,
        "--budget-minutes",
        str(args.p1_minutes),
        "--recipe",
        args.recipe,
        "--seed",
        str(args.seed),
        "--seeds",
        "2",
        "--name",
        "p1",
        *(["--finetune-share", str(args.finetune_share)] if args.finetune_share else []),
        *(["--extract-seeds", str(args.extract_seeds)] if args.extract_seeds > 1 else []),
    )
    policy = qs.get("policy", "policy/p1:v1")  # the fine-tuned one where --finetune-share kept it, the best of K
    ev = job.stage("eval", *eval_args(policy, args.seeds))
    record = {
        "bench": "learning",
        "key": key,
        "time": now(),
        "protocol": "P1",
        "tasks": [task],
        "recipe": args.recipe
        + (f" + finetune {args.finetune_share:g}" if args.finetune_share else "")
        + (f" + best of {args.extract_seeds} extractions" if args.extract_seeds > 1 else ""),
        "extractions": qs.get("extractions"),
        "minutes": round(qs["minutes"], 2),
        "stages_s": qs["stages_s"],
        "machine": machine(),
        "results": {task: summarise(ev, policy, task)},
        "report": ev["report"],
    }
    append_record(RESULTS, record)
    print(f"P1 {task}: {json.dumps(record['results'][task]['pwm'])}", file=sys.stderr)


def run_p2(args, commit: str) -> None:
    tasks = ",".join(args.p2_tasks)
    key = {
        "protocol": "P2",
        "task": tasks,
        "recipe": args.recipe,
        "minutes": args.p2_wm_minutes,
        "policy_minutes": args.p2_policy_minutes,
        "seed": args.seed,
        "commit": commit,
    }
    if json.dumps(key, sort_keys=True) in done_keys() and not args.force:
        print(f"skip {key} (recorded)", file=sys.stderr)
        return
    job = Job(args.home, key)
    # The quickstart's recipe for data and world model (uniform noise, 1M, batch 256; H=3 by default, 16 official).
    r = Recipe(**RECIPES[args.recipe])
    t0 = time.monotonic()
    job.stage(
        "collect",
        "collect",
        tasks,
        "--episodes",
        str(args.p2_episodes or r.episodes),
        "--noise",
        r.noise,
        "--seed",
        str(args.seed),
        "--name",
        "p2",
        "--workers",
        "2",
    )
    left = args.p2_wm_minutes - job.seconds("collect") / 60
    wm = job.stage(
        "pretrain",
        "pretrain",
        "--tasks",
        tasks,
        "--data",
        "dataset/p2",
        "--size",
        r.size,
        "--batch-size",
        str(r.pretrain_batch),
        "--horizon",
        str(r.pretrain_horizon),
        "--steps",
        "1000000",
        "--time-limit",
        f"{left:.3f}",
        "--seed",
        str(args.seed),
        "--set",
        "val_every=200",
        "--set",
        "log_every=20",
        "--name",
        "p2",
    )
    results, policies, reports = {}, {}, {}
    for task in args.p2_tasks:
        pol = job.stage(
            f"extract {task}",
            "extract",
            task,
            "--wm",
            wm["artifact"],
            "--recipe",
            r.extract_recipe,
            "--steps",
            "1000000",
            "--time-limit",
            str(args.p2_policy_minutes),
            "--batch-size",
            str(r.extract_batch),
            "--eval-every",
            str(r.eval_every),
            "--eval-episodes",
            "5",
            "--seed",
            str(args.seed),
            *(["--set", f"critic_iterations={r.critic_iterations}"] if r.critic_iterations else []),
        )
        policies[task] = pol["artifact"]
        ev = job.stage(f"eval {task}", *eval_args(pol["artifact"], args.seeds))
        results[task] = summarise(ev, pol["artifact"], task)
        reports[task] = ev["report"]
    record = {
        "bench": "learning",
        "key": key,
        "time": now(),
        "protocol": "P2",
        "tasks": list(args.p2_tasks),
        "recipe": args.recipe,
        "world_model": wm["artifact"],
        "wm_steps": wm["steps"],
        "minutes": round(job.seconds("collect", "pretrain", *[f"extract {t}" for t in args.p2_tasks]) / 60, 2),
        "stages_s": {k: v["seconds"] for k, v in job.stages.items()},
        "machine": machine(),
        "results": results,
        "aggregate": p2_aggregate(job.home / "registry", reports, policies),
        "policies": policies,
        "reports": reports,
        "elapsed_min": round((time.monotonic() - t0) / 60, 1),
    }
    append_record(RESULTS, record)


def p2_aggregate(registry: Path, reports: dict[str, str], policies: dict[str, str]) -> dict:
    """Across P2's tasks (each policy evaluated on its own task): per method, the IQM [95% CI] of the (seeds,
    tasks) normalised score matrix, and P(PWM > MPPI), P(PWM > random) averaged over the tasks, with CIs
    (stratified bootstrap over seeds, as `pwmctl eval`), from the per-episode scores in each eval report."""
    columns: dict[str, list[list[float]]] = {"pwm": [], "mppi": [], "random": []}
    reg = Registry(registry)
    for task, ref in reports.items():
        doc = json.loads((reg.resolve(ref).path / "results.json").read_text())
        labels = {"pwm": policies[task], "mppi": f"{policies[task]}+mppi", "random": "random"}
        for method, label in labels.items():
            eps = [e for e in doc["episodes"][label] if e["task"] == task]
            columns[method].append([e["score"] for e in sorted(eps, key=lambda e: (e["seed"], e["episode"]))])
    scores = {m: np.array(c, dtype=np.float64).T for m, c in columns.items()}  # (runs, tasks)
    out: dict = {"tasks": list(reports)}
    for method, x in scores.items():
        lo, hi = stats.stratified_bootstrap_ci(x)
        out[method] = {"iqm": {"value": stats.iqm(x), "lo": lo, "hi": hi}}
    for other in ("random", "mppi"):
        lo, hi = stats.poi_ci(scores["pwm"], scores[other])
        poi = stats.probability_of_improvement(scores["pwm"], scores[other])
        out[f"p_pwm_gt_{other}"] = {"poi": poi, "lo": lo, "hi": hi}
    return out


# ------------------------------------------------------------------------------------------ report
def newest_records() -> list[dict]:
    """The newest learning record of each (protocol, tasks, recipe, budget, training seed) cell."""
    rows: dict[str, dict] = {}
    for line in RESULTS.read_text().splitlines() if RESULTS.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("bench") != "learning":
            continue
        k = {k: v for k, v in r["key"].items() if k != "commit"}
        rows[json.dumps(k, sort_keys=True)] = r
    return list(rows.values())


def _ci(s: dict) -> str:
    i = s["iqm"]
    return f"{i['value']:.3f} [{i['lo']:.3f}, {i['hi']:.3f}]"


def _poi(p: dict | None) -> str:
    if not p:
        return "-"
    return f"{p['poi']:.2f}" + (f" [{p['lo']:.2f}, {p['hi']:.2f}]" if p.get("lo") is not None else "")


def _latency(res: dict, which: str) -> str:
    lat = res["latency_ms"]
    key = next((k for k in lat if (k.endswith("+mppi") if which == "mppi" else not k.endswith("+mppi"))), None)
    return f"{lat[key]['p50_ms_per_call']:.2f}" if key and "p50_ms_per_call" in lat[key] else "-"


def report() -> None:
    records = sorted(newest_records(), key=lambda r: (r["protocol"], r["recipe"], r["tasks"], r["key"].get("seed", 0)))
    lines = [
        "# Learning benchmark",
        "",
        "What a user gets from the public commands within a wall-clock budget, measured by "
        "`python benchmarks/bench_learning.py` (`make bench-learn`; resumable; every record is a line of "
        "`benchmarks/results.jsonl`). Scores are normalised (DMC return / 1000); IQM with 95% "
        "stratified-bootstrap CIs over 10 evaluation seeds; P(X > Y) is the probability of improvement. "
        "MPPI is TD-MPC2's planner on "
        "the same world model at a CPU-cheap setting (2 iterations x 64 samples, horizon 3, the world model's "
        "policy prior); latencies are p50 per batched act call (10 envs).",
        "",
    ]
    for proto, title in (
        ("P1", "P1: one task from nothing (collection + pre-training + extraction in the budget)"),
        ("P2", "P2: one world model for four tasks, a policy per task"),
    ):
        rows = [r for r in records if r["protocol"] == proto]
        if not rows:
            continue
        lines += [
            f"## {title}",
            "",
            "| recipe | seed | task | budget (min) | PWM IQM [95% CI] | MPPI IQM | random IQM | P(PWM > random) | "
            "P(PWM > MPPI) | PWM / MPPI act ms | commit |",
            "|---|---:|---|---:|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            seed = r["key"].get("seed", 0)  # the training seed; each seed is a row of its own
            for task, res in r["results"].items():
                lines.append(
                    f"| {r['recipe']} | {seed} | {task} | {r['minutes']:.1f} | {_ci(res['pwm'])} | {_ci(res['mppi'])} "
                    f"| {_ci(res['random'])} | {_poi(res['p_pwm_gt_random'])} | {_poi(res['p_pwm_gt_mppi'])} "
                    f"| {_latency(res, 'pwm')} / {_latency(res, 'mppi')} | {r['key']['commit']} |"
                )
            agg = r.get("aggregate")
            if agg:  # P2: the (seeds, tasks) matrix over all its tasks
                lines.append(
                    f"| {r['recipe']} | {seed} | **all {len(agg['tasks'])} tasks** | {r['minutes']:.1f} "
                    f"| **{_ci(agg['pwm'])}** "
                    f"| {_ci(agg['mppi'])} | {_ci(agg['random'])} | {_poi(agg['p_pwm_gt_random'])} "
                    f"| {_poi(agg['p_pwm_gt_mppi'])} | - | {r['key']['commit']} |"
                )
        lines.append("")
    if records:
        m = records[-1]["machine"]
        lines += [f"Machine of the newest record: {m['cpu_model']}, {m['usable_cpus']} CPUs, torch {m['torch']}.", ""]
    _figure(records)
    if FIGURE.exists():
        lines += [f"![learning benchmark](img/{FIGURE.name})", ""]
    text = "\n".join(lines)
    notes = ROOT / "docs" / "learning-notes.md"
    if notes.exists():  # hand-written findings (what limits the targets, with the evidence) follow the tables
        text += "\n" + notes.read_text()
    DOC.write_text(text)
    print(f"wrote {DOC}", file=sys.stderr)


def _figure(records: list[dict]) -> None:
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [
        (
            f"{r['protocol']} {r['recipe']}" + (f" s{r['key']['seed']}" if r["key"].get("seed") else "") + f"\n{task}",
            res,
        )
        for r in records
        for task, res in r["results"].items()
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cells)), 3.6))
    for j, (method, color) in enumerate((("pwm", "C0"), ("mppi", "C1"), ("random", "C7"))):
        xs = [i + (j - 1) * 0.27 for i in range(len(cells))]
        vals = [c[1][method]["iqm"] for _, c in enumerate(cells)]
        ax.bar(
            xs,
            [v["value"] for v in vals],
            0.27,
            color=color,
            label=method,
            yerr=[[v["value"] - v["lo"] for v in vals], [v["hi"] - v["value"] for v in vals]],
            capsize=2,
        )
    ax.set_xticks(range(len(cells)), [c[0] for c in cells], fontsize=7)
    ax.set(ylabel="IQM normalised score", title="learning benchmark (95% CIs)")
    ax.legend(fontsize=8)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default="p1,p2", help="p1, p2 or p1,p2")
    ap.add_argument("--tasks", default=",".join(P1_TASKS), help="P1 tasks (comma-separated)")
    ap.add_argument("--p2-tasks", default=",".join(P2_TASKS))
    ap.add_argument("--recipe", default="default", choices=("default", "official"))
    ap.add_argument("--p1-minutes", type=float, default=15.0)
    ap.add_argument(
        "--finetune-share", type=float, default=0.0, help="P1: share of the budget for online fine-tuning (quickstart)"
    )
    ap.add_argument(
        "--extract-seeds", type=int, default=1, help="P1: extractions sharing the extraction minutes, best kept"
    )
    ap.add_argument("--p2-wm-minutes", type=float, default=30.0)
    ap.add_argument("--p2-policy-minutes", type=float, default=5.0)
    ap.add_argument(
        "--p2-episodes", type=int, default=None, help="episodes per task collected for P2 (default: the recipe's)"
    )
    ap.add_argument("--seeds", type=int, default=10, help="evaluation seeds")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--home", type=Path, default=ROOT / "benchmarks" / ".learning", help="registries of the jobs")
    ap.add_argument("--force", action="store_true", help="re-run jobs already recorded for this commit")
    ap.add_argument("--report", action="store_true", help="only rewrite docs/learning.md from the records")
    args = ap.parse_args()
    args.p2_tasks = tuple(t for t in args.p2_tasks.split(",") if t)
    if not args.report:
        commit = git_commit()
        protocols = {p.strip().lower() for p in args.protocol.split(",")}
        if "p1" in protocols:
            for task in (t for t in args.tasks.split(",") if t):
                run_p1(args, task, commit)
        if "p2" in protocols:
            run_p2(args, commit)
    report()


if __name__ == "__main__":
    main()
