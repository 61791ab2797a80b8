"""Policy evaluation in real envs: episode protocol, determinism, batching invariance, success, videos."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pwm_core.errors import EnvError
from pwm_core.evaluate import evaluate, random_actor


def constant_actor(value: float, act_dim: int = 1):
    return lambda obs, specs: np.full((len(obs), act_dim), value, dtype=np.float32)


def reach_actor(steps_to_goal: int = 100):
    """Scripted mw-reach: hand -> goal (obs 0:3 -> 36:39), then away from it; one env only."""
    t = 0

    def act(obs, specs):
        nonlocal t
        sign = 1.0 if t < steps_to_goal else -1.0
        t += 1
        a = np.zeros((len(obs), 4), dtype=np.float32)
        a[:, :3] = np.clip(sign * 10 * (obs[:, 36:39] - obs[:, :3]), -1, 1)
        return a

    return act


def test_random_actor_on_cartpole_runs_full_episodes():
    ev = evaluate(random_actor(act_dim=1, seed=0), ["cartpole-balance"], seeds=[0, 1])
    assert [(r.task, r.seed, r.episode, r.length) for r in ev.episodes] == [
        ("cartpole-balance", 0, 0, 500),
        ("cartpole-balance", 1, 0, 500),
    ]
    for r in ev.episodes:
        assert np.isfinite(r.ret) and 0 < r.ret <= 1000
        assert r.final_success == 0.0 and r.score == pytest.approx(r.ret / 1000)
    latency = ev.latency["policy"]
    assert latency.calls == 499 and latency.actions == 2 * 499  # first call is the warm-up
    assert latency.ms_per_action > 0 and latency.warmup_ms is not None


def test_constant_actor_is_reproducible_per_seed():
    runs = [evaluate(constant_actor(0.3), ["cartpole-balance"], seeds=[4, 5], episodes=2) for _ in range(2)]
    rets = [[r.ret for r in run.episodes] for run in runs]
    assert rets[0] == rets[1]
    assert len(set(rets[0])) == 4  # seeds and successive resets start from different states


def test_results_do_not_depend_on_workers_or_batching():
    tasks, seeds = ["cartpole-balance", "pendulum-swingup"], [0, 1]
    alone = evaluate(random_actor(1, seed=7), tasks, seeds, envs_per_worker=1)  # 4 waves of 1 env
    together = evaluate(
        {"random": random_actor(1, seed=7), "zero": constant_actor(0.0)}, tasks, seeds, workers=2, envs_per_worker=4
    )  # 2 waves (one per actor) of 4 envs over 2 processes
    assert [r.actor for r in together.episodes] == ["random"] * 4 + ["zero"] * 4
    assert [(r.task, r.seed, r.ret) for r in together.by_actor()["random"]] == [
        (r.task, r.seed, r.ret) for r in alone.episodes
    ]


def test_metaworld_records_final_step_success():
    ev = evaluate(reach_actor(), ["mw-reach"], seeds=[0])
    (r,) = ev.episodes
    assert (r.length, r.final_success, r.score) == (100, 1.0, 1.0)
    # Reach the goal, then leave it: success at some step, but not at the final one.
    (r,) = evaluate(reach_actor(steps_to_goal=60), ["mw-reach"], seeds=[0]).episodes
    assert (r.final_success, r.score) == (0.0, 0.0)


def test_bad_arguments_are_reported_together():
    with pytest.raises(EnvError, match="seeds must be distinct.*episodes must be >= 1"):
        evaluate(constant_actor(0.0), ["cartpole-balance"], seeds=[1, 1], episodes=0)


def test_wrong_action_shape_names_the_actor():
    with pytest.raises(EnvError, match="actor 'bad' returned actions of shape"):
        evaluate({"bad": constant_actor(0.0, act_dim=3)}, ["cartpole-balance"], seeds=[0])


def test_video_without_headless_gl_is_a_note_not_an_error(tmp_path, monkeypatch):
    # MuJoCo is loaded in this process without MUJOCO_GL: rendering must not be attempted.
    import mujoco  # noqa: F401

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    ev = evaluate(constant_actor(0.0), ["cartpole-balance"], seeds=[0], video_dir=tmp_path)
    assert len(ev.episodes) == 1 and ev.videos == []
    assert ev.video_note is not None and ("MUJOCO_GL" in ev.video_note or "imageio" in ev.video_note)


@pytest.mark.slow
def test_video_of_first_episode_with_egl(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    script = f"""
import numpy as np
from pwm_core.evaluate import evaluate
act = lambda obs, specs: np.full((len(obs), 4), 0.3, np.float32)
ev = evaluate(act, ["mw-reach"], seeds=[2, 3], video_dir={str(tmp_path)!r}, video_size=32)
assert ev.video_note is None, ev.video_note
(video,) = ev.videos
assert (video.task, video.seed) == ("mw-reach", 2) and abs(video.ret - ev.episodes[0].ret) < 1e-3
print(video.path)
"""
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}  # evaluate probes and picks EGL
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    if "headless rendering" in out.stderr:
        pytest.skip("no headless OpenGL on this machine")
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.getsize(out.stdout.strip().splitlines()[-1]) > 0
