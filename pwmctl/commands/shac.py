"""`pwmctl shac`: SHAC (short-horizon actor-critic) through a differentiable simulator's gradients."""

from __future__ import annotations

import difflib
import math
import time
from pathlib import Path

import typer

from pwmctl.console import Progress, ProgressCallback, emit, fail, info, state
from pwmctl.resolve import print_dry_run, resolve_config
from pwmctl.runs import LOGGER_HELP, METRICS, check_loggers, read_jsonl, read_plan, training_callbacks, write_plan

CHECKPOINT = "checkpoint.pt"
DATASET_DIR = "data.zarr"
EVAL_SEED_OFFSET = 10_000  # in-training evaluations use other env seeds than `pwmctl eval`
SHAC_TASKS = ("diffsim-cartpole-swingup", "diffsim-double-pendulum")
# Short names, only inside this command: `cartpole-swingup` elsewhere is the dm_control task of MT30.
ALIASES = {"cartpole-swingup": "diffsim-cartpole-swingup", "double-pendulum": "diffsim-double-pendulum"}


def shac(
    ctx: typer.Context,
    task: str = typer.Argument(
        None,
        help="cartpole-swingup | double-pendulum (here short for the diffsim tasks "
        "diffsim-cartpole-swingup / diffsim-double-pendulum, not the DMC ones).",
        show_default=False,
    ),
    epochs: int = typer.Option(
        None,
        "--epochs",
        min=1,
        help="SHAC epochs: windows of h=32 steps x N envs, one "
        "actor update each; also the lr-decay length \\[default: 500].",
    ),
    num_envs: int = typer.Option(None, "--num-envs", min=1, help="Parallel simulated envs N \\[default: 64]."),
    seed: int = typer.Option(
        None, "--seed", help="Seeds the network init, start states and action noise \\[default: 0]."
    ),
    eval_every: int = typer.Option(
        50, "--eval-every", min=0, help="Real-env evaluation every N epochs (0: only at the end)."
    ),
    eval_episodes: int = typer.Option(10, "--eval-episodes", min=1, help="Episodes per evaluation (one seed each)."),
    name: str = typer.Option(None, "--name", help="Policy name \\[default: shac-<task>, e.g. shac-cartpole-swingup]."),
    config: Path = typer.Option(None, "--config", help="YAML file of SHACConfig fields."),
    overrides: list[str] = typer.Option(
        None,
        "--set",
        help="key=value SHACConfig override (repeatable), e.g. actor_lr=2e-3, horizon=16, actor_units=[128,64].",
    ),
    resume: str = typer.Option(None, "--resume", help="Continue an interrupted run (its run id)."),
    record: int = typer.Option(
        0,
        "--record",
        min=0,
        help="Record the complete training episodes of the first K "
        "envs (observations, sampled actions, rewards) and publish them as dataset/<data-name>: "
        "SHAC-collected data for `pwmctl pretrain`, as in PWM's dflex protocol (0: off).",
    ),
    data_name: str = typer.Option(
        None,
        "--data-name",
        help="Name of the recorded dataset \\[default: the policy name, e.g. shac-cartpole-swingup].",
    ),
    threads: int = typer.Option(
        1,
        "--threads",
        min=1,
        help="torch threads while training; the networks are "
        "tiny, so more threads mostly spin (2 were ~8x slower than 1 on a busy 2-core box).",
    ),
    logger: list[str] = typer.Option(None, "--logger", help=LOGGER_HELP),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config with where each value came from; train nothing."
    ),
) -> None:
    """Train a policy with SHAC on a Warp differentiable simulator and publish it as policy/<name>.

    Short-horizon actor-critic (Xu et al. 2022): N envs roll on in windows of 32 steps, the actor takes
    one Adam step on the window's return backpropagated through the simulator, a TD(lambda) critic
    bootstraps the rest. Defaults are DiffRL's cartpole swing-up settings (64 envs, 500 epochs, 64-64
    ELU+LayerNorm MLPs, lr 1e-2 / 1e-3, target alpha 0.2); the double pendulum uses the same. Tasks:
    cartpole-swingup and double-pendulum, which in this command mean the diffsim tasks (the DMC
    cartpole-swingup has no differentiable simulator; use `pwmctl extract` for it). Evaluates the
    deterministic policy in the real env every --eval-every epochs (env seeds 10000..), checkpoints
    then and on Ctrl-C / SIGTERM; `--resume RUN` continues bitwise. `pwmctl eval policy/NAME`
    scores it (diffsim scores are raw returns).
    """
    from pwm_core.diffsim import make_sim
    from pwm_core.diffsim.shac import SHAC, SHACConfig, save_shac_policy, validate_config
    from pwm_core.studies.common import torch_threads
    from pwm_core.tasks import get_task
    from pwm_core.train.loop import CHECKPOINT_EVERY_S, Every, Loop
    from registry.refs import check_name

    st = state(ctx)
    loggers = check_loggers(logger)
    reg = st.registry()
    if resume and dry_run:
        raise fail("--dry-run plans a new run; `pwmctl runs show RUN` shows a run's config")
    if resume:
        run = reg.run_dir(resume)
        plan = read_plan(run, "shac")
        task, name = plan["task"], plan["name"]
        cfg = SHACConfig.from_dict(plan["shac"])
        eval_every, eval_episodes = plan["eval_every"], plan["eval_episodes"]
        record, data_name = plan.get("record", 0), plan.get("data_name")
        loggers = loggers or plan.get("loggers", [])
        if epochs is not None and epochs != cfg.epochs:
            cfg.epochs = epochs
            validate_config(cfg)
            write_plan(run, {**plan, "shac": cfg.to_dict()})
    else:
        if task is None:
            raise fail("name the task: `pwmctl shac cartpole-swingup` (or double-pendulum)")
        task = resolve_shac_task(task)
        resolved = resolve_config(
            SHACConfig(),
            home=st.home,
            section="shac",
            config_file=config,
            overrides=overrides,
            flags=dict(epochs=epochs, num_envs=num_envs, seed=seed),
            validate=validate_config,
        )
        cfg = resolved.cfg
        name = check_name(name or "shac-" + short_name(task), "policy name")
        if record > cfg.num_envs:
            raise fail(f"--record {record} > --num-envs {cfg.num_envs}: record at most every env")
        data_name = check_name(data_name or name, "dataset name") if record else None
        if dry_run:
            doc = {
                "dry_run": True,
                "task": task,
                "name": name,
                "eval_every": eval_every,
                "eval_episodes": eval_episodes,
                "record": record,
                "data_name": data_name,
                **resolved.as_doc(),
            }
            emit(
                st,
                doc,
                lambda: print_dry_run(
                    f"policy {name}: SHAC on {task}",
                    resolved,
                    {
                        "evaluation": f"every {eval_every} epochs, {eval_episodes} episodes",
                        "recording": f"{record} envs -> dataset/{data_name}" if record else "off",
                    },
                ),
            )
            return
        run = reg.new_run_dir("shac")
        write_plan(
            run,
            {
                "command": "shac",
                "task": task,
                "name": name,
                "shac": cfg.to_dict(),
                "eval_every": eval_every,
                "eval_episodes": eval_episodes,
                "record": record,
                "data_name": data_name,
                "loggers": loggers,
            },
        )
    spec = get_task(task)
    agent = SHAC(cfg, make_sim(short_name(spec.name)))
    writer = None
    if record:
        from pwm_core.data import EpisodeWriter
        from pwm_core.tasks import resolve_tasks

        if (run / DATASET_DIR).exists():
            writer = EpisodeWriter.open(run / DATASET_DIR)
        else:
            writer = EpisodeWriter.create(
                run / DATASET_DIR,
                resolve_tasks(spec.name),
                provenance={"source": "pwmctl shac", "run": run.name, "recorded_envs": record, "seed": cfg.seed},
            )
        agent.record_episodes(writer, record, spec.name)
    if (run / CHECKPOINT).exists():
        agent.load_checkpoint(run / CHECKPOINT)
        info(st, f"resumed {run.name} at epoch {agent.epoch_count}")
    info(
        st,
        f"SHAC on {spec.name}: {cfg.epochs} epochs x {cfg.num_envs} envs x h={cfg.horizon}, actor "
        f"{list(cfg.actor_units)} lr {cfg.actor_lr:g}, critic {list(cfg.critic_units)} lr {cfg.critic_lr:g}, "
        f"seed {cfg.seed}; run {run.name}",
    )

    t0 = time.monotonic()
    with Progress(st, f"shac {short_name(spec.name)}", total=cfg.epochs) as bar, torch_threads(threads):

        def log_eval(state, ev):
            bar.log(f"epoch {state.step}: eval return {ev['eval_return']:.1f}")

        callbacks = [
            Every(eval_every, lambda: evaluate_shac(agent, spec, eval_episodes), then=log_eval),
            *training_callbacks(
                run,
                "shac",
                lambda: agent.save_checkpoint(run / CHECKPOINT),
                eval_every,
                CHECKPOINT_EVERY_S,
                1,
                loggers,
                name,
                cfg.to_dict(),
                step_key="epoch",
                rate_key="epochs_per_s",
            ),
            ProgressCallback(
                bar,
                ("actor_loss", "value_loss", "episode_return", "eval_return"),
                rename={"value_loss": "critic_loss", "episode_return": "train_return", "eval_return": "eval"},
            ),
        ]
        result = Loop(
            lambda: {k: _finite(v) for k, v in agent.epoch().items()}, lambda: agent.epoch_count, cfg.epochs, callbacks
        ).run()
    if result.interrupted:
        if writer is not None:
            writer.close()
        info(
            st,
            f"interrupted at epoch {agent.epoch_count}; checkpoint saved. "
            f"Continue with `pwmctl shac --resume {run.name}`",
        )
        raise typer.Exit(130)

    curve = [[r["epoch"], r["eval_return"]] for r in read_jsonl(run / METRICS) if "eval_return" in r]
    recent = agent.finished_returns[-100:]  # the last 100 training episodes (with exploration noise)
    train_return = _finite(sum(recent) / len(recent)) if recent else None
    dataset = None
    if writer is not None:
        agent.save_checkpoint(run / CHECKPOINT)  # commits the last recorded episodes
        writer.close()
        dataset = publish_recording(reg, run, data_name, spec.name, cfg)
        info(
            st,
            f"published {dataset.ref}: {dataset.manifest['metrics']['episodes']} episodes recorded from "
            f"{record} training env(s)"
            if dataset
            else f"no complete episode was recorded ({agent.epoch_count} "
            f"epochs x {cfg.horizon} steps); no dataset published",
        )
    with reg.stage("policy", name) as staging:
        save_shac_policy(agent, spec.name, staging.path, metadata={"simulator": agent.sim.name, "run": run.name})
        (staging.path / METRICS).write_bytes((run / METRICS).read_bytes())
        artifact = staging.publish(
            parents=[],
            tasks=[spec.name],
            config={"shac": cfg.to_dict()},
            metrics={
                "epochs": agent.epoch_count,
                "train_seconds": round(time.monotonic() - t0, 1),
                "eval_return": curve[-1][1],
                "train_episode_return": train_return,
                "learning_curve": curve,
            },
            extra={
                "run": run.name,
                "eval_seeds": f"{EVAL_SEED_OFFSET}..{EVAL_SEED_OFFSET + eval_episodes - 1}",
                **({"dataset": dataset.ref} if dataset else {}),
            },
        )
    doc = {
        "artifact": artifact.ref,
        "task": spec.name,
        "epochs": agent.epoch_count,
        "eval_return": curve[-1][1],
        "eval_episodes": eval_episodes,
        "learning_curve": curve,
        "run": run.name,
        "dataset": dataset.ref if dataset else None,
    }
    emit(
        st,
        doc,
        lambda: typer.echo(
            f"published {doc['artifact']}: {doc['epochs']} epochs, eval return "
            f"{doc['eval_return']:.1f} over {eval_episodes} episodes"
        ),
    )


