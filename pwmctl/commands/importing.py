"""`pwmctl import-checkpoint`: released TD-MPC2 / PWM checkpoints into worldmodel artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from pwmctl.console import ByteProgress, State, emit, fail, state

DOWNLOADS = "downloads"  # $PWM_HOME/downloads: Hub checkpoints while they are imported (a part file resumes)
# Released files name their set and size: TD-MPC2's mt30-48M.pt, PWM's mt30_48M_4900000.pt.
_NAMED = {
    "tasks": re.compile(r"(?<![a-z0-9])(mt30|mt80)(?![0-9])", re.IGNORECASE),
    "size": re.compile(r"(?<![a-z0-9.])(1|5|19|48|317)m(?![a-z0-9])", re.IGNORECASE),
}
_EXAMPLE = "hf://nicklashansen/tdmpc2/multitask/mt30-48M.pt"


def import_checkpoint(
    ctx: typer.Context,
    source: str = typer.Argument(
        ...,
        help="A checkpoint file (.pt; state dict under 'model'), or a Hub file: "
        f"{_EXAMPLE}, hf://imgeorgiev/pwm/multitask/mt30_48M_4900000.pt, "
        "hf://ORG/NAME\\[@REV]/PATH.",
    ),
    tasks: str = typer.Option(
        None,
        "--tasks",
        help="mt30 | mt80: the set the checkpoint was trained on \\[default: from the file name, e.g. mt30-48M.pt].",
    ),
    size: str = typer.Option(
        None, "--size", help="1M, 5M, 19M, 48M or 317M: must match the file \\[default: from the file name]."
    ),
    name: str = typer.Option(None, "--name", help="World-model name \\[default: <tasks>-<size>]."),
    hub_endpoint: str = typer.Option(
        None,
        "--hub-endpoint",
        envvar="PWMCTL_HUB_ENDPOINT",
        help="Hub URL (default: config hub.endpoint, else HF_ENDPOINT, else https://huggingface.co).",
    ),
) -> None:
    """Convert a released TD-MPC2 / PWM `.pt` checkpoint, local or on the Hub, into a worldmodel artifact
    (safetensors).

    Loads with `torch.load(weights_only=True)`: nothing is unpickled beyond tensors. Any missing,
    unexpected or mis-shaped tensor fails with the list of them. A Hub file is pinned to a commit,
    downloaded with progress into $PWM_HOME/downloads (an interrupted download resumes), checked
    against the Hub's sha256 and removed once imported.
    """
    from pwm_core.nn import count_parameters, save_world_model, world_model_config
    from pwm_core.nn.checkpoint import import_tdmpc2_checkpoint
    from pwm_core.tasks import resolve_tasks
    from registry.hub_files import is_file_ref
    from registry.refs import check_name

    st = state(ctx)
    local = Path(source).expanduser()
    if not local.is_file() and not is_file_ref(source):
        raise fail(f"no such checkpoint file: {source} (a Hub file is hf://ORG/NAME/PATH, e.g. {_EXAMPLE})")
    file_name = source.rstrip("/").rsplit("/", 1)[-1]
    tasks, size = tasks or _infer(file_name, "tasks"), size or _infer(file_name, "size")
    task_set = resolve_tasks(tasks)
    model_cfg = world_model_config(size, task_set)
    name = name or f"{task_set.name}-{model_cfg.size.lower()}"
    check_name(name, "world-model name")  # before any download
    reg = st.registry()
    if local.is_file():
        path, origin, hub = local, str(local.resolve()), None
    else:
        path, origin, hub = _download(st, reg.home, source, hub_endpoint)
    model = import_tdmpc2_checkpoint(path, model_cfg)
    with reg.stage("worldmodel", name) as staging:
        save_world_model(model, staging.path)
        artifact = staging.publish(
            tasks=list(task_set.names),
            config={"model": model_cfg.to_dict()},
            metrics={"parameters": count_parameters(model_cfg)["total"]},
            extra={"imported_from": origin, **({"hub": hub} if hub else {})},
        )
    if hub is not None:
        path.unlink(missing_ok=True)  # imported: the artifact holds the weights
    emit(
        st, {"artifact": artifact.ref, "source": origin}, lambda: typer.echo(f"published {artifact.ref} from {origin}")
    )


def _infer(file_name: str, what: str) -> str:
    """--tasks or --size from a released file's name, else one error line asking for the flag."""
    found = _NAMED[what].search(file_name)
    if found is None:
        raise fail(
            f"cannot tell the {'task set' if what == 'tasks' else 'model size'} from the name {file_name!r}: "
            f"pass --{what} (released files are named like mt30-48M.pt or mt80_48M_2700000.pt)"
        )
    return found[1].lower() if what == "tasks" else f"{found[1]}M"


def _download(st: State, home: Path, source: str, flag: str | None) -> tuple[Path, str, dict]:
    """The Hub file ``source`` downloaded into $PWM_HOME/downloads (pinned to a commit, resumable, checked):
    (path, its pinned hf:// ref, the provenance to record)."""
    from pwmctl.commands.hub import _endpoint
    from registry.hub import HubError
    from registry.hub_files import HF_SCHEME, download, find_file, parse_file_ref

    endpoint = _endpoint(st, flag)
    try:
        file = find_file(parse_file_ref(source), endpoint)
    except HubError as e:
        if source.startswith(HF_SCHEME):
            raise
        raise HubError(f"no such checkpoint file {source}, nor on the Hub: {e}") from None
    dest = home / DOWNLOADS / f"{file.ref.repo.replace('/', '--')}--{file.ref.revision}--{file.name}"
    with ByteProgress(st, f"download {file.ref.path}") as bar:
        download(file, dest, progress=bar)
    return (
        dest,
        str(file.ref),
        {
            "repo": file.ref.repo,
            "repo_type": file.ref.repo_type,
            "path": file.ref.path,
            "commit": file.ref.revision,
            "endpoint": endpoint,
            "sha256": file.sha256,
        },
    )
