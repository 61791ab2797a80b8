"""`pwmctl eval`: real-environment returns with honest statistics, saved as a report artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from pwmctl.console import emit, fail, info, state

RESULTS = "results.json"


def evaluate_cmd(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(None, help="Policy refs, and/or `random` [default: the newest policy of "
                                     "every task].", show_default=False),
    seeds: int = typer.Option(10, "--seeds", min=1, help="Env seeds 0..N-1, one deterministic run each."),
    episodes: int = typer.Option(1, "--episodes", min=1, help="Episodes per seed."),
    tasks: str = typer.Option(None, "--tasks", help="Tasks for `random` when no policy names them."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Environment worker processes."),
    video: Path = typer.Option(None, "--video", help="Write an mp4 of the first episode per task here."),
    name: str = typer.Option(None, "--name", help="Report name [default: eval-<first policy>]."),
    reps: int = typer.Option(2000, "--reps", min=100, help="Bootstrap resamples for the CIs."),
) -> None:
    """Evaluate policies (and the random baseline) with deterministic actions in the real environments.

    Prints per-task returns and success, mean / median / IQM of normalised scores (DMC return/1000,
    Meta-World final-step success) with 95% stratified-bootstrap CIs over runs (seed x episode), and
    the probability of improvement between policies. Raw per-(task, seed, episode) results are kept
    in a report artifact.
    """
    if video is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")  # before any MuJoCo import: headless rendering
    from pwm_core.evaluate import compare, evaluate, format_table, random_actor, summarize
    from pwm_core.tasks import resolve_tasks
    from pwm_core.train import load_policy

    st = state(ctx)
    reg = st.registry()
    labels = list(dict.fromkeys(refs or []))
    policies: dict[str, list] = {}  # label -> [(artifact, Policy)]
    if not labels:
        newest: dict[str, object] = {}
        for a in reg.list(kind="policy"):
            for t in a.tasks:
                if t not in newest or a.created > newest[t].created:
                    newest[t] = a
        if not newest:
            raise fail("no local policy to evaluate: extract one with `pwmctl extract TASK`, or name one "
                       "(`pwmctl eval random --tasks walker-walk` evaluates the random baseline)")
        chosen = {a.ref: a for a in newest.values()}
        policies["latest"] = [(a, load_policy(a.path)) for _, a in sorted(chosen.items())]
        info(st, "evaluating the newest policy of each task: " + ", ".join(a.ref for a, _ in policies["latest"]))
    for ref in labels:
        if ref == "random":
            continue
        a = reg.resolve(ref, default_kind="policy")
        if a.kind != "policy":
            raise fail(f"{a.ref} is a {a.kind}, not a policy")
        policies[a.ref] = [(a, load_policy(a.path))]
    policy_tasks = sorted({t for pairs in policies.values() for a, _ in pairs for t in a.tasks})
    if "random" in labels:
        if not policy_tasks and not tasks:
            raise fail("`random` needs tasks: name a policy too, or pass --tasks walker-walk")
        random_tasks = list(resolve_tasks(tasks).names) if tasks else policy_tasks
    seed_list = list(range(seeds))

    results, latency, notes = {}, {}, []
    for label, pairs in policies.items():
        episodes_out = []
        for artifact, policy in pairs:
            task = artifact.tasks[0]
            c = policy.config
            ev = evaluate({label: lambda obs, specs, p=policy: p.act(obs)}, [task], seed_list, episodes,
                          obs_dim=c["obs_dim"], act_dim=c["task_act_dim"], workers=workers,
                          video_dir=video)
            episodes_out += ev.episodes
            latency[f"{label} ({task})" if len(pairs) > 1 else label] = ev.latency[label].to_dict()
            if ev.video_note:
                notes.append(ev.video_note)
        results[label] = episodes_out
    if "random" in labels:
        ts = resolve_tasks(",".join(random_tasks))
        ev = evaluate({"random": random_actor(ts.act_dim, seed=0)}, list(ts.names), seed_list, episodes,
                      obs_dim=ts.obs_dim, act_dim=ts.act_dim, workers=workers)
        results["random"] = ev.episodes
        latency["random"] = ev.latency["random"].to_dict()
    summaries = {label: summarize(rs, label, reps=reps) for label, rs in results.items()}
    comparison = compare(results, reps=reps) if len(results) > 1 else None

    parents = [a.ref for pairs in policies.values() for a, _ in pairs]
    doc = {"summaries": summaries, "comparison": comparison, "latency_ms": latency,
           "seeds": seed_list, "episodes_per_seed": episodes, "video": str(video) if video else None,
           "video_notes": sorted(set(notes))}
    report_name = name or ("eval-" + (parents[0].split("/")[1].split(":")[0] if parents else "random"))
    with reg.stage("report", report_name) as staging:
        raw = {label: [vars(r) for r in rs] for label, rs in results.items()}
        (staging.path / RESULTS).write_text(json.dumps({**doc, "episodes": raw}, indent=1, default=str))
        artifact = staging.publish(parents=parents, tasks=sorted({r.task for rs in results.values() for r in rs}),
                                   config={"seeds": seeds, "episodes": episodes, "reps": reps},
                                   metrics={f"{label}/iqm": s["aggregate"]["iqm"]["value"]
                                            for label, s in summaries.items()})
    doc["report"] = artifact.ref

    def human() -> None:
        for s in summaries.values():
            typer.echo(format_table(s) + "\n")
        if comparison:
            typer.echo(format_table(comparison) + "\n")
        typer.echo("act latency: " + ", ".join(f"{k} {v['ms_per_call']:.2f} ms/call" for k, v in latency.items()))
        for note in doc["video_notes"]:
            typer.echo(f"video: {note}")
        typer.echo(f"report: {artifact.ref}")

    emit(st, doc, human)
