"""The local artifact registry: immutable versions on disk, indexed in SQLite; `Registry` is its facade.

Layout under the home folder (`$PWM_HOME`):

    index.sqlite                      artifacts, lineage (parents), tasks, Hub remotes
    artifacts/<kind>/<name>/v<N>/     one immutable version: manifest.json + payload
    runs/<run-id>/                    work in progress (checkpoints, logs)
    tmp/                              staging folders, and trash on its way out

This module owns staging, publishing, finding, verifying and removing versions. `Registry` composes
the seams beside it, and this module re-exports their public names:

    registry/index.py       the SQLite index: schema, connections and locking, artifact rows
    registry/lineage.py     Hub remotes (`Remote`), lineage trees and matching pulled parents
    registry/runs.py        run folders
    registry/provenance.py  the code (pwmctl version, git commit) that made an artifact

Publishing writes the payload into a staging folder under tmp/, hashes it, then, inside one
`BEGIN IMMEDIATE` transaction (which serialises writers across processes), picks the next
version, writes manifest.json, renames the folder into place and inserts the index rows. A crash
leaves either nothing in the index or a whole version; a version folder orphaned by a crash keeps
its number, which is never issued again.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import AlreadyRegistered, IntegrityError, RegistryError, disk_errors
from registry.index import BUSY_TIMEOUT_S, INDEX_NAME, SCHEMA_VERSION, Artifact, Index, utc_now
from registry.lineage import (
    LineageNode,
    Remote,
    content_sha256,
    insert_remote,
    lineage_tree,
    local_parent,
    remotes_by_ref,
    remotes_of,
    with_remote,
)
from registry.manifest import (
    MANIFEST_NAME,
    FileEntry,
    FileProblem,
    hash_tree,
    list_files,
    make_manifest,
    read_manifest,
    verify_tree,
    write_manifest,
)
from registry.provenance import code_version_info
from registry.refs import Ref, check_kind, check_name, parse_ref
from registry.runs import find_run_dir, make_run_dir, newest_mtime

__all__ = [  # importable from here, wherever defined
    "BUSY_TIMEOUT_S",
    "INDEX_NAME",
    "SCHEMA_VERSION",
    "TRASH_PREFIX",
    "Artifact",
    "LineageNode",
    "RefLike",
    "Registry",
    "Remote",
    "Staging",
    "code_version_info",
    "content_sha256",
    "newest_mtime",
]

TRASH_PREFIX = ".trash-"  # entries of tmp/ being deleted; gc() finishes what a crash left
_VERSION_DIR_RE = re.compile(r"v([0-9]+)")

RefLike = str | Ref


@dataclass
class Staging:
    """A fresh, empty folder under <home>/tmp that one version's payload is written into."""

    registry: Registry
    kind: str
    name: str
    path: Path
    artifact: Artifact | None = None  # set by publish()

    def publish(
        self,
        *,
        parents: Iterable[RefLike | Artifact] = (),
        tasks: Iterable[str] = (),
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        code_version: str | None = None,
    ) -> Artifact:
        """Publish this folder as the next version of kind/name; see `Registry.publish`."""
        if self.artifact is not None:
            raise RegistryError(
                f"this staging folder was already published as {self.artifact.ref}; stage a new one for another version"
            )
        self.artifact = self.registry.publish(
            self.path,
            self.kind,
            self.name,
            parents=parents,
            tasks=tasks,
            config=config,
            metrics=metrics,
            extra=extra,
            code_version=code_version,
        )
        return self.artifact


