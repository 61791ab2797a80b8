"""`pwmctl pretrain`: train a multi-task world model on episode datasets and publish it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from registry.refs import check_name

from pwmctl.commands.collect import DATASET_DIR
from pwmctl.console import Progress, ProgressCallback, emit, fail, info, state
from pwmctl.runs import LOGGER_HELP, METRICS, TIME_LIMIT_HELP, append_jsonl, check_loggers, read_plan, time_budget
from pwmctl.resolve import print_dry_run, resolve_config
from pwmctl.runs import refuse_if_published, training_callbacks, write_plan

CHECKPOINT = "checkpoint.pt"
RAM_BUDGET_HELP = (
    "GB of dataset rows to hold in RAM; beyond it, windows stream from disk (the same windows) "
    "\\[default: half the available memory]."
)


def pretrain(
    ctx: typer.Context,
    tasks: str = typer.Option(None, "--tasks", help="mt30 | mt80 | comma-separated tasks (the model's task set)."),
    data: list[str] = typer.Option(
        None, "--data", help="Dataset ref (repeatable) \\[default: every local dataset covering tasks of the set]."
    ),
    size: str = typer.Option(None, "--size", help="Model size preset: 1M, 5M, 19M, 48M, 317M \\[default: 5M]."),
    steps: int = typer.Option(None, "--steps", min=1, help="Training steps."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Windows per step and rank \\[default: 1024]."),
    global_batch_size: int = typer.Option(
        None,
        "--global-batch-size",
        min=1,
        help="Windows per step over all torchrun ranks (per-rank batch x world size); instead of --batch-size.",
    ),
    horizon: int = typer.Option(None, "--horizon", min=1, help="Rollout horizon H \\[default: 16]."),
    seed: int = typer.Option(None, "--seed", help="Seeds python, numpy, torch and the sampler."),
    name: str = typer.Option(None, "--name", help="World-model name \\[default: <tasks>-<size>]."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N]."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the update."),
    amp: str = typer.Option(None, "--amp", help="bf16: bfloat16 autocast."),
    config: Path = typer.Option(None, "--config", help="YAML file of PretrainConfig fields."),
    overrides: list[str] = typer.Option(None, "--set", help="key=value override (repeatable), e.g. --set rho=0.5."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Train even if some tasks have no data."),
    resume: str = typer.Option(None, "--resume", help="Continue an interrupted run (its run id)."),
    logger: list[str] = typer.Option(None, "--logger", help=LOGGER_HELP),
    time_limit: float = typer.Option(None, "--time-limit", min=0.01, help=TIME_LIMIT_HELP),
    ram_budget: float = typer.Option(None, "--ram-budget", min=0.0, help=RAM_BUDGET_HELP),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config and parameter counts; train nothing."
    ),
) -> None:
    """Pre-train a TD-MPC2-style multi-task world model (PWM's recipe: H=16, rho=0.99, batch 1024).

    Checkpoints every --set checkpoint_every=N steps and on Ctrl-C / SIGTERM; `--resume RUN` continues with
    the same step count, optimiser and RNG state. Under `torchrun --nproc-per-node N -m pwmctl pretrain ...`
    the ranks train with data parallelism and rank 0 publishes.
    """
    from pwm_core.config import check_device_available
    from pwm_core.nn import count_parameters
    from pwm_core.tasks import resolve_tasks
    from pwm_core.train import distributed as dist
    from pwm_core.train.pretrain import PretrainConfig, model_config
    from pwm_core.train.validation import validate_pretrain_config

    st = state(ctx)
    loggers = check_loggers(logger)
    if name is not None:
        check_name(name, "world-model name")  # before anything is read or trained
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 talks
        st = _silent(st)
    reg = st.registry()
    if resume and dry_run:
        raise fail("--dry-run plans a new run; `pwmctl runs show RUN` shows a run's config")
    run = reg.run_dir(resume) if resume else None
    if run is not None:
        plan = read_plan(run, "pretrain")
        task_set = resolve_tasks(plan["tasks"])
        refs = plan["datasets"]
        cfg = PretrainConfig.from_dict(plan["pretrain"])
        loggers = loggers or plan.get("loggers", [])
        if steps is not None:  # allow extending a run
            cfg.steps = steps
        if batch_size is not None or global_batch_size is not None:
            raise fail(
                f"a resumed run keeps its batch size ({cfg.batch_size} per rank); drop --batch-size / "
                "--global-batch-size"
            )
        if ram_budget is not None:  # this machine's memory: never changes the run
            cfg.ram_budget_gb = ram_budget
        validate_pretrain_config(cfg)
    else:
        if tasks is None:
            raise fail("name the model's task set: --tasks mt30, --tasks mt80 or --tasks walker-walk,cheetah-run")
        task_set = resolve_tasks(tasks)
        batch_size = _per_rank_batch(batch_size, global_batch_size)
        # defaults < `config set size 48M` / `pretrain.<field>` < --config < --set < flags; then checked once,
        # before any work (steps=-5, batch_size=0, rho=nan, --device banana)
        resolved = resolve_config(
            PretrainConfig(),
            home=st.home,
            section="pretrain",
            config_file=config,
            overrides=overrides,
            validate=validate_pretrain_config,
            flags=dict(
                size=size,
                steps=steps,
                batch_size=batch_size,
                horizon=horizon,
                seed=seed,
                device=device,
                amp=amp,
                ram_budget_gb=ram_budget,
                compile=True if compile else None,
            ),
        )
        cfg = resolved.cfg
        if not dry_run:  # a dry run may plan a GPU run on a laptop
            check_device_available(cfg.device)
        refs = _choose_datasets(reg, task_set, data, allow_missing or dry_run, st)
    model_cfg = model_config(cfg, task_set)
    counts = count_parameters(model_cfg)
    default_name = f"{task_set.name.replace(',', '_')}-{cfg.size.lower()}"
    name = check_name((plan["name"] if run is not None else None) or name or default_name, "world-model name")
    if run is not None:
        refuse_if_published(reg, "worldmodel", name, run, "pretrain")

    if dry_run:
        doc = {
            "name": name,
            "tasks": list(task_set.names),
            "datasets": refs,
            "pretrain": cfg.to_dict(),
            "sources": resolved.as_doc()["sources"],
            "model": model_cfg.to_dict(),
            "parameters": counts,
        }
        emit(st, doc, lambda: _print_dry_run(doc, resolved))
        return

    from pwm_core.data import open_dataset
    from pwm_core.train.loop import Every, Loop
    from pwm_core.train.pretrain import Pretrainer

    datasets = [open_dataset(reg.resolve(r).path / DATASET_DIR) for r in refs]
    ctx_dist = dist.setup(cfg.device)
    main = dist.is_main()
    if run is None:
        run = reg.new_run_dir("pretrain") if main else None
        if main:
            write_plan(
                run,
                {
                    "command": "pretrain",
                    "name": name,
                    "tasks": ",".join(task_set.names),
                    "datasets": refs,
                    "pretrain": cfg.to_dict(),
                    "loggers": loggers,
                },
            )
        run = dist.broadcast_path(run)
    trainer = Pretrainer(cfg, model_cfg, datasets, task_set, device=ctx_dist.device)
    if (run / CHECKPOINT).exists():
        trainer.load_checkpoint(run / CHECKPOINT)
        info(st, f"resumed {run.name} at step {trainer.step_count}")
    resumed = dist.gather_ints(trainer.step_count)
    if len(set(resumed)) > 1:  # a machine that does not see the run folder starts from step 0
        dist.cleanup()
        raise fail(
            f"the ranks resumed {run.name} at different steps ({', '.join(map(str, resumed))}, in rank "
            "order): every machine must see the same PWM_HOME (a shared file system), or at least the run "
            "folder and the datasets"
        )
    if main:
        info(
            st,
            f"pretraining {name}: {counts['total'] / 1e6:.2f}M parameters, {len(task_set)} task(s), "
            f"{cfg.steps} steps{f' or {time_limit:g} minutes' if time_limit else ''}, batch {cfg.batch_size}"
            f"{_global_batch(cfg.batch_size, dist.world_size())}, H={cfg.horizon}, on {ctx_dist.device}"
            f"{f' x{dist.world_size()} ranks' if dist.world_size() > 1 else ''}; run {run.name}",
        )
        if trainer.streaming:
            packed = [ds.path for ds in datasets if ds.compressed]
            info(
                st,
                f"windows stream from disk: the rows take {trainer.data_nbytes / 1e9:.1f} GB, over the RAM "
                f"budget (--ram-budget GB){_STREAM_TIP if packed else ''}",
            )
    first_val = _first_validation(run, trainer, main)
    t0 = time.monotonic()
    with Progress(st if main else _silent(st), "pretrain", total=cfg.steps) as bar:

        def log_validation(state, val):
            if main:
                bar.log(f"step {state.step}: " + "  ".join(f"val {k} {v:.4g}" for k, v in val.items()))

        validation = Every(cfg.val_every, trainer.validate, prefix="val/", then=log_validation)
        if time_limit is not None and dist.world_size() > 1:
            raise fail("--time-limit is not supported under torchrun (ranks must stop at the same step): use --steps")
        callbacks = [*time_budget(time_limit, lambda n: setattr(cfg, "steps", n)), validation]
        if main:
            callbacks += [
                *training_callbacks(
                    run,
                    "pretrain",
                    lambda: trainer.save_checkpoint(run / CHECKPOINT),
                    cfg.checkpoint_every,
                    cfg.checkpoint_every_s,
                    cfg.log_every,
                    loggers,
                    name,
                    cfg.to_dict(),
                ),
                ProgressCallback(bar, ("consistency", "reward_ce", "value_ce")),
            ]
        result = Loop(trainer.step, lambda: trainer.step_count, cfg.steps, callbacks, agree=dist.any_rank).run()
    if result.interrupted:
        dist.cleanup()
        info(
            st,
            f"interrupted at step {trainer.step_count}; checkpoint saved. "
            f"Continue with `pwmctl pretrain --resume {run.name}`",
        )
        raise typer.Exit(130)
    if not main:
        dist.cleanup()
        return
    final = validation.last if validation.last is not None else trainer.validate()
    artifact = _publish(
        reg, run, name, trainer, cfg, model_cfg, refs, task_set, first_val, final, time.monotonic() - t0
    )
    write_plan(run, {**read_plan(run, "pretrain"), "published": artifact.ref})
    dist.cleanup()
    doc = {
        "artifact": artifact.ref,
        "steps": trainer.step_count,
        "parameters": counts["total"],
        "val_initial": first_val,
        "val_final": final,
        "run": run.name,
    }
    emit(
        st,
        doc,
        lambda: typer.echo(
            f"published {artifact.ref}: {trainer.step_count} steps; held-out "
            + ", ".join(f"{k} {first_val[k]:.4g} -> {final[k]:.4g}" for k in final)
        ),
    )


def _per_rank_batch(batch_size: int | None, global_batch_size: int | None) -> int | None:
    """--global-batch-size over the torchrun world size (WORLD_SIZE, set before any process group)."""
    if global_batch_size is None:
        return batch_size
    if batch_size is not None:
        raise fail("give --batch-size (per rank) or --global-batch-size (over all ranks), not both")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if global_batch_size % world:
        raise fail(
            f"--global-batch-size {global_batch_size} does not divide over {world} ranks; use a multiple of {world}"
        )
    return global_batch_size // world


_STREAM_TIP = (
    "; compressed chunks are decoded per window: `pwmctl data rechunk DATASET` makes a copy that streams "
    "~10x faster (docs/benchmarks.md section 7)"
)


def _global_batch(batch_size: int, world: int) -> str:
    return f" per rank, {batch_size * world} global" if world > 1 else ""


def _choose_datasets(reg, task_set, data, allow_missing: bool, st) -> list[str]:
    """Explicit --data refs, or every local dataset (newest version of each name) with tasks of the set."""
    from pwm_core.data import open_dataset

    if data:
        artifacts = [reg.resolve(r, default_kind="dataset") for r in data]
        wrong = [a.ref for a in artifacts if a.kind != "dataset"]
        if wrong:
            raise fail(f"--data needs datasets, got {', '.join(wrong)}")
    else:
        seen: set[str] = set()
        artifacts = []
        for a in reg.list(kind="dataset"):
            if a.name not in seen and set(a.tasks) & set(task_set.names):
                artifacts.append(a)
            seen.add(a.name)
    counts: dict[str, int] = {}
    for a in artifacts:
        for task, n in open_dataset(a.path / DATASET_DIR).per_task_counts().items():
            if task in task_set:
                counts[task] = counts.get(task, 0) + n
    missing = [t for t in task_set.names if not counts.get(t)]
    if not artifacts and allow_missing:  # --dry-run: show the plan even before any data exists
        info(st, f"no local dataset has any task of {task_set.name} yet")
        return []
    if not artifacts:
        raise fail(
            f"no local dataset has any task of {task_set.name}; collect some with "
            f"`pwmctl collect {task_set.name} --episodes 100` or import TD-MPC2's with "
            f"`pwmctl data import-tdmpc2 PATH`"
        )
    if missing and not allow_missing:
        shown = ",".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise fail(
            f"no data for {len(missing)} task(s) of {task_set.name}: {shown}; run "
            f"`pwmctl collect {','.join(missing)} --episodes 100` (or `pwmctl data import-tdmpc2 PATH`), "
            f"or pass --allow-missing to train on what exists"
        )
    info(
        st,
        "datasets: "
        + ", ".join(a.ref for a in artifacts)
        + "; episodes per task: "
        + ", ".join(f"{t} {n}" for t, n in counts.items()),
    )
    return [a.ref for a in artifacts]


def _first_validation(run: Path, trainer, main: bool) -> dict:
    """Held-out metrics of the untrained model, kept in the run folder so a resumed run reports them too."""
    path = run / "val_initial.json"
    if path.exists():
        return json.loads(path.read_text())
    val = trainer.validate()
    if main:
        path.write_text(json.dumps(val))
        append_jsonl(run / METRICS, {"step": trainer.step_count, **{f"val/{k}": v for k, v in val.items()}})
    return val


def _publish(reg, run, name, trainer, cfg, model_cfg, refs, task_set, first_val, final, seconds):
    from pwm_core.nn import save_world_model

    with reg.stage("worldmodel", name) as staging:
        save_world_model(trainer.model, staging.path)
        (staging.path / "metrics.jsonl").write_bytes((run / METRICS).read_bytes())
        return staging.publish(
            parents=refs,
            tasks=list(task_set.names),
            config={"pretrain": cfg.to_dict(), "model": model_cfg.to_dict()},
            metrics={
                "steps": trainer.step_count,
                "train_seconds": round(seconds, 1),
                **{f"val_initial/{k}": v for k, v in first_val.items()},
                **{f"val/{k}": v for k, v in final.items()},
            },
            extra={"run": run.name},
        )


def _print_dry_run(doc: dict, resolved) -> None:
    typer.echo(
        f"world model {doc['name']}: tasks {', '.join(doc['tasks'][:6])}"
        + (f" (+{len(doc['tasks']) - 6} more)" if len(doc["tasks"]) > 6 else "")
    )
    typer.echo(f"datasets: {', '.join(doc['datasets']) or '(none)'}")
    m = doc["model"]
    typer.echo(
        f"model: size {doc['pretrain']['size']}, obs {m['obs_dim']}, act {m['act_dim']}, latent "
        f"{m['latent_dim']}, task_dim {m['task_dim']}, enc {m['enc_dim']}x{m['num_enc_layers'] - 1}, "
        f"mlp {m['mlp_dim']}, {m['num_q']} Q heads"
    )
    typer.echo("parameters: " + ", ".join(f"{k} {v:,}" for k, v in doc["parameters"].items()))
    print_dry_run("", resolved)


def _silent(st):
    from dataclasses import replace

    return replace(st, verbosity=-1)
