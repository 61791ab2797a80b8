"""`pwmctl quickstart`: the whole pipeline on one small task within a time budget, with plots and a summary.

Each stage runs the real command (printed first, so a newcomer sees what to type next time) in a child
process. The training stages get shares of the budget left after collecting, as `--time-limit`s: each
trains until its share is spent (extraction fits its lr schedule to it) and then publishes, so the
recipe uses the budget on any machine. The recipe's settings are in :class:`Recipe`; the learning
benchmark (`benchmarks/bench_learning.py`, docs/learning.md) measures them.
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
MANY = 1_000_000  # --steps for the training stages: their --time-limit ends them


@dataclass
class Recipe:
    """The quickstart's settings (the "default" recipe; "official" changes what the official code does)."""

    task: str = "cartpole-swingup"
    # Random-policy episodes to learn the model from: 100 (collecting takes ~25 s more than 30). On the same
    # pre-training minutes MPPI on the model scores 338 against 184 with 30 episodes (docs/learning-notes.md,
    # session 8).
    episodes: int = 100
    # The random policy's actions: uniform (TD-MPC2's seeding). Pink noise covers more states but its policies
    # scored lower here (cartpole-swingup: 153, ~0 and 43 vs 162, 129 and 75; docs/learning-notes.md).
    noise: str = "uniform"
    size: str = "1M"
    pretrain_batch: int = 256
    # World-model training horizon: TD-MPC2's 3, not PWM's 16. An update costs ~5x less, so the same minutes give
    # ~5x the updates; on cartpole-swingup (same data, same compute: 3000 vs 540 updates; two data seeds) the
    # policy scored 256 / 203 vs 220 / 203 and MPPI on the model 248 / 262 vs 202 / 175 (docs/learning-notes.md).
    # Extraction still imagines 16 steps.
    pretrain_horizon: int = 3
    extract_recipe: str = "default"  # `pwmctl extract --recipe`
    extract_batch: int = 64
    # Critic passes per extraction update (`--set critic_iterations`); None: the extract recipe's (default 2,
    # official 8).
    critic_iterations: int | None = None
    eval_every: int = 50  # policy updates between in-training evaluations (the best one is published)
    # Independent extractions (seeds seed, seed + 1, ...) sharing the extraction's minutes; the one whose best
    # in-training evaluation scored highest is the result (`--extract-seeds`).
    extract_seeds: int = 1
    eval_seeds: int = 10
    pretrain_share: float = 0.62  # of the budget left after collecting; extraction gets 0.33, the eval the rest
    extract_share: float = 0.33
    # Online fine-tuning of the extracted policy and its model (`pwmctl finetune`, `--finetune-share`): rounds of 2
    # episodes collected with the policy, then model + policy updates on them and the random data; the better of
    # the policy before and after (5 evaluation episodes each) is the result. Off by default: with 0.25 of 13
    # minutes (pre-training 0.45, extraction 0.25) the demo scored 229 vs 339 (docs/learning-notes.md).
    finetune_share: float = 0.0
    pretrain_steps: int | None = None  # caps (None: as many as the time allows)
    extract_steps: int | None = None


RECIPES = {
    "default": {},
    "official": {
        "extract_recipe": "official",
        "eval_every": 200,
        "pretrain_horizon": 16,
    },
}


