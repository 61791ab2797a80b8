"""`pwmctl shac` on the diffsim cartpole, and its policy in `pwmctl eval` and `load_policy`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run, run_json

TINY = ["--epochs", "4", "--num-envs", "8", "--eval-every", "2", "--eval-episodes", "2"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pwm")


@pytest.fixture(scope="module")
def trained(home) -> dict:
    return run_json(home, "shac", "cartpole-swingup", *TINY, "--set", "critic_iterations=2")


def test_shac_publishes_a_policy_of_the_diffsim_task(home, trained):
    assert trained["artifact"] == "policy/shac-cartpole-swingup:v1" and trained["epochs"] == 4
    assert trained["task"] == "diffsim-cartpole-swingup"  # the short name means the diffsim task here
    assert [e for e, _ in trained["learning_curve"]] == [2, 4]
    shown = run_json(home, "show", "policy/shac-cartpole-swingup:v1")
    assert shown["parents"] == [] and shown["tasks"] == ["diffsim-cartpole-swingup"]
    manifest = shown["manifest"]
    assert {"policy.safetensors", "policy.yaml", "metrics.jsonl"} <= set(manifest["files"])
    assert manifest["config"]["shac"]["num_envs"] == 8 and manifest["config"]["shac"]["critic_iterations"] == 2
    assert manifest["metrics"]["learning_curve"] == trained["learning_curve"]
    rows = [json.loads(line) for line in (Path(shown["path"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(r["epochs_per_s"] > 0 for r in rows)


def test_load_policy_returns_a_shac_policy_that_acts_in_range(home, trained):
    from pwm_core.diffsim.shac import ShacPolicy
    from pwm_core.train import load_policy

    policy = load_policy(Path(run_json(home, "show", trained["artifact"])["path"]))
    assert isinstance(policy, ShacPolicy)
    c = policy.config
    assert (c["task"], c["obs_dim"], c["act_dim"], c["task_obs_dim"], c["task_act_dim"]) == (
        "diffsim-cartpole-swingup", 5, 1, 5, 1)
    obs = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32) * 3
    for deterministic in (True, False):
        a = policy.act(obs, deterministic=deterministic)
        assert a.shape == (7, 1) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    assert policy.act(obs[0]).shape == (1,)
    np.testing.assert_array_equal(policy.act(obs), policy.act(obs))  # deterministic: tanh(mu)


def test_eval_scores_the_shac_policy_against_random(home, trained):
    doc = run_json(home, "eval", "policy/shac-cartpole-swingup", "random", "--seeds", "3", "--reps", "200")
    assert set(doc["summaries"]) == {"policy/shac-cartpole-swingup:v1", "random"}
    for s in doc["summaries"].values():
        t = s["tasks"]["diffsim-cartpole-swingup"]
        assert t["n"] == 3 and t["score_mean"] == pytest.approx(t["return_mean"])  # diffsim: raw returns
        assert t["return_mean"] < 0  # rewards are negative costs
    assert 0 <= doc["comparison"]["pairs"][0]["poi"] <= 1
    report = run_json(home, "show", doc["report"])
    raw = json.loads((Path(report["path"]) / "results.json").read_text())
    assert raw["episodes"]["random"][0]["length"] == 240


@pytest.mark.parametrize(("args", "word"), [
    (["walker-walk"], "pwmctl extract walker-walk"),  # a DMC task: no differentiable simulator
    (["cartpole-swingp"], "cartpole-swingup"),  # a typo: the suggestion
    (["ball-wall"], "nothing to control"),
    (["double-pendulum", "--set", "horizon=0"], "horizon"),
    (["double-pendulum", "--set", "horizn=8"], "horizon"),
    (["double-pendulum", "--name", "Bad Name"], "policy name"),
])
def test_bad_input_is_one_line_and_exit_2(home, args, word):
    result = run(home, "shac", *args, code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr


def test_resume_continues_a_run_to_more_epochs(home, trained):
    doc = run_json(home, "shac", "--resume", trained["run"], "--epochs", "5")
    assert doc["epochs"] == 5 and doc["artifact"] == "policy/shac-cartpole-swingup:v2"
    assert [e for e, _ in doc["learning_curve"]] == [2, 4, 5]


def test_checkpoint_resume_is_bitwise(tmp_path):
    import torch

    from pwm_core.diffsim.shac import SHAC, SHACConfig

    cfg = SHACConfig(num_envs=4, horizon=8, epochs=4, critic_iterations=1)
    straight = SHAC(cfg)
    for _ in range(4):
        straight.epoch()
    first = SHAC(cfg)
    for _ in range(2):
        first.epoch()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(123)  # the global state is restored from the checkpoint too
    resumed = SHAC(cfg)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    for _ in range(2):
        resumed.epoch()
    for a, b in zip(straight.actor.state_dict().values(), resumed.actor.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(straight.state, resumed.state, rtol=0, atol=0)
