"""Dataclass configs: dict/YAML round trips, typed `key=value` overrides, clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pwm_core.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_yaml,
    load_yaml_into,
    merge,
    save_yaml,
    to_dict,
)
from pwm_core.errors import PwmError


@dataclass
class Optim:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Run:
    steps: int = 10
    name: str = "run"
    amp: str | None = None
    compile: bool = False
    hidden: list[int] = field(default_factory=lambda: [512, 512])
    optim: Optim = field(default_factory=Optim)
    extra: dict[str, int] = field(default_factory=dict)


def test_overrides_are_coerced_to_the_field_type():
    cfg = apply_overrides(
        Run(),
        [
            "steps=1e3",
            "optim.lr=1e-3",
            "compile=true",
            "amp=bf16",
            "hidden=[64, 32]",
            "name=007",
            "optim.betas=[0.7, 0.95]",
            "extra.width=8",
        ],
    )
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.optim.lr == 1e-3 and cfg.compile is True and cfg.amp == "bf16"
    assert cfg.hidden == [64, 32] and cfg.name == "007"  # a string field keeps the text verbatim
    assert cfg.optim.betas == (0.7, 0.95) and cfg.extra == {"width": 8}
    assert apply_overrides(cfg, ["amp=none"]).amp is None


def test_overrides_update_in_place_and_return_the_config():
    cfg = Run()
    assert apply_overrides(cfg, ["steps=5"]) is cfg and cfg.steps == 5


def test_unknown_key_is_a_pwm_error_with_a_suggestion():
    with pytest.raises(PwmError, match=r"unknown config key 'optim\.lrr': did you mean 'lr'\?"):
        apply_overrides(Run(), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'stpes'.*valid keys here: steps, name"):
        apply_overrides(Run(), ["stpes=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=1.5", "steps: expected an integer"),
        ("compile=maybe", "compile: expected true or false"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("optim.betas=[1]", "optim.betas: expected 2 values"),
        ("steps", "not of the form key=value"),
        ("steps.x=1", "steps is not a section"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Run(), [override])


def test_dict_and_yaml_round_trip(tmp_path):
    cfg = apply_overrides(Run(), ["optim.lr=1e-3", "hidden=[1, 2]"])
    assert from_dict(Run, to_dict(cfg)) == cfg
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml")["optim"] == {"lr": 1e-3, "betas": [0.9, 0.999]}
    assert from_dict(Run, load_yaml(tmp_path / "c.yaml")) == cfg


def test_resolution_order_defaults_then_file_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 50\noptim:\n  lr: 3e-3\n")  # PyYAML reads 3e-3 as a string
    cfg = load_yaml_into(Run(), tmp_path / "c.yaml")
    assert (cfg.steps, cfg.optim.lr, cfg.optim.betas) == (50, 3e-3, (0.9, 0.999))
    apply_overrides(cfg, ["steps=60"])
    assert cfg.steps == 60 and cfg.optim.lr == 3e-3


def test_bad_file_or_mapping_leaves_the_config_untouched(tmp_path):
    cfg = Run()
    with pytest.raises(ConfigError, match="unknown config key 'optim.momentum'"):
        merge(cfg, {"steps": 99, "optim": {"momentum": 0.9}})
    assert cfg == Run()
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("stpes: 3\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown config key 'stpes'"):
        load_yaml_into(cfg, tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_from_dict_requires_fields_without_defaults():
    @dataclass
    class Model:
        width: int
        depth: int = 2

    assert from_dict(Model, {"width": "64"}) == Model(64, 2)
    with pytest.raises(ConfigError, match="missing required keys width"):
        from_dict(Model, {"depth": 3})
