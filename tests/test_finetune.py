"""`pwmctl finetune` and the Finetuner on a tiny world model: what it publishes, its lineage, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import run, run_json

TINY_WM = [
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
]
TINY_EXTRACT = [
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
]
TINY_FT = [
    "--env-steps",
    "600",
    "--episodes-per-round",
    "1",
    "--updates-per-episode",
    "2",
    "--wm-batch-size",
    "8",
    "--policy-batch-size",
    "8",
    "--eval-episodes",
    "1",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("pwm")
    run(home, "collect", "cartpole-balance,pendulum-swingup", "-n", "2", "--name", "tiny")
    run(home, "pretrain", "--tasks", "cartpole-balance,pendulum-swingup", *TINY_WM, "--name", "wm")
    run(home, "extract", "cartpole-balance", *TINY_EXTRACT)
    return home


def test_finetune_publishes_model_policy_and_episodes_with_lineage(home):
    doc = run_json(home, "finetune", "cartpole-balance", *TINY_FT)
    assert doc["policy"] == "policy/cartpole-balance:v2"
    assert doc["world_model"] == "worldmodel/wm-cartpole-balance-ft:v1"
    assert doc["dataset"] == "dataset/cartpole-balance-finetune:v1"
    assert doc["env_steps"] == 1000 and doc["updates"] == 4  # 2 rounds of 1 episode (500 steps) x 2 updates
    pol = run_json(home, "show", doc["policy"])
    assert sorted(pol["parents"]) == [
        "dataset/tiny:v1",
        "policy/cartpole-balance:v1",
        "worldmodel/wm-cartpole-balance-ft:v1",
    ]
    assert pol["manifest"]["metrics"]["eval_return_before"] == doc["eval_return_before"]
    wm = run_json(home, "show", doc["world_model"])
    assert sorted(wm["parents"]) == ["dataset/cartpole-balance-finetune:v1", "worldmodel/wm:v1"]
    data = run_json(home, "data", "info", doc["dataset"])
    assert data["episodes"] == 2

    # the new model differs from the old one, and the new policy acts with the new encoder
    from pwm_core.nn import load_world_model
    from pwm_core.train import load_policy

    old = load_world_model(Path(run_json(home, "show", "worldmodel/wm:v1")["path"]))
    new = load_world_model(Path(wm["path"]))
    assert not torch.equal(old._dynamics[0].weight, new._dynamics[0].weight)
    policy = load_policy(Path(pol["path"]))
    assert torch.equal(policy.encoder[0].weight, new._encoder[0].weight)

    result = run(home, "finetune", "--resume", doc["run"], code=2)  # a finished run is not redone
    assert "already finished and published" in result.stderr and "--policy policy/cartpole-balance:v2" in result.stderr

    # again: a fine-tuned model's line gets its next version, not a longer name
    doc2 = run_json(home, "finetune", "cartpole-balance", *TINY_FT, "--env-steps", "100", "--no-save-data")
    assert doc2["world_model"] == "worldmodel/wm-cartpole-balance-ft:v2" and "dataset" not in doc2


def test_a_time_limit_ends_finetuning_early_and_publishes(home):
    # 10 rounds planned; a tiny budget (0.6 s) ends it after a round or a few (how many fit depends on the
    # machine's speed), then the usual evaluation + publish
    doc = run_json(home, "finetune", "cartpole-balance", *TINY_FT, "--env-steps", "5000", "--time-limit", "0.01")
    rounds = doc["env_steps"] // 500
    assert doc["env_steps"] % 500 == 0 and 1 <= rounds < 10, doc
    assert 1 <= doc["updates"] <= 2 * rounds and doc["policy"].startswith("policy/cartpole-balance")
    assert "--time-limit" in run(home, "finetune", "cartpole-balance", "--time-limit", "0", code=2).stderr


def test_finetune_bad_input(home):
    for args, word in (
        (["walker-walk"], "pwmctl extract walker-walk"),
        (["cartpole-balance", "--policy", "worldmodel/wm"], "needs a policy"),
        (["pendulum-swingup", "--policy", "policy/cartpole-balance:v1"], "acts on cartpole-balance"),
        ([], "name the task"),
    ):
        result = run(home, "finetune", *args, code=2)
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr


def _finetuner_factory(home: Path, tmp_path: Path, **config):
    """make() -> a Finetuner on the fixture's tiny model and policy, replaying into tmp_path/replay.zarr;
    ``config``: more FinetuneConfig fields."""
    from pwm_core.data import open_dataset
    from pwm_core.nn import load_world_model
    from pwm_core.train import load_policy
    from pwm_core.train.extract import ExtractConfig
    from pwm_core.train.finetune import FinetuneConfig, Finetuner
    from pwm_core.train.pretrain import PretrainConfig

    def paths(ref):
        return Path(run_json(home, "show", ref)["path"])

    def make() -> Finetuner:
        cfg = FinetuneConfig(
            env_steps=1000,
            episodes_per_round=1,
            updates_per_episode=2,
            wm_batch_size=8,
            policy_batch_size=8,
            device="cpu",
            **config,
        )
        return Finetuner(
            cfg,
            PretrainConfig(horizon=3),
            ExtractConfig(horizon=4, return_states=4),
            load_world_model(paths("worldmodel/wm:v1")),
            load_policy(paths("policy/cartpole-balance:v1")),
            "cartpole-balance",
            [open_dataset(paths("dataset/tiny:v1") / "data.zarr")],
            tmp_path / "replay.zarr",
        )

    return make


def test_finetuner_checkpoint_resumes_its_state(home, tmp_path):
    make = _finetuner_factory(home, tmp_path)

    a = make()
    a.collect()
    a.pending = 2
    a.step()  # one of the round's two updates
    a.save_checkpoint(tmp_path / "ck.pt")
    assert a.env_steps == 500 and not a.done
    b = make()  # the replay on disk is reopened
    assert b.env_steps == 500
    b.load_checkpoint(tmp_path / "ck.pt")
    assert (b.round, b.updates, b.pending) == (1, 1, 1)
    for (k, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), k
    ma = a.update()
    b.load_checkpoint(tmp_path / "ck.pt")  # both share this process's global generators: restore them again
    mb = b.update()
    assert ma == pytest.approx(mb, rel=1e-5)  # the same next update: samplers and noise carried over
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    from pwm_core.errors import PwmError

    with pytest.raises(PwmError, match="fine-tuning checkpoint"):
        b.load_checkpoint(tmp_path / "bad.pt")
    json.dumps(a.cfg.to_dict())


def test_finetuner_over_its_ram_budget_streams_the_same_windows(home, tmp_path):
    from pwm_core.data import OutOfCoreSampler, WindowSampler

    ram = _finetuner_factory(home, tmp_path / "ram")()
    disk = _finetuner_factory(home, tmp_path / "disk", ram_budget_gb=0.0)()
    assert isinstance(ram.sampler, WindowSampler) and isinstance(disk.sampler, OutOfCoreSampler)
    for _ in range(2):
        a, b = ram.sampler.sample(), disk.sampler.sample()
        assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward)
        assert torch.equal(ram._start_states(), disk._start_states())
    for x, y in zip(ram.state_dict()["samplers"], disk.state_dict()["samplers"]):
        assert torch.equal(x, y)


def test_a_resumed_finetune_recollects_what_an_uninterrupted_run_would(home, tmp_path):
    """A checkpoint in the middle of a round; episodes collected after it are undone on resume and the
    next round collects them again with the same seeds (no duplicate, no lost episode)."""
    from pwm_core.data import open_dataset

    make = _finetuner_factory(home, tmp_path)

    a = make()
    first = a.step()  # collects round 1, then its first update
    assert "explore_return" in first and a.pending == 1 and a.env_steps == 500
    a.save_checkpoint(tmp_path / "ck.pt")
    a.step()
    a.step()  # round 2 collected after the checkpoint ("crash" here)
    assert a.env_steps == 1000 and open_dataset(tmp_path / "replay.zarr").num_episodes == 2
    second = open_dataset(tmp_path / "replay.zarr").episode(1)["obs"]
    b = make()
    b.load_checkpoint(tmp_path / "ck.pt")
    assert b.env_steps == 500 and open_dataset(tmp_path / "replay.zarr").num_episodes == 1 and b.pending == 1
    b.step()
    b.step()
    assert open_dataset(tmp_path / "replay.zarr").num_episodes == 2
    assert (open_dataset(tmp_path / "replay.zarr").episode(1)["obs"] == second).all()
    b.step()
    assert b.done and b.updates == 4


def test_a_bad_policy_name_is_refused_before_any_work(home):
    before = set(home.glob("runs/*"))
    result = run(home, "finetune", "cartpole-balance", *TINY_FT, "--name", "../x", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "policy name" in result.stderr
    assert set(home.glob("runs/*")) == before
