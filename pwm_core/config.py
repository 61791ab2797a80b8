"""Dataclass configs as plain data: dict and YAML round trips, ``key=value`` overrides.

Every config in pwm_core is a dataclass whose defaults are the paper's values. The CLI resolves one
in this order: defaults -> ``--config file.yaml`` (:func:`merge`) -> ``--set a.b=c``
(:func:`apply_overrides`) -> explicit flags; :func:`merge` and :func:`apply_overrides` update the
config in place and return it. Values are coerced to the declared field type
(``"3e-4"`` -> 0.0003 for a float, ``"none"`` -> None for an optional field); an unknown key or a
value of the wrong type is a :class:`ConfigError` naming the key and the valid choices.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from pwm_core.errors import PwmError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


class ConfigError(PwmError):
    """A config key that does not exist or a value that does not fit its field."""


_DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device(device: str, key: str = "device") -> str:
    """``device`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the ``--device`` rule), else a ConfigError."""
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ConfigError(f"{key}: {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    return device


def check_device_available(device: str, key: str = "--device") -> str:
    """``device`` if it is well formed and usable here, else a ConfigError saying what to do instead.

    ``auto`` and ``cpu`` always pass; ``cuda[:N]`` needs a CUDA (or ROCm) build of torch, a visible GPU
    and, for ``cuda:N``, more than N of them. Commands call this before any run folder is made.
    """
    check_device(device, key)
    if not device.startswith("cuda"):
        return device
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise ConfigError(
            f"{key} {device}: this torch ({torch.__version__}) is a CPU-only build; install a CUDA "
            "build (`make install TORCH_INDEX=https://download.pytorch.org/whl/cu128`, see the README) "
            "or use --device cpu"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key} {device}: torch {torch.__version__} finds no GPU (no driver, or "
            "CUDA_VISIBLE_DEVICES hides them); use --device cpu"
        )
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{key} {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def check_range(
    cfg: Any,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """A ConfigError unless ``cfg.<key>`` is a finite number inside the interval (closed ends by default)."""
    value = getattr(cfg, key)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if isinstance(value, bool) or not math.isfinite(value) or below or above:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise ConfigError(
            f"{key} must be a finite number{' ' if lo or hi else ''}{lo}"
            f"{' and ' if lo and hi else ''}{hi}, got {value!r}"
        )


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> nested dict of YAML/JSON-friendly values (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def from_dict(cls: type[C], data: Mapping[str, Any], *, where: str = "") -> C:
    """A new ``cls`` from a mapping; keys left out keep their defaults (fields without one are required)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys to values, got {data!r}")
    hints = _field_types(cls)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required keys {', '.join(missing)}")
    cfg = cls(**{k: coerce(data[k], hints[k], f"{where}.{k}" if where else k) for k in required})
    return merge(cfg, {k: v for k, v in data.items() if k not in required}, where=where)


def merge(cfg: C, data: Mapping[str, Any], *, where: str = "") -> C:
    """Set the keys of ``data`` (nested for nested dataclasses) on ``cfg`` in place; returns ``cfg``.

    Every key is checked and coerced before anything is set, so a bad mapping leaves ``cfg`` as it was.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys to values, got {data!r}")
    hints = _field_types(type(cfg))
    changes = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise ConfigError(_unknown_key(path, key, hints))
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type) and isinstance(value, Mapping):
            changes[key] = merge(copy.deepcopy(current), value, where=path)
        else:
            changes[key] = coerce(value, hints[key], path)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def load_yaml_into(cfg: C, path: str | os.PathLike) -> C:
    """Merge the YAML mapping at ``path`` into ``cfg`` in place (``--config file.yaml``); returns it."""
    data = load_yaml(path)
    try:
        return merge(cfg, data)
    except ConfigError as e:
        raise ConfigError(f"{os.fspath(path)}: {e}") from None


def apply_overrides(cfg: C, overrides: Iterable[str]) -> C:
    """Apply ``key=value`` / ``a.b=value`` overrides in order, in place; returns ``cfg``.

    Dots walk into nested dataclass fields, or set one entry of a ``dict`` field. The value is
    read as YAML (``[1, 2]``, ``true``, ``null``) and then coerced to the field's type; a ``str``
    field takes the text verbatim.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. lr=1e-3)")
        _set_path(cfg, key.split("."), raw.strip(), key)
    return cfg


def set_given(cfg: C, **values: Any) -> C:
    """Set the fields given explicitly (``None`` = the flag was not passed): the last, highest-priority
    source of a config after presets, files and ``--set`` overrides."""
    for field, value in values.items():
        if value is not None:
            setattr(cfg, field, value)
    return cfg


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {os.fspath(path)} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {os.fspath(path)} must hold a mapping, got {type(data).__name__}")
    return data


def save_yaml(cfg: Any, path: str | os.PathLike) -> None:
    """Write a dataclass (or a plain mapping) as YAML, keys in field order."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else _plain(cfg)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def coerce(value: Any, tp: Any, key: str = "value") -> Any:
    """``value`` converted to the annotated type ``tp``, or a :class:`ConfigError`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))  # PyYAML reads "3e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where=key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {k: coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: cannot read {value!r} as {tp}")


def _set_path(cfg: Any, parts: list[str], raw: str, full_key: str) -> None:
    hints = _field_types(type(cfg))
    head, rest = parts[0], parts[1:]
    if head not in hints:
        prefix = full_key[: len(full_key) - len(".".join(parts))]
        raise ConfigError(_unknown_key(prefix + head, head, hints))
    current = getattr(cfg, head)
    if rest and dataclasses.is_dataclass(current):
        _set_path(current, rest, raw, full_key)
    elif rest and isinstance(current, dict):  # one entry of a dict field, e.g. model.latent_dim=64
        value_type = (typing.get_args(hints[head]) or (Any, Any))[1]
        current[".".join(rest)] = coerce(_parse(raw, value_type), value_type, full_key)
    elif rest:
        raise ConfigError(f"{full_key}: {head} is not a section (it holds a {type(current).__name__})")
    else:
        setattr(cfg, head, coerce(_parse(raw, hints[head]), hints[head], full_key))


def _parse(raw: str, tp: Any) -> Any:
    """Text of an override -> YAML value, except that a string field keeps the text verbatim."""
    if tp is str or (
        typing.get_origin(tp) in (typing.Union, types.UnionType)
        and str in typing.get_args(tp)
        and raw.strip().lower() not in _NONE
    ):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(path: str, key: str, hints: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(key), list(hints), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown config key {path!r}: {hint}valid keys here: {', '.join(hints)}"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
