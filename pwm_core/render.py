"""Headless rendering: which OpenGL backend MuJoCo can use here, and whether videos can be written.

MuJoCo picks its OpenGL backend once, when first imported, from MUJOCO_GL; a backend that does not
work fails or aborts the process. So a backend is probed in a subprocess (rendering one frame of a
dm_control and a Meta-World task), and chosen for this process only before MuJoCo is loaded.
Nothing here imports MuJoCo.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

HEADLESS_GL = ("egl", "osmesa")  # tried in this order
PROBE_TIMEOUT_S = 120
VIDEO_MODULES = ("imageio", "imageio_ffmpeg")

_PROBE = """
from pwm_core.envs import make_env
for task in ("cartpole-balance", "mw-reach"):
    env = make_env(task, 0); env.reset(); env.render(8, 8); env.close()
"""


def gl_problem(backend: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why rendering with MUJOCO_GL=``backend`` fails on this machine, or None when it works."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env={**os.environ, "MUJOCO_GL": backend},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return f"MUJOCO_GL={backend} did not answer within {timeout_s:g} s"
    if probe.returncode == 0:
        return None
    lines = [line for line in (probe.stderr or "").strip().splitlines() if line.strip()]
    return f"MUJOCO_GL={backend} failed: {lines[-1][:160] if lines else f'exit code {probe.returncode}'}"


def video_writer_problem() -> str | None:
    """Why mp4 files cannot be written (imageio / imageio-ffmpeg missing or no ffmpeg), or None."""
    missing = [m for m in VIDEO_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"videos need {' and '.join(missing)}: pip install 'pwmctl[video]'"
    import imageio_ffmpeg

    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        return f"imageio-ffmpeg finds no ffmpeg binary ({e})"
    return None


def select_headless_gl() -> str | None:
    """Make sure this process renders headless; the reason it cannot, or None when it can.

    MUJOCO_GL already egl or osmesa: kept (a failing choice shows when rendering). Unset and
    MuJoCo not loaded yet: egl, then osmesa, are probed and the first that works is set.
    """
    gl = os.environ.get("MUJOCO_GL", "")
    if gl in HEADLESS_GL:
        return None
    if gl or "mujoco" in sys.modules:
        return (
            f"videos need headless OpenGL chosen before MuJoCo loads (MUJOCO_GL is {gl or 'unset'}): "
            "start the process with MUJOCO_GL=egl (or osmesa)"
        )
    problems = []
    for backend in HEADLESS_GL:
        problem = gl_problem(backend)
        if problem is None:
            os.environ["MUJOCO_GL"] = backend
            return None
        problems.append(problem)
    return "no headless rendering: " + "; ".join(problems)


def video_problem() -> str | None:
    """Why this process cannot record videos, or None when it can (headless OpenGL is then chosen)."""
    return video_writer_problem() or select_headless_gl()