class Registry:
    """Versioned, immutable artifacts under one home folder, safe to share between processes."""

    def __init__(self, home: Path | str) -> None:
        """Point at `home`; its folders and index are created on first use."""
        self.home = Path(home).expanduser().absolute()
        self.index_path = self.home / INDEX_NAME
        self.artifacts_dir = self.home / "artifacts"
        self.runs_dir = self.home / "runs"
        self.tmp_dir = self.home / "tmp"
        self._dirs_ready = False
        self._index = Index(self.home, busy_timeout_s=BUSY_TIMEOUT_S)  # read per Registry: callers may shorten it

    def __repr__(self) -> str:
        return f"Registry({str(self.home)!r})"

    # ---- publishing -------------------------------------------------------------------------

    @contextmanager
    def stage(self, kind: str, name: str) -> Iterator[Staging]:
        """A fresh staging folder for the next version of kind/name.

        Write the payload into `staging.path`, then call `staging.publish(...)` inside the block.
        Nothing is published automatically; on leaving the block the staging folder is removed
        (whether or not an exception was raised), so an unpublished payload is discarded.
        """
        check_kind(kind)
        check_name(name)
        self._ensure_dirs()
        path = self.tmp_dir / f"stage-{kind}-{name}-{secrets.token_hex(4)}"
        with disk_errors(path):
            path.mkdir()
        try:
            yield Staging(self, kind, name, path)
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(
        self,
        staging_path: Path | str,
        kind: str,
        name: str,
        *,
        parents: Iterable[RefLike | Artifact] = (),
        tasks: Iterable[str] = (),
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        code_version: str | None = None,
    ) -> Artifact:
        """Move a staging folder into place as version N+1 of kind/name and index it.

        Args:
            staging_path: a folder directly under <home>/tmp (see `stage`), without manifest.json.
            kind, name: the artifact line to add a version to.
            parents: artifacts this one was made from; each must exist here and is recorded
                pinned ("kind/name:vN"), so `:latest` means the latest at publish time.
            tasks: task names the artifact covers, for `list(task=...)`.
            config, metrics, extra: JSON-serialisable tables stored in the manifest.
            code_version: the pwmctl version string; the git sha is added when running from a
                checkout.

        Returns:
            The new Artifact. The staging folder no longer exists.

        Raises:
            RegistryError: a bad staging folder or metadata; ArtifactNotFound: a missing parent.
        """
        check_kind(kind)
        check_name(name)
        staging = self._checked_staging(Path(staging_path))
        os.utime(staging)  # a fresh mtime keeps gc() off this folder while it is hashed
        metadata = {
            "parents": list(dict.fromkeys(self._pin(p) for p in _as_list(parents, "parents"))),
            "tasks": _task_list(tasks),
            "config": _json_table("config", config),
            "metrics": _json_table("metrics", metrics),
            "extra": _json_table("extra", extra),
            "code_version": code_version_info(code_version),
        }
        return self._move_into_place(staging, kind, name, hash_tree(staging), metadata)

    def publish_pulled(
        self,
        staging_path: Path | str,
        manifest: Mapping[str, Any],
        *,
        parents: Iterable[RefLike | Artifact],
        hub: Mapping[str, Any],
        remote: Remote,
    ) -> Artifact:
        """Publish a version downloaded from the Hub as the next local version of its kind/name.

        The staging folder must hold exactly the files `manifest` (the pushed manifest.json)
        lists, with their sha256 and size; its tasks, config, metrics and code version are kept,
        `hub` is stored as `extra["hub"]` (provenance, parents only on the Hub) and `remote` is
        recorded in the same transaction.

        Args:
            staging_path: a staging folder of this registry (see `stage`) holding the payload.
            manifest: the manifest.json of the Hub commit.
            parents: the local artifacts its parents were matched to.
            hub: JSON table of its Hub provenance.
            remote: the repo and commit it came from.

        Raises:
            IntegrityError: files that differ from the manifest (all listed); nothing is published.
            AlreadyRegistered: a version with this Hub commit is here already (another pull of
                it finished first); nothing is published.
        """
        kind, name = check_kind(manifest["kind"]), check_name(manifest["name"])
        staging = self._checked_staging(Path(staging_path))
        problems = verify_tree(staging, manifest)
        if problems:
            listed = "; ".join(str(p) for p in problems[:10])
            more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise IntegrityError(
                f"{remote.hub_id} (commit {remote.commit_sha[:12]}) does not match its manifest.json: "
                f"{len(problems)} bad files: {listed}{more}; nothing was registered: the Hub copy "
                f"is damaged or was tampered with, ask its owner to push it again"
            )
        metadata = {
            "parents": list(dict.fromkeys(self._pin(p) for p in _as_list(parents, "parents"))),
            "tasks": _task_list(manifest.get("tasks", ())),
            "config": _json_table("config", manifest.get("config")),
            "metrics": _json_table("metrics", manifest.get("metrics")),
            "extra": {**_json_table("extra", manifest.get("extra")), "hub": _json_table("hub", hub)},
            "code_version": _json_table("code_version", manifest.get("code_version")),
        }
        return self._move_into_place(
            staging, kind, name, dict(manifest["files"]), metadata, created=manifest.get("created"), remote=remote
        )

    def _move_into_place(
        self,
        staging: Path,
        kind: str,
        name: str,
        files: dict[str, FileEntry],
        metadata: dict[str, Any],
        *,
        created: str | None = None,
        remote: Remote | None = None,
    ) -> Artifact:
        """Number, write manifest.json, rename into place and index, in one transaction."""
        moved_to: Path | None = None
        try:
            with self._transaction() as db:
                _check_unchanged(staging, files)
                if remote is not None:  # a concurrent pull of the same commit may have won
                    have = with_remote(
                        self._index, db, remote.repo, commit_sha=remote.commit_sha, repo_type=remote.repo_type
                    )
                    if have is not None:
                        raise AlreadyRegistered(have.ref, remote.hub_id)
                for parent in metadata["parents"]:  # not removed since it was pinned
                    self._index.lookup(db, parse_ref(parent))
                version = self._next_version(db, kind, name)
                manifest = make_manifest(kind, name, version, created or utc_now(), files, **metadata)
                write_manifest(staging, manifest)
                dest = self._version_dir(kind, name, version)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, dest)
                moved_to = dest
                _fsync_dir(dest.parent)  # the rename is on disk before the index says so
                artifact_id = self._insert(db, manifest, dest)
                if remote is not None:
                    insert_remote(db, artifact_id, remote)
        except BaseException:
            _undo_publish(staging, moved_to)
            raise
        return Artifact(kind, name, version, dest, manifest, manifest["created"], artifact_id)

    # ---- finding ----------------------------------------------------------------------------

    def resolve(self, ref: RefLike, default_kind: str | None = None) -> Artifact:
        """The artifact a ref names (`:latest` = highest version).

        Raises:
            RefError: the ref does not parse. ArtifactNotFound: no such artifact (the message
            suggests close names or the versions that exist). IntegrityError: it is indexed but
            its folder is gone.
        """
        artifact = self._find(ref, default_kind)
        if not artifact.path.is_dir():
            raise IntegrityError(
                f"artifact {artifact.ref} is in the index but its folder {artifact.path} is gone: "
                f"remove it from the registry, then publish or pull it again"
            )
        return artifact

    def find(self, ref: RefLike, default_kind: str | None = None) -> Artifact:
        """The indexed artifact a ref names, whether or not its folder is still there (for `rm`).

        Raises:
            RefError: the ref does not parse. ArtifactNotFound: the index has no such artifact.
        """
        return self._find(ref, default_kind)

    def latest(self, kind: str, name: str) -> Artifact | None:
        """The highest version of kind/name, or None if there is none."""
        with self._connect() as db:
            return self._index.get(db, Ref(kind, name))

    # This method shadows the builtin inside the class body: annotations here spell it `builtins.list`.
    def list(
        self, kind: str | None = None, task: str | None = None, name: str | None = None
    ) -> builtins.list[Artifact]:
        """Artifacts by kind, then name, newest version first; each filter is an exact match."""
        if kind is not None:
            check_kind(kind)
        with self._connect() as db:
            return self._index.select(db, kind=kind, task=task, name=name)

    def children(self, ref: RefLike, default_kind: str | None = None) -> builtins.list[Artifact]:
        """Artifacts that name this one as a parent."""
        with self._connect() as db:
            return self._index.children(db, self._index.lookup(db, _as_ref(ref, default_kind)).ref)

    def lineage(self, ref: RefLike, default_kind: str | None = None) -> LineageNode:
        """The artifact and its ancestors, as a tree; ancestors not in this registry are leaves."""
        with self._connect() as db:
            return lineage_tree(self._index, db, self._index.lookup(db, _as_ref(ref, default_kind)).ref)

    # ---- Hub remotes ------------------------------------------------------------------------

    def add_remote(self, ref: RefLike, remote: Remote, default_kind: str | None = None) -> None:
        """Record that an artifact version is on the Hub at `remote` (replaces the row for the
        same endpoint and repo)."""
        with self._transaction() as db:
            artifact = self._index.lookup(db, _as_ref(ref, default_kind))
            insert_remote(db, self._index.row_id(db, artifact), remote)

    def remotes(self, ref: RefLike, default_kind: str | None = None) -> builtins.list[Remote]:
        """The Hub copies of one version, most recently recorded first."""
        with self._connect() as db:
            return remotes_of(db, self._index.lookup(db, _as_ref(ref, default_kind)).ref)

    def all_remotes(self) -> dict[str, builtins.list[Remote]]:
        """{pinned ref: its Hub copies} for every version that has one."""
        with self._connect() as db:
            return remotes_by_ref(db)

    def find_remote(
        self,
        repo: str,
        *,
        commit_sha: str | None = None,
        tag: str | None = None,
        endpoint: str | None = None,
        repo_type: str | None = None,
    ) -> Artifact | None:
        """The newest local version recorded as on the Hub in `repo` (at that commit, tag,
        endpoint, repo type when given), or None."""
        with self._connect() as db:
            return with_remote(
                self._index, db, repo, commit_sha=commit_sha, tag=tag, endpoint=endpoint, repo_type=repo_type
            )

    def match_hub_parent(self, entry: Mapping[str, Any]) -> Artifact | None:
        """The local artifact a Hub manifest's lineage entry names ({"ref", "content_sha256",
        "hub"}): one recorded at the same Hub commit, else one of that kind/name with the same
        payload; None when there is none."""
        with self._connect() as db:
            return local_parent(self._index, db, entry)

    # ---- checking and removing --------------------------------------------------------------

    def verify(self, ref: RefLike, default_kind: str | None = None) -> builtins.list[FileProblem]:
        """Re-hash an artifact's folder against its published manifest; [] when intact.

        Reports changed, missing and unexpected payload files, and a manifest.json on disk that
        is missing or differs from the index's copy. Raise `IntegrityError.from_problems` to
        turn a non-empty result into a user-facing error.
        """
        artifact = self._find(ref, default_kind)
        problems = verify_tree(artifact.path, artifact.manifest) + _manifest_problems(artifact)
        return sorted(problems, key=lambda problem: problem.path)

    def remove(self, ref: RefLike, default_kind: str | None = None, *, force: bool = False) -> Artifact:
        """Delete one version: index rows first (one transaction), then its folder.

        Raises:
            RegistryError: another artifact names it as a parent and `force` is False.
        """
        with self._transaction() as db:
            artifact = self._index.lookup(db, _as_ref(ref, default_kind))
            children = [child.ref for child in self._index.children(db, artifact.ref)]
            if children and not force:
                raise RegistryError(
                    f"cannot remove {artifact.ref}: it is a parent of {', '.join(children)}; "
                    f"remove those first, or force it (their lineage will show it as missing)"
                )
            self._index.delete(db, artifact)
        self._discard(artifact.path)
        return artifact

    def gc(self, older_than_s: float = 3600.0) -> builtins.list[Path]:
        """Delete staging folders nothing has touched for `older_than_s`, and leftover trash.

        Only <home>/tmp is cleaned: version folders are never deleted here, even ones missing
        from the index. Returns the paths removed.
        """
        if not self.tmp_dir.is_dir():
            return []
        cutoff = time.time() - older_than_s
        stale = [
            path
            for path in sorted(self.tmp_dir.iterdir())
            if path.name.startswith(TRASH_PREFIX) or newest_mtime(path) < cutoff
        ]
        for path in stale:
            self._discard(path)
        return stale

    # ---- runs -------------------------------------------------------------------------------

    def new_run_dir(self, prefix: str) -> Path:
        """Create runs/<prefix>-<UTC yyyymmdd-hhmmss>-<random> for a run's work in progress."""
        check_name(prefix, "run prefix")  # refused before any folder is made
        self._ensure_dirs()
        return make_run_dir(self.runs_dir, prefix)

    def run_dir(self, run_id: str) -> Path:
        """The folder of an existing run.

        Raises:
            RegistryError: there is no such run (the message suggests close run ids).
        """
        return find_run_dir(self.runs_dir, run_id)

    # ---- folders and index ------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        if not self._dirs_ready:
            for folder in (self.artifacts_dir, self.runs_dir, self.tmp_dir):
                with disk_errors(folder):
                    folder.mkdir(parents=True, exist_ok=True)
            self._dirs_ready = True

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection to the index (see `Index.connect`), once the home folder's layout is in place."""
        self._ensure_dirs()
        return self._index.connect()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (see `Index.transaction`): concurrent writers queue up."""
        self._ensure_dirs()
        return self._index.transaction()

    def _find(self, ref: RefLike, default_kind: str | None) -> Artifact:
        with self._connect() as db:
            return self._index.lookup(db, _as_ref(ref, default_kind))

    def _next_version(self, db: sqlite3.Connection, kind: str, name: str) -> int:
        """1 + the highest version issued, indexed or found on disk (an orphan from a crash)."""
        on_disk = [
            int(match.group(1))
            for path in (self.artifacts_dir / kind / name).glob("v*")
            if (match := _VERSION_DIR_RE.fullmatch(path.name))
        ]
        return max([self._index.last_issued(db, kind, name), *on_disk]) + 1

    def _insert(self, db: sqlite3.Connection, manifest: Mapping[str, Any], dest: Path) -> int:
        """Index rows of a freshly moved version folder; returns its artifact id."""
        return self._index.insert(db, manifest, dest)

    # ---- files ------------------------------------------------------------------------------

    def _version_dir(self, kind: str, name: str, version: int) -> Path:
        return self.artifacts_dir / kind / name / f"v{version}"

    def _checked_staging(self, path: Path) -> Path:
        """`path`, once it is known to be a staging folder of this registry, ready to publish."""
        if not path.is_dir():
            raise RegistryError(
                f"staging folder {path} does not exist: publish inside the "
                f"`with registry.stage(...)` block, before it is removed"
            )
        if path.resolve().parent != self.tmp_dir.resolve():
            raise RegistryError(
                f"{path} is not a staging folder of {self.home}: write the payload into "
                f"`registry.stage(kind, name).path` so it can be moved into place atomically"
            )
        if (path / MANIFEST_NAME).exists():
            raise RegistryError(f"{path / MANIFEST_NAME}: the registry writes that file itself; rename yours")
        return path

    def _pin(self, parent: RefLike | Artifact) -> str:
        """A parent as the pinned ref of an artifact that exists here."""
        ref = parent.ref if isinstance(parent, Artifact) else parent
        return self._find(ref, None).ref

    def _discard(self, path: Path) -> None:
        """Delete a file or folder; renamed into tmp/ first, so a crash leaves it to gc()."""
        trash = path
        if not path.name.startswith(TRASH_PREFIX):
            trash = self.tmp_dir / f"{TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)


def _as_ref(ref: RefLike, default_kind: str | None) -> Ref:
    return ref if isinstance(ref, Ref) else parse_ref(ref, default_kind)


def _as_list(values: Iterable[Any], what: str) -> list[Any]:
    """`values` as a list; a bare string is refused (it would split into characters)."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list, not the string {values!r}")
    return list(values)


