"""Artifact refs: `kind/name[:version]`, e.g. `worldmodel/mt30-48m:v2`.

`:latest` (or no version) means the newest version; `:v3` and `:3` both mean version 3. Where the
caller knows the kind (`--wm mt30-48m`), the kind prefix may be dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import RefError

KINDS: tuple[str, ...] = ("dataset", "worldmodel", "policy", "report")
LATEST = "latest"
MAX_NAME_LEN = 100  # keeps folder paths and derived Hub repo names well inside their limits
MAX_VERSION = 2**63 - 1  # SQLite's INTEGER

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_VERSION_RE = re.compile(r"v?([0-9]+)")
_EXPECTED = f"expected KIND/NAME[:vN], KIND one of {', '.join(KINDS)}"


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid artifact (or run) name, or None if it is."""
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_LEN:
        return f"the name is longer than {MAX_NAME_LEN} characters"
    if not _NAME_RE.fullmatch(name):
        return (
            f"name {name!r} may only use lowercase letters, digits, '-', '_', '.' and must start with a letter or digit"
        )
    return None


def kind_problem(kind: str) -> str | None:
    """Why `kind` is not an artifact kind, or None if it is."""
    return None if kind in KINDS else f"unknown kind {kind!r}"


def version_problem(version: int | None) -> str | None:
    """Why `version` is not a version number (None = latest is fine), or None if it is."""
    if version is None or (isinstance(version, int) and 1 <= version <= MAX_VERSION):
        return None
    return f"version {version!r} is not a whole number from 1 to {MAX_VERSION}"


def check_kind(kind: str) -> str:
    """Return `kind` if it is an artifact kind, else raise RefError."""
    problem = kind_problem(kind)
    if problem:
        raise RefError(f"{problem}: KIND is one of {', '.join(KINDS)}")
    return kind


def check_name(name: str, what: str = "artifact name") -> str:
    """Return `name` if it is a valid artifact (or run) name, else raise RefError."""
    problem = name_problem(name)
    if problem:
        raise RefError(f"bad {what} {name!r}: {problem}")
    return name


@dataclass(frozen=True)
class Ref:
    """A parsed artifact ref. `version` is None for "latest"."""

    kind: str
    name: str
    version: int | None = None

    def __post_init__(self) -> None:
        kind, name, version = self.kind, self.name, self.version
        problem = kind_problem(kind) or name_problem(name) or version_problem(version)
        if problem:
            raise RefError(f"bad artifact ref {self.kind}/{self.name}: {problem}; {_EXPECTED}")

    def __str__(self) -> str:
        version = LATEST if self.version is None else f"v{self.version}"
        return f"{self.kind}/{self.name}:{version}"


def parse_ref(text: str, default_kind: str | None = None) -> Ref:
    """Parse `kind/name`, `kind/name:v3`, `kind/name:3`, `kind/name:latest`, or `name`.

    Args:
        text: the ref as typed.
        default_kind: the kind to use when `text` has no `kind/` prefix; without it such a ref is
            an error.

    Raises:
        RefError: the text does not parse, or names an unknown kind, a bad name or version.
    """
    if default_kind is not None:
        check_kind(default_kind)
    path, colon, version_text = text.strip().partition(":")
    kind, slash, name = path.rpartition("/")
    if not slash:
        kind = default_kind or ""
    version, version_error = _parse_version(version_text if colon else LATEST)
    problem = (kind_problem(kind) if kind else "no KIND/ prefix") or name_problem(name) or version_error
    if problem:
        raise RefError(f"bad artifact ref {shorten(text)!r}: {problem}; {_EXPECTED}")
    return Ref(kind, name, version)


def shorten(text: str, limit: int = 120) -> str:
    """`text`, shortened to keep an error message on one readable line."""
    return text if len(text) <= limit else f"{text[: limit - 30]}...{text[-10:]} ({len(text)} characters)"


def _parse_version(text: str) -> tuple[int | None, str | None]:
    """(version, None) for `latest` (None), `vN` or `N` with N >= 1; (None, why) otherwise."""
    if text == LATEST:
        return None, None
    match = _VERSION_RE.fullmatch(text)
    if not match:
        return None, f"version {text!r} is not vN, N (N >= 1) or latest"
    digits = match.group(1).lstrip("0")
    if len(digits) > len(str(MAX_VERSION)) or int(digits or 0) > MAX_VERSION:  # int() of 5000 digits raises
        return None, f"version {shorten(text, 40)!r} is too large (at most v{MAX_VERSION})"
    if int(digits or 0) < 1:
        return None, f"version {text!r} is not vN, N (N >= 1) or latest"
    return int(digits), None
