"""The registry's seams used on their own: disk errors, run folders without a Registry, and what a policy's
card reads from its eval reports (registry/cards.py, so registry/hub.py needs no report format)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from registry import Registry
from registry.cards import REPLAY_VIDEO, policy_evaluation, replay_extras
from registry.errors import DiskError, RegistryError, disk_errors
from registry.runs import find_run_dir, make_run_dir


def test_disk_errors_turn_a_full_disk_into_one_line_and_pass_other_errors(tmp_path: Path):
    with pytest.raises(DiskError, match="is full"):
        with disk_errors(tmp_path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(FileNotFoundError):
        with disk_errors(tmp_path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))


def test_run_folders_are_made_and_found_in_any_folder(tmp_path: Path):
    run = make_run_dir(tmp_path, "collect")
    assert run.parent == tmp_path and run.name.startswith("collect-") and find_run_dir(tmp_path, run.name) == run
    with pytest.raises(RegistryError, match=rf"did you mean {run.name}\?"):
        find_run_dir(tmp_path, "collect")


def test_policy_evaluation_reads_the_newest_summary_and_only_the_policys_own_video(tmp_path: Path):
    reg = Registry(tmp_path / "home")
    with reg.stage("policy", "p") as staging:
        (staging.path / "policy.safetensors").write_bytes(b"weights")
        policy = staging.publish(tasks=["cartpole-balance"])

    def report(summary_return: float, videos: list[dict]):
        results = {
            "summaries": {policy.ref: {"tasks": {"cartpole-balance": {"return_mean": summary_return}}}},
            "videos": videos,
        }
        with reg.stage("report", "eval") as staging:
            (staging.path / "results.json").write_text(json.dumps(results))
            for video in videos:
                (staging.path / video["file"]).parent.mkdir(exist_ok=True)
                (staging.path / video["file"]).write_bytes(b"mp4")
            return staging.publish(parents=[policy.ref])

    own = {
        "actor": "policy",
        "policy": policy.ref,
        "task": "cartpole-balance",
        "seed": 3,
        "return": 5.0,
        "file": "videos/own.mp4",
    }
    with_video = report(1.0, [own])
    newest = report(2.0, [{**own, "actor": "mppi", "file": "videos/mppi.mp4"}])  # a planner's video: not a replay
    evaluation = policy_evaluation(policy, reg.children(policy.ref))
    assert evaluation is not None and evaluation["report"] == newest.ref
    assert evaluation["summary"]["tasks"]["cartpole-balance"]["return_mean"] == 2.0
    [extra] = replay_extras(evaluation)
    assert extra.path == REPLAY_VIDEO and extra.source == with_video.path / "videos/own.mp4"
    assert "env seed 3, return 5.0" in extra.description and with_video.ref in extra.description
    assert policy_evaluation(with_video, [newest]) is None  # not a policy
