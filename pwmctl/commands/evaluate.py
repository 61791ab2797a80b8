"""`pwmctl eval`: real-environment returns with honest statistics, saved as a report artifact."""

from __future__ import annotations

import json
import shutil
from typing import Any
from pathlib import Path

import typer

from pwmctl.console import emit, fail, info, state

RESULTS = "results.json"
VIDEOS = "videos"  # the report's copies of the --video files
PLANNERS = ("none", "mppi")
PLANNER_PRIORS = ("wm", "policy")


def evaluate_cmd(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(
        None, help="Policy refs, and/or `random` \\[default: the newest policy of every task].", show_default=False
    ),
    seeds: int = typer.Option(10, "--seeds", min=1, help="Env seeds 0..N-1, one deterministic run each."),
    episodes: int = typer.Option(1, "--episodes", min=1, help="Episodes per seed."),
    tasks: str = typer.Option(None, "--tasks", help="Tasks for `random` when no policy names them."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Environment worker processes."),
    video: Path = typer.Option(
        None,
        "--video",
        help="Write an mp4 of the first episode of each (policy, task), "
        "baselines included, into this folder (kept in the report too; needs headless "
        "OpenGL and pwmctl[video]).",
    ),
    name: str = typer.Option(None, "--name", help="Report name \\[default: eval-<first policy>]."),
    reps: int = typer.Option(2000, "--reps", min=100, help="Bootstrap resamples for the CIs."),
    planner: str = typer.Option(
        "none",
        "--planner",
        help="none | mppi: also evaluate each policy's actions "
        "planned by TD-MPC2's MPPI on the policy's parent world model.",
    ),
    planner_prior: str = typer.Option(
        "wm",
        "--planner-prior",
        help="MPPI's prior and value: wm (the world "
        "model's policy prior and Q, TD-MPC2) | policy (the policy's actor and "
        "critics, PWM).",
    ),
    mppi_iterations: int = typer.Option(
        None, "--mppi-iterations", min=1, help="MPPI iterations per action (TD-MPC2: 6)."
    ),
    mppi_samples: int = typer.Option(
        None,
        "--mppi-samples",
        min=1,
        help="Action sequences per iteration (TD-MPC2: 512); elites and prior trajectories keep its 64 and 24 per 512.",
    ),
    mppi_horizon: int = typer.Option(None, "--mppi-horizon", min=1, help="Planning horizon (TD-MPC2: 3)."),
    mppi_overrides: list[str] = typer.Option(
        None, "--mppi-set", help="key=value MPPIConfig override (repeatable), e.g. num_elites=32, amp=bf16, seed=1."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]: where policies and planners run."),
) -> None:
    """Evaluate policies (and the random baseline) with deterministic actions in the real environments.

    Prints per-task returns and success, mean / median / IQM of normalised scores (DMC return/1000,
    Meta-World final-step success) with 95% stratified-bootstrap CIs over runs (seed x episode), and
    the probability of improvement between policies. Raw per-(task, seed, episode) results are kept
    in a report artifact. With --planner mppi each policy is also evaluated as `REF+mppi`: actions
    planned with its world model, with act latency (mean, p50, p95) for both.
    """
    from pwm_core.render import video_problem

    video_note = video_problem() if video is not None else None  # headless OpenGL, chosen before MuJoCo loads
    video_dir = video if video_note is None else None
    from pwm_core.evaluate import compare, evaluate, format_table, random_actor, summarize
    from pwm_core.evaluate.report import format_latency
    from pwm_core.tasks import resolve_tasks
    from pwm_core.train import load_policy
    from pwm_core.train.distributed import resolve_device

    st = state(ctx)
    reg = st.registry()
    if planner not in PLANNERS or planner_prior not in PLANNER_PRIORS:
        raise fail(
            f"--planner must be one of {', '.join(PLANNERS)} and --planner-prior one of "
            f"{', '.join(PLANNER_PRIORS)}, got {planner!r} and {planner_prior!r}"
        )
    mppi_cfg = (
        _mppi_config(mppi_iterations, mppi_samples, mppi_horizon, mppi_overrides or []) if planner == "mppi" else None
    )
    device = resolve_device(device)
    labels = list(dict.fromkeys(refs or []))
    policies: dict[str, list] = {}  # label -> [(artifact, Policy)]
    if not labels:
        newest: dict[str, Any] = {}
        for a in reg.list(kind="policy"):
            for t in a.tasks:
                if t not in newest or a.registered > newest[t].registered:  # local order, not a remote claim
                    newest[t] = a
        if not newest:
            raise fail(
                "no local policy to evaluate: extract one with `pwmctl extract TASK`, or name one "
                "(`pwmctl eval random --tasks walker-walk` evaluates the random baseline)"
            )
        chosen = {a.ref: a for a in newest.values()}
        policies["latest"] = [(a, load_policy(a.path, device)) for _, a in sorted(chosen.items())]
        info(st, "evaluating the newest policy of each task: " + ", ".join(a.ref for a, _ in policies["latest"]))
    for ref in labels:
        if ref == "random":
            continue
        a = reg.resolve(ref, default_kind="policy")
        if a.kind != "policy":
            raise fail(f"{a.ref} is a {a.kind}, not a policy")
        policies[a.ref] = [(a, load_policy(a.path, device))]
    policy_tasks = sorted({t for pairs in policies.values() for a, _ in pairs for t in a.tasks})
    if "random" in labels:
        if not policy_tasks and not tasks:
            raise fail("`random` needs tasks: name a policy too, or pass --tasks walker-walk")
        random_tasks = list(resolve_tasks(tasks).names) if tasks else policy_tasks
    if mppi_cfg is not None and not policies:
        raise fail("--planner mppi plans with a policy's world model: name a policy REF")
    seed_list = list(range(seeds))

    results, latency, world_models = {}, {}, {}  # world_models: policy ref -> its planner's model
    notes = [video_note] if video_note else []
    videos = []  # (Video, the policy ref it shows or None)
    for label, pairs in policies.items():
        for artifact, policy in pairs:
            task = artifact.tasks[0]
            c = policy.config
            actors = {label: lambda obs, specs, p=policy: p.act(obs)}
            if mppi_cfg is not None:
                actors[label + "+mppi"], world_models[artifact.ref] = _planner_actor(
                    reg, artifact, policy, mppi_cfg, planner_prior, device
                )
            ev = evaluate(
                actors,
                [task],
                seed_list,
                episodes,
                obs_dim=c["obs_dim"],
                act_dim=c["task_act_dim"],
                workers=workers,
                video_dir=video_dir,
            )
            for key, episodes_of in ev.by_actor().items():
                results.setdefault(key, []).extend(episodes_of)
                latency[f"{key} ({task})" if len(pairs) > 1 else key] = ev.latency[key].to_dict()
            notes += [ev.video_note] if ev.video_note else []
            videos += [(v, artifact.ref) for v in ev.videos]
    if "random" in labels:
        ts = resolve_tasks(",".join(random_tasks))
        ev = evaluate(
            {"random": random_actor(ts.act_dim, seed=0)},
            list(ts.names),
            seed_list,
            episodes,
            obs_dim=ts.obs_dim,
            act_dim=ts.act_dim,
            workers=workers,
            video_dir=video_dir,
        )
        results["random"] = ev.episodes
        latency["random"] = ev.latency["random"].to_dict()
        notes += [ev.video_note] if ev.video_note else []
        videos += [(v, None) for v in ev.videos]
    summaries = {label: summarize(rs, label, reps=reps) for label, rs in results.items()}
    comparison = compare(results, reps=reps) if len(results) > 1 else None

    parents = [a.ref for pairs in policies.values() for a, _ in pairs]
    planner_doc = (
        None
        if mppi_cfg is None
        else {
            "name": planner,
            "prior": planner_prior,
            "world_models": world_models,
            "device": str(device),
            "config": mppi_cfg.to_dict(),
        }
    )
    doc = {
        "summaries": summaries,
        "comparison": comparison,
        "latency_ms": latency,
        "seeds": seed_list,
        "episodes_per_seed": episodes,
        "video": str(video) if video else None,
        "videos": [_video_entry(v, policy_ref) for v, policy_ref in videos],
        "video_notes": sorted(set(notes)),
        "planner": planner_doc,
    }
    report_name = name or ("eval-" + (parents[0].split("/")[1].split(":")[0] if parents else "random"))
    with reg.stage("report", report_name) as staging:
        for entry in doc["videos"]:  # a copy in the report: the card of a pushed policy shows it
            (staging.path / VIDEOS).mkdir(exist_ok=True)
            shutil.copyfile(entry["written_to"], staging.path / entry["file"])
        raw = {label: [vars(r) for r in rs] for label, rs in results.items()}
        (staging.path / RESULTS).write_text(json.dumps({**doc, "episodes": raw}, indent=1, default=str))
        artifact = staging.publish(
            parents=list(dict.fromkeys([*parents, *world_models.values()])),
            tasks=sorted({r.task for rs in results.values() for r in rs}),
            config={"seeds": seeds, "episodes": episodes, "reps": reps, "planner": planner_doc},
            metrics={f"{label}/iqm": s["aggregate"]["iqm"]["value"] for label, s in summaries.items()},
        )
    doc["report"] = artifact.ref

    def human() -> None:
        for s in summaries.values():
            typer.echo(format_table(s) + "\n")
        if comparison:
            typer.echo(format_table(comparison) + "\n")
        typer.echo(f"act latency ({device}):\n" + format_latency(latency) + "\n")
        for entry in doc["videos"]:
            typer.echo(
                f"video of {entry['label']} on {entry['task']} (seed {entry['seed']}, return "
                f"{entry['return']:.1f}): {entry['written_to']}"
            )
        if doc["videos"]:
            typer.echo(f"videos: copies in {artifact.ref} ({VIDEOS}/), shown by its policies' Hub cards")
        for note in doc["video_notes"]:
            typer.echo(f"video: {note}")
        typer.echo(f"report: {artifact.ref}")

    emit(st, doc, human)


def _video_entry(video, policy_ref: str | None) -> dict[str, Any]:
    """A video as results.json lists it: who and what it shows, its file in the report, where it was written."""
    actor = "random" if policy_ref is None else "mppi" if video.actor.endswith("+mppi") else "policy"
    return {
        "label": video.actor,
        "actor": actor,
        "policy": policy_ref,
        "task": video.task,
        "seed": video.seed,
        "return": video.ret,
        "file": f"{VIDEOS}/{Path(video.path).name}",
        "written_to": video.path,
    }


def _mppi_config(iterations: int | None, samples: int | None, horizon: int | None, overrides: list[str]):
    """MPPIConfig: TD-MPC2's defaults -> --mppi-samples (elites and prior trajectories scaled) -> --mppi-set
    -> --mppi-iterations / --mppi-horizon."""
    from pwm_core.config import apply_overrides
    from pwm_core.plan import MPPIConfig, validate_config

    cfg = MPPIConfig() if samples is None else MPPIConfig().with_samples(samples)
    apply_overrides(cfg, overrides)
    cfg.iterations = cfg.iterations if iterations is None else iterations
    cfg.horizon = cfg.horizon if horizon is None else horizon
    validate_config(cfg)
    return cfg


def _planner_actor(reg, artifact, policy, cfg, prior: str, device):
    """An MPPI actor on the world model ``artifact`` (a policy) names as parent, and that model's ref."""
    from pwm_core.nn import load_world_model
    from pwm_core.plan import MPPI, PlannerActor, PolicyPrior

    refs = [p for p in artifact.parents if p.startswith("worldmodel/")]
    if not refs:
        raise fail(
            f"{artifact.ref} names no parent world model to plan with (MPPI needs the model it was extracted from)"
        )
    world_model = load_world_model(reg.resolve(refs[0]).path, device)
    planner = MPPI(world_model, cfg, PolicyPrior.from_policy(world_model, policy) if prior == "policy" else None)
    return PlannerActor(planner, world_model.cfg.task_names, policy.config["task_act_dim"]), refs[0]
