"""`pwmctl import-checkpoint`: released TD-MPC2 / PWM checkpoints into worldmodel artifacts."""

from __future__ import annotations

from pathlib import Path

import typer

from pwmctl.console import emit, fail, state


def import_checkpoint(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="TD-MPC2 or PWM checkpoint (.pt; state dict under 'model')."),
    tasks: str = typer.Option(..., "--tasks", help="mt30 | mt80: the set the checkpoint was trained on."),
    size: str = typer.Option(..., "--size", help="1M, 5M, 19M, 48M or 317M: must match the file."),
    name: str = typer.Option(None, "--name", help="World-model name \\[default: <tasks>-<size>]."),
) -> None:
    """Convert a released TD-MPC2 / PWM `.pt` checkpoint into a worldmodel artifact (safetensors).

    Loads with `torch.load(weights_only=True)`: nothing is unpickled beyond tensors. Any missing,
    unexpected or mis-shaped tensor fails with the list of them.
    """
    from pwm_core.nn import count_parameters, save_world_model, world_model_config
    from pwm_core.nn.checkpoint import import_tdmpc2_checkpoint
    from pwm_core.tasks import resolve_tasks

    st = state(ctx)
    if not path.is_file():
        raise fail(f"no such checkpoint file: {path}")
    task_set = resolve_tasks(tasks)
    model_cfg = world_model_config(size, task_set)
    model = import_tdmpc2_checkpoint(path, model_cfg)
    reg = st.registry()
    name = name or f"{task_set.name}-{model_cfg.size.lower()}"
    with reg.stage("worldmodel", name) as staging:
        save_world_model(model, staging.path)
        artifact = staging.publish(tasks=list(task_set.names), config={"model": model_cfg.to_dict()},
                                   metrics={"parameters": count_parameters(model_cfg)["total"]},
                                   extra={"imported_from": str(path.resolve())})
    emit(st, {"artifact": artifact.ref, "source": str(path)},
         lambda: typer.echo(f"published {artifact.ref} from {path}"))
