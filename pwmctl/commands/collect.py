"""`pwmctl collect`: real-environment rollouts into a dataset artifact."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import typer

from pwmctl.console import Progress, emit, fail, info, interrupts_as_keyboard_interrupt, state
from pwmctl.runs import published_by, read_plan, write_plan

DATASET_DIR = "data.zarr"


def collect(
    ctx: typer.Context,
    tasks: str = typer.Argument(
        None, help="A task (walker-walk), a set (mt30, mt80) or a comma-separated list.", show_default=False
    ),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes per task."),
    policy: str = typer.Option("random", "--policy", help="Behaviour policy: random, or a policy artifact ref."),
    noise: str = typer.Option(
        "uniform",
        "--noise",
        help="Random policy's actions: uniform (new each step, "
        "TD-MPC2's seeding) | pink (1/f noise: actions persist, far wider state coverage).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the environments and the policy."),
    name: str = typer.Option(None, "--name", help="Dataset name [default: the task or set name]."),
    append: str = typer.Option(None, "--append", help="Add the episodes to a new version of this dataset."),
    workers: int = typer.Option(
        1,
        "--workers",
        "-j",
        min=1,
        help="Environment worker processes (a resumed "
        "run keeps its own: the env layout decides which episodes it records).",
    ),
    resume: str = typer.Option(None, "--resume", help="Finish an interrupted collection (its run id)."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print what would be collected (tasks, episodes, env steps, "
        "policy, seeds, dataset name); collect nothing.",
    ),
) -> None:
    """Roll out a policy in the real environments and publish the episodes as a dataset.

    Every finished episode is committed at once: Ctrl-C (or SIGTERM) publishes the episodes
    completed so far, and after a hard kill `--resume RUN` finishes the job, recording the same
    episodes the uninterrupted run would have.
    """
    from pwm_core.collect import collect as run_collect
    from pwm_core.collect import NOISES, check_policy_dims, learned_policy, random_policy
    from pwm_core.data import EpisodeWriter, open_dataset
    from pwm_core.seeding import seed_everything
    from pwm_core.tasks import resolve_tasks
    from registry.errors import DiskError
    from registry.refs import check_name, parse_ref

    st = state(ctx)
    if noise not in NOISES:
        raise fail(f"unknown --noise {noise!r}: use {' or '.join(NOISES)}")
    reg = st.registry()
    if resume and dry_run:
        raise fail("--dry-run plans a new collection; `pwmctl runs show RUN` shows a run's plan")
    # Everything is checked before anything is done: a bad name or ref fails here, not after collecting.
    if resume:
        run = reg.run_dir(resume)
        plan = read_plan(run, "collect")
        noise = plan.get("noise", "uniform")
        tasks, episodes, policy = plan["tasks"], plan["episodes"], plan["policy"]
        seed, name = plan["seed"], plan["name"]
        workers = plan.get("workers", workers)
        append = plan.get("append")
        done = published_by(reg, "dataset", name, run)
        if done is not None:  # killed after its publish, before the run folder was removed
            shutil.rmtree(run, ignore_errors=True)
            raise fail(f"run {run.name} already published {done.ref}; nothing left to collect")
    elif tasks is None and append is None:
        raise fail("no task given: name a task, e.g. `pwmctl collect walker-walk --episodes 10`")
    else:
        run = None
    parent = reg.resolve(parse_ref(append, default_kind="dataset")) if append else None
    if parent is not None and parent.kind != "dataset":
        raise fail(f"--append needs a dataset, got {parent.ref}")
    if tasks is None:
        tasks = ",".join(parent.manifest.get("tasks", []))
    task_set = resolve_tasks(tasks)
    if parent is not None:
        data_set = open_dataset(parent.path / DATASET_DIR).task_set
        missing = [t for t in task_set.names if t not in data_set]
        if missing:
            raise fail(
                f"{parent.ref} holds tasks {', '.join(data_set.names)}; it cannot take {', '.join(missing)}. "
                "Collect into a new dataset instead (drop --append)"
            )
        name = name or parent.name
    else:
        data_set = task_set
        name = name or _default_name(task_set)
    check_name(name, "dataset name")
    behaviour = None
    if policy != "random":  # a learned policy acts with its exploration noise (tanh of a Gaussian sample)
        from pwm_core.train import load_policy

        pol_artifact = reg.resolve(policy, default_kind="policy")
        if pol_artifact.kind != "policy" or set(task_set.names) != set(pol_artifact.tasks):
            raise fail(
                f"{pol_artifact.ref} acts on {', '.join(pol_artifact.tasks) or 'no task'}; collect those "
                f"tasks with it (`pwmctl collect {','.join(pol_artifact.tasks)} --policy {pol_artifact.ref}`)"
            )
        policy = pol_artifact.ref
        loaded = load_policy(pol_artifact.path)
        check_policy_dims(loaded.config, data_set)  # as eval does: obs / act widths of the task
        behaviour = learned_policy(loaded, seed, data_set.act_dim)
    if dry_run:
        steps = episodes * sum(t.episode_length for t in task_set)
        doc = {
            "dry_run": True,
            "tasks": list(task_set.names),
            "episodes_per_task": episodes,
            "env_steps": steps,
            "policy": policy,
            "noise": noise if policy == "random" else None,
            "seed": seed,
            "workers": workers,
            "dataset": f"dataset/{name}",
            "append": parent.ref if parent else None,
        }
        emit(
            st,
            doc,
            lambda: typer.echo(
                f"would collect {episodes} episode(s) of each of {len(task_set)} task(s) "
                f"({', '.join(task_set.names[:6])}"
                f"{' ...' if len(task_set) > 6 else ''}): {steps:,} agent steps with {policy}"
                f"{f' ({noise} noise)' if policy == 'random' else ''}, seed {seed}, {workers} worker(s), into "
                f"dataset/{name}" + (f" (a new version of {parent.ref})" if parent else "")
            ),
        )
        return

    # A full or read-only disk stops the run with one line; the episodes it committed stay for --resume.
    writer, resumed = None, run is not None
    try:
        if run is not None:
            writer = EpisodeWriter.open(run / DATASET_DIR)
        else:
            run = reg.new_run_dir("collect")
            write_plan(
                run,
                dict(
                    command="collect",
                    tasks=tasks,
                    episodes=episodes,
                    policy=policy,
                    seed=seed,
                    name=name,
                    append=parent.ref if parent else None,
                    noise=noise,
                    workers=workers,
                ),
            )
            if parent is not None:
                shutil.copytree(parent.path / DATASET_DIR, run / DATASET_DIR)
                writer = EpisodeWriter.open(run / DATASET_DIR)
            else:
                writer = EpisodeWriter.create(
                    run / DATASET_DIR,
                    data_set,
                    provenance={
                        "source": "pwmctl collect",
                        "policy": policy,
                        "seed": seed,
                        **({"noise": noise} if policy == "random" else {}),
                    },
                )

        have = open_dataset(run / DATASET_DIR).per_task_counts()
        base = {} if parent is None else open_dataset(parent.path / DATASET_DIR).per_task_counts()
        done = {t: max(0, have.get(t, 0) - base.get(t, 0)) for t in task_set.names}  # by an interrupted run
        todo = {t: max(0, episodes - done[t]) for t in task_set.names}
        seed_everything(seed)
        info(
            st,
            f"collecting {sum(todo.values())} episodes of {len(task_set)} task(s) with a {policy} policy, "
            f"{workers} worker(s); run {run.name}",
        )
        t0, steps, returns = time.monotonic(), [0], []

        with Progress(st, "collect", total=sum(todo.values())) as bar:

            def on_episode(ep) -> None:
                returns.append(ep.ret)
                steps[0] += ep.steps
                dt = max(time.monotonic() - t0, 1e-9)
                bar.update(
                    1, ep_per_s=len(returns) / dt, steps_per_s=steps[0] / dt, mean_return=sum(returns) / len(returns)
                )

            with interrupts_as_keyboard_interrupt():
                result = run_collect(
                    writer,
                    todo,
                    data_set,
                    behaviour or random_policy(seed, data_set.act_dim, noise),
                    seed=seed,
                    workers=workers,
                    on_episode=on_episode,
                    done=done,
                )
        writer.close()
        elapsed = time.monotonic() - t0
        if not result.episodes and parent is None and not any(have.values()):
            shutil.rmtree(run, ignore_errors=True)
            raise fail("interrupted before any episode finished; nothing was published")
        artifact = _publish(
            reg,
            run,
            name,
            data_set,
            parent,
            dict(
                tasks=task_set.names,
                episodes=episodes,
                policy=policy,
                seed=seed,
                workers=workers,
                **({"noise": noise} if policy == "random" else {}),
            ),
        )
    except (OSError, DiskError) as e:
        if writer is not None:
            writer.close()
        _stop_if_disk_trouble(e, run, resumed, parent)
        raise
    summary = {
        "artifact": artifact.ref,
        "episodes": len(result.episodes),
        "env_steps": result.env_steps,
        "seconds": round(elapsed, 2),
        "env_steps_per_s": round(result.env_steps / max(elapsed, 1e-9), 1),
        "mean_return": (sum(returns) / len(returns)) if returns else None,
        "interrupted": result.interrupted,
    }
    emit(
        st,
        summary,
        lambda: typer.echo(
            f"{'interrupted: ' if result.interrupted else ''}published {artifact.ref}: "
            f"{len(result.episodes)} new episodes, {result.env_steps} env steps in {elapsed:.1f}s "
            f"({summary['env_steps_per_s']:.0f} steps/s)"
            + (f", mean return {summary['mean_return']:.1f}" if returns else "")
        ),
    )
    if result.interrupted:
        raise typer.Exit(130)


def _publish(reg, run: Path, name: str, task_set, parent, config: dict):
    from pwm_core.data import fsck, open_dataset

    fsck(run / DATASET_DIR, repair=True)  # an interrupt inside an append leaves an uncommitted tail
    ds = open_dataset(run / DATASET_DIR)
    tasks = sorted(ds.per_task_counts())
    metrics = {
        "episodes": ds.num_episodes,
        "transitions": ds.num_transitions,
        "mean_return": float(ds.episode_returns().mean()),
    }
    with reg.stage("dataset", name) as staging:
        # Hard links (a copy where links cannot be made): the run keeps its episodes until the index row is
        # committed, so a kill at any point of the publish leaves either the run (`--resume` publishes it)
        # or the published version (`--resume` says so), never episodes stranded in staging.
        shutil.copytree(run / DATASET_DIR, staging.path / DATASET_DIR, copy_function=_link_or_copy)
        artifact = staging.publish(
            parents=[parent.ref] if parent else [], tasks=tasks, config=config, metrics=metrics, extra={"run": run.name}
        )
    shutil.rmtree(run, ignore_errors=True)
    return artifact


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _stop_if_disk_trouble(error: Exception, run: Path | None, resumed: bool, parent) -> None:
    """A full or read-only disk: one error line saying so and what was kept (a fresh run that
    committed no episode is removed); any other error is left to the caller."""
    from pwm_core.data import open_dataset
    from pwm_core.errors import DatasetError
    from registry.errors import DiskError

    disk = error if isinstance(error, DiskError) else DiskError.from_os_error(error)
    if disk is None:
        return
    try:  # episodes of this collection, not those copied from the --append parent
        new = open_dataset(run / DATASET_DIR).num_episodes if run is not None else 0
        new -= open_dataset(parent.path / DATASET_DIR).num_episodes if parent is not None else 0
    except (DatasetError, OSError):  # stopped while the dataset was being created or copied
        new = 0
    if run is None or (new <= 0 and not resumed):
        if run is not None:
            shutil.rmtree(run, ignore_errors=True)
        raise fail(f"{disk}; nothing was collected")
    raise fail(
        f"{disk}; the {new} episodes committed so far are kept in run {run.name}: then "
        f"`pwmctl collect --resume {run.name}` finishes the collection"
    )


def _default_name(task_set) -> str:
    return task_set.name if len(task_set.names) == 1 or "," not in task_set.name else "_".join(task_set.names)
