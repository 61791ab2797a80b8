"""`pwmctl eval --video`: one mp4 per (policy, task), baselines included, each path printed, copies kept
in the report, and the replay on the pushed policy's card. Rendering needs headless OpenGL chosen before
MuJoCo loads, so the CLI runs in a fresh process; without EGL/OSMesa these tests skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run

from registry import Registry
from registry.cards import REPLAY_VIDEO

pytest_plugins = ["fakehub"]  # the fake_hub fixture
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub
pytest.importorskip("imageio_ffmpeg")


def pwmctl(home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """pwmctl in a fresh process (MuJoCo not loaded yet, MUJOCO_GL unset: eval probes EGL, then OSMesa)."""
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    out = subprocess.run(
        [sys.executable, "-m", "pwmctl", "--home", str(home), *args],
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def skip_without_rendering(out: subprocess.CompletedProcess) -> None:
    if "no headless rendering" in out.stdout:
        pytest.skip("no headless OpenGL (EGL or OSMesa) on this machine")


@pytest.mark.slow  # ~25 s of CPU: a fresh process, the EGL probe, 100 rendered frames
def test_eval_video_of_the_random_baseline_is_printed_and_kept_in_the_report(tmp_path):
    out = pwmctl(
        tmp_path,
        "eval",
        "random",
        "--tasks",
        "mw-reach",
        "--seeds",
        "2",
        "--reps",
        "100",
        "--video",
        str(tmp_path / "videos"),
    )
    skip_without_rendering(out)
    path = tmp_path / "videos" / "random-mw-reach-seed0.mp4"
    assert "video of random on mw-reach (seed 0, return " in out.stdout and f"): {path}" in out.stdout
    report = Registry(tmp_path).resolve("report/eval-random")
    [entry] = json.loads((report.path / "results.json").read_text())["videos"]
    assert entry["actor"] == "random" and entry["policy"] is None and entry["written_to"] == str(path)
    assert (report.path / entry["file"]).read_bytes() == path.read_bytes() and path.stat().st_size > 1000
    assert entry["file"] in report.manifest["files"]  # part of the artifact: hashed, verified, pushable
    first = json.loads((report.path / "results.json").read_text())["episodes"]["random"][0]
    assert abs(entry["return"] - first["ret"]) < 1e-3  # the replay is the evaluated episode (deterministic)


@pytest.mark.slow
def test_policy_mppi_and_random_videos_and_the_pushed_card_shows_the_policy(tmp_path, fake_hub):
    home, task = tmp_path / "home", "mw-reach"
    run(home, "collect", task, "-n", "2", "--name", "reach")
    run(
        home,
        "pretrain",
        "--tasks",
        task,
        "--size",
        "1M",
        "--batch-size",
        "8",
        "--horizon",
        "3",
        "--steps",
        "4",
        "--set",
        "val_every=10",
        "--set",
        "val_batches=1",
        "--name",
        "wm",
    )
    run(
        home,
        "extract",
        task,
        "--batch-size",
        "8",
        "--set",
        "horizon=4",
        "--set",
        "return_states=4",
        "--eval-every",
        "2",
        "--eval-episodes",
        "1",
        "--steps",
        "2",
        "--name",
        "reach",
    )
    out = pwmctl(
        home,
        "eval",
        "policy/reach",
        "random",
        "--seeds",
        "1",
        "--reps",
        "100",
        "--planner",
        "mppi",
        "--mppi-iterations",
        "1",
        "--mppi-samples",
        "16",
        "--mppi-horizon",
        "1",
        "--video",
        str(tmp_path / "v"),
    )
    skip_without_rendering(out)
    report = Registry(home).resolve("report/eval-reach")
    videos = json.loads((report.path / "results.json").read_text())["videos"]
    assert sorted((v["actor"], v["task"]) for v in videos) == [("mppi", task), ("policy", task), ("random", task)]
    for v in videos:
        assert f": {v['written_to']}" in out.stdout and Path(v["written_to"]).stat().st_size > 1000

    run(home, "push", "policy/reach", "--repo", "me/reach", "--hub-endpoint", fake_hub.url)
    files = fake_hub.files("me/reach", "v1")
    policy_video = next(v for v in videos if v["actor"] == "policy")
    assert files[REPLAY_VIDEO] == (report.path / policy_video["file"]).read_bytes()
    card = files["README.md"].decode()
    assert f"{fake_hub.url}/me/reach/resolve/v1/{REPLAY_VIDEO}" in card and "license: mit" in card
    assert "```bibtex" in card and 'api.load_policy("me/reach@v1")' in card
