"""One resolution order for every training command's config, and what `--dry-run` prints of it.

Lowest to highest: the config class's defaults -> the named recipe (`extract --recipe`) -> the user's defaults
(`pwmctl config set device cuda`, `pwmctl config set <section>.<field> V`) -> `--config FILE.yaml` -> `--set
key=value` (in order) -> the command's own flags. Every layer goes through :mod:`pwm_core.config` (types coerced,
unknown keys refused with a suggestion), and the result is validated once, after the last layer, with the
config's own checks. :class:`Resolved` remembers the last layer that set each field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from pwmctl.commands.config import read_config, section_overrides

LAYERS = ("default", "recipe", "user", "config", "set", "flag")
USER_KEYS = ("device", "size")  # top-level `pwmctl config set` keys that are fields of several configs


@dataclass
class Resolved:
    """A resolved config and, per field some layer set, the last layer that set it."""

    cfg: Any
    sources: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, Any, str]]:
        """(field, value, layer) for every field, in declaration order."""
        return [(k, v, self.sources.get(k, "default")) for k, v in self.cfg.to_dict().items()]

    def as_doc(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "sources": {k: s for k, _, s in self.rows()}}


def resolve_config(
    cfg: Any,
    *,
    home: Path,
    section: str | None,
    recipe: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
    validate: Callable[[Any], None] | None = None,
) -> Resolved:
    """Apply the layers of :data:`LAYERS` to ``cfg`` (a config dataclass holding its defaults) in order.

    ``section``: the `pwmctl config set <section>.<field>` prefix this command reads (None: only `device`);
    ``flags``: the command's own options, None meaning "not given"; ``validate``: the config's checks, run
    once on the result (a :class:`~pwm_core.config.ConfigError` names the field) [default: ``cfg.validate()``].
    """
    from pwm_core.config import apply_overrides, load_yaml, load_yaml_into, merge, set_given

    resolved = Resolved(cfg)
    default = cfg.to_dict()

    def layer(name: str, apply: Callable[[], object], keys: Iterable[str]) -> None:
        apply()
        for key in keys:  # the fields this layer set (to a new value or not): the last one names the source
            if key in default:
                resolved.sources[key] = name

    def top(items: Iterable[str]) -> list[str]:  # "a.b=1" -> "a"
        return [item.partition("=")[0].strip().split(".")[0] for item in items]

    if recipe:
        layer("recipe", lambda: merge(cfg, recipe, where="recipe"), recipe)
    user = read_config(home)
    shared = {k: user[k] for k in USER_KEYS if k in user and k in default}  # `config set device cuda`, `... size`
    if shared:
        layer("user", lambda: merge(cfg, shared, where="user config"), shared)
    if section is not None:
        saved = section_overrides(home, section)
        layer("user", lambda: apply_overrides(cfg, saved), top(saved))
    if config_file is not None:
        data = load_yaml(config_file)  # a missing file or bad YAML: one ConfigError naming it
        layer("config", lambda: load_yaml_into(cfg, config_file), data if isinstance(data, Mapping) else ())
    given = list(overrides or [])
    layer("set", lambda: apply_overrides(cfg, given), top(given))
    explicit = {k: v for k, v in dict(flags or {}).items() if v is not None}
    layer("flag", lambda: set_given(cfg, **explicit), explicit)
    if validate is not None:
        validate(cfg)
    elif hasattr(cfg, "validate"):
        cfg.validate()
    return resolved


def print_dry_run(title: str, resolved: Resolved, facts: Mapping[str, Any] | None = None) -> None:
    """The human form of `--dry-run`: what would run, then every config field with the layer that set it."""
    if title:
        typer.echo(title)
    for key, value in (facts or {}).items():
        typer.echo(f"{key}: {value}")
    typer.echo("config (layer that set it: " + " < ".join(LAYERS) + "):")
    width = max(len(k) for k, _, _ in resolved.rows())
    for key, value, source in resolved.rows():
        mark = "" if source == "default" else f"  [{source}]"
        typer.echo(f"  {key:<{width}}  {json.dumps(value)}{mark}")
