"""`pwmctl config get | set | unset | list`: user defaults in $PWM_HOME/config.yaml."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import typer
import yaml

from pwmctl.console import emit, fail, state

app = typer.Typer(
    help="User defaults (Hub namespace, device, model size, pretrain.* and extract.* settings) in "
    "$PWM_HOME/config.yaml.",
    no_args_is_help=True,
)

# key -> (help, allowed values or None)
KEYS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "hub.namespace": ("Hub user or organisation that `pwmctl push` names repos under", None),
    "hub.endpoint": ("Hub endpoint URL (default: huggingface_hub's, or HF_ENDPOINT)", None),
    "hub.license": ("license id on the cards `pwmctl push` writes (default mit): apache-2.0, cc-by-4.0, ...", None),
    "device": ("default --device for training and evaluation: auto, cpu, cuda, cuda:N", None),
    "size": ("default world-model --size", ("1M", "5M", "19M", "48M", "317M")),
}


# `<section>.<field>`: any field of that command's config (PretrainConfig, ExtractConfig, FinetuneConfig, SHACConfig)
SECTIONS = ("pretrain", "extract", "finetune", "shac")


def _section_config(section: str):
    from pwm_core.diffsim.shac import SHACConfig
    from pwm_core.train.extract import ExtractConfig
    from pwm_core.train.finetune import FinetuneConfig
    from pwm_core.train.pretrain import PretrainConfig

    return {"pretrain": PretrainConfig, "extract": ExtractConfig, "finetune": FinetuneConfig, "shac": SHACConfig}[
        section
    ]()


def section_overrides(home: Path, section: str) -> list[str]:
    """The user's `section.field` settings as `field=value` overrides (below every explicit source)."""
    return [f"{k.split('.', 1)[1]}={v}" for k, v in read_config(home).items() if k.startswith(section + ".")]


def config_path(home: Path) -> Path:
    return home / "config.yaml"


def read_config(home: Path) -> dict[str, str]:
    """The user's defaults (flat dotted keys); {} when there is no config file."""
    path = config_path(home)
    if not path.exists():
        return {}
    from pwm_core.config import ConfigError  # the CLI prints it as one line; Python callers (pwmctl.api) can catch it

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({e.__class__.__name__}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings; fix or delete it")
    return {str(k): str(v) for k, v in data.items()}


def _write(home: Path, values: dict[str, str]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = config_path(home).with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(dict(sorted(values.items())), sort_keys=False))
    os.replace(tmp, config_path(home))  # never a half-written config


def _check_key(key: str) -> None:
    section, _, field = key.partition(".")
    if section in SECTIONS:
        fields = list(_section_config(section).to_dict())
        if field not in fields:
            close = difflib.get_close_matches(field, fields, n=1)
            raise fail(
                f"unknown setting {key!r}: "
                + (f"did you mean '{section}.{close[0]}'?" if close else f"{section} settings: {', '.join(fields)}")
            )
        return
    if key not in KEYS:
        close = difflib.get_close_matches(key, KEYS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(KEYS)}"
        raise fail(f"unknown setting {key!r}: {hint}")


def _check_value(home: Path, key: str, value: str) -> None:
    """Refuse a value the command reading it would refuse: the same checks, run before anything is written."""
    from pwm_core.config import ConfigError, apply_overrides, check_device
    from registry.errors import RegistryError

    section, _, field = key.partition(".")
    try:
        if section in SECTIONS:  # the value must parse as that field's type and pass the section's checks
            cfg = _section_config(section)  # together with the other saved settings
            apply_overrides(cfg, [f"{field}={value}"])
            apply_overrides(cfg, [o for o in section_overrides(home, section) if o.split("=", 1)[0] != field])
            _validate_section(section, cfg)
        elif key == "device":
            check_device(value)
        elif key == "hub.namespace":
            from registry.hub import check_namespace

            check_namespace(value)
        elif key == "hub.license":
            from registry.hub import check_license

            check_license(value)
        elif key == "hub.endpoint" and not value.startswith(("https://", "http://")):
            raise ConfigError(f"{value!r} is not an http(s) URL, e.g. https://huggingface.co")
        elif KEYS[key][1] is not None and value not in KEYS[key][1]:
            raise ConfigError(f"must be one of {', '.join(KEYS[key][1])}, not {value!r}")
    except (ConfigError, RegistryError) as e:
        message, name = str(e), field if section in SECTIONS else key
        raise fail(key + message[len(name) :] if message.startswith(name) else f"{key}: {message}") from None


def _validate_section(section: str, cfg) -> None:
    from pwm_core.config import check_device

    if section == "extract":
        from pwm_core.train.extract import validate_config

        validate_config(cfg)
    elif section == "finetune":
        from pwm_core.train.finetune import validate_finetune_config

        validate_finetune_config(cfg)
    elif section == "shac":
        from pwm_core.diffsim.shac import validate_config as validate_shac

        validate_shac(cfg)
    else:
        from pwm_core.train.validation import validate_pretrain_config

        validate_pretrain_config(cfg)
    if hasattr(cfg, "device"):
        check_device(cfg.device)  # ExtractConfig's checks leave the device to torch


@app.command("list")
def config_list(ctx: typer.Context) -> None:
    """Every setting with its value (or unset) and what it does."""
    st = state(ctx)
    values = read_config(st.home)
    emit(
        st,
        {"path": str(config_path(st.home)), "settings": values},
        lambda: (
            [
                typer.echo(f"{k} = {values[k] if k in values else '(unset)'}    # {help_}")
                for k, (help_, _) in KEYS.items()
            ]
            + [
                typer.echo(f"{k} = {v}    # default for `pwmctl {k.split('.')[0]}`")
                for k, v in sorted(values.items())
                if k.split(".")[0] in SECTIONS
            ]
        ),
    )


@app.command("get")
def config_get(ctx: typer.Context, key: str = typer.Argument(..., help="Setting name, e.g. hub.namespace.")) -> None:
    """Print one setting (exit 1 when it is unset)."""
    st = state(ctx)
    _check_key(key)
    value = read_config(st.home).get(key)
    emit(st, {"key": key, "value": value}, lambda: typer.echo(value if value is not None else "(unset)"))
    if value is None:
        raise typer.Exit(1)


@app.command("set")
def config_set(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="Setting name."),
    value: str = typer.Argument(..., help="New value."),
) -> None:
    """Set one setting."""
    st = state(ctx)
    _check_key(key)
    _check_value(st.home, key, value)
    values = read_config(st.home)
    values[key] = value
    _write(st.home, values)
    emit(st, {"key": key, "value": value}, lambda: typer.echo(f"{key} = {value}"))


@app.command("unset")
def config_unset(ctx: typer.Context, key: str = typer.Argument(..., help="Setting name.")) -> None:
    """Remove one setting."""
    st = state(ctx)
    _check_key(key)
    values = read_config(st.home)
    values.pop(key, None)
    _write(st.home, values)
    emit(st, {"key": key, "value": None}, lambda: typer.echo(f"{key} unset"))
