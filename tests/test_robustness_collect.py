"""`collect`: refusals before any work, policy dims checked, and a resumed run recording what an
uninterrupted one would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run, run_json

from pwm_core.collect import collect, random_policy
from pwm_core.data import EpisodeWriter, open_dataset
from pwm_core.tasks import resolve_tasks
from registry import Registry

TASK = "cartpole-balance"  # 500-step episodes, obs 5 / act 1


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _assert_same_episodes(a, b) -> None:
    assert a.num_episodes == b.num_episodes
    np.testing.assert_array_equal(a.episode_task, b.episode_task)
    for i in range(a.num_episodes):
        for key, value in a.episode(i).items():
            np.testing.assert_array_equal(value, b.episode(i)[key], err_msg=f"episode {i} {key}")


# ------------------------------------------------------------------------------- checked up front
@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "../../x"], "bad dataset name '../../x'"),
        (["--name", "A"], "bad dataset name 'A'"),
        (["--append", "../x"], "bad artifact ref '../x'"),
        (["--append", "dataset/nothing"], "no artifact dataset/nothing:latest"),
    ],
)
def test_bad_names_and_refs_are_refused_before_any_work(tmp_path, args, message):
    home = tmp_path / "home"
    line = _one_error_line(run(home, "collect", TASK, "-n", "1", *args, code=2))
    assert message in line
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # no run started


def _publish_policy(home: Path, task: str, task_obs_dim: int, task_act_dim: int) -> str:
    """A tiny policy artifact for `task`, built for the given task widths."""
    from safetensors.torch import save_file

    from pwm_core.policy import POLICY_CONFIG_FILE, POLICY_FILE, POLICY_FORMAT, POLICY_VERSION, Policy

    config = {
        "format": POLICY_FORMAT,
        "version": POLICY_VERSION,
        "task": task,
        "task_row": 0,
        "obs_dim": max(task_obs_dim, 5),
        "act_dim": max(task_act_dim, 1),
        "task_obs_dim": task_obs_dim,
        "task_act_dim": task_act_dim,
        "task_dim": 0,
        "latent_dim": 8,
        "encoder_units": [8],
        "simnorm_dim": 8,
        "actor_units": [8],
        "min_logstd": -1.4,
        "critic_units": [8],
        "num_critics": 2,
    }
    with Registry(home).stage("policy", "behaviour") as staging:
        save_file({k: v.contiguous() for k, v in Policy(config).state_dict().items()}, staging.path / POLICY_FILE)
        (staging.path / POLICY_CONFIG_FILE).write_text(yaml.safe_dump(config))
        return staging.publish(tasks=[task]).ref


def test_a_policy_built_for_other_task_dims_is_refused_before_collecting(tmp_path):
    home = tmp_path / "home"
    ref = _publish_policy(home, TASK, task_obs_dim=4, task_act_dim=2)
    line = _one_error_line(run(home, "collect", TASK, "--policy", ref, "-n", "1", code=2))
    assert "takes obs 4 / act 2, but cartpole-balance has obs 5 / act 1" in line
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_a_policy_with_the_task_dims_collects(tmp_path):
    home = tmp_path / "home"
    ref = _publish_policy(home, TASK, task_obs_dim=5, task_act_dim=1)
    doc = run_json(home, "collect", TASK, "--policy", ref, "-n", "1", "--name", "on-policy")
    assert doc["episodes"] == 1


# -------------------------------------------------------------------------------------- resume
def _collect(path: Path, n: int, noise: str, stop_after: int | None = None, resume: bool = False):
    ts = resolve_tasks(TASK)
    seen = []

    def stop(ep) -> None:  # what a Ctrl-C after `stop_after` committed episodes does
        seen.append(ep)
        if len(seen) == stop_after:
            raise KeyboardInterrupt

    with EpisodeWriter.open(path) if resume else EpisodeWriter.create(path, ts) as w:
        done = w.num_episodes
        return collect(
            w,
            {TASK: n - done},
            ts,
            random_policy(7, ts.act_dim, noise),
            seed=7,
            workers=1,
            envs_per_worker=3,
            on_episode=stop,
            done={TASK: done},
        )


@pytest.mark.parametrize("stop_after, noise", [(1, "uniform"), (4, "pink")])
def test_a_resumed_collection_records_what_an_uninterrupted_one_would(tmp_path, stop_after, noise):
    """3 env slots, 5 episodes: stopped after episode 0 (mid first round) or episode 3 (mid second
    round), the resumed call records the remaining episodes exactly, never episode 0 again."""
    _collect(tmp_path / "whole.zarr", 5, noise)
    assert _collect(tmp_path / "cut.zarr", 5, noise, stop_after=stop_after).interrupted
    assert open_dataset(tmp_path / "cut.zarr").num_episodes == stop_after
    resumed = _collect(tmp_path / "cut.zarr", 5, noise, resume=True)
    assert len(resumed.episodes) == 5 - stop_after
    _assert_same_episodes(open_dataset(tmp_path / "whole.zarr"), open_dataset(tmp_path / "cut.zarr"))


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing runs after it (no publish), the run folder stays."""


def test_collect_resume_after_a_kill_following_episode_1(tmp_path, monkeypatch):
    """The issue's case: killed right after episode 1 was committed, `--resume` records episode 2
    (not episode 0 again) and publishes what an uninterrupted `collect` publishes."""
    run(tmp_path / "whole", "collect", TASK, "-n", "3", "--seed", "5")
    append = EpisodeWriter.append_episode

    def killed_after_two(self, *a, **k):
        append(self, *a, **k)
        if self.num_episodes == 2:
            self.close()  # a dead process's lock is dropped by the kernel
            raise _Killed

    with monkeypatch.context() as m, pytest.raises(_Killed):
        m.setattr(EpisodeWriter, "append_episode", killed_after_two)
        run(tmp_path / "cut", "collect", TASK, "-n", "3", "--seed", "5", code=None)
    (run_dir,) = (tmp_path / "cut" / "runs").iterdir()
    assert run_json(tmp_path / "cut", "collect", "--resume", run_dir.name)["episodes"] == 1
    paths = [Registry(tmp_path / h).resolve(f"dataset/{TASK}:v1").path / "data.zarr" for h in ("whole", "cut")]
    _assert_same_episodes(*(open_dataset(p) for p in paths))
