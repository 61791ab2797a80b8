"""End-to-end CLI behaviour, as a user types it, on tiny real collections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import run, run_json
from pwmctl.cli import app


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "pwm"


def test_global_options_may_follow_the_command(home):
    from pwmctl.cli import hoist_global_options

    assert hoist_global_options(["ls", "--format", "json", "-q"]) == ["--format", "json", "-q", "ls"]
    assert hoist_global_options(["collect", "x", "--home=/h", "--", "--format"]) == [
        "--home=/h",
        "collect",
        "x",
        "--",
        "--format",
    ]
    result = CliRunner().invoke(app, ["ls", "--home", str(home), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["artifacts"] == []


def test_version_and_tasks(home):
    assert run(home, "--version").stdout.startswith("pwmctl ")
    doc = run_json(home, "tasks", "mt30")
    assert len(doc["tasks"]) == 30 and doc["obs_dim"] == 24 and doc["act_dim"] == 6


def test_collect_walker_publishes_four_episodes_of_501_rows(home):
    doc = run_json(home, "collect", "walker-walk", "--episodes", "4", "--workers", "2")
    assert doc["artifact"] == "dataset/walker-walk:v1" and doc["episodes"] == 4 and doc["env_steps"] == 2000
    info = run_json(home, "data", "info", "walker-walk")
    assert info["episodes"] == 4 and info["episode_rows"] == [501] and info["transitions"] == 2000
    assert info["tasks"][0]["task"] == "walker-walk"
    human = run(home, "data", "info", "dataset/walker-walk:v1").stdout
    assert "4 episodes of 501 rows" in human

    # --append makes v2 with the old episodes plus new ones, and names v1 as its parent
    doc = run_json(home, "collect", "--append", "walker-walk", "--episodes", "1")
    assert doc["artifact"] == "dataset/walker-walk:v2"
    assert run_json(home, "data", "info", "walker-walk:v2")["episodes"] == 5
    assert run_json(home, "data", "info", "walker-walk:v1")["episodes"] == 4  # versions are immutable
    shown = run_json(home, "show", "dataset/walker-walk:v2")
    assert shown["parents"] == ["dataset/walker-walk:v1"]

    listing = run_json(home, "ls")
    assert [a["ref"] for a in listing["artifacts"]] == ["dataset/walker-walk:v2"]
    assert len(run_json(home, "ls", "dataset", "--all")["artifacts"]) == 2
    assert run_json(home, "ls", "--task", "cheetah-run")["artifacts"] == []
    assert run_json(home, "verify", "dataset/walker-walk:v1")["ok"]


def test_collect_dry_run_plans_and_collects_nothing(tmp_path):
    doc = run_json(tmp_path, "collect", "cartpole-swingup,walker-walk", "-n", "3", "--seed", "4", "--dry-run")
    assert doc["dry_run"] and doc["tasks"] == ["cartpole-swingup", "walker-walk"]
    assert (
        doc["env_steps"] == 3 * (500 + 500)
        and doc["seed"] == 4
        and doc["dataset"] == "dataset/cartpole-swingup_walker-walk"
    )
    human = run(tmp_path, "collect", "mt30", "-n", "1", "--dry-run").stdout
    assert "would collect 1 episode(s) of each of 30 task(s)" in human
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert run_json(tmp_path, "ls")["artifacts"] == []  # nothing published


def test_collect_metaworld_reach(home):
    doc = run_json(home, "collect", "mw-reach", "--episodes", "2")
    assert doc["episodes"] == 2 and doc["env_steps"] == 200
    info = run_json(home, "data", "info", "mw-reach")
    assert info["episode_rows"] == [101] and info["obs_dim"] == 39


def test_typo_in_task_suggests_the_right_name(home):
    result = run(home, "collect", "walker-wlak", code=None)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "walker-walk" in lines[0]
    assert not (home / "artifacts").exists() or not any((home / "artifacts").rglob("manifest.json"))


def test_missing_artifact_and_bad_kind_give_one_line(home):
    for args in (
        ["data", "info", "nope"],
        ["show", "dataset/nope:v3"],
        ["ls", "datasets"],
        ["collect", "--append", "ghost", "-n", "1"],
        ["data", "import-tdmpc2", "/no/such/chunk.pt"],
    ):
        result = run(home, *args, code=None)
        assert result.exit_code == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_usage_errors_are_one_line_naming_the_help_to_read(home):
    for args, words in (
        (["extract", "cartpole-balance", "--time-limit", "0"], ("--time-limit", "0.01", "pwmctl extract --help")),
        (["extract", "cartpole-balance", "--steps", "0"], ("--steps", "greater than or equal to 1")),
        (["collect", "cartpole-balance", "--bogus"], ("No such option: --bogus", "pwmctl collect --help")),
        (["nosuchcommand"], ("No such command", "pwmctl --help")),
        (["data", "nosuch"], ("No such command", "pwmctl data --help")),
        (["ls", "--format", "xml"], ("--format", "'xml' is not one of human, json")),
    ):
        result = run(home, *args, code=None)
        assert result.exit_code == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert all(w in lines[0] for w in words), (args, lines[0])
    assert not home.exists() or not any(home.rglob("manifest.json"))
    bare = run(home, "runs", code=None)  # a group called bare still shows its help
    assert bare.exit_code == 2 and "Usage" in bare.stdout + bare.stderr


def test_verify_reports_a_tampered_file_and_rm_removes(home):
    run(home, "collect", "cartpole-balance", "-n", "1")
    artifact = run_json(home, "show", "dataset/cartpole-balance")
    victim = next(p for p in Path(artifact["path"]).rglob("*") if p.is_file() and p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b"x")
    result = run(home, "--format", "json", "verify", "dataset/cartpole-balance:v1", code=None)
    assert result.exit_code == 1 and json.loads(result.stdout)["problems"]
    run(home, "rm", "dataset/cartpole-balance:v1", "--yes")
    assert run_json(home, "ls")["artifacts"] == []


def test_killed_collect_leaves_a_readable_dataset_and_resumes(home):
    """SIGKILL in the middle of a collection: the run's dataset opens with every finished episode,
    and `--resume` completes and publishes it."""
    from pwm_core.data import open_dataset

    env = {**os.environ, "PWM_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwmctl", "collect", "cartpole-balance", "-n", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    datasets: list[Path] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until a few episodes are committed
        datasets = list((home / "runs").glob("*/data.zarr")) if (home / "runs").exists() else []
        if datasets:
            try:
                if open_dataset(datasets[0]).num_episodes >= 2:
                    break
            except Exception:
                pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert datasets, proc.stderr.read().decode()
    ds = open_dataset(datasets[0])
    done = ds.num_episodes
    assert 2 <= done < 40
    assert all(len(ds.episode(i)["obs"]) == 501 for i in range(done))
    assert run_json(home, "ls")["artifacts"] == []  # nothing half-published

    doc = run_json(home, "collect", "--resume", datasets[0].parent.name)
    assert doc["artifact"] == "dataset/cartpole-balance:v1"
    assert run_json(home, "data", "info", "cartpole-balance")["episodes"] == 40


def test_sigint_publishes_completed_episodes(home):
    import threading

    env = {**os.environ, "PWM_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwmctl", "collect", "cartpole-balance", "-n", "200"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # as from a terminal: SIGINT at its default even if this process ignores it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[bytes] = []  # its progress: "collect 1/200 ..." is printed once the first episode is committed
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not any(b"collect 1/200" in x for x in lines):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = b"".join(lines)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted: published dataset/cartpole-balance:v1" in out
    n = run_json(home, "data", "info", "cartpole-balance")["episodes"]
    assert 1 <= n < 200


def test_doctor_json(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub check would contact huggingface.co
    doc = run_json(home, "doctor")
    assert doc["versions"]["torch"].startswith("2.") and set(doc["render"]) == {"egl", "osmesa"}
    names = [c["check"] for c in doc["checks"]]
    assert names == ["torch build", "headless render", "video files", "Hub endpoint", "Hub login", "registry disk"]
    assert all(c["status"] in ("ok", "warn") for c in doc["checks"])


def test_config_set_get_list_and_typos(home):
    run(home, "config", "set", "hub.namespace", "me")
    assert run(home, "config", "get", "hub.namespace").stdout.strip() == "me"
    assert run_json(home, "config", "list")["settings"] == {"hub.namespace": "me"}
    assert run(home, "config", "get", "device", code=None).exit_code == 1  # unset
    bad = run(home, "config", "set", "hub.namespac", "x", code=None)
    assert bad.exit_code == 2 and "hub.namespace" in bad.stderr
    assert run(home, "config", "set", "size", "7M", code=None).exit_code == 2
    run(home, "config", "set", "size", "48M")
    planned = run_json(home, "pretrain", "--tasks", "mt30", "--dry-run")
    assert planned["pretrain"]["size"] == "48M" and planned["sources"]["size"] == "user"
    run(home, "config", "unset", "size")
    assert "size" not in run_json(home, "config", "list")["settings"]


def test_config_set_checks_extract_settings_against_the_saved_ones(tmp_path):
    bad = run(tmp_path, "config", "set", "extract.model_return_every", "--", "-3", code=2)
    assert len(bad.stderr.strip().splitlines()) == 1 and "model_return_every must be >= 0" in bad.stderr
    run(tmp_path, "config", "set", "extract.batch_size", "2")
    # 2 x 16 = 32 critic samples per update: 64 minibatches cannot all get one, given the saved batch size
    clash = run(tmp_path, "config", "set", "extract.critic_batches", "64", code=2)
    assert "critic_batches 64 > batch_size x horizon (32" in clash.stderr
    assert run_json(tmp_path, "config", "list")["settings"] == {"extract.batch_size": "2"}  # nothing written


def test_pink_noise_collection_is_reproducible_and_persistent(tmp_path):
    """`collect --noise pink`: actions persist from step to step (wider coverage than uniform); the same
    seed collects the same episodes."""
    import numpy as np

    from pwm_core.data import open_dataset

    docs = [
        run_json(
            tmp_path, "collect", "cartpole-swingup", "-n", "2", "--noise", "pink", "--name", f"p{w}", "--workers", "2"
        )
        for w in (1, 2)
    ]
    uniform = run_json(tmp_path, "collect", "cartpole-swingup", "-n", "2", "--name", "u")
    paths = [Path(run_json(tmp_path, "show", d["artifact"])["path"]) / "data.zarr" for d in (*docs, uniform)]
    a, b, u = (open_dataset(p) for p in paths)
    for i in range(2):
        np.testing.assert_array_equal(a.episode(i)["action"], b.episode(i)["action"])
    lag1 = lambda x: np.corrcoef(x[1:-1, 0], x[2:, 0])[0, 1]  # noqa: E731
    assert lag1(a.episode(0)["action"]) > 0.4 and abs(lag1(u.episode(0)["action"])) < 0.2
    assert np.abs(a.episode(0)["action"][1:]).max() <= 1.0
    assert run_json(tmp_path, "show", docs[0]["artifact"])["manifest"]["config"]["noise"] == "pink"
    assert run(tmp_path, "collect", "cartpole-swingup", "--noise", "brown", code=2).stderr.count("\n") == 1


@pytest.mark.parametrize(
    "command,shown",
    [
        ("pretrain", "[default: 5M]"),
        ("finetune", "[default: 5000]"),
        ("extract", "[default: 10000]"),
        ("eval", "[default: the newest policy"),
    ],
)
def test_help_shows_the_defaults_written_in_option_help(command, shown):
    """Rich would swallow an unescaped "[default: ...]" as markup."""
    result = CliRunner().invoke(app, [command, "--help"], env={"NO_COLOR": "1", "COLUMNS": "250"})
    assert result.exit_code == 0 and shown in result.stdout


@pytest.mark.parametrize(
    "args,word",
    [
        (["plot", "nosuchrun"], "neither a run"),
        (["extract", "cartpole-balance", "--recipe", "offical"], "--recipe"),
        (["quickstart", "--noise", "brown"], "--noise"),
        (["runs", "show", "nosuchrun"], "no run"),
    ],
)
def test_typos_in_the_new_options_are_one_line(tmp_path, args, word):
    result = run(tmp_path, *args, code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
