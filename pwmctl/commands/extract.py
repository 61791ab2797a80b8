"""`pwmctl extract`: PWM policy extraction for one task from a frozen world model."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from registry.refs import check_name

from pwmctl.commands.collect import DATASET_DIR
from pwmctl.console import Progress, ProgressCallback, emit, fail, info, state
from pwmctl.runs import LOGGER_HELP, METRICS, TIME_LIMIT_HELP, check_loggers, read_jsonl, read_plan, time_budget
from pwmctl.resolve import print_dry_run, resolve_config
from pwmctl.runs import refuse_if_published, training_callbacks, write_plan

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"  # the best evaluated policy state so far (recipe keep=best)
EVAL_SEED_OFFSET = 10_000  # in-training evaluations use other env seeds than `pwmctl eval`


def extract(
    ctx: typer.Context,
    task: str = typer.Argument(None, help="The task to extract a policy for, e.g. walker-walk.", show_default=False),
    tasks: str = typer.Option(
        None,
        "--tasks",
        help="Several tasks, one policy each: a set (mt30) or T1,T2. Under torchrun the ranks split them.",
    ),
    wm: str = typer.Option(None, "--wm", help="World-model ref \\[default: the newest one that has the task]."),
    data: list[str] = typer.Option(
        None, "--data", help="Dataset ref(s) for start states \\[default: the world model's parent datasets]."
    ),
    recipe: str = typer.Option(
        "default",
        "--recipe",
        help="default (what measures best, docs/learning.md) | "
        "official (the official multitask code exactly, quirks included).",
    ),
    steps: int = typer.Option(None, "--steps", min=1, help="Policy updates \\[default: 10000]."),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, help="Start states per update [default recipe: 64; official: 512]."
    ),
    critic_target: str = typer.Option(
        None, "--critic-target", help="one-step (the code's multitask path) | td-lambda (the paper)."
    ),
    bootstrap: str = typer.Option(None, "--bootstrap", help="gamma-h1 (the code: gamma^(H+1)) | gamma-h (the paper)."),
    mask_actions: bool = typer.Option(
        None,
        "--mask-actions/--no-mask-actions",
        help="Zero the padded action dims in imagination [default recipe: on; official: off, the code never masks].",
    ),
    seed: int = typer.Option(None, "--seed", help="Seeds the actor/critic init, the noise and the sampler."),
    eval_every: int = typer.Option(
        200, "--eval-every", min=0, help="Real-env evaluation every N updates (0: only at the end)."
    ),
    eval_episodes: int = typer.Option(10, "--eval-episodes", min=1, help="Episodes per evaluation (one seed each)."),
    name: str = typer.Option(None, "--name", help="Policy name \\[default: the task]."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N]."),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile one imagined-rollout step and the critic's loss (tens of seconds on the first update).",
    ),
    amp: str = typer.Option(None, "--amp", help="bf16: bfloat16 autocast."),
    config: Path = typer.Option(None, "--config", help="YAML file of ExtractConfig fields."),
    overrides: list[str] = typer.Option(None, "--set", help="key=value ExtractConfig override (repeatable)."),
    resume: str = typer.Option(None, "--resume", help="Continue an interrupted run (its run id)."),
    logger: list[str] = typer.Option(None, "--logger", help=LOGGER_HELP),
    time_limit: float = typer.Option(None, "--time-limit", min=0.01, help=TIME_LIMIT_HELP),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the world model, start-state data and the resolved "
        "config with where each value came from; train nothing.",
    ),
) -> None:
    """Extract a policy for one task by first-order gradients through the frozen world model (PWM).

    `--recipe official` reproduces the official multitask code, quirks included (batch 512, one-step
    critic targets, gamma^(H+1) bootstrap, unmasked padded actions, the last policy published); the
    default recipe changes what measured better (batch 64, masked actions, 2 critic passes per update
    instead of 8, the best evaluated policy published). --critic-target td-lambda and --bootstrap gamma-h
    give the paper's variants. Checkpoints at every evaluation, every 10 minutes and on Ctrl-C / SIGTERM /
    SIGHUP; `--resume RUN` continues bitwise.
    """
    import os
    from dataclasses import replace

    from pwm_core.tasks import resolve_tasks

    st = state(ctx)
    from pwm_core.train.extract import EXTRACT_RECIPES

    if recipe not in EXTRACT_RECIPES:
        raise fail(f"unknown --recipe {recipe!r}: use {' or '.join(EXTRACT_RECIPES)}")
    settings = dict(
        recipe=recipe,
        wm=wm,
        data=data,
        steps=steps,
        batch_size=batch_size,
        critic_target=critic_target,
        bootstrap=bootstrap,
        mask_actions=mask_actions,
        seed=seed,
        eval_every=eval_every,
        eval_episodes=eval_episodes,
        device=device,
        compile=compile,
        amp=amp,
        config=config,
        overrides=overrides,
        loggers=check_loggers(logger),
        time_limit=time_limit,
        dry_run=dry_run,
    )
    if resume and dry_run:
        raise fail("--dry-run plans a new run; `pwmctl runs show RUN` shows a run's config")
    if tasks is None or resume:
        doc = _extract_task(st, task, name=name, resume=resume, **settings)
        emit(st, doc, lambda: typer.echo(_published_line(doc)) if not dry_run else None)
        return
    if task is not None:
        raise fail(f"give either a task or --tasks, not both ({task!r} and --tasks {tasks})")
    if name is not None:
        raise fail("--name names one policy; with --tasks each policy is named after its task")
    names = list(resolve_tasks(tasks).names)
    reg = st.registry()
    for t in names:  # fail before any training when a task has no world model
        _choose_world_model(reg, t, wm)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    mine = names[rank::world]  # under torchrun each rank extracts its share; no collectives needed
    if rank > 0:
        st = replace(st, verbosity=-1)  # progress from rank 0 only; every rank prints what it published
    info(st, f"extracting {len(names)} tasks" + (f", {len(mine)} on this rank of {world}" if world > 1 else ""))
    docs = []
    for t in mine:
        doc = _extract_task(st, t, name=None, resume=None, **settings)
        docs.append(doc)
        if not st.json and not dry_run:
            typer.echo(_published_line(doc))
    emit(st, {"policies": docs, "rank": rank, "world_size": world})


def _published_line(doc: dict) -> str:
    return (
        f"published {doc['artifact']}: {doc['steps']} updates, eval return {doc['eval_return']:.1f} over "
        f"{doc['eval_episodes']} episodes"
    )


def _extract_task(
    st,
    task,
    *,
    recipe,
    wm,
    data,
    steps,
    batch_size,
    critic_target,
    bootstrap,
    mask_actions,
    seed,
    eval_every,
    eval_episodes,
    name,
    device,
    compile,
    amp,
    config,
    overrides,
    resume,
    loggers,
    time_limit,
    dry_run,
) -> dict:
    """Extract (or resume) one task's policy and publish it; returns the result document (``dry_run``: the plan,
    printed, and nothing trained)."""
    from pwm_core.config import check_device_available
    from pwm_core.data import open_dataset
    from pwm_core.nn import load_world_model
    from pwm_core.tasks import get_task
    from pwm_core.policy import save_policy
    from pwm_core.train.extract import EXTRACT_RECIPES, ExtractConfig, Extractor, start_state_sampler
    from pwm_core.train.extract import validate_config
    from pwm_core.train.loop import Every, KeepBest, Loop, load_best, read_best

    reg = st.registry()
    if resume:
        run = reg.run_dir(resume)
        plan = read_plan(run, "extract")
        task, wm_ref, data_refs, name = plan["task"], plan["wm"], plan["data"], plan["name"]
        refuse_if_published(reg, "policy", name, run, "extract")
        cfg = ExtractConfig.from_dict(plan["extract"])
        eval_every, eval_episodes = plan["eval_every"], plan["eval_episodes"]
        loggers = loggers or plan.get("loggers", [])
        if steps is not None:
            cfg.steps = steps
    else:
        if task is None:
            raise fail("name the task: `pwmctl extract walker-walk`")
        spec = get_task(task)
        wm_artifact = _choose_world_model(reg, spec.name, wm)
        wm_ref = wm_artifact.ref
        data_refs = (
            [reg.resolve(r, default_kind="dataset").ref for r in data]
            if data
            else [p for p in wm_artifact.parents if p.startswith("dataset/")]
        )
        if not data_refs:
            raise fail(f"{wm_ref} names no dataset to draw start states from; pass --data DATASET")
        resolved = resolve_config(
            ExtractConfig(),
            home=st.home,
            section="extract",
            recipe=EXTRACT_RECIPES[recipe],
            config_file=config,
            overrides=overrides,
            validate=validate_config,
            flags=dict(
                steps=steps,
                batch_size=batch_size,
                critic_target=critic_target,
                bootstrap=bootstrap,
                seed=seed,
                device=device,
                amp=amp,
                mask_actions=mask_actions,
                compile=True if compile else None,
            ),
        )
        cfg = resolved.cfg
        name = check_name(name or spec.name, "policy name")  # before any work, not at publish time
        if dry_run:  # may plan a GPU run on a laptop: no device check
            doc = {
                "dry_run": True,
                "task": spec.name,
                "wm": wm_ref,
                "data": data_refs,
                "name": name,
                "recipe": recipe,
                "eval_every": eval_every,
                "eval_episodes": eval_episodes,
                **resolved.as_doc(),
            }
            if not st.json:
                print_dry_run(
                    f"policy {name}: extract {spec.name} from {wm_ref} (recipe {recipe})",
                    resolved,
                    {
                        "start states": ", ".join(data_refs),
                        "evaluation": f"every {eval_every} updates, {eval_episodes} episodes",
                    },
                )
            return doc
        check_device_available(cfg.device)  # before the run folder
        run = reg.new_run_dir("extract")
        write_plan(
            run,
            {
                "command": "extract",
                "task": spec.name,
                "wm": wm_ref,
                "data": data_refs,
                "name": name,
                "recipe": recipe,
                "extract": cfg.to_dict(),
                "eval_every": eval_every,
                "eval_episodes": eval_episodes,
                "loggers": loggers,
            },
        )
    spec = get_task(task)
    world_model = load_world_model(reg.resolve(wm_ref).path)
    if spec.name not in world_model.cfg.task_names:
        raise fail(f"{wm_ref} was not trained on {spec.name}; its tasks: {', '.join(world_model.cfg.task_names)}")
    row = world_model.cfg.task_names.index(spec.name)
    if not cfg.mask_actions and world_model.cfg.action_dims[row] < world_model.cfg.act_dim:
        info(
            st,
            f"note: {spec.name} acts on {world_model.cfg.action_dims[row]} of the model's "
            f"{world_model.cfg.act_dim} action dims and masking is off (recipe official): the padded dims "
            f"move in imagination only; --mask-actions zeroes them",
        )
    datasets = [open_dataset(reg.resolve(r).path / DATASET_DIR) for r in data_refs]
    if not any(spec.name in ds.per_task_counts() for ds in datasets):
        raise fail(
            f"no episodes of {spec.name} in {', '.join(data_refs)}: collect some with "
            f"`pwmctl collect {spec.name} --episodes 100` and pass --data"
        )
    extractor = Extractor(cfg, world_model, row, start_state_sampler(datasets, world_model, row, cfg))
    if (run / CHECKPOINT).exists():
        extractor.load_checkpoint(run / CHECKPOINT)
        info(st, f"resumed {run.name} at update {extractor.step_count}")
    budget = f" or {time_limit:g} minutes" if time_limit else ""
    info(
        st,
        f"extracting {spec.name} from {wm_ref} (start states: {', '.join(data_refs)}): "
        f"{cfg.steps} updates{budget}, batch {cfg.batch_size}, H={cfg.horizon}, critic {cfg.critic_target}, "
        f"bootstrap {cfg.bootstrap}; run {run.name}",
    )

    t0 = time.monotonic()
    with Progress(st, f"extract {spec.name}", total=cfg.steps) as bar:

        def log_eval(state, ev):
            bar.log(
                f"update {state.step}: eval return {ev['eval_return']:.1f}"
                + (f", success {ev['eval_success']:.2f}" if spec.suite == "metaworld" else "")
            )

        callbacks = [
            *time_budget(time_limit, lambda n: setattr(extractor.cfg, "steps", n)),
            Every(eval_every, lambda: evaluate_extractor(extractor, spec, eval_episodes), then=log_eval),
            *([KeepBest("eval_return", extractor.policy_state, run / BEST)] if cfg.keep == "best" else []),
            *training_callbacks(
                run,
                "extract",
                lambda: extractor.save_checkpoint(run / CHECKPOINT),
                eval_every,
                cfg.checkpoint_every_s,
                1,
                loggers,
                name,
                cfg.to_dict(),
                rate_key="its_per_s",
            ),
            ProgressCallback(
                bar, ("actor_loss", "value_loss", "model_return", "eval_return"), rename={"eval_return": "eval"}
            ),
        ]
        result = Loop(extractor.step, lambda: extractor.step_count, cfg.steps, callbacks).run()
    if result.interrupted:
        info(
            st,
            f"interrupted at update {extractor.step_count}; checkpoint saved. "
            f"Continue with `pwmctl extract --resume {run.name}`",
        )
        raise typer.Exit(130)

    curve = [r for r in read_jsonl(run / METRICS) if "eval_return" in r]
    selected = {
        "step": extractor.step_count,
        "eval_return": curve[-1]["eval_return"],
        "eval_success": curve[-1]["eval_success"],
    }
    best = read_best(run / BEST) if cfg.keep == "best" else None
    if best is not None and best[0] != extractor.step_count:  # publish the best evaluated policy
        extractor.load_policy_state(load_best(run / BEST))
        selected = next(
            (
                {"step": r["step"], "eval_return": r["eval_return"], "eval_success": r["eval_success"]}
                for r in curve
                if r["step"] == best[0]
            ),
            {"step": best[0], "eval_return": best[1], "eval_success": None},
        )
        info(
            st,
            f"publishing the policy of update {best[0]} (eval return {selected['eval_return']:.1f}), the best "
            f"of {len(curve)} evaluations; the last scored {curve[-1]['eval_return']:.1f}",
        )
    with reg.stage("policy", name) as staging:
        save_policy(extractor, staging.path, metadata={"world_model": wm_ref, "datasets": data_refs})
        (staging.path / METRICS).write_bytes((run / METRICS).read_bytes())
        artifact = staging.publish(
            parents=[wm_ref, *data_refs],
            tasks=[spec.name],
            config={"extract": cfg.to_dict()},
            metrics={
                "steps": extractor.step_count,
                "train_seconds": round(time.monotonic() - t0, 1),
                "eval_return": selected["eval_return"],
                "eval_success": selected["eval_success"],
                "selected_update": selected["step"],
                "learning_curve": [[r["step"], r["eval_return"]] for r in curve],
            },
            extra={"run": run.name, "eval_seeds": f"{EVAL_SEED_OFFSET}..{EVAL_SEED_OFFSET + eval_episodes - 1}"},
        )
    write_plan(run, {**read_plan(run, "extract"), "published": artifact.ref})
    return {
        "artifact": artifact.ref,
        "task": spec.name,
        "world_model": wm_ref,
        "datasets": data_refs,
        "steps": extractor.step_count,
        "selected_update": selected["step"],
        "eval_return": selected["eval_return"],
        "eval_episodes": eval_episodes,
        "learning_curve": [[r["step"], r["eval_return"]] for r in curve],
        "run": run.name,
    }


def evaluate_extractor(extractor, spec, episodes: int) -> dict:
    """Deterministic real-env evaluation of an extractor's current policy on seeds 10000.. (apart from
    `pwmctl eval`'s): mean return and final-step success over ``episodes`` episodes."""
    from pwm_core.evaluate import evaluate

    act_dim = spec.act_dim
    actor = lambda obs, specs: extractor.act(obs).float().cpu().numpy()[:, :act_dim]  # noqa: E731
    seeds = [EVAL_SEED_OFFSET + i for i in range(episodes)]
    ev = evaluate({"policy": actor}, [spec.name], seeds, 1, obs_dim=extractor.world_model.cfg.obs_dim, act_dim=act_dim)
    returns = [e.ret for e in ev.episodes]
    return {
        "eval_return": float(sum(returns) / len(returns)),
        "eval_success": float(sum(e.final_success for e in ev.episodes) / len(ev.episodes)),
    }


def _choose_world_model(reg, task: str, ref: str | None):
    if ref:
        artifact = reg.resolve(ref, default_kind="worldmodel")
        if artifact.kind != "worldmodel":
            raise fail(f"--wm needs a world model, got {artifact.ref}")
        return artifact
    candidates = reg.list(kind="worldmodel", task=task)
    if not candidates:
        raise fail(
            f"no local world model has {task}: train one with `pwmctl pretrain --tasks {task}` (or pass --wm REF)"
        )
    newest = max(candidates, key=lambda a: a.registered)  # registered here last, whatever `created` claims
    return newest
