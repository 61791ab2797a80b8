"""`config set` refuses what the commands refuse; one check of PretrainConfig's values."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import run, run_json

from pwm_core.config import ConfigError, check_device
from pwm_core.train.pretrain import PretrainConfig
from pwm_core.train.validation import validate_pretrain_config


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("pretrain.batch_size", "0", "pretrain.batch_size must be >= 1"),
        ("pretrain.steps", "-5", "pretrain.steps must be >= 1"),
        ("pretrain.horizon", "0", "pretrain.horizon must be >= 1"),
        ("pretrain.checkpoint_every", "0", "pretrain.checkpoint_every must be >= 1"),
        ("pretrain.val_every", "0", "pretrain.val_every must be >= 1"),
        ("pretrain.log_every", "0", "pretrain.log_every must be >= 1"),
        ("pretrain.lr", "nan", "pretrain.lr must be a finite number > 0"),
        ("pretrain.rho", "nan", "pretrain.rho must be a finite number > 0 and <= 1"),
        ("pretrain.amp", "fp8", "pretrain.amp: 'fp8' is not supported"),
        ("pretrain.size", "7M", "unknown model size '7M'"),
        ("pretrain.device", "banana", "'banana' is not a device"),
        ("extract.device", "cuda:x", "'cuda:x' is not a device"),
        ("device", "banana", "device: 'banana' is not a device; use auto, cpu, cuda or cuda:N"),
        ("hub.namespace", "../../x", "hub.namespace: bad Hub namespace '../../x'"),
        ("hub.endpoint", "ftp://x", "is not an http(s) URL"),
    ],
)
def test_config_set_refuses_what_the_commands_refuse_and_writes_nothing(tmp_path, key, value, message):
    home = tmp_path / "home"
    run(home, "config", "set", "pretrain.steps", "2000")
    before = (home / "config.yaml").read_text()
    result = run(home, "config", "set", key, "--", value, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert (home / "config.yaml").read_text() == before


@pytest.mark.parametrize(
    "key, value",
    [
        ("pretrain.batch_size", "64"),
        ("pretrain.rho", "0.5"),
        ("pretrain.amp", "bf16"),
        ("pretrain.amp", "none"),
        ("device", "cuda:1"),
        ("hub.namespace", "me-2.org_x"),
    ],
)
def test_config_set_accepts_good_values(tmp_path, key, value):
    assert run_json(tmp_path, "config", "set", key, value) == {"key": key, "value": value}


def test_the_default_pretrain_config_is_valid():
    validate_pretrain_config(PretrainConfig())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"val_batches": 0}, "val_batches must be >= 1"),
        ({"rho": 0.0}, "rho must be a finite number > 0"),
        ({"rho": 1.5}, "<= 1"),
        ({"tau": float("inf")}, "tau must be a finite number"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm"),
        ({"entropy_coef": -1.0}, "entropy_coef must be"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"device": "gpu"}, "'gpu' is not a device"),
        ({"size": "2M"}, "unknown model size"),
    ],
)
def test_validate_pretrain_config_names_the_bad_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate_pretrain_config(dataclasses.replace(PretrainConfig(), **changes))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_check_device_accepts_the_documented_forms(device):
    assert check_device(device) == device
