"""`pwmctl quickstart`: the whole pipeline on one small task within a time budget, with plots and a summary.

Each stage runs the real command (printed first, so a newcomer sees what to type next time) in a child
process. Training budgets are set by measurement: after collecting, a few pre-training and extraction
updates are timed on this machine, and the update counts are chosen to fit the budget (capped at the
recipe's maximum, which is what beats random with non-overlapping CIs on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import typer

from pwmctl.console import emit, fail, info, state

SUMMARY = "summary.md"


@dataclass
class Recipe:
    """The quickstart's settings; ``pretrain_steps`` / ``extract_steps`` are maxima that the budget can lower."""

    task: str = "cartpole-swingup"
    episodes: int = 30  # random-policy episodes to learn the model from
    size: str = "1M"
    pretrain_batch: int = 256
    pretrain_steps: int = 600
    extract_batch: int = 64
    extract_steps: int = 300
    eval_seeds: int = 10
    pretrain_share: float = 0.5  # of the budget left after collecting (extraction gets 0.35, eval the rest)
    extract_share: float = 0.35
    min_pretrain_steps: int = 300
    min_extract_steps: int = 150


def quickstart(
    ctx: typer.Context,
    task: str = typer.Option("cartpole-swingup", "--task", help="A small task (DMC or custom)."),
    budget_minutes: float = typer.Option(15.0, "--budget-minutes", min=1.0, help="Wall-clock budget for the run."),
    seed: int = typer.Option(0, "--seed", help="Seeds data collection, training and extraction."),
    max_pretrain_steps: int = typer.Option(None, "--pretrain-steps", min=1,
                                           help="Upper bound on world-model updates [default: 600]."),
    max_extract_steps: int = typer.Option(None, "--extract-steps", min=1,
                                          help="Upper bound on policy updates [default: 300]."),
    episodes: int = typer.Option(None, "--episodes", min=1, help="Random-policy episodes [default: 30]."),
    eval_seeds: int = typer.Option(None, "--seeds", min=2, help="Evaluation seeds [default: 10]."),
) -> None:
    """Collect -> pretrain -> extract -> eval vs random on one small task, within a time budget.

    Prints each command it runs, then the comparison table; writes PNGs (world-model losses, the
    extraction learning curve, returns with CIs) and a markdown summary into a `report` artifact.
    """
    from pwm_core.config import set_given
    from pwm_core.tasks import get_task

    st = state(ctx)
    reg = st.registry()
    spec = get_task(task)
    if spec.suite == "metaworld":
        raise fail(f"{spec.name} is a Meta-World task; the quickstart takes a DMC task (e.g. cartpole-balance)")
    r = Recipe(task=spec.name)
    set_given(r, pretrain_steps=max_pretrain_steps, extract_steps=max_extract_steps, episodes=episodes,
              eval_seeds=eval_seeds)
    name = f"quickstart-{spec.name}"
    t0, budget = time.monotonic(), budget_minutes * 60
    stages: dict[str, float] = {}

    def pwmctl(*args: str) -> dict:
        """Run one real command in a child process; its progress goes to our stderr, its JSON back here."""
        line = "pwmctl " + " ".join(args)
        info(st, f"\n$ {line}")
        s = time.monotonic()
        env = {**os.environ, "PWM_HOME": str(st.home)}
        proc = subprocess.run([sys.executable, "-m", "pwmctl", "--format", "json", "-v", *args], env=env,
                              stdout=subprocess.PIPE, stderr=None if not st.quiet else subprocess.DEVNULL, text=True)
        if proc.returncode == 130:
            raise typer.Exit(130)
        if proc.returncode != 0:
            raise fail(f"`{line}` failed (exit {proc.returncode}); see its message above")
        stages[args[0]] = stages.get(args[0], 0.0) + time.monotonic() - s
        return json.loads(proc.stdout)

    data = pwmctl("collect", spec.name, "--episodes", str(r.episodes), "--seed", str(seed), "--name", name)
    left = budget - (time.monotonic() - t0)
    s_pre, s_ext = _probe(reg, data["artifact"], r, seed)
    pre_steps = int(min(r.pretrain_steps, r.pretrain_share * left / s_pre))
    ext_steps = int(min(r.extract_steps, r.extract_share * left / s_ext))
    info(st, f"measured on this machine: {s_pre:.2f} s per world-model update (batch {r.pretrain_batch}), "
             f"{s_ext:.2f} s per policy update (batch {r.extract_batch}) -> {pre_steps} and {ext_steps} updates "
             f"fit {budget_minutes:g} minutes")
    if pre_steps < r.min_pretrain_steps or ext_steps < r.min_extract_steps:
        info(st, f"warning: below the {r.min_pretrain_steps} / {r.min_extract_steps} updates the policy needs to "
                 "beat random reliably; raise --budget-minutes")
    pre_steps, ext_steps = max(pre_steps, 10), max(ext_steps, 10)
    wm = pwmctl("pretrain", "--tasks", spec.name, "--data", data["artifact"], "--size", r.size, "--batch-size",
                str(r.pretrain_batch), "--steps", str(pre_steps), "--seed", str(seed), "--set",
                f"val_every={max(pre_steps // 5, 1)}", "--set", f"log_every={max(pre_steps // 30, 1)}",
                "--name", name)
    pol = pwmctl("extract", spec.name, "--wm", wm["artifact"], "--steps", str(ext_steps), "--batch-size",
                 str(r.extract_batch), "--eval-every", str(max(ext_steps // 5, 1)), "--eval-episodes", "5",
                 "--seed", str(seed), "--name", name)
    ev = pwmctl("eval", pol["artifact"], "random", "--seeds", str(r.eval_seeds))

    elapsed = time.monotonic() - t0
    doc = _publish(reg, st, name, r, data, wm, pol, ev, pre_steps, ext_steps, stages, elapsed, budget_minutes)
    emit(st, doc, lambda: typer.echo(doc["summary_markdown"]))


def _probe(reg, data_ref: str, r: Recipe, seed: int) -> tuple[float, float]:
    """Seconds per pre-training update and per extraction update of the recipe's shapes, measured here
    (median of 3 after one warm-up) on the collected data."""
    import statistics

    from pwm_core.data import open_dataset
    from pwm_core.tasks import resolve_tasks
    from pwm_core.train.extract import ExtractConfig, Extractor, start_state_sampler
    from pwm_core.train.pretrain import PretrainConfig, Pretrainer, model_config
    from pwmctl.commands.collect import DATASET_DIR

    ds = open_dataset(reg.resolve(data_ref).path / DATASET_DIR)
    task_set = resolve_tasks(r.task)
    cfg = PretrainConfig(size=r.size, batch_size=r.pretrain_batch, seed=seed, device="cpu", val_fraction=0.0)
    trainer = Pretrainer(cfg, model_config(cfg, task_set), [ds], task_set)

    def timed(step) -> float:
        times = []
        for _ in range(4):
            s = time.perf_counter()
            step()
            times.append(time.perf_counter() - s)
        return statistics.median(times[1:])

    s_pre = timed(trainer.step)
    ecfg = ExtractConfig(batch_size=r.extract_batch, seed=seed, device="cpu", steps=r.extract_steps)
    extractor = Extractor(ecfg, trainer.model, 0, start_state_sampler([ds], trainer.model, 0, ecfg))
    return s_pre, timed(extractor.step)


def _publish(reg, st, name, r, data, wm, pol, ev, pre_steps, ext_steps, stages, elapsed, budget_minutes) -> dict:
    from pwmctl.commands.plot import plot_artifact

    summaries = ev["summaries"]
    label = pol["artifact"]
    mine, rnd = summaries[label]["aggregate"]["iqm"], summaries["random"]["aggregate"]["iqm"]
    beats = mine["lo"] > rnd["hi"]
    task_stats = {k: summaries[k]["tasks"][r.task] for k in (label, "random")}
    lines = [
        f"# pwmctl quickstart: {r.task}",
        "",
        f"{elapsed / 60:.1f} minutes (budget {budget_minutes:g}): collect {data['episodes']} random episodes, "
        f"pretrain a {r.size} world model for {pre_steps} updates (batch {r.pretrain_batch}), extract a policy "
        f"with {ext_steps} updates (batch {r.extract_batch}), evaluate it and the random policy on "
        f"{r.eval_seeds} seeds.",
        "",
        "| policy | return (mean ± std) | IQM score | 95% CI |",
        "|---|---:|---:|---|",
        *(f"| {k} | {task_stats[k]['return_mean']:.1f} ± {task_stats[k]['return_std']:.1f} | "
          f"{a['value']:.3f} | [{a['lo']:.3f}, {a['hi']:.3f}] |" for k, a in ((label, mine), ("random", rnd))),
        "",
        ("The extracted policy beats random: the 95% CIs do not overlap." if beats else
         "No reliable win over random at this budget: raise --budget-minutes."),
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {k} | {v:.0f} |" for k, v in stages.items()),
        "",
        f"Artifacts: {data['artifact']} -> {wm['artifact']} -> {label}; evaluation {ev['report']}.",
    ]
    text = "\n".join(lines) + "\n"
    with reg.stage("report", name) as staging:
        figures = [plot_artifact(reg.resolve(ref), staging.path) for ref in (wm["artifact"], label, ev["report"])]
        (staging.path / SUMMARY).write_text(text + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n")
        artifact = staging.publish(
            parents=[label, ev["report"]], tasks=[r.task], config={"quickstart": asdict(r)},
            metrics={"beats_random": beats, "iqm": mine["value"], "iqm_random": rnd["value"],
                     "minutes": round(elapsed / 60, 2), "pretrain_steps": pre_steps, "extract_steps": ext_steps})
    return {"report": artifact.ref, "beats_random": beats, "iqm": mine, "iqm_random": rnd,
            "minutes": elapsed / 60, "stages_s": stages, "figures": [str(artifact.path / p.name) for p in figures],
            "summary": str(artifact.path / SUMMARY), "summary_markdown": text}