def _task_list(tasks: Iterable[str]) -> list[str]:
    """Task names without repeats, in the order given."""
    task_list = list(dict.fromkeys(_as_list(tasks, "tasks")))
    bad = [task for task in task_list if not isinstance(task, str) or not task.strip()]
    if bad:
        raise RegistryError(f"bad task names {bad!r}: a task is a name such as 'walker-walk'")
    return task_list


def _json_table(what: str, table: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of `table` once it is known to serialise to JSON."""
    table = dict(table or {})
    try:
        json.dumps(table)
    except (TypeError, ValueError) as e:
        raise RegistryError(f"{what} is not JSON-serialisable ({e}): pass dicts, lists, strings and numbers") from None
    return table


def _check_unchanged(staging: Path, files: Mapping[str, FileEntry]) -> None:
    """Refuse to publish a staging folder whose files changed since they were hashed."""
    try:
        sizes = {rel: (staging / rel).lstat().st_size for rel in list_files(staging)}
    except FileNotFoundError:
        sizes = None
    if sizes != {rel: entry["size"] for rel, entry in files.items()}:
        raise RegistryError(
            f"staging folder {staging} changed while it was being published: finish writing "
            f"the payload before calling publish"
        )


def _undo_publish(staging: Path, moved_to: Path | None) -> None:
    """Put a staging folder back as it was before a failed publish."""
    if moved_to is not None and not staging.exists():
        os.rename(moved_to, staging)
    (staging / MANIFEST_NAME).unlink(missing_ok=True)


def _manifest_problems(artifact: Artifact) -> list[FileProblem]:
    """manifest.json on disk, compared with the index's copy."""
    if not (artifact.path / MANIFEST_NAME).is_file():
        return [FileProblem(MANIFEST_NAME, "missing")]
    try:
        on_disk = read_manifest(artifact.path)
    except IntegrityError:
        return [FileProblem(MANIFEST_NAME, "changed", "no longer a valid manifest")]
    # compared as canonical JSON: NaN metrics are unequal to themselves as floats
    if json.dumps(on_disk, sort_keys=True) != json.dumps(artifact.manifest, sort_keys=True):
        return [FileProblem(MANIFEST_NAME, "changed", "differs from the index's copy")]
    return []


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