def publish_recording(reg, run, name: str, task: str, cfg):
    """Move the run's recorded episodes into a new version of dataset/<name> (kept in the run on failure);
    None when no complete episode was recorded."""
    import os

    from pwm_core.data import open_dataset

    ds = open_dataset(run / DATASET_DIR)
    if ds.num_episodes == 0:
        return None
    metrics = {
        "episodes": ds.num_episodes,
        "transitions": ds.num_transitions,
        "mean_return": float(ds.episode_returns().mean()),
    }
    with reg.stage("dataset", name) as staging:
        os.replace(run / DATASET_DIR, staging.path / DATASET_DIR)
        try:
            return staging.publish(
                parents=[],
                tasks=[task],
                metrics=metrics,
                config={"source": "pwmctl shac", "run": run.name, "shac": cfg.to_dict()},
            )
        except BaseException:
            os.replace(staging.path / DATASET_DIR, run / DATASET_DIR)
            raise


def resolve_shac_task(task: str) -> str:
    """The diffsim task SHAC trains on for ``task`` (a short alias or the full name); anything else ends
    with one line saying what SHAC can train."""
    from pwm_core.tasks import TASKS

    name = ALIASES.get(task, task)
    if name in SHAC_TASKS:
        return name
    choices = "cartpole-swingup or double-pendulum (the diffsim tasks)"
    if name in ("ball-wall", "diffsim-ball-wall"):
        raise fail(
            f"{name} is a one-action throw with nothing to control over time; SHAC trains on {choices}. "
            "The ball-wall landscape is `pwmctl study ball-wall`"
        )
    if name in TASKS:
        raise fail(
            f"{name} is a {TASKS[name].suite} task without a differentiable simulator; SHAC trains on "
            f"{choices}. Learn {name} from a world model with `pwmctl extract {name}`"
        )
    close = difflib.get_close_matches(task, [*ALIASES, *SHAC_TASKS], n=1, cutoff=0.6)
    raise fail(f"unknown SHAC task {task!r}: " + (f"did you mean {close[0]!r}?" if close else f"choose {choices}"))


def short_name(task: str) -> str:
    """diffsim-cartpole-swingup -> cartpole-swingup (the simulator's name)."""
    return task.removeprefix("diffsim-")


def evaluate_shac(agent, spec, episodes: int) -> dict:
    """Deterministic real-env (DiffSimEnv) evaluation of the agent's current policy, exactly as the
    published artifact acts, on seeds 10000.. (apart from `pwmctl eval`'s): mean and std of the return."""
    from pwm_core.diffsim.shac import ShacPolicy
    from pwm_core.evaluate import evaluate

    policy = ShacPolicy.from_shac(agent, spec.name)
    seeds = [EVAL_SEED_OFFSET + i for i in range(episodes)]
    ev = evaluate(
        {"policy": lambda obs, specs: policy.act(obs)},
        [spec.name],
        seeds,
        1,
        obs_dim=spec.obs_dim,
        act_dim=spec.act_dim,
    )
    returns = [e.ret for e in ev.episodes]
    mean = sum(returns) / len(returns)
    return {
        "eval_return": float(mean),
        "eval_return_std": float(math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))),
    }


def _finite(v):
    """JSON-safe metric: NaN / inf (e.g. no finished episode yet) -> None."""
    return v if not isinstance(v, float) or math.isfinite(v) else None
