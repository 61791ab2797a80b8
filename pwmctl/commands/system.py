"""`pwmctl doctor` and `pwmctl tasks`: what is installed, and what tasks exist."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil

import typer
from rich.table import Table

from pwm_core.render import HEADLESS_GL
from pwmctl.console import emit, human_size, render_table, state

_PACKAGES = (
    "torch",
    "numpy",
    "mujoco",
    "dm_control",
    "metaworld",
    "zarr",
    "huggingface_hub",
    "safetensors",
    "warp-lang",
    "typer",
    "rich",
    "imageio",
    "imageio-ffmpeg",
    "pyarrow",
)


LOW_DISK_BYTES = 2 * 1024**3  # below this free on the registry's disk, doctor warns
HUB_TIMEOUT_S = 3.0


def doctor(
    ctx: typer.Context,
    hub_endpoint: str = typer.Option(
        None,
        "--hub-endpoint",
        envvar="PWMCTL_HUB_ENDPOINT",
        help="Hub URL to check (default: config hub.endpoint, else HF_ENDPOINT, else https://huggingface.co).",
    ),
) -> None:
    """Versions, the torch build, headless rendering and video, the Hub, PWM_HOME and free disk:
    paste this into bug reports. Every check is ok or warn (e.g. no network); none fails the command."""
    from pwmctl.commands.hub import _endpoint
    from registry.hub import hub_status

    st = state(ctx)
    versions = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    import torch

    cuda = {
        "available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    torch_build = {"version": torch.__version__, "cuda": torch.version.cuda, **cuda}
    cpu_flags = _cpu_flags()
    render = {backend: _render_works(backend) for backend in HEADLESS_GL}
    video = _video_check()
    hub = hub_status(_endpoint(st, hub_endpoint), timeout_s=HUB_TIMEOUT_S)
    st.home.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(st.home).free
    checks = [
        _torch_row(torch_build),
        _render_row(render),
        _video_row(video),
        *_hub_rows(hub),
        (
            "registry disk",
            "ok" if free >= LOW_DISK_BYTES else "warn",
            f"{human_size(free)} free at {st.home}"
            + (
                ""
                if free >= LOW_DISK_BYTES
                else f" (under {human_size(LOW_DISK_BYTES)}: datasets and checkpoints may not fit)"
            ),
        ),
    ]
    report = {
        "versions": versions,
        "cuda": cuda,
        "torch": torch_build,
        "cpu": {
            "cores": os.cpu_count(),
            "amx_bf16": "amx_bf16" in cpu_flags,
            "avx512f": "avx512f" in cpu_flags,
            "torch_threads": torch.get_num_threads(),
        },
        "render": {k: {"ok": ok, "reason": why} for k, (ok, why) in render.items()},
        "video": video,
        "hub": hub.to_dict(),
        "home": str(st.home),
        "free_disk_bytes": free,
        "checks": [{"check": name, "status": status, "detail": detail} for name, status, detail in checks],
    }

    def human() -> None:
        table = Table(title="pwmctl doctor", show_header=False)
        for k, v in versions.items():
            table.add_row(k, v or "[red]not installed[/]")
        table.add_row(
            "CPU",
            f"{os.cpu_count()} cores, AMX-bf16 {'yes' if report['cpu']['amx_bf16'] else 'no'}, "
            f"AVX-512 {'yes' if report['cpu']['avx512f'] else 'no'}",
        )
        table.add_row("PWM_HOME", str(st.home))
        typer.echo(render_table(table))
        checks_table = Table(title="checks")
        for col in ("check", "status", "detail"):
            checks_table.add_column(col)
        for name, status, detail in checks:
            checks_table.add_row(name, "[green]ok[/]" if status == "ok" else "[yellow]warn[/]", detail)
        typer.echo(render_table(checks_table))

    emit(st, report, human)


def _torch_row(build: dict) -> tuple[str, str, str]:
    kind = f"CUDA {build['cuda']} build" if build["cuda"] else "CPU-only build"
    if build["available"]:
        return "torch build", "ok", f"torch {build['version']}, {kind}; GPU: {', '.join(build['devices'])}"
    if build["cuda"]:
        return "torch build", "warn", f"torch {build['version']}, {kind}, but no GPU is visible (CPU only)"
    return "torch build", "ok", f"torch {build['version']}, {kind} (install a CUDA build of torch for GPUs)"


def _render_row(render: dict[str, tuple[bool, str]]) -> tuple[str, str, str]:
    detail = ", ".join(
        f"MUJOCO_GL={k}: " + ("ok" if ok else why.removeprefix(f"MUJOCO_GL={k} ")) for k, (ok, why) in render.items()
    )
    working = any(ok for ok, _ in render.values())
    return (
        "headless render",
        "ok" if working else "warn",
        detail + ("" if working else " (`pwmctl eval --video` needs one)"),
    )


def _video_check() -> dict:
    """imageio + imageio-ffmpeg and its ffmpeg binary: what `pwmctl eval --video` writes mp4 files with."""
    from pwm_core.render import video_writer_problem

    problem = video_writer_problem()
    ffmpeg = None
    if problem is None:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    return {"ok": problem is None, "reason": problem or "", "ffmpeg": ffmpeg}


def _video_row(video: dict) -> tuple[str, str, str]:
    if video["ok"]:
        return "video files", "ok", f"imageio + imageio-ffmpeg, ffmpeg at {video['ffmpeg']}"
    return "video files", "warn", video["reason"]


def _hub_rows(hub) -> list[tuple[str, str, str]]:
    if hub.reachable is None:
        endpoint = ("Hub endpoint", "warn", f"{hub.endpoint}: {hub.detail}")
    elif hub.reachable:
        endpoint = ("Hub endpoint", "ok", f"{hub.endpoint}: reachable")
    else:
        endpoint = (
            "Hub endpoint",
            "warn",
            f"{hub.endpoint}: {hub.detail}; push and pull need it, everything else works offline",
        )
    if hub.token_source is None:
        login = ("Hub login", "warn", "not logged in: `hf auth login` or HF_TOKEN (push needs it; public pulls do not)")
    elif hub.user:
        login = ("Hub login", "ok", f"logged in as {hub.user} (token from {hub.token_source})")
    elif hub.reachable:
        login = ("Hub login", "warn", f"token from {hub.token_source}, but {hub.detail}")
    else:
        login = ("Hub login", "warn", f"token from {hub.token_source}, not checked (Hub not contacted)")
    return [endpoint, login]


def tasks(
    ctx: typer.Context,
    task_set: str = typer.Argument("mt80", help="mt30 | mt80 | comma-separated task names."),
) -> None:
    """List tasks with their TD-MPC2 ids, dims and episode lengths."""
    from pwm_core.tasks import resolve_tasks

    st = state(ctx)
    ts = resolve_tasks(task_set)

    def human() -> None:
        table = Table(title=f"{ts.name}: {len(ts)} tasks, padded obs {ts.obs_dim} / act {ts.act_dim}")
        for col in ("id", "task", "suite", "obs", "act", "ep len", "discount"):
            table.add_column(col, justify="right" if col in ("id", "obs", "act", "ep len", "discount") else "left")
        for t in ts:
            table.add_row(
                str(t.id),
                t.name + (" *" if t.custom else ""),
                t.suite,
                str(t.obs_dim),
                str(t.act_dim),
                str(t.episode_length),
                f"{t.discount:.3f}",
            )
        typer.echo(render_table(table))
        typer.echo("* TD-MPC2 custom dm_control task")

    emit(st, ts.to_dict(), human)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _render_works(backend: str) -> tuple[bool, str]:
    """Whether dm_control and Meta-World render with MUJOCO_GL=``backend`` (probed in a subprocess: a
    failing GL backend can abort the process)."""
    from pwm_core.render import gl_problem

    problem = gl_problem(backend)
    return problem is None, problem or ""
