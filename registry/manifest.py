"""manifest.json: what one artifact version holds, with a sha256 and size per payload file.

The manifest sits at the root of a version folder and lists every other file in it, recursively,
by its `/`-separated path relative to that root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from registry.errors import IntegrityError
from registry.refs import shorten

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
BLOCK_BYTES = 1 << 20  # 1 MiB reads keep hashing of multi-GB datasets at constant memory

FileEntry = dict[str, Any]  # {"sha256": hex str, "size": bytes}

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Every key make_manifest writes, with the JSON type it holds.
_KEY_TYPES: dict[str, tuple[type, str]] = {
    "manifest_version": (int, "an integer"),
    "kind": (str, "a string"),
    "name": (str, "a string"),
    "version": (int, "an integer"),
    "created": (str, "a string"),
    "files": (dict, "a table"),
    "parents": (list, "a list"),
    "tasks": (list, "a list"),
    "config": (dict, "a table"),
    "metrics": (dict, "a table"),
    "code_version": (dict, "a table"),
    "extra": (dict, "a table"),
}


@dataclass(frozen=True)
class FileProblem:
    """One way a version folder disagrees with its manifest."""

    path: str  # relative, "/"-separated
    problem: Literal["changed", "missing", "unexpected"]
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.problem}: {self.path}" + (f" ({self.detail})" if self.detail else "")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def list_files(root: Path) -> list[str]:
    """Relative "/"-paths of every non-folder entry under `root` but its manifest.json, sorted.

    Symbolic links are listed (not followed), so `hash_tree` can refuse them and `verify_tree`
    can report them.
    """
    paths = []
    for folder, dirs, files in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        paths += [(rel_folder / name).as_posix() for name in files + links]
    return sorted(p for p in paths if p != MANIFEST_NAME)


def hash_tree(root: Path) -> dict[str, FileEntry]:
    """{relpath: {"sha256", "size"}} for every payload file under `root`, sorted by path.

    Raises:
        IntegrityError: the tree holds a symbolic link (an artifact must be self-contained).
    """
    root = Path(root)
    entries = {}
    for rel in list_files(root):
        path = root / rel
        if path.is_symlink():
            raise IntegrityError(f"{path} is a symbolic link: an artifact must hold its own files, copy it in")
        entries[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return entries


def make_manifest(
    kind: str,
    name: str,
    version: int,
    created: str,
    files: Mapping[str, FileEntry],
    *,
    parents: Sequence[str] = (),
    tasks: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    code_version: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest document, keys in reading order."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "name": name,
        "version": version,
        "created": created,
        "files": dict(files),
        "parents": list(parents),
        "tasks": list(tasks),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "code_version": dict(code_version or {}),
        "extra": dict(extra or {}),
    }


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Write `folder/manifest.json` (fsynced, so a published version never has a torn one)."""
    path = Path(folder) / MANIFEST_NAME
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read `folder/manifest.json`.

    Raises:
        IntegrityError: the file is missing, is not JSON, or is not a manifest.
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing: {folder} is not a published artifact") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is not valid JSON ({e}): the artifact is damaged") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{path} has no 'files' table: the artifact is damaged")
    return manifest


def manifest_problem(manifest: Mapping[str, Any]) -> str | None:
    """What makes `manifest` unlike one `make_manifest` writes (a missing key, a wrong type, a bad
    files table), or None. For manifests from elsewhere (a Hub pull), checked before any field is
    used; a `manifest_version` newer than this pwmctl's is left for the caller to refuse."""
    for key, (kind, what) in _KEY_TYPES.items():
        if key not in manifest:
            return f"no {key!r}"
        value = manifest[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is {_shown(value)}, not {what}"
    for key in ("manifest_version", "version"):
        if manifest[key] < 1:
            return f"{key!r} is {manifest[key]}: versions start at 1"
    try:
        datetime.fromisoformat(manifest["created"])
    except ValueError:
        return f"'created' is {_shown(manifest['created'])}, not an ISO 8601 time"
    for key in ("parents", "tasks"):
        if not all(isinstance(item, str) and item.strip() for item in manifest[key]):
            return f"{key!r} holds something else than names: {_shown(manifest[key])}"
    for path, entry in manifest["files"].items():
        problem = _file_entry_problem(path, entry)
        if problem:
            return f"files table: {problem}"
    return None


def _file_entry_problem(path: str, entry: Any) -> str | None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in path:
        return f"{_shown(path)} is not a relative path inside the artifact"
    if not isinstance(entry, dict):
        return f"{_shown(path)} has {_shown(entry)}, not {{sha256, size}}"
    sha, size = entry.get("sha256"), entry.get("size")
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        return f"{_shown(path)} has sha256 {_shown(sha)}, not 64 hex digits"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"{_shown(path)} has size {_shown(size)}, not a byte count"
    return None


def _shown(value: Any) -> str:
    """A value from a manifest as JSON, shortened (it may be long, or hostile)."""
    return shorten(json.dumps(value), 60)


def verify_tree(root: Path, manifest: Mapping[str, Any]) -> list[FileProblem]:
    """Re-hash `root` against `manifest["files"]`: changed, missing and unexpected files.

    A file whose size differs is reported without hashing it. Problems are sorted by path.
    """
    root = Path(root)
    expected: Mapping[str, FileEntry] = manifest["files"]
    present = set(list_files(root))
    problems = [FileProblem(rel, "missing") for rel in expected if rel not in present]
    problems += [FileProblem(rel, "unexpected") for rel in present if rel not in expected]
    for rel in sorted(present & expected.keys()):
        problem = _file_problem(root / rel, rel, expected[rel])
        if problem:
            problems.append(problem)
    return sorted(problems, key=lambda p: p.path)


def _file_problem(path: Path, rel: str, entry: FileEntry) -> FileProblem | None:
    """A "changed" problem if the file at `path` is not the one `entry` describes."""
    if path.is_symlink():
        return FileProblem(rel, "changed", "replaced by a symbolic link")
    size = path.stat().st_size
    if size != entry["size"]:
        return FileProblem(rel, "changed", f"size {size} bytes, expected {entry['size']}")
    sha = sha256_file(path)
    if sha != entry["sha256"]:
        expected = entry["sha256"]
        return FileProblem(rel, "changed", f"sha256 {sha[:12]}..., expected {expected[:12]}...")
    return None
