"""`pwmctl finetune`: online fine-tuning of a policy and its world model in the real environment."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from registry.refs import check_name

from pwmctl.commands.extract import evaluate_extractor
from pwmctl.commands.pretrain import RAM_BUDGET_HELP
from pwmctl.console import Progress, ProgressCallback, emit, fail, info, state
from pwmctl.resolve import print_dry_run, resolve_config
from pwmctl.runs import LOGGER_HELP, METRICS, append_jsonl, check_loggers, read_jsonl, read_plan, training_callbacks
from pwmctl.runs import TIME_LIMIT_HELP, published_by, time_budget, write_plan

CHECKPOINT = "checkpoint.pt"
REPLAY_DIR = "replay.zarr"


def finetune(
    ctx: typer.Context,
    task: str = typer.Argument(None, help="The task, e.g. cartpole-balance.", show_default=False),
    policy: str = typer.Option(None, "--policy", help="Policy ref to start from \\[default: the newest of the task]."),
    env_steps: int = typer.Option(None, "--env-steps", min=1, help="Agent steps to collect \\[default: 5000]."),
    episodes_per_round: int = typer.Option(
        None, "--episodes-per-round", min=1, help="Episodes collected before each update phase \\[default: 2]."
    ),
    updates_per_episode: int = typer.Option(
        None, "--updates-per-episode", min=1, help="Model + policy updates per collected episode \\[default: 50]."
    ),
    wm_batch_size: int = typer.Option(None, "--wm-batch-size", min=1, help="Windows per model update [256]."),
    policy_batch_size: int = typer.Option(
        None, "--policy-batch-size", min=1, help="Start states per policy update [64]."
    ),
    offline_data: bool = typer.Option(
        None, "--offline-data/--no-offline-data", help="Also learn from the task's offline episodes \\[default: on]."
    ),
    save_data: bool = typer.Option(
        True, "--save-data/--no-save-data", help="Publish the collected episodes as a dataset version."
    ),
    eval_episodes: int = typer.Option(10, "--eval-episodes", min=1, help="Evaluation episodes before and after."),
    seed: int = typer.Option(None, "--seed", help="Seeds envs, exploration noise and samplers \\[default: 0]."),
    name: str = typer.Option(None, "--name", help="Name of the new policy version \\[default: the policy's]."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Environment worker processes."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N]."),
    resume: str = typer.Option(None, "--resume", help="Continue an interrupted run (its run id)."),
    time_limit: float = typer.Option(
        None, "--time-limit", min=0.01, help=TIME_LIMIT_HELP + " Counts collection and updates, not the evaluations."
    ),
    logger: list[str] = typer.Option(None, "--logger", help=LOGGER_HELP),
    ram_budget: float = typer.Option(None, "--ram-budget", min=0.0, help=RAM_BUDGET_HELP),
    config: Path = typer.Option(None, "--config", help="YAML file of FinetuneConfig fields."),
    overrides: list[str] = typer.Option(
        None, "--set", help="key=value FinetuneConfig override (repeatable), e.g. --set updates_per_episode=100."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the policy, its world model and the resolved config "
        "with where each value came from; train nothing.",
    ),
) -> None:
    """Fine-tune a policy and its world model online: collect episodes with the policy's exploration
    noise, then alternate world-model updates (the pre-training objective) and PWM policy updates.

    Publishes a new world model (`<wm>-<task>-ft`) and a new policy version, both with lineage, plus the
    collected episodes as a dataset. Checkpoints after every round and on Ctrl-C; `--resume RUN` continues.
    """
    from pwm_core.config import check_device_available
    from pwm_core.data import open_dataset
    from pwm_core.nn import load_world_model
    from pwm_core.tasks import get_task
    from pwm_core.train import load_policy
    from pwm_core.train.extract import ExtractConfig
    from pwm_core.train.finetune import FinetuneConfig, Finetuner, validate_finetune_config
    from pwm_core.train.loop import CHECKPOINT_EVERY_S, Loop, OnStep
    from pwm_core.train.pretrain import PretrainConfig
    from pwmctl.commands.collect import DATASET_DIR

    st = state(ctx)
    loggers = check_loggers(logger)
    reg = st.registry()
    if resume and dry_run:
        raise fail("--dry-run plans a new run; `pwmctl runs show RUN` shows a run's config")
    if resume:
        run = reg.run_dir(resume)
        plan = read_plan(run, "finetune")
        published_policy = published_by(reg, "policy", plan["name"], run)
        if published_policy is not None and not plan.get("published"):  # killed after its last publish
            plan["published"] = {"policy": published_policy.ref}
        if plan.get("published"):
            raise fail(
                f"{run.name} already finished and published {', '.join(plan['published'].values())}; "
                f"fine-tune again with `pwmctl finetune {plan['task']} --policy {plan['published']['policy']}`"
            )
        cfg = FinetuneConfig.from_dict(plan["finetune"])
        task, pol_ref, save_data, eval_episodes = plan["task"], plan["policy"], plan["save_data"], plan["eval_episodes"]
        name = plan["name"]
        loggers = loggers or plan.get("loggers", [])
        if env_steps is not None:
            cfg.env_steps = env_steps
        if ram_budget is not None:  # this machine's memory: never changes the run
            cfg.ram_budget_gb = ram_budget
    else:
        if task is None:
            raise fail("name the task: `pwmctl finetune cartpole-balance`")
        spec = get_task(task)
        pol_artifact = _choose_policy(reg, spec.name, policy)
        pol_ref = pol_artifact.ref
        resolved = resolve_config(
            FinetuneConfig(),
            home=st.home,
            section="finetune",
            config_file=config,
            overrides=overrides,
            validate=validate_finetune_config,
            flags=dict(
                env_steps=env_steps,
                episodes_per_round=episodes_per_round,
                offline_data=offline_data,
                updates_per_episode=updates_per_episode,
                wm_batch_size=wm_batch_size,
                policy_batch_size=policy_batch_size,
                seed=seed,
                device=device,
                ram_budget_gb=ram_budget,
            ),
        )
        cfg = resolved.cfg
        name = check_name(name or pol_artifact.name, "policy name")  # before any work, not at publish time
        if dry_run:
            doc = {
                "dry_run": True,
                "task": spec.name,
                "policy": pol_ref,
                "name": name,
                "save_data": save_data,
                "eval_episodes": eval_episodes,
                **resolved.as_doc(),
            }
            emit(
                st,
                doc,
                lambda: print_dry_run(
                    f"policy {name}: fine-tune {pol_ref} on {spec.name}",
                    resolved,
                    {
                        "world model": ", ".join(p for p in pol_artifact.parents if p.startswith("worldmodel/"))
                        or "(none)",
                        "collected data": "published as a dataset" if save_data else "not kept",
                    },
                ),
            )
            return
        check_device_available(cfg.device)  # before the run folder
        run = reg.new_run_dir("finetune")
        write_plan(
            run,
            {
                "command": "finetune",
                "task": spec.name,
                "policy": pol_ref,
                "name": name,
                "save_data": save_data,
                "eval_episodes": eval_episodes,
                "finetune": cfg.to_dict(),
                "loggers": loggers,
            },
        )
    spec = get_task(task)
    pol_artifact = reg.resolve(pol_ref)
    wm_refs = [p for p in pol_artifact.parents if p.startswith("worldmodel/")]
    data_refs = [p for p in pol_artifact.parents if p.startswith("dataset/")]
    if not wm_refs:
        raise fail(f"{pol_ref} names no world model as its parent; only extracted policies can be fine-tuned")
    wm_artifact = reg.resolve(wm_refs[0])
    wm_cfg = PretrainConfig.from_dict(wm_artifact.manifest.get("config", {}).get("pretrain", {}))
    ex_cfg = ExtractConfig.from_dict(pol_artifact.manifest.get("config", {}).get("extract", {}))
    offline = [open_dataset(reg.resolve(r).path / DATASET_DIR) for r in data_refs]
    tuner = Finetuner(
        cfg,
        wm_cfg,
        ex_cfg,
        load_world_model(wm_artifact.path),
        load_policy(pol_artifact.path),
        spec.name,
        offline,
        run / REPLAY_DIR,
    )
    before = None
    if (run / CHECKPOINT).exists():
        tuner.load_checkpoint(run / CHECKPOINT)
        before = next((r["eval_return"] for r in read_jsonl(run / METRICS) if r.get("phase") == "before"), None)
        info(st, f"resumed {run.name} at round {tuner.round} ({tuner.env_steps} env steps, {tuner.updates} updates)")
    info(
        st,
        f"fine-tuning {pol_ref} with {wm_artifact.ref} on {spec.name}: {cfg.env_steps} env steps"
        f"{f' or {time_limit:g} minutes' if time_limit else ''}, "
        f"{cfg.episodes_per_round} episodes then {cfg.updates_per_episode * cfg.episodes_per_round} updates "
        f"per round; run {run.name}",
    )
    if before is None:
        before = evaluate_extractor(tuner.extractor, spec, eval_episodes)["eval_return"]
        append_jsonl(run / METRICS, {"phase": "before", "env_steps": 0, "eval_return": before})
        info(st, f"before: eval return {before:.1f} over {eval_episodes} episodes")

    t0 = time.monotonic()
    tuner.workers = workers
    with Progress(st, f"finetune {spec.name}", total=tuner.total_updates) as bar:

        def log_round(state) -> None:
            if "explore_return" in state.metrics:
                bar.log(
                    f"round {tuner.round}: {tuner.env_steps} env steps, exploration return "
                    f"{state.metrics['explore_return']:.1f}"
                )

        callbacks = [
            # the policy's lr decays over the updates that fit the budget
            *time_budget(time_limit, lambda n: setattr(tuner.extractor.cfg, "steps", n)),
            OnStep(log_round),
            *training_callbacks(
                run,
                "finetune",
                lambda: tuner.save_checkpoint(run / CHECKPOINT),
                0,
                CHECKPOINT_EVERY_S,
                1,
                loggers,
                name,
                cfg.to_dict(),
                step_key="update",
                rate_key="updates_per_s",
            ),
            ProgressCallback(
                bar, ("wm_loss", "actor_loss", "model_return", "explore_return"), rename={"explore_return": "explore"}
            ),
        ]
        result = Loop(tuner.step, lambda: tuner.updates, tuner.total_updates, callbacks, done=lambda: tuner.done).run()
    if result.interrupted:
        info(
            st,
            f"interrupted at round {tuner.round} ({tuner.env_steps} env steps, {tuner.updates} updates); "
            f"checkpoint saved. Continue with `pwmctl finetune --resume {run.name}`",
        )
        raise typer.Exit(130)

    after = evaluate_extractor(tuner.extractor, spec, eval_episodes)["eval_return"]
    env_steps = tuner.env_steps
    append_jsonl(run / METRICS, {"phase": "after", "env_steps": env_steps, "eval_return": after})
    refs = _publish(
        reg,
        run,
        tuner,
        spec.name,
        name,
        wm_artifact,
        pol_artifact,
        data_refs,
        save_data,
        before,
        after,
        time.monotonic() - t0,
    )
    write_plan(run, {**read_plan(run, "finetune"), "published": refs})  # a later --resume says so
    doc = {
        **refs,
        "env_steps": env_steps,
        "updates": tuner.updates,
        "eval_return_before": before,
        "eval_return_after": after,
        "run": run.name,
    }
    emit(
        st,
        doc,
        lambda: typer.echo(
            f"published {refs['policy']} and {refs['world_model']}"
            + (f" (episodes: {refs['dataset']})" if refs.get("dataset") else "")
            + f": eval return {before:.1f} -> {after:.1f} over {eval_episodes} episodes after {env_steps} env "
            f"steps and {tuner.updates} updates"
        ),
    )


def _publish(
    reg,
    run,
    tuner,
    task: str,
    name: str,
    wm_artifact,
    pol_artifact,
    data_refs,
    save_data: bool,
    before: float,
    after: float,
    seconds: float,
) -> dict:
    """Publish the episodes (optional), then the world model, then the policy; each one version. Each is
    looked up first (by its manifest's run): a resumed run that was killed halfway through publishing
    finishes what is missing instead of publishing a second copy."""
    from pwm_core.data import open_dataset
    from pwm_core.nn import save_world_model
    from pwm_core.policy import save_policy
    from pwmctl.commands.collect import DATASET_DIR

    out, replay_refs = {}, []
    replay = open_dataset(run / REPLAY_DIR)
    config = {"finetune": tuner.cfg.to_dict()}
    done = published_by(reg, "dataset", f"{task}-finetune", run)
    if done is not None:
        out["dataset"], replay_refs = done.ref, [done.ref]
    elif save_data and replay.num_episodes:
        with reg.stage("dataset", f"{task}-finetune") as staging:
            shutil.copytree(run / REPLAY_DIR, staging.path / DATASET_DIR)
            artifact = staging.publish(
                parents=[pol_artifact.ref],
                tasks=[task],
                config={**config, "policy": pol_artifact.ref},
                metrics={
                    "episodes": replay.num_episodes,
                    "transitions": replay.num_transitions,
                    "mean_return": float(replay.episode_returns().mean()),
                },
                extra={"run": run.name},
            )
        out["dataset"] = artifact.ref
        replay_refs = [artifact.ref]
    suffix = f"-{task}-ft"  # fine-tuning a fine-tuned model again makes the next version of its line
    wm_name = wm_artifact.name if wm_artifact.name.endswith(suffix) else wm_artifact.name + suffix
    artifact = published_by(reg, "worldmodel", wm_name, run)
    if artifact is None:
        with reg.stage("worldmodel", wm_name) as staging:
            save_world_model(tuner.model, staging.path)
            artifact = staging.publish(
                parents=[wm_artifact.ref, *replay_refs],
                tasks=list(wm_artifact.tasks),
                config={**config, "pretrain": tuner.wm_cfg.to_dict(), "model": tuner.model.cfg.to_dict()},
                metrics={"env_steps": tuner.env_steps, "updates": tuner.updates},
                extra={"run": run.name},
            )
    out["world_model"] = artifact.ref
    curve = [r for r in read_jsonl(run / METRICS) if "explore_return" in r]
    with reg.stage("policy", name) as staging:
        save_policy(
            tuner.extractor,
            staging.path,
            metadata={"world_model": out["world_model"], "finetuned_from": pol_artifact.ref},
        )
        (staging.path / METRICS).write_bytes((run / METRICS).read_bytes())
        artifact = staging.publish(
            parents=[out["world_model"], pol_artifact.ref, *data_refs],
            tasks=[task],
            config={**config, "extract": tuner.extractor.cfg.to_dict()},
            metrics={
                "env_steps": tuner.env_steps,
                "updates": tuner.updates,
                "train_seconds": round(seconds, 1),
                "eval_return_before": before,
                "eval_return": after,
                "exploration_curve": [[r["env_steps"], r["explore_return"]] for r in curve],
            },
            extra={"run": run.name},
        )
    out["policy"] = artifact.ref
    shutil.rmtree(run / REPLAY_DIR, ignore_errors=True)  # published (or not wanted); the run keeps its log
    (run / CHECKPOINT).unlink(missing_ok=True)
    return out


def _choose_policy(reg, task: str, ref: str | None):
    if ref:
        artifact = reg.resolve(ref, default_kind="policy")
        if artifact.kind != "policy":
            raise fail(f"--policy needs a policy, got {artifact.ref}")
        if task not in artifact.tasks:
            raise fail(f"{artifact.ref} acts on {', '.join(artifact.tasks)}, not {task}")
        return artifact
    candidates = reg.list(kind="policy", task=task)
    if not candidates:
        raise fail(f"no local policy for {task}: extract one with `pwmctl extract {task}` (or pass --policy REF)")
    return max(candidates, key=lambda a: a.registered)  # registered here last, whatever `created` claims
