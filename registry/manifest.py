"""manifest.json: what one artifact version holds, with a sha256 and size per payload file.

The manifest sits at the root of a version folder and lists every other file in it, recursively,
by its `/`-separated path relative to that root.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from registry.errors import IntegrityError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
BLOCK_BYTES = 1 << 20  # 1 MiB reads keep hashing of multi-GB datasets at constant memory

FileEntry = dict[str, Any]  # {"sha256": hex str, "size": bytes}


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
            raise IntegrityError(
                f"{path} is a symbolic link: an artifact must hold its own files, copy it in"
            )
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
