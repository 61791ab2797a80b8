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
        "diffsim-cartpole-swingup",
        5,
        1,
        5,
        1,
    )
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


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["walker-walk"], "pwmctl extract walker-walk"),  # a DMC task: no differentiable simulator
        (["cartpole-swingp"], "cartpole-swingup"),  # a typo: the suggestion
        (["ball-wall"], "nothing to control"),
        (["double-pendulum", "--set", "horizon=0"], "horizon"),
        (["double-pendulum", "--set", "horizn=8"], "horizon"),
        (["double-pendulum", "--name", "Bad Name"], "policy name"),
    ],
)
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


def _short_episode_agent(cfg, episode_length: int = 12):
    from pwm_core.diffsim.shac import SHAC

    agent = SHAC(cfg)
    agent.sim.episode_length = episode_length  # instance override: episodes end inside the test's few windows
    return agent


def test_recorder_keeps_every_complete_training_episode(tmp_path):
    from pwm_core.data import EpisodeWriter, open_dataset
    from pwm_core.diffsim.shac import SHACConfig
    from pwm_core.tasks import resolve_tasks

    task = "diffsim-cartpole-swingup"
    writer = EpisodeWriter.create(tmp_path / "d.zarr", resolve_tasks(task))
    agent = _short_episode_agent(SHACConfig(num_envs=3, horizon=8, epochs=4, critic_iterations=1))
    agent.record_episodes(writer, 3, task)
    for _ in range(4):  # 32 steps: two complete 12-step episodes per env, a third one in progress
        agent.epoch()
    assert writer.num_episodes == 0  # nothing is written before a checkpoint
    agent.save_checkpoint(tmp_path / "ckpt.pt")
    writer.close()
    ds = open_dataset(tmp_path / "d.zarr")
    assert ds.num_episodes == 6 and set(ds.episode_lengths.tolist()) == {13}  # rows = transitions + 1
    # every finished training episode, and its undiscounted return as the trainer counted it
    np.testing.assert_allclose(np.sort(ds.episode_returns()), np.sort(agent.finished_returns), rtol=1e-5)
    ep = ds.episode(0)
    assert np.isfinite(ep["obs"]).all() and np.abs(ep["action"][1:]).max() <= 1.0
    # consecutive observations of an episode are one simulator step apart (no reset inside an episode)
    assert np.abs(np.diff(ep["obs"][:, 0])).max() < 1.0


def test_recording_resumes_exactly(tmp_path):
    """Episodes committed after the last checkpoint (a crash) are cut, and the resumed run records the
    same dataset as an uninterrupted one."""
    from pwm_core.data import EpisodeWriter, open_dataset
    from pwm_core.diffsim.shac import SHACConfig
    from pwm_core.tasks import resolve_tasks

    task, cfg = "diffsim-cartpole-swingup", SHACConfig(num_envs=2, horizon=8, epochs=6, critic_iterations=1)

    def agent_writing(path):
        writer = EpisodeWriter.open(path) if path.exists() else EpisodeWriter.create(path, resolve_tasks(task))
        agent = _short_episode_agent(cfg)
        agent.record_episodes(writer, 2, task)
        return agent, writer

    straight, w = agent_writing(tmp_path / "straight.zarr")
    for _ in range(6):
        straight.epoch()
    straight.save_checkpoint(tmp_path / "straight.pt")
    w.close()

    first, w = agent_writing(tmp_path / "resumed.zarr")
    for _ in range(3):  # step 24: 2 episodes per env done, checkpoint with 4 committed
        first.epoch()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    first.epoch()
    first.epoch()  # step 40: the third episodes ended at step 36
    first.recorder.flush()  # episodes written after the checkpoint, then the process dies
    assert w.num_episodes > 4
    w.close()
    resumed, w = agent_writing(tmp_path / "resumed.zarr")
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert w.num_episodes == 4
    for _ in range(3):
        resumed.epoch()
    resumed.save_checkpoint(tmp_path / "resumed.pt")
    w.close()
    a, b = open_dataset(tmp_path / "straight.zarr"), open_dataset(tmp_path / "resumed.zarr")
    assert a.num_episodes == b.num_episodes == 8
    for i in range(8):
        for key, x in a.episode(i).items():
            np.testing.assert_array_equal(x, b.episode(i)[key])


def test_shac_record_publishes_the_training_episodes_as_a_dataset(tmp_path):
    doc = run_json(
        tmp_path,
        "shac",
        "cartpole-swingup",
        "--epochs",
        "8",
        "--num-envs",
        "4",
        "--eval-every",
        "0",
        "--eval-episodes",
        "1",
        "--set",
        "critic_iterations=1",
        "--record",
        "2",
        "--name",
        "rec",
    )
    assert doc["dataset"] == "dataset/rec:v1"  # 8 windows x 32 steps = one 240-step episode per env
    shown = run_json(tmp_path, "show", "dataset/rec")
    assert shown["tasks"] == ["diffsim-cartpole-swingup"] and shown["metrics"]["episodes"] == 2
    assert shown["metrics"]["transitions"] == 480
    assert run_json(tmp_path, "show", "policy/rec")["manifest"]["extra"]["dataset"] == "dataset/rec:v1"
    result = run(tmp_path, "shac", "cartpole-swingup", "--num-envs", "4", "--record", "5", code=2)
    assert "--record 5 > --num-envs 4" in result.stderr
