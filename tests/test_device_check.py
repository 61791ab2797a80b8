"""`--device cuda` where torch cannot use a GPU: one error line, exit 2, no run folder, for every command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import run

from pwm_core.config import ConfigError, check_device_available
from registry import Registry

TASK = "cartpole-balance"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A real 1-episode dataset, and stand-in world model and policy artifacts (never loaded: the device is
    refused before)."""
    home = tmp_path_factory.mktemp("pwm")
    run(home, "collect", TASK, "-n", "1", "--name", "tiny")
    reg = Registry(home)
    with reg.stage("worldmodel", "wm") as staging:
        (staging.path / "model.safetensors").write_bytes(b"not loaded")
        wm = staging.publish(parents=["dataset/tiny:v1"], tasks=[TASK])
    with reg.stage("policy", TASK) as staging:
        (staging.path / "policy.safetensors").write_bytes(b"not loaded")
        staging.publish(parents=[wm.ref, "dataset/tiny:v1"], tasks=[TASK])
    return home


@pytest.fixture
def cpu_only_torch(monkeypatch):
    """This torch as a CPU-only build, whatever the machine has."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)


@pytest.mark.parametrize(
    "command",
    [
        ["pretrain", "--tasks", TASK, "--size", "1M", "--steps", "2"],
        ["extract", TASK, "--steps", "2"],
        ["finetune", TASK, "--env-steps", "10"],
        ["eval", f"policy/{TASK}", "--seeds", "1"],
    ],
)
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_cpu_only_torch_is_one_line_before_any_run_folder(home, cpu_only_torch, command, device):
    before = sorted((home / "runs").glob("*")), sorted((home / "artifacts").rglob("manifest.json"))
    result = run(home, *command, "--device", device, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert f"--device {device}" in lines[0] and "CPU-only build" in lines[0] and "TORCH_INDEX" in lines[0]
    assert (sorted((home / "runs").glob("*")), sorted((home / "artifacts").rglob("manifest.json"))) == before


def test_a_bad_device_is_refused_by_finetune_before_any_run_folder(home):
    before = sorted((home / "runs").glob("*"))
    result = run(home, "finetune", TASK, "--device", "gpu", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "'gpu' is not a device" in result.stderr
    assert sorted((home / "runs").glob("*")) == before


def test_cpu_and_auto_always_pass(cpu_only_torch):
    assert check_device_available("cpu") == "cpu" and check_device_available("auto") == "auto"


def test_a_cuda_build_without_a_gpu_and_a_missing_index_are_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="finds no GPU"):
        check_device_available("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device_available("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match=r"has 2 GPU\(s\), cuda:0 to cuda:1"):
        check_device_available("cuda:2")
