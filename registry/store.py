"""The local artifact registry: immutable versions on disk, indexed in SQLite.

Layout under the home folder (`$PWM_HOME`):

    index.sqlite                      artifacts, lineage (parents), tasks, Hub remotes
    artifacts/<kind>/<name>/v<N>/     one immutable version: manifest.json + payload
    runs/<run-id>/                    work in progress (checkpoints, logs)
    tmp/                              staging folders, and trash on its way out

Publishing writes the payload into a staging folder under tmp/, hashes it, then, inside one
`BEGIN IMMEDIATE` transaction (which serialises writers across processes), picks the next
version, writes manifest.json, renames the folder into place and inserts the index rows. A crash
leaves either nothing in the index or a whole version; a version folder orphaned by a crash keeps
its number, which is never issued again.

Hub remotes: a version pushed to or pulled from the Hugging Face Hub has a `remotes` row per
(endpoint, repo) naming the commit it is pinned to; a pulled version keeps its Hub provenance and
the Hub ids of parents that are not here under `extra["hub"]` of its manifest (see registry/hub.py).
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from registry.errors import AlreadyRegistered, ArtifactNotFound, DiskError, IntegrityError, RegistryError
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
from registry.refs import KINDS, Ref, check_kind, check_name, name_problem, parse_ref

SCHEMA_VERSION = 1  # PRAGMA user_version of index.sqlite
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's transaction
INDEX_NAME = "index.sqlite"
TRASH_PREFIX = ".trash-"  # entries of tmp/ being deleted; gc() finishes what a crash left

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF) that say why the index failed.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_SQLITE_IOERR, _SQLITE_UNWRITABLE = 10, (3, 8, 14)  # PERM, READONLY, CANTOPEN
_VERSION_DIR_RE = re.compile(r"v([0-9]+)")
_COLUMNS = "a.id, a.kind, a.name, a.version, a.created, a.path, a.manifest_json"
_SCHEMA = (
    """CREATE TABLE artifacts (
        id            INTEGER PRIMARY KEY,
        kind          TEXT    NOT NULL,
        name          TEXT    NOT NULL,
        version       INTEGER NOT NULL CHECK (version >= 1),
        created       TEXT    NOT NULL,   -- UTC ISO 8601
        path          TEXT    NOT NULL,   -- version folder, relative to the home folder
        manifest_json TEXT    NOT NULL,   -- the manifest as published: what verify() trusts
        UNIQUE (kind, name, version)
    )""",
    """CREATE TABLE parents (
        child_id   INTEGER NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
        parent_ref TEXT    NOT NULL,      -- "kind/name:vN"; may outlive a force-removed parent
        PRIMARY KEY (child_id, parent_ref)
    )""",
    "CREATE INDEX parents_by_ref ON parents (parent_ref)",
    """CREATE TABLE tasks (
        artifact_id INTEGER NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
        task        TEXT    NOT NULL,
        PRIMARY KEY (artifact_id, task)
    )""",
    "CREATE INDEX tasks_by_task ON tasks (task)",
    """CREATE TABLE remotes (
        id          INTEGER PRIMARY KEY,
        artifact_id INTEGER NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
        repo        TEXT    NOT NULL,     -- "org/name" on the Hub
        repo_type   TEXT    NOT NULL,     -- "model" or "dataset"
        tag         TEXT,                 -- the "vN" tag on that commit, if any
        commit_sha  TEXT    NOT NULL,     -- what pulls pin to
        endpoint    TEXT    NOT NULL,     -- Hub URL: mirrors and test hubs stay apart
        pushed_at   TEXT    NOT NULL,     -- UTC ISO 8601
        UNIQUE (artifact_id, endpoint, repo_type, repo)
    )""",
    """CREATE TABLE lines (
        kind         TEXT    NOT NULL,
        name         TEXT    NOT NULL,
        last_version INTEGER NOT NULL,    -- highest version ever issued, removed ones included
        PRIMARY KEY (kind, name)
    )""",
)

RefLike = str | Ref


@dataclass(frozen=True)
class Artifact:
    """One published version. `manifest` is the index's copy, the one verify() checks against.

    `created` is what the manifest says (for a pulled version, the pusher's clock); `registered`
    orders versions by when they entered this registry (the index row id), so "the newest" never
    depends on a remote's claim.
    """

    kind: str
    name: str
    version: int
    path: Path
    manifest: dict[str, Any] = field(repr=False)
    created: str
    registered: int = 0  # index row id: higher = published or pulled here later

    @property
    def ref(self) -> str:
        """The pinned ref, "kind/name:vN"."""
        return f"{self.kind}/{self.name}:v{self.version}"

    @property
    def parents(self) -> list[str]:
        """Pinned refs of the artifacts this one was made from."""
        return list(self.manifest["parents"])

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest["metrics"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest["config"])

    @property
    def size_bytes(self) -> int:
        """Total size of the payload files (manifest.json not counted)."""
        return sum(entry["size"] for entry in self.manifest["files"].values())


@dataclass(frozen=True)
class Remote:
    """Where one artifact version lives on a Hub: a repo pinned to a commit (a `remotes` row)."""

    repo: str  # "org/name"
    repo_type: str  # "model" | "dataset"
    commit_sha: str
    endpoint: str
    tag: str | None = None
    pushed_at: str = ""  # when the row was recorded, by a push or a pull (UTC ISO 8601)

    @property
    def hub_id(self) -> str:
        """"org/name@v3" ("datasets/org/name@v3" for a dataset repo), the short sha without a tag."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{prefix}{self.repo}@{self.tag or self.commit_sha[:12]}"

    @property
    def url(self) -> str:
        """The commit's page on the Hub."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{self.endpoint}/{prefix}{self.repo}/tree/{self.commit_sha}"

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "repo_type": self.repo_type, "commit": self.commit_sha,
                "tag": self.tag, "endpoint": self.endpoint}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Remote:
        return cls(doc["repo"], doc["repo_type"], doc["commit"], doc["endpoint"], doc.get("tag"))


@dataclass(frozen=True)
class LineageNode:
    """An artifact and, recursively, its parents. `artifact` is None when not in this registry.

    `remotes` are its Hub copies: the recorded ones for a local artifact; for a parent that is only
    on the Hub (named by a pulled artifact), the Hub copy it was made from.
    """

    ref: str
    artifact: Artifact | None
    parents: tuple[LineageNode, ...] = ()
    remotes: tuple[Remote, ...] = ()

    @property
    def exists(self) -> bool:
        """Whether this ancestor is present in the local registry."""
        return self.artifact is not None


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
                f"this staging folder was already published as {self.artifact.ref}; "
                f"stage a new one for another version"
            )
        self.artifact = self.registry.publish(
            self.path, self.kind, self.name, parents=parents, tasks=tasks, config=config,
            metrics=metrics, extra=extra, code_version=code_version,
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
        with _disk_errors(path):
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
        return self._move_into_place(staging, kind, name, dict(manifest["files"]), metadata,
                                     created=manifest.get("created"), remote=remote)

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
                    have = self._with_remote(db, remote.repo, commit_sha=remote.commit_sha,
                                             repo_type=remote.repo_type)
                    if have is not None:
                        raise AlreadyRegistered(have.ref, remote.hub_id)
                for parent in metadata["parents"]:  # not removed since it was pinned
                    self._lookup(db, parse_ref(parent))
                version = self._next_version(db, kind, name)
                manifest = make_manifest(kind, name, version, created or _utc_now(), files, **metadata)
                write_manifest(staging, manifest)
                dest = self._version_dir(kind, name, version)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, dest)
                moved_to = dest
                _fsync_dir(dest.parent)  # the rename is on disk before the index says so
                artifact_id = self._insert(db, manifest, dest)
                if remote is not None:
                    self._insert_remote(db, artifact_id, remote)
        except BaseException:
            _undo_publish(staging, moved_to)
            raise
        return self._artifact_from(manifest, dest, artifact_id)

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
            return self._get(db, Ref(kind, name))

    # This method shadows the builtin inside the class body: annotations here spell it `builtins.list`.
    def list(
        self, kind: str | None = None, task: str | None = None, name: str | None = None
    ) -> builtins.list[Artifact]:
        """Artifacts by kind, then name, newest version first; each filter is an exact match."""
        if kind is not None:
            check_kind(kind)
        query = f"""SELECT {_COLUMNS} FROM artifacts a
            WHERE (:kind IS NULL OR a.kind = :kind) AND (:name IS NULL OR a.name = :name)
              AND (:task IS NULL OR EXISTS
                   (SELECT 1 FROM tasks t WHERE t.artifact_id = a.id AND t.task = :task))
            ORDER BY a.kind, a.name, a.version DESC"""
        with self._connect() as db:
            rows = db.execute(query, {"kind": kind, "name": name, "task": task}).fetchall()
        return [self._artifact(row) for row in rows]

    def children(self, ref: RefLike, default_kind: str | None = None) -> builtins.list[Artifact]:
        """Artifacts that name this one as a parent."""
        with self._connect() as db:
            return self._children(db, self._lookup(db, _as_ref(ref, default_kind)).ref)

    def lineage(self, ref: RefLike, default_kind: str | None = None) -> LineageNode:
        """The artifact and its ancestors, as a tree; ancestors not in this registry are leaves."""
        with self._connect() as db:
            return self._lineage_node(db, self._lookup(db, _as_ref(ref, default_kind)).ref)

    # ---- Hub remotes ------------------------------------------------------------------------

    def add_remote(self, ref: RefLike, remote: Remote, default_kind: str | None = None) -> None:
        """Record that an artifact version is on the Hub at `remote` (replaces the row for the
        same endpoint and repo)."""
        with self._transaction() as db:
            artifact = self._lookup(db, _as_ref(ref, default_kind))
            row = db.execute(
                "SELECT id FROM artifacts WHERE kind = ? AND name = ? AND version = ?",
                (artifact.kind, artifact.name, artifact.version),
            ).fetchone()
            self._insert_remote(db, row[0], remote)

    def remotes(self, ref: RefLike, default_kind: str | None = None) -> builtins.list[Remote]:
        """The Hub copies of one version, most recently recorded first."""
        with self._connect() as db:
            return self._remotes(db, self._lookup(db, _as_ref(ref, default_kind)).ref)

    def all_remotes(self) -> dict[str, builtins.list[Remote]]:
        """{pinned ref: its Hub copies} for every version that has one."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT a.kind, a.name, a.version, r.* FROM remotes r JOIN artifacts a ON a.id = r.artifact_id "
                "ORDER BY r.pushed_at DESC, r.id DESC"
            ).fetchall()
        found: dict[str, builtins.list[Remote]] = {}
        for row in rows:
            found.setdefault(f"{row['kind']}/{row['name']}:v{row['version']}", []).append(_remote(row))
        return found

    def find_remote(
        self, repo: str, *, commit_sha: str | None = None, tag: str | None = None,
        endpoint: str | None = None, repo_type: str | None = None,
    ) -> Artifact | None:
        """The newest local version recorded as on the Hub in `repo` (at that commit, tag,
        endpoint, repo type when given), or None."""
        with self._connect() as db:
            return self._with_remote(db, repo, commit_sha=commit_sha, tag=tag, endpoint=endpoint,
                                     repo_type=repo_type)

    def match_hub_parent(self, entry: Mapping[str, Any]) -> Artifact | None:
        """The local artifact a Hub manifest's lineage entry names ({"ref", "content_sha256",
        "hub"}): one recorded at the same Hub commit, else one of that kind/name with the same
        payload; None when there is none."""
        with self._connect() as db:
            return self._match_hub_parent(db, entry)

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

    def remove(
        self, ref: RefLike, default_kind: str | None = None, *, force: bool = False
    ) -> Artifact:
        """Delete one version: index rows first (one transaction), then its folder.

        Raises:
            RegistryError: another artifact names it as a parent and `force` is False.
        """
        with self._transaction() as db:
            artifact = self._lookup(db, _as_ref(ref, default_kind))
            children = [child.ref for child in self._children(db, artifact.ref)]
            if children and not force:
                raise RegistryError(
                    f"cannot remove {artifact.ref}: it is a parent of {', '.join(children)}; "
                    f"remove those first, or force it (their lineage will show it as missing)"
                )
            db.execute(
                "DELETE FROM artifacts WHERE kind = ? AND name = ? AND version = ?",
                (artifact.kind, artifact.name, artifact.version),
            )
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
            path for path in sorted(self.tmp_dir.iterdir())
            if path.name.startswith(TRASH_PREFIX) or newest_mtime(path) < cutoff
        ]
        for path in stale:
            self._discard(path)
        return stale

    # ---- runs -------------------------------------------------------------------------------

    def new_run_dir(self, prefix: str) -> Path:
        """Create runs/<prefix>-<UTC yyyymmdd-hhmmss>-<random> for a run's work in progress."""
        check_name(prefix, "run prefix")
        self._ensure_dirs()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.runs_dir / f"{prefix}-{stamp}-{secrets.token_hex(3)}"
        with _disk_errors(path):
            path.mkdir()
        return path

    def run_dir(self, run_id: str) -> Path:
        """The folder of an existing run.

        Raises:
            RegistryError: there is no such run (the message suggests close run ids).
        """
        path = self.runs_dir / run_id
        if name_problem(run_id) is None and path.is_dir():
            return path
        runs = sorted((p.name for p in self.runs_dir.glob("*") if p.is_dir()), reverse=True)
        started = [run for run in runs if run.startswith(run_id)]  # newest first
        close = list(dict.fromkeys(started + difflib.get_close_matches(run_id, runs)))[:3]
        hint = f"did you mean {' or '.join(close)}?" if close else f"it holds {len(runs)} runs"
        raise RegistryError(f"no run {run_id!r} in {self.runs_dir}: {hint}")

    # ---- index ------------------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        if not self._dirs_ready:
            for folder in (self.artifacts_dir, self.runs_dir, self.tmp_dir):
                with _disk_errors(folder):
                    folder.mkdir(parents=True, exist_ok=True)
            self._dirs_ready = True

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode with foreign keys on and the schema in place.

        A busy index, a full disk and an unwritable home become one-line RegistryErrors, for the
        statements run inside the block too.
        """
        self._ensure_dirs()
        try:
            db = sqlite3.connect(self.index_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.OperationalError as e:
            raise self._index_error(e) from None
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema(db)
            yield db
        except sqlite3.OperationalError as e:
            error = self._index_error(e)
            if error is e:
                raise
            raise error from None
        except OSError as e:  # a write inside a transaction (manifest.json, a rename) on a full or read-only disk
            disk = DiskError.from_os_error(e, self.home)
            if disk is None:
                raise
            raise disk from None
        finally:
            db.close()

    def _index_error(self, error: sqlite3.OperationalError) -> Exception:
        """What a failed index operation means: busy, disk full, a home that cannot be written
        (found by trying), or `error` itself."""
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(error):
            return RegistryError(f"the registry index {self.index_path} is busy (another pwmctl is writing; waited "
                                 f"{BUSY_TIMEOUT_S:g} s); try again")
        if code == _SQLITE_FULL:
            return DiskError.full(self.index_path)
        if code == _SQLITE_IOERR:  # EROFS or ENOSPC surface as this too, as may a failing disk
            return _write_problem(self.home) or error
        if code in _SQLITE_UNWRITABLE or "unable to open" in str(error) or "readonly" in str(error):
            return _write_problem(self.home) or RegistryError(
                f"cannot write the registry index {self.index_path} ({error}): check that {self.home} and the "
                f"files in it are writable by you")
        return error

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE makes concurrent writers queue up."""
        with self._connect() as db, _immediate(db):
            yield db

    def _ensure_schema(self, db: sqlite3.Connection) -> None:
        """Create the tables on first use; refuse an index written by a newer pwmctl."""
        version = self._user_version(db)
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.index_path} has schema version {version}, newer than this pwmctl "
                f"understands ({SCHEMA_VERSION}): upgrade pwmctl, or use another home folder"
            )
        if version == SCHEMA_VERSION:
            return
        _use_wal(db)
        with _immediate(db):
            if self._user_version(db) == 0:  # another process may have won the race
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _user_version(self, db: sqlite3.Connection) -> int:
        try:
            return db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError:  # a busy or unwritable index, not a damaged one: see _connect
            raise
        except sqlite3.DatabaseError as e:
            raise RegistryError(
                f"{self.index_path} is not a registry index ({e}): move it away or use another "
                f"home folder"
            ) from None

    def _next_version(self, db: sqlite3.Connection, kind: str, name: str) -> int:
        """1 + the highest version issued, indexed or found on disk (an orphan from a crash)."""
        key = (kind, name)
        issued = db.execute("SELECT max(last_version) FROM lines WHERE kind = ? AND name = ?", key)
        indexed = db.execute("SELECT max(version) FROM artifacts WHERE kind = ? AND name = ?", key)
        on_disk = [
            int(match.group(1)) for path in (self.artifacts_dir / kind / name).glob("v*")
            if (match := _VERSION_DIR_RE.fullmatch(path.name))
        ]
        return max([issued.fetchone()[0] or 0, indexed.fetchone()[0] or 0, *on_disk]) + 1

    def _insert(self, db: sqlite3.Connection, manifest: Mapping[str, Any], dest: Path) -> int:
        """Index rows of a freshly moved version folder; returns its artifact id."""
        kind, name, version = manifest["kind"], manifest["name"], manifest["version"]
        artifact_id = db.execute(
            "INSERT INTO artifacts (kind, name, version, created, path, manifest_json) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kind, name, version, manifest["created"], dest.relative_to(self.home).as_posix(),
             json.dumps(manifest)),
        ).lastrowid
        assert artifact_id is not None  # set by every successful INSERT
        db.executemany(
            "INSERT INTO parents (child_id, parent_ref) VALUES (?, ?)",
            [(artifact_id, parent) for parent in manifest["parents"]],
        )
        db.executemany(
            "INSERT INTO tasks (artifact_id, task) VALUES (?, ?)",
            [(artifact_id, task) for task in manifest["tasks"]],
        )
        db.execute(
            "INSERT INTO lines (kind, name, last_version) VALUES (?, ?, ?) "
            "ON CONFLICT (kind, name) DO UPDATE SET last_version = excluded.last_version",
            (kind, name, version),
        )
        return artifact_id

    def _insert_remote(self, db: sqlite3.Connection, artifact_id: int, remote: Remote) -> None:
        """Record (or refresh) the Hub copy of one artifact in one repo."""
        db.execute(
            "INSERT INTO remotes (artifact_id, repo, repo_type, tag, commit_sha, endpoint, pushed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (artifact_id, endpoint, repo_type, repo) DO UPDATE "
            "SET tag = excluded.tag, commit_sha = excluded.commit_sha, pushed_at = excluded.pushed_at",
            (artifact_id, remote.repo, remote.repo_type, remote.tag, remote.commit_sha, remote.endpoint,
             remote.pushed_at or _utc_now()),
        )

    def _remotes(self, db: sqlite3.Connection, ref: str) -> builtins.list[Remote]:
        kind, name, version = _ref_key(ref)
        rows = db.execute(
            "SELECT r.* FROM remotes r JOIN artifacts a ON a.id = r.artifact_id "
            "WHERE a.kind = ? AND a.name = ? AND a.version = ? ORDER BY r.pushed_at DESC, r.id DESC",
            (kind, name, version),
        )
        return [_remote(row) for row in rows]

    def _with_remote(
        self, db: sqlite3.Connection, repo: str, *, commit_sha: str | None = None, tag: str | None = None,
        endpoint: str | None = None, repo_type: str | None = None,
    ) -> Artifact | None:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM artifacts a JOIN remotes r ON r.artifact_id = a.id WHERE r.repo = :repo "
            "AND (:sha IS NULL OR r.commit_sha = :sha) AND (:tag IS NULL OR r.tag = :tag) "
            "AND (:endpoint IS NULL OR r.endpoint = :endpoint) AND (:type IS NULL OR r.repo_type = :type) "
            "ORDER BY a.version DESC LIMIT 1",
            {"repo": repo, "sha": commit_sha, "tag": tag, "endpoint": endpoint, "type": repo_type},
        ).fetchone()
        return self._artifact(row) if row else None

    def _with_content(self, db: sqlite3.Connection, kind: str, name: str, digest: str) -> Artifact | None:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM artifacts a WHERE a.kind = ? AND a.name = ? ORDER BY a.version DESC",
            (kind, name),
        )
        return next((a for a in map(self._artifact, rows) if content_sha256(a.manifest) == digest), None)

    def _match_hub_parent(self, db: sqlite3.Connection, entry: Mapping[str, Any]) -> Artifact | None:
        """The local artifact a parent named by a pulled manifest is: same Hub commit, or same
        kind/name and payload."""
        hub = entry.get("hub")
        if hub:
            found = self._with_remote(db, hub["repo"], commit_sha=hub["commit"])
            if found is not None:
                return found
        kind, _, rest = str(entry.get("ref", "")).partition("/")
        name = rest.partition(":")[0]
        if name_problem(name) or kind not in KINDS or not entry.get("content_sha256"):
            return None
        return self._with_content(db, kind, name, entry["content_sha256"])

    def _get(self, db: sqlite3.Connection, ref: Ref) -> Artifact | None:
        """The artifact `ref` names (highest version for latest), or None."""
        query = f"SELECT {_COLUMNS} FROM artifacts a WHERE a.kind = ? AND a.name = ?"
        params: tuple[Any, ...] = (ref.kind, ref.name)
        if ref.version is not None:
            query, params = query + " AND a.version = ?", (*params, ref.version)
        row = db.execute(query + " ORDER BY a.version DESC LIMIT 1", params).fetchone()
        return self._artifact(row) if row else None

    def _lookup(self, db: sqlite3.Connection, ref: Ref) -> Artifact:
        """Like `_get`, but a missing artifact raises ArtifactNotFound with suggestions."""
        artifact = self._get(db, ref)
        if artifact is None:
            raise self._not_found(db, ref)
        return artifact

    def _find(self, ref: RefLike, default_kind: str | None) -> Artifact:
        with self._connect() as db:
            return self._lookup(db, _as_ref(ref, default_kind))

    def _not_found(self, db: sqlite3.Connection, ref: Ref) -> ArtifactNotFound:
        """The error for a missing ref: existing versions of the line, else close names."""
        versions = [row[0] for row in db.execute(
            "SELECT version FROM artifacts WHERE kind = ? AND name = ? ORDER BY version",
            (ref.kind, ref.name),
        )]
        lines = db.execute("SELECT DISTINCT kind, name FROM artifacts").fetchall()
        same_kind = [name for kind, name in lines if kind == ref.kind]
        close = difflib.get_close_matches(ref.name, same_kind, n=3)
        other_kinds = [f"{kind}/{name}" for kind, name in lines if name == ref.name]
        suggestions = (other_kinds + [f"{ref.kind}/{name}" for name in close])[:3]
        return ArtifactNotFound.for_ref(
            str(ref), versions=versions, suggestions=suggestions, home=str(self.home)
        )

    def _children(self, db: sqlite3.Connection, parent_ref: str) -> builtins.list[Artifact]:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM artifacts a JOIN parents p ON p.child_id = a.id "
            "WHERE p.parent_ref = ? ORDER BY a.kind, a.name, a.version DESC",
            (parent_ref,),
        )
        return [self._artifact(row) for row in rows]

    def _lineage_node(self, db: sqlite3.Connection, ref: str, below: frozenset[str] = frozenset()) -> LineageNode:
        artifact = self._get(db, parse_ref(ref))
        if artifact is None:
            return LineageNode(ref, None)
        below = below | {artifact.ref}
        parents = [self._lineage_node(db, parent, below) for parent in artifact.parents]
        hub_of = {e["local"]: Remote.from_dict(e["hub"]) for e in _hub_lineage(artifact.manifest)
                  if e.get("local") and e.get("hub")}
        parents = [p if p.exists or p.ref not in hub_of else LineageNode(p.ref, None, remotes=(hub_of[p.ref],))
                   for p in parents]  # a linked parent removed since: its Hub id still shows
        for entry in (e for e in _hub_lineage(artifact.manifest) if not e.get("local")):
            local = self._match_hub_parent(db, entry)  # pulled since this artifact was
            if local is not None and local.ref in below:  # same payload as a descendant: not its parent
                local = None
            if local is not None and local.ref not in artifact.parents:
                parents.append(self._lineage_node(db, local.ref, below))
            elif local is None:
                hub = (Remote.from_dict(entry["hub"]),) if entry.get("hub") else ()
                parents.append(LineageNode(entry["ref"], None, remotes=hub))
        return LineageNode(ref, artifact, tuple(parents), tuple(self._remotes(db, artifact.ref)))

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
            raise RegistryError(
                f"{path / MANIFEST_NAME}: the registry writes that file itself; rename yours"
            )
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

    def _artifact(self, row: sqlite3.Row) -> Artifact:
        return Artifact(
            kind=row["kind"],
            name=row["name"],
            version=row["version"],
            path=self.home / row["path"],
            manifest=json.loads(row["manifest_json"]),
            created=row["created"],
            registered=row["id"],
        )

    def _artifact_from(self, manifest: dict[str, Any], path: Path, artifact_id: int) -> Artifact:
        return Artifact(
            manifest["kind"], manifest["name"], manifest["version"], path, manifest,
            manifest["created"], artifact_id,
        )


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection; ROLLBACK on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the index to WAL, so readers never block the one writer (a persistent setting).

    The switch needs an exclusive lock, and SQLite answers "locked" at once instead of waiting
    when two fresh connections race for it, so it is retried here up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def content_sha256(manifest: Mapping[str, Any]) -> str:
    """sha256 of a manifest's files table (paths, sizes, hashes): the identity of a payload,
    equal for a version and its copies elsewhere whatever their version numbers."""
    files = manifest["files"]
    canonical = json.dumps({p: [files[p]["sha256"], files[p]["size"]] for p in sorted(files)})
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hub_lineage(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The parents a pulled artifact's Hub manifest named, each with "local": the ref it was
    linked to when pulled, or None (see registry/hub.py)."""
    hub = manifest.get("extra", {}).get("hub") or {}
    return list(hub.get("lineage", []))


def _ref_key(ref: str) -> tuple[str, str, int]:
    parsed = parse_ref(ref)
    return parsed.kind, parsed.name, parsed.version or 0


def _remote(row: sqlite3.Row) -> Remote:
    return Remote(row["repo"], row["repo_type"], row["commit_sha"], row["endpoint"], row["tag"], row["pushed_at"])


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
        raise RegistryError(
            f"{what} is not JSON-serialisable ({e}): pass dicts, lists, strings and numbers"
        ) from None
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


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """A full, read-only or unwritable disk as a one-line DiskError naming `path`; other OSErrors pass."""
    try:
        yield
    except OSError as e:
        error = DiskError.from_os_error(e, path)
        if error is None:
            raise
        raise error from None


def _write_problem(folder: Path) -> DiskError | None:
    """Why no file can be created in `folder` (full, read-only, not yours), found by trying; None if one can."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".pwmctl-write-test-")
    except OSError as e:
        return DiskError.from_os_error(OSError(e.errno, e.strerror, str(folder)))
    os.close(fd)
    os.unlink(probe)
    return None


def newest_mtime(path: Path) -> float:
    """Latest modification time of `path` and everything under it; now if it vanishes."""
    try:
        newest = path.lstat().st_mtime
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    except FileNotFoundError:
        return time.time()
    return newest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version_info(pwmctl_version: str | None) -> dict[str, Any]:
    """{"pwmctl", "git_sha", "git_dirty"}: the code that made an artifact (git keys None when
    not running from a git checkout of this project)."""
    return {"pwmctl": pwmctl_version, **_git_state()}


@cache
def _git_state() -> dict[str, Any]:
    """HEAD sha and dirtiness of the checkout this package runs from (looked up once)."""
    package_dir = Path(__file__).resolve().parent
    unknown = {"git_sha": None, "git_dirty": None}
    try:
        top = _git(package_dir, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != package_dir.parent:  # installed inside someone else's repo
            return unknown
        sha = _git(package_dir, "rev-parse", "HEAD")
        dirty = bool(_git(package_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"git_sha": sha, "git_dirty": dirty}


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
    )
    return result.stdout.strip()
