"""Issue: the four everyday commands, typed literally, on a registry that holds what they need.

    pwmctl pretrain --tasks T1,T2      (a set name works the same: --tasks mt30)
    pwmctl extract T1
    pwmctl eval --seeds 10
    pwmctl push

Budgets come from `pwmctl config set pretrain.* / extract.*` (user defaults), so the lines stay literal.
"""

from __future__ import annotations

import pytest

from helpers import run, run_json

pytest_plugins = ["fakehub"]  # the fake_hub fixture
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

TASKS = "cartpole-balance,pendulum-swingup"


def test_the_four_commands_literally(tmp_path, fake_hub):
    home = tmp_path / "home"
    run(home, "collect", "cartpole-balance", "-n", "2", "--name", "cartpole")
    run(home, "collect", "pendulum-swingup", "-n", "2", "--name", "pendulum")
    for key, value in (
        ("size", "1M"),
        ("pretrain.steps", "4"),
        ("pretrain.batch_size", "8"),
        ("pretrain.horizon", "3"),
        ("pretrain.val_batches", "1"),
        ("extract.steps", "2"),
        ("extract.batch_size", "8"),
        ("extract.horizon", "4"),
        ("extract.return_states", "4"),
        ("hub.namespace", "me"),
        ("hub.endpoint", fake_hub.url),
    ):
        run(home, "config", "set", key, value)

    # pretrain: every local dataset that covers tasks of the set composes into one sampler
    result = run(home, "pretrain", "--tasks", TASKS)
    assert "dataset/cartpole:v1" in result.stderr and "dataset/pendulum:v1" in result.stderr  # says what it used
    wm = run_json(home, "show", "worldmodel/cartpole-balance_pendulum-swingup-1m")
    assert sorted(wm["parents"]) == ["dataset/cartpole:v1", "dataset/pendulum:v1"]
    assert wm["manifest"]["config"]["pretrain"]["steps"] == 4  # the user default

    # extract: the newest world model with the task, and its parent datasets
    result = run(home, "extract", "cartpole-balance")
    assert "from worldmodel/cartpole-balance_pendulum-swingup-1m:v1" in result.stderr
    assert "published policy/cartpole-balance:v1: 2 updates" in result.stdout
    run(home, "extract", "pendulum-swingup")

    # eval: the newest policy of every task together, one aggregate table and a report
    result = run(home, "eval", "--seeds", "10")
    assert "policy/cartpole-balance:v1" in result.stderr and "policy/pendulum-swingup:v1" in result.stderr
    for word in ("cartpole-balance", "pendulum-swingup", "iqm", "report: report/"):
        assert word in result.stdout, word
    assert [a["ref"] for a in run_json(home, "ls", "report")["artifacts"]] == ["report/eval-cartpole-balance:v1"]

    # push: every version not yet on the Hub, in lineage order, to {namespace}/{name}
    result = run(home, "push")
    pushed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("pushed ")]
    assert pushed[:2] == ["dataset/cartpole:v1", "dataset/pendulum:v1"]
    assert pushed[2] == "worldmodel/cartpole-balance_pendulum-swingup-1m:v1"
    assert sorted(pushed[3:]) == ["policy/cartpole-balance:v1", "policy/pendulum-swingup:v1"]
    assert run(home, "push").stdout.count("pushed ") == 0  # nothing left to push


def test_missing_data_and_namespace_give_one_line_hints(tmp_path):
    home = tmp_path / "home"
    run(home, "collect", "cartpole-balance", "-n", "1", "--name", "cartpole")
    result = run(home, "pretrain", "--tasks", TASKS, code=2)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "pendulum-swingup" in result.stderr and "pwmctl collect" in result.stderr
    assert "--allow-missing" in result.stderr
    result = run(home, "extract", "cartpole-balance", code=2)
    assert "pwmctl pretrain --tasks cartpole-balance" in result.stderr
    result = run(home, "eval", "--seeds", "10", code=2)
    assert "pwmctl extract TASK" in result.stderr
    result = run(home, "push", code=2)
    assert "pwmctl config set hub.namespace" in result.stderr
    for key, value, word in (("pretrain.stepz", "4", "pretrain.steps"), ("extract.steps", "many", "extract.steps")):
        result = run(home, "config", "set", key, value, code=2)
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr
