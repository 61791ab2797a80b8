"""`pwmctl extract` and `pwmctl eval` as a user runs them, on a tiny world model and tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run, run_json

TINY_WM = [
    "--size",
    "1M",
    "--batch-size",
    "8",
    "--horizon",
    "3",
    "--steps",
    "10",
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
    "2",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("pwm")
    run(home, "collect", "cartpole-balance,pendulum-swingup", "-n", "2", "--name", "tiny")
    run(home, "pretrain", "--tasks", "cartpole-balance,pendulum-swingup", *TINY_WM, "--name", "wm")
    return home


def test_extract_picks_the_newest_world_model_and_its_data(home):
    result = run(home, "--format", "json", "extract", "cartpole-balance", *TINY_EXTRACT, "--steps", "4")
    doc = json.loads(result.stdout)
    assert doc["artifact"] == "policy/cartpole-balance:v1" and doc["steps"] == 4
    assert [s for s, _ in doc["learning_curve"]] == [2, 4]
    assert doc["world_model"] == "worldmodel/wm:v1" and doc["datasets"] == ["dataset/tiny:v1"]  # what it chose
    shown = run_json(home, "show", "policy/cartpole-balance:v1")
    assert sorted(shown["parents"]) == ["dataset/tiny:v1", "worldmodel/wm:v1"]
    assert {"policy.safetensors", "policy.yaml", "metrics.jsonl"} <= set(shown["manifest"]["files"])


def test_extract_paper_flags_and_bad_input(home):
    result = run(
        home,
        "extract",
        "pendulum-swingup",
        *TINY_EXTRACT,
        "--steps",
        "2",
        "--critic-target",
        "td-lambda",
        "--bootstrap",
        "gamma-h",
        "--mask-actions",
        "--name",
        "pendulum-paper",
    )
    assert "published policy/pendulum-paper:v1" in result.stdout
    assert "from worldmodel/wm:v1 (start states: dataset/tiny:v1)" in result.stderr  # says what it chose
    for args, word in (
        (["walker-walk"], "pwmctl pretrain --tasks walker-walk"),
        (["cartpole-balance", "--critic-target", "td-lamda"], "critic_target"),
        (["cartpole-balanse"], "cartpole-balance"),
    ):
        result = run(home, "extract", *args, code=2)
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr


def test_eval_policy_against_random_makes_a_report(home):
    doc = run_json(home, "eval", "policy/cartpole-balance", "random", "--seeds", "3", "--reps", "200")
    assert set(doc["summaries"]) == {"policy/cartpole-balance:v1", "random"}
    s = doc["summaries"]["random"]
    assert s["runs_per_task"] == 3 and s["tasks"]["cartpole-balance"]["n"] == 3
    agg = s["aggregate"]["iqm"]
    assert agg["lo"] <= agg["value"] <= agg["hi"]
    pair = doc["comparison"]["pairs"][0]
    assert 0 <= pair["poi"] <= 1
    report = run_json(home, "show", doc["report"])
    assert report["kind"] == "report" and report["parents"] == ["policy/cartpole-balance:v1"]
    raw = json.loads((Path(report["path"]) / "results.json").read_text())
    assert len(raw["episodes"]["random"]) == 3 and raw["episodes"]["random"][0]["length"] == 500

    human = run(home, "eval", "random", "--tasks", "cartpole-balance", "--seeds", "2", "--reps", "200").stdout
    assert "iqm" in human and "P(X > Y)" not in human


def test_eval_without_ref_evaluates_the_newest_policy_of_each_task(home):
    doc = run_json(home, "eval", "--seeds", "2", "--reps", "200")
    assert set(doc["summaries"]["latest"]["tasks"]) == {"cartpole-balance", "pendulum-swingup"}


def test_collect_with_an_extracted_policy(home):
    run(home, "extract", "cartpole-balance", *TINY_EXTRACT, "--steps", "2", "--name", "behaviour")
    doc = run_json(
        home, "collect", "cartpole-balance", "--policy", "policy/behaviour", "-n", "2", "--name", "on-policy"
    )
    assert doc["artifact"] == "dataset/on-policy:v1" and doc["episodes"] == 2
    assert run_json(home, "show", "dataset/on-policy")["manifest"]["config"]["policy"] == "policy/behaviour:v1"
    result = run(home, "collect", "pendulum-swingup", "--policy", "policy/behaviour", "-n", "1", code=2)
    assert "acts on cartpole-balance" in result.stderr


def test_extract_several_tasks_and_the_rank_split(home, monkeypatch):
    doc = run_json(home, "extract", "--tasks", "cartpole-balance,pendulum-swingup", *TINY_EXTRACT, "--steps", "2")
    assert [p["task"] for p in doc["policies"]] == ["cartpole-balance", "pendulum-swingup"]
    assert all(p["artifact"].startswith(f"policy/{p['task']}:") for p in doc["policies"])
    monkeypatch.setenv("RANK", "1")  # what torchrun sets: this rank takes every second task
    monkeypatch.setenv("WORLD_SIZE", "2")
    doc = run_json(home, "extract", "--tasks", "cartpole-balance,pendulum-swingup", *TINY_EXTRACT, "--steps", "2")
    assert [p["task"] for p in doc["policies"]] == ["pendulum-swingup"] and doc["rank"] == 1
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    for args, word in (
        (["--tasks", "cartpole-balance,walker-walk"], "pwmctl pretrain --tasks walker-walk"),
        (["cartpole-balance", "--tasks", "mt30"], "not both"),
        (["--tasks", "cartpole-balance", "--name", "x"], "--name"),
    ):
        result = run(home, "extract", *args, code=2)
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr


def test_recipe_official_is_the_official_code_bit_for_bit(home):
    """`extract --recipe official` trains exactly what ExtractConfig() (the official code's settings) trains."""
    import torch

    from pwm_core.data import open_dataset
    from pwm_core.nn import load_world_model
    from pwm_core.train import load_policy
    from pwm_core.train.extract import ExtractConfig, Extractor, recipe_config, start_state_sampler

    assert recipe_config("official") == ExtractConfig()
    doc = run_json(
        home,
        "extract",
        "cartpole-balance",
        "--recipe",
        "official",
        "--batch-size",
        "8",
        "--set",
        "horizon=4",
        "--set",
        "return_states=4",
        "--steps",
        "3",
        "--eval-every",
        "0",
        "--eval-episodes",
        "1",
        "--name",
        "official",
    )
    shown = run_json(home, "show", doc["artifact"])
    cfg = ExtractConfig(steps=3, batch_size=8, horizon=4, return_states=4)
    assert shown["manifest"]["config"]["extract"] == {**cfg.to_dict(), "device": "auto"}
    wm = load_world_model(Path(run_json(home, "show", "worldmodel/wm:v1")["path"]))
    ds = open_dataset(Path(run_json(home, "show", "dataset/tiny:v1")["path"]) / "data.zarr")
    row = wm.cfg.task_names.index("cartpole-balance")
    cpu_cfg = ExtractConfig(**{**cfg.to_dict(), "device": "cpu"})
    ex = Extractor(cpu_cfg, wm, row, start_state_sampler([ds], wm, row, cfg))
    for _ in range(3):
        ex.step()
    published = load_policy(Path(shown["path"]))
    for key, value in ex.policy_state().items():
        if key.startswith(("actor.", "critic.")):
            assert torch.equal(published.state_dict()[key], value), key


def test_default_recipe_publishes_the_best_evaluated_policy(home):
    doc = run_json(home, "extract", "pendulum-swingup", *TINY_EXTRACT, "--steps", "6", "--name", "best")
    curve = doc["learning_curve"]
    best_step, best_return = max(curve, key=lambda c: (c[1], -c[0]))
    assert doc["selected_update"] == best_step and doc["eval_return"] == pytest.approx(best_return)
    shown = run_json(home, "show", doc["artifact"])
    cfg = shown["manifest"]["config"]["extract"]
    assert (cfg["keep"], cfg["mask_actions"]) == ("best", True)
    assert shown["manifest"]["metrics"]["selected_update"] == best_step
    # the published policy is the one that scored best: evaluate it again on the same seeds
    from pwm_core.tasks import get_task
    from pwm_core.train import load_policy
    from pwm_core.evaluate import evaluate

    policy = load_policy(Path(shown["path"]))
    ev = evaluate(
        {"p": lambda obs, specs: policy.act(obs)},
        ["pendulum-swingup"],
        [10_000, 10_001],
        1,
        obs_dim=policy.config["obs_dim"],
        act_dim=get_task("pendulum-swingup").act_dim,
    )
    assert sum(e.ret for e in ev.episodes) / 2 == pytest.approx(best_return, rel=1e-4)


def test_time_limit_fits_the_schedule_and_publishes_at_the_budget(home):
    doc = run_json(
        home,
        "extract",
        "cartpole-balance",
        *TINY_EXTRACT,
        "--steps",
        "100000",
        "--time-limit",
        "0.15",
        "--eval-every",
        "0",
        "--name",
        "budget",
    )
    shown = run_json(home, "show", doc["artifact"])
    steps = shown["manifest"]["config"]["extract"]["steps"]  # the lr schedule's length, fitted to 9 s
    assert 3 <= doc["steps"] <= steps < 100_000
    assert doc["learning_curve"][-1][0] == doc["steps"]  # the final evaluation ran


def test_a_bad_policy_name_is_refused_before_any_work(home):
    before = set(home.glob("runs/*"))
    result = run(home, "extract", "cartpole-balance", *TINY_EXTRACT, "--steps", "2", "--name", "../x", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "policy name" in result.stderr
    assert set(home.glob("runs/*")) == before


def test_extract_and_finetune_dry_runs_resolve_the_config_and_train_nothing(home, tmp_path):
    runs_before = sorted(p.name for p in (home / "runs").iterdir())
    (tmp_path / "x.yaml").write_text("lam: 0.9\n")
    doc = run_json(
        home,
        "extract",
        "cartpole-balance",
        "--dry-run",
        "--recipe",
        "official",
        "--config",
        str(tmp_path / "x.yaml"),
        "--set",
        "horizon=5",
        "--steps",
        "3",
    )
    assert doc["dry_run"] and doc["wm"] == "worldmodel/wm:v1" and doc["data"] == ["dataset/tiny:v1"]
    assert (doc["config"]["batch_size"], doc["config"]["lam"], doc["config"]["horizon"], doc["config"]["steps"]) == (
        512,
        0.9,
        5,
        3,
    )
    assert {k: doc["sources"][k] for k in ("batch_size", "lam", "horizon", "steps")} == {
        "batch_size": "default",
        "lam": "config",
        "horizon": "set",
        "steps": "flag",
    }
    human = run(home, "extract", "cartpole-balance", "--dry-run").stdout
    assert "batch_size" in human and "[recipe]" in human
    result = run(home, "extract", "cartpole-balance", "--dry-run", "--set", "horizn=5", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "did you mean 'horizon'" in result.stderr
    assert sorted(p.name for p in (home / "runs").iterdir()) == runs_before  # no run folder

    run(home, "extract", "cartpole-balance", *TINY_EXTRACT, "--steps", "2", "--eval-every", "0", "--name", "ft-dry")
    runs_before = sorted(p.name for p in (home / "runs").iterdir())
    doc = run_json(
        home,
        "finetune",
        "cartpole-balance",
        "--policy",
        "policy/ft-dry",
        "--dry-run",
        "--set",
        "updates_per_episode=7",
        "--no-offline-data",
        "--env-steps",
        "100",
    )
    assert doc["dry_run"] and doc["policy"] == "policy/ft-dry:v1"
    assert (doc["config"]["updates_per_episode"], doc["config"]["offline_data"], doc["config"]["env_steps"]) == (
        7,
        False,
        100,
    )
    assert doc["sources"]["updates_per_episode"] == "set" and doc["sources"]["offline_data"] == "flag"
    assert sorted(p.name for p in (home / "runs").iterdir()) == runs_before  # no run folder
    result = run(home, "finetune", "cartpole-balance", "--policy", "policy/ft-dry", "--set", "env_steps=0", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "env_steps" in result.stderr
