"""`pwmctl doctor` and `pwmctl tasks`: what is installed, and what tasks exist."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

import typer
from rich.table import Table

from pwmctl.console import emit, human_size, render_table, state

_PACKAGES = ("torch", "numpy", "mujoco", "dm_control", "metaworld", "zarr", "huggingface_hub",
             "safetensors", "warp-lang", "typer", "rich")


def doctor(ctx: typer.Context) -> None:
    """Versions, CUDA, headless rendering, PWM_HOME and free disk: paste this into bug reports."""
    st = state(ctx)
    versions = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    import torch

    cuda = {"available": torch.cuda.is_available(), "devices": [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    cpu_flags = _cpu_flags()
    render = {backend: _render_works(backend) for backend in ("egl", "osmesa")}
    st.home.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(st.home).free
    report = {"versions": versions, "cuda": cuda, "cpu": {"cores": os.cpu_count(), "amx_bf16": "amx_bf16" in cpu_flags,
              "avx512f": "avx512f" in cpu_flags, "torch_threads": torch.get_num_threads()},
              "render": render, "home": str(st.home), "free_disk_bytes": free}

    def human() -> None:
        table = Table(title="pwmctl doctor", show_header=False)
        for k, v in versions.items():
            table.add_row(k, v or "[red]not installed[/]")
        table.add_row("CUDA", ", ".join(cuda["devices"]) if cuda["available"] else "not available (CPU only)")
        table.add_row("CPU", f"{os.cpu_count()} cores, AMX-bf16 {'yes' if report['cpu']['amx_bf16'] else 'no'}, "
                             f"AVX-512 {'yes' if report['cpu']['avx512f'] else 'no'}")
        table.add_row("headless render", ", ".join(f"{k}: {'ok' if ok else 'no (' + why + ')'}"
                                                   for k, (ok, why) in ((k, v) for k, v in render.items())))
        table.add_row("PWM_HOME", str(st.home))
        table.add_row("free disk", human_size(free))
        typer.echo(render_table(table))

    emit(st, {**report, "render": {k: {"ok": ok, "reason": why} for k, (ok, why) in render.items()}}, human)


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
            table.add_row(str(t.id), t.name + (" *" if t.custom else ""), t.suite, str(t.obs_dim), str(t.act_dim),
                          str(t.episode_length), f"{t.discount:.3f}")
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
    """Try an offscreen MuJoCo render in a subprocess (a failing GL backend can abort the process)."""
    code = ("import mujoco; "
            "m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/></worldbody></mujoco>');"
            "r = mujoco.Renderer(m, 8, 8); d = mujoco.MjData(m); r.update_scene(d); r.render()")
    try:
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MUJOCO_GL": backend},
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if out.returncode == 0:
        return True, ""
    last = (out.stderr.strip().splitlines() or ["failed"])[-1]
    return False, last[:120]
