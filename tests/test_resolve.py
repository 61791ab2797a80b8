"""One resolution order for every training command: default < recipe < user < --config < --set < flags."""

from __future__ import annotations

import pytest

from helpers import run, run_json
from pwm_core.config import ConfigError
from pwm_core.diffsim.shac import SHACConfig
from pwm_core.diffsim.shac import validate_config as validate_shac
from pwm_core.train.extract import EXTRACT_RECIPES, ExtractConfig, validate_config
from pwm_core.train.finetune import FinetuneConfig, validate_finetune_config
from pwmctl.resolve import resolve_config


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def test_each_layer_overrides_the_ones_below_and_is_named(home, tmp_path):
    run(home, "config", "set", "device", "cpu")
    run(home, "config", "set", "extract.steps", "11")
    run(home, "config", "set", "extract.horizon", "12")
    run(home, "config", "set", "extract.gamma", "0.9")
    (tmp_path / "c.yaml").write_text("horizon: 13\nlam: 0.5\nseed: 3\n")
    resolved = resolve_config(
        ExtractConfig(),
        home=home,
        section="extract",
        recipe=EXTRACT_RECIPES["default"],
        config_file=tmp_path / "c.yaml",
        overrides=["lam=0.6", "seed=4"],
        flags={"seed": 5, "steps": None},
        validate=validate_config,
    )
    cfg = resolved.cfg
    assert (cfg.batch_size, cfg.device, cfg.steps, cfg.gamma, cfg.horizon, cfg.lam, cfg.seed) == (
        64,
        "cpu",
        11,
        0.9,
        13,
        0.6,
        5,
    )
    assert {k: v for k, v in resolved.sources.items()} == {
        "batch_size": "recipe",
        "mask_actions": "recipe",
        "keep": "recipe",
        "kernels": "recipe",
        "critic_iterations": "recipe",
        "device": "user",
        "steps": "user",
        "gamma": "user",
        "horizon": "config",
        "lam": "set",
        "seed": "flag",
    }
    assert resolved.as_doc()["sources"]["actor_lr"] == "default"
    # a layer that sets a field to the value it already had still names it: `--steps 10000` is a flag
    again = resolve_config(
        ExtractConfig(), home=tmp_path / "empty", section=None, flags={"steps": ExtractConfig().steps}
    )
    assert again.sources == {"steps": "flag"}


def test_the_result_is_validated_once_after_the_last_layer(home):
    # --set horizon=0 is invalid, but the flag layer cannot fix a config field it does not set: refused
    with pytest.raises(ConfigError, match="horizon"):
        resolve_config(ExtractConfig(), home=home, section="extract", overrides=["horizon=0"], validate=validate_config)
    # an invalid lower layer that a higher one corrects is fine: only the result is checked
    cfg = resolve_config(
        FinetuneConfig(),
        home=home,
        section="finetune",
        overrides=["env_steps=0"],
        flags={"env_steps": 10},
        validate=validate_finetune_config,
    ).cfg
    assert cfg.env_steps == 10
    with pytest.raises(ConfigError, match="epochs"):
        resolve_config(SHACConfig(), home=home, section="shac", flags={"epochs": 0}, validate=validate_shac)


def test_unknown_keys_in_any_layer_are_one_clear_error(home, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'env_steps'"):
        resolve_config(FinetuneConfig(), home=home, section="finetune", overrides=["env_step=3"])
    (tmp_path / "bad.yaml").write_text("lamda: 0.5\n")
    with pytest.raises(ConfigError, match="bad.yaml.*did you mean 'lam'"):
        resolve_config(ExtractConfig(), home=home, section="extract", config_file=tmp_path / "bad.yaml")


def test_config_set_accepts_finetune_and_shac_fields_and_checks_them(home):
    run(home, "config", "set", "finetune.updates_per_episode", "7")
    run(home, "config", "set", "shac.num_envs", "8")
    assert resolve_config(FinetuneConfig(), home=home, section="finetune").cfg.updates_per_episode == 7
    assert resolve_config(SHACConfig(), home=home, section="shac").cfg.num_envs == 8
    for key, value, word in (
        ("finetune.env_steps", "0", "env_steps"),
        ("shac.nmu_envs", "3", "num_envs"),
        ("finetune.wm_batch_size", "many", "wm_batch_size"),
    ):
        result = run(home, "config", "set", key, value, code=2)
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, result.stderr


def test_shac_dry_run_prints_the_resolved_config_and_trains_nothing(home, tmp_path):
    run(home, "config", "set", "shac.num_envs", "8")
    (tmp_path / "s.yaml").write_text("actor_lr: 0.002\n")
    doc = run_json(
        home,
        "shac",
        "cartpole-swingup",
        "--dry-run",
        "--config",
        str(tmp_path / "s.yaml"),
        "--set",
        "horizon=16",
        "--epochs",
        "3",
    )
    assert doc["dry_run"] and doc["config"]["epochs"] == 3 and doc["config"]["num_envs"] == 8
    assert {k: doc["sources"][k] for k in ("epochs", "num_envs", "actor_lr", "horizon", "seed")} == {
        "epochs": "flag",
        "num_envs": "user",
        "actor_lr": "config",
        "horizon": "set",
        "seed": "default",
    }
    human = run(home, "shac", "cartpole-swingup", "--dry-run", "--epochs", "3").stdout
    assert "epochs" in human and "[flag]" in human and "[user]" in human
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())
    result = run(home, "shac", "cartpole-swingup", "--dry-run", "--set", "epoch=3", code=2)
    assert len(result.stderr.strip().splitlines()) == 1 and "did you mean 'epochs'" in result.stderr


@pytest.mark.parametrize(
    "cls, bad, word",
    [
        (ExtractConfig, {"horizon": 0}, "horizon"),
        (FinetuneConfig, {"env_steps": 0}, "env_steps"),
        (SHACConfig, {"epochs": 0}, "epochs"),
        ("pretrain", {"rho": 2.0}, "rho"),
        ("mppi", {"num_samples": 32}, "num_elites"),
        (ExtractConfig, {"kernels": "turbo"}, "kernels"),
        ("pretrain", {"kernels": "turbo"}, "kernels"),
    ],
)
def test_configs_validate_on_construction_and_on_demand(cls, bad, word):
    from pwm_core.plan.mppi import MPPIConfig
    from pwm_core.train.pretrain import PretrainConfig

    cls = {"pretrain": PretrainConfig, "mppi": MPPIConfig}.get(cls, cls)
    cfg = cls()  # the defaults are valid
    with pytest.raises(ConfigError, match=word):
        cls(**bad)
    for key, value in bad.items():  # fields set later (layers, scripts) are checked by validate()
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=word):
        cfg.validate()
