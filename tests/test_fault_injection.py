"""Fault injection: SIGKILL `collect`, `pretrain`, `extract`, `push` and `pull` at random moments (seeded), then
resume or retry as a user would. Afterwards nothing committed is lost or duplicated, the result equals an
uninterrupted run's, `verify` and `data fsck` are clean and the index lists exactly what is on disk."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run
from safetensors.torch import load_file

pytest_plugins = ["fakehub"]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]

SEEDS = (0, 1)
TASK = "cartpole-balance"
COLLECT = ["collect", TASK, "-n", "3", "--noise", "pink", "--seed", "3", "--name", "c"]
PRETRAIN = [
    "pretrain",
    "--tasks",
    TASK,
    "--data",
    "dataset/c",
    "--size",
    "1M",
    "--batch-size",
    "8",
    "--horizon",
    "3",
    "--steps",
    "12",
    "--set",
    "val_every=6",
    "--set",
    "val_batches=1",
    "--set",
    "checkpoint_every=2",
    "--set",
    "log_every=1",
    "--name",
    "wm",
]
EXTRACT = [
    "extract",
    TASK,
    "--wm",
    "wm",
    "--batch-size",
    "8",
    "--set",
    "horizon=4",
    "--set",
    "return_states=4",
    "--steps",
    "6",
    "--eval-every",
    "2",
    "--eval-episodes",
    "1",
    "--name",
    "p",
]


def cli(home: Path, *args: str, code: int | None = 0):
    """`pwmctl --format json ARGS` in this process (the recoveries and checks; only the killed runs fork)."""
    return run(home, "--format", "json", *args, code=code)


def killed(home: Path, args: list[str], delay: float) -> None:
    """Start `pwmctl ARGS` and SIGKILL it after ``delay`` seconds (if it is still running)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwmctl", *args], env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _env(home: Path) -> dict:
    return {**os.environ, "PWM_HOME": str(home), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


def artifacts(home: Path, kind: str | None = None) -> list[dict]:
    doc = json.loads(cli(home, "ls", *([kind] if kind else []), "--all").stdout)
    return doc["artifacts"]


def runs_of(home: Path, command: str) -> list[Path]:
    return sorted(p for p in (home / "runs").glob(f"{command}-*") if (p / "plan.json").exists())


def assert_consistent(home: Path) -> None:
    """Every indexed version is on disk and verifies; every dataset passes fsck."""
    for a in artifacts(home):
        assert Path(a["path"]).is_dir(), a["ref"]
        cli(home, "verify", a["ref"])
        if a["kind"] == "dataset":
            cli(home, "data", "fsck", a["ref"])


def recover(home: Path, command: list[str], kind: str, name: str) -> None:
    """What a user does after a crash: resume the run if there is one, else run the command again."""
    if any(a["name"] == name for a in artifacts(home, kind)):
        return
    runs = runs_of(home, command[0])
    if runs:
        cli(home, command[0], "--resume", runs[-1].name)
    else:
        cli(home, *command)


def tensors(home: Path, ref: str, file: str) -> dict[str, torch.Tensor]:
    path = Path(json.loads(cli(home, "show", ref).stdout)["path"])
    return load_file(path / file)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted runs everything is compared with."""
    home = tmp_path_factory.mktemp("reference")
    for args in (COLLECT, PRETRAIN, EXTRACT):
        cli(home, *args)
    return home


def _episodes(home: Path) -> list[np.ndarray]:
    from pwm_core.data import open_dataset

    ds = open_dataset(Path(json.loads(cli(home, "show", "dataset/c").stdout)["path"]) / "data.zarr")
    return [ds.episode(i)["obs"] for i in range(ds.num_episodes)]


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_pipeline_resumes_to_what_an_uninterrupted_one_makes(reference, tmp_path, seed):
    rng = random.Random(seed)
    home = tmp_path / "home"
    stages = (
        (COLLECT, "dataset", "c", (0.3, 4.0)),
        (PRETRAIN, "worldmodel", "wm", (1.0, 8.0)),
        (EXTRACT, "policy", "p", (1.0, 8.0)),
    )
    for args, kind, name, (lo, hi) in stages:
        killed(home, args, rng.uniform(lo, hi))
        recover(home, args, kind, name)
        assert [a["version"] for a in artifacts(home, kind) if a["name"] == name] == [1]  # one version, no duplicate
    assert_consistent(home)
    for got, want in zip(_episodes(home), _episodes(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    for ref, file in (("worldmodel/wm", "model.safetensors"), ("policy/p", "policy.safetensors")):
        got, want = tensors(home, ref, file), tensors(reference, ref, file)
        assert got.keys() == want.keys()
        for key in want:  # resumed bitwise from the checkpoints (same machine, same thread count)
            assert torch.equal(got[key], want[key]), (ref, key)
    for folder in runs_of(home, "pretrain") + runs_of(home, "extract"):  # a finished run is never published twice
        cli(home, folder.name.split("-")[0], "--resume", folder.name, code=2)


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_push_and_pull_are_retried_to_one_consistent_copy(fake_hub, tmp_path, seed):
    rng = random.Random(100 + seed)
    hub = ["--hub-endpoint", fake_hub.url]
    source = tmp_path / "source"
    cli(source, *COLLECT)
    cli(source, "config", "set", "hub.namespace", "me")
    killed(source, ["push", "dataset/c", *hub], rng.uniform(0.2, 2.5))
    cli(source, "push", "dataset/c", *hub)  # the retry completes it (or finds it done)
    cli(source, "verify", "dataset/c", "--remote")
    assert_consistent(source)

    dest = tmp_path / "dest"
    killed(dest, ["pull", "datasets/me/c@v1", *hub], rng.uniform(0.2, 2.5))
    cli(dest, "pull", "datasets/me/c@v1", *hub)
    assert [a["ref"] for a in artifacts(dest, "dataset")] == ["dataset/c:v1"]  # registered once
    assert_consistent(dest)
    for got, want in zip(_episodes(dest), _episodes(source), strict=True):
        np.testing.assert_array_equal(got, want)