def quickstart(
    ctx: typer.Context,
    task: str = typer.Option("cartpole-swingup", "--task", help="A small task (DMC or custom)."),
    budget_minutes: float = typer.Option(15.0, "--budget-minutes", min=1.0, help="Wall-clock budget for the run."),
    recipe: str = typer.Option(
        "default",
        "--recipe",
        help="default (extraction's default recipe: the best "
        "evaluated policy is published) | official (the official extraction).",
    ),
    noise: str = typer.Option(None, "--noise", help="Random data: uniform | pink \\[default: uniform]."),
    seed: int = typer.Option(0, "--seed", help="Seeds data collection, training and extraction."),
    max_pretrain_steps: int = typer.Option(
        None, "--pretrain-steps", min=1, help="Upper bound on world-model updates \\[default: the time allows]."
    ),
    max_extract_steps: int = typer.Option(
        None, "--extract-steps", min=1, help="Upper bound on policy updates \\[default: the time allows]."
    ),
    episodes: int = typer.Option(None, "--episodes", min=1, help="Random-policy episodes \\[default: 100]."),
    eval_seeds: int = typer.Option(None, "--seeds", min=2, help="Evaluation seeds \\[default: 10]."),
    name: str = typer.Option(None, "--name", help="Name of the artifacts \\[default: quickstart-<task>]."),
    extract_seeds: int = typer.Option(
        None,
        "--extract-seeds",
        min=1,
        max=16,
        help="Extract K policies (seeds seed..seed+K-1) in the extraction's minutes and keep the one with the "
        "best in-training evaluation \\[default: 1].",
    ),
    finetune_share: float = typer.Option(
        0.0,
        "--finetune-share",
        min=0.0,
        max=0.9,
        help="Share of the budget for online fine-tuning after extraction (`pwmctl finetune`); pre-training and "
        "extraction give up theirs in proportion.",
    ),
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
    if recipe not in RECIPES:
        raise fail(f"unknown --recipe {recipe!r}: use {' or '.join(RECIPES)}")
    if noise not in (None, "uniform", "pink"):
        raise fail(f"unknown --noise {noise!r}: use uniform or pink")
    r = Recipe(task=spec.name, **RECIPES[recipe])
    if finetune_share:
        scale = (r.pretrain_share + r.extract_share + r.finetune_share - finetune_share) / (
            r.pretrain_share + r.extract_share
        )
        r.pretrain_share, r.extract_share, r.finetune_share = (
            r.pretrain_share * scale,
            r.extract_share * scale,
            finetune_share,
        )
    set_given(
        r,
        pretrain_steps=max_pretrain_steps,
        extract_steps=max_extract_steps,
        episodes=episodes,
        eval_seeds=eval_seeds,
        noise=noise,
        extract_seeds=extract_seeds,
    )
    name = name or f"quickstart-{spec.name}"
    t0, budget = time.monotonic(), budget_minutes * 60
    stages: dict[str, float] = {}

    def pwmctl(*args: str) -> dict:
        """Run one real command in a child process; its progress goes to our stderr, its JSON back here."""
        line = "pwmctl " + " ".join(args)
        info(st, f"\n$ {line}")
        s = time.monotonic()
        env = {**os.environ, "PWM_HOME": str(st.home)}
        proc = subprocess.run(
            [sys.executable, "-m", "pwmctl", "--format", "json", "-v", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=None if not st.quiet else subprocess.DEVNULL,
            text=True,
        )
        if proc.returncode == 130:
            raise typer.Exit(130)
        if proc.returncode != 0:
            raise fail(f"`{line}` failed (exit {proc.returncode}); see its message above")
        stages[args[0]] = stages.get(args[0], 0.0) + time.monotonic() - s
        return json.loads(proc.stdout)

    data = pwmctl(
        "collect", spec.name, "--episodes", str(r.episodes), "--noise", r.noise, "--seed", str(seed), "--name", name
    )
    left = budget - (time.monotonic() - t0)
    if left < 60:
        info(
            st,
            f"warning: {left:.0f} s of the budget left after collecting; the policy will barely train "
            "(raise --budget-minutes)",
        )
    pre_minutes = max(r.pretrain_share * left / 60, 0.05)  # at least a few updates, however late
    reserve = (1 - r.pretrain_share - r.extract_share - r.finetune_share) * left  # kept for the final evaluation
    wm = pwmctl(
        "pretrain",
        "--tasks",
        spec.name,
        "--data",
        data["artifact"],
        "--size",
        r.size,
        "--batch-size",
        str(r.pretrain_batch),
        "--horizon",
        str(r.pretrain_horizon),
        "--steps",
        str(r.pretrain_steps or MANY),
        "--time-limit",
        f"{pre_minutes:.3f}",
        "--seed",
        str(seed),
        "--set",
        "val_every=100",
        "--set",
        "log_every=10",
        "--name",
        name,
    )
    # Extraction (and fine-tuning) get what pre-training left, less the evaluation's reserve, in their shares'
    # proportion
    rest = budget - (time.monotonic() - t0) - reserve
    ext_end = time.monotonic() + rest * r.extract_share / (r.extract_share + r.finetune_share)
    candidates = []
    for k in range(r.extract_seeds):
        # each gets an equal share of what is left of the extraction's time (an early end passes time on)
        ext_minutes = max((ext_end - time.monotonic()) / (r.extract_seeds - k) / 60, 0.05)
        candidates.append(
            pwmctl(
                "extract",
                spec.name,
                "--wm",
                wm["artifact"],
                "--recipe",
                r.extract_recipe,
                "--steps",
                str(r.extract_steps or MANY),
                "--time-limit",
                f"{ext_minutes:.3f}",
                "--batch-size",
                str(r.extract_batch),
                "--eval-every",
                str(r.eval_every),
                "--eval-episodes",
                "5",
                "--seed",
                str(seed + k),
                *(["--set", f"critic_iterations={r.critic_iterations}"] if r.critic_iterations else []),
                "--name",
                name,
            )
        )
    pol = max(candidates, key=lambda c: c["eval_return"])  # the first of equals
    ft = None
    if r.finetune_share > 0:
        # its share, or what is left if less (the steps caps end the earlier stages early and leave time unused)
        ft_minutes = max(min(budget - (time.monotonic() - t0) - reserve, r.finetune_share * left) / 60, 0.05)
        ft = pwmctl(
            "finetune",
            spec.name,
            "--policy",
            pol["artifact"],
            "--env-steps",
            str(MANY),
            "--time-limit",
            f"{ft_minutes:.3f}",
            "--eval-episodes",
            "5",
            "--seed",
            str(seed),
        )
        if ft["eval_return_after"] >= ft["eval_return_before"]:
            pol = {**pol, "artifact": ft["policy"]}
    ev = pwmctl("eval", pol["artifact"], "random", "--seeds", str(r.eval_seeds))

    elapsed = time.monotonic() - t0
    doc = _publish(
        reg,
        st,
        name,
        r,
        recipe,
        data,
        wm,
        pol,
        candidates,
        ft,
        ev,
        wm["steps"],
        pol["steps"],
        stages,
        elapsed,
        budget_minutes,
    )
    emit(st, doc, lambda: typer.echo(doc["summary_markdown"]))


def _candidates_line(candidates: list[dict]) -> str:
    if len(candidates) < 2:
        return ""
    scores = ", ".join(f"{c['eval_return']:.1f}" for c in candidates)
    best = max(candidates, key=lambda c: c["eval_return"])["artifact"]
    return f"keep the best of {len(candidates)} extractions (best evaluations {scores}: {best}), "


def _finetune_line(ft: dict | None) -> str:
    if ft is None:
        return ""
    kept = "kept" if ft["eval_return_after"] >= ft["eval_return_before"] else "not kept: the extracted one was better"
    return (
        f"fine-tune it online ({ft['env_steps']} env steps, {ft['updates']} updates; 5-episode evaluation "
        f"{ft['eval_return_before']:.1f} -> {ft['eval_return_after']:.1f}, {kept}), "
    )


def _publish(
    reg, st, name, r, recipe, data, wm, pol, candidates, ft, ev, pre_steps, ext_steps, stages, elapsed, budget_minutes
) -> dict:
    from pwmctl.commands.plot import plot_artifact

    summaries = ev["summaries"]
    label = pol["artifact"]
    mine, rnd = summaries[label]["aggregate"]["iqm"], summaries["random"]["aggregate"]["iqm"]
    beats = mine["lo"] > rnd["hi"]
    task_stats = {k: summaries[k]["tasks"][r.task] for k in (label, "random")}
    lines = [
        f"# pwmctl quickstart: {r.task}",
        "",
        f"{elapsed / 60:.1f} minutes (budget {budget_minutes:g}, recipe {recipe}): collect {data['episodes']} "
        f"random episodes ({r.noise} noise), pretrain a {r.size} world model for {pre_steps} updates (batch "
        f"{r.pretrain_batch}, H={r.pretrain_horizon}), extract a policy with {ext_steps} updates (batch "
        f"{r.extract_batch}, extract recipe "
        f"{r.extract_recipe}; published: update {pol.get('selected_update', ext_steps)}), "
        + _candidates_line(candidates)
        + _finetune_line(ft)
        + f"evaluate it and the random policy on {r.eval_seeds} seeds.",
        "",
        "| policy | return (mean ± std) | IQM score | 95% CI |",
        "|---|---:|---:|---|",
        *(
            f"| {k} | {task_stats[k]['return_mean']:.1f} ± {task_stats[k]['return_std']:.1f} | "
            f"{a['value']:.3f} | [{a['lo']:.3f}, {a['hi']:.3f}] |"
            for k, a in ((label, mine), ("random", rnd))
        ),
        "",
        (
            "The extracted policy beats random: the 95% CIs do not overlap."
            if beats
            else "No reliable win over random at this budget: raise --budget-minutes."
        ),
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
            parents=[label, ev["report"]],
            tasks=[r.task],
            config={"quickstart": asdict(r), "recipe": recipe},
            metrics={
                "beats_random": beats,
                "iqm": mine["value"],
                "iqm_random": rnd["value"],
                "minutes": round(elapsed / 60, 2),
                "pretrain_steps": pre_steps,
                "extract_steps": ext_steps,
                "extract_seeds": len(candidates),
                **({"finetune_updates": ft["updates"], "finetune_env_steps": ft["env_steps"]} if ft else {}),
            },
        )
    return {
        "report": artifact.ref,
        "policy": label,
        "world_model": wm["artifact"],
        # every extraction: its policy, the best in-training evaluation, its updates
        "extractions": [
            {"policy": c["artifact"], "eval_return": c["eval_return"], "steps": c["steps"]} for c in candidates
        ],
        "beats_random": beats,
        "iqm": mine,
        "iqm_random": rnd,
        "minutes": elapsed / 60,
        "stages_s": stages,
        "figures": [str(artifact.path / p.name) for p in figures],
        "summary": str(artifact.path / SUMMARY),
        "summary_markdown": text,
    }
