"""The SQLite index of a home folder (`index.sqlite`): the schema, connections and locking, and the
artifact rows.

One row per published version (`artifacts`, holding the manifest as published), its parents and
tasks, the highest version ever issued per kind/name (`lines`), and its Hub copies (`remotes`, read
and written by registry/lineage.py). Writers serialise across processes with `BEGIN IMMEDIATE`;
the index runs in WAL mode, so readers never wait for a writer. A busy index, a full disk and an
unwritable home become one-line RegistryErrors.
"""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from registry.errors import ArtifactNotFound, DiskError, RegistryError
from registry.refs import Ref

SCHEMA_VERSION = 1  # PRAGMA user_version of index.sqlite
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's transaction
INDEX_NAME = "index.sqlite"
ARTIFACT_COLUMNS = "a.id, a.kind, a.name, a.version, a.created, a.path, a.manifest_json"  # `artifacts a`

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF) that say why the index failed.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_SQLITE_IOERR, _SQLITE_UNWRITABLE = 10, (3, 8, 14)  # PERM, READONLY, CANTOPEN
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


class Index:
    """`home`/index.sqlite: connections with the schema in place, and the artifact rows.

    Queries take an open connection, so a caller can run several in one transaction.
    """

    def __init__(self, home: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.home = home
        self.path = home / INDEX_NAME
        self.busy_timeout_s = busy_timeout_s

    # ---- connections ------------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode with foreign keys on and the schema in place.

        A busy index, a full disk and an unwritable home become one-line RegistryErrors, for the
        statements run inside the block too.
        """
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.OperationalError as e:
            raise self._error(e) from None
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema(db)
            yield db
        except sqlite3.OperationalError as e:
            error = self._error(e)
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

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE makes concurrent writers queue up."""
        with self.connect() as db, _immediate(db):
            yield db

    def _error(self, error: sqlite3.OperationalError) -> Exception:
        """What a failed index operation means: busy, disk full, a home that cannot be written
        (found by trying), or `error` itself."""
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(error):
            return RegistryError(
                f"the registry index {self.path} is busy (another pwmctl is writing; waited "
                f"{self.busy_timeout_s:g} s); try again"
            )
        if code == _SQLITE_FULL:
            return DiskError.full(self.path)
        if code == _SQLITE_IOERR:  # EROFS or ENOSPC surface as this too, as may a failing disk
            return _write_problem(self.home) or error
        if code in _SQLITE_UNWRITABLE or "unable to open" in str(error) or "readonly" in str(error):
            return _write_problem(self.home) or RegistryError(
                f"cannot write the registry index {self.path} ({error}): check that {self.home} and the "
                f"files in it are writable by you"
            )
        return error

    def _ensure_schema(self, db: sqlite3.Connection) -> None:
        """Create the tables on first use; refuse an index written by a newer pwmctl."""
        version = self._user_version(db)
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path} has schema version {version}, newer than this pwmctl "
                f"understands ({SCHEMA_VERSION}): upgrade pwmctl, or use another home folder"
            )
        if version == SCHEMA_VERSION:
            return
        _use_wal(db, self.busy_timeout_s)
        with _immediate(db):
            if self._user_version(db) == 0:  # another process may have won the race
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _user_version(self, db: sqlite3.Connection) -> int:
        try:
            return db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError:  # a busy or unwritable index, not a damaged one: see connect
            raise
        except sqlite3.DatabaseError as e:
            raise RegistryError(
                f"{self.path} is not a registry index ({e}): move it away or use another home folder"
            ) from None

    # ---- artifact rows ----------------------------------------------------------------------

    def artifact(self, row: sqlite3.Row) -> Artifact:
        """The Artifact of a row selected with ARTIFACT_COLUMNS."""
        return Artifact(
            kind=row["kind"],
            name=row["name"],
            version=row["version"],
            path=self.home / row["path"],
            manifest=json.loads(row["manifest_json"]),
            created=row["created"],
            registered=row["id"],
        )

    def get(self, db: sqlite3.Connection, ref: Ref) -> Artifact | None:
        """The artifact `ref` names (highest version for latest), or None."""
        query = f"SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE a.kind = ? AND a.name = ?"
        params: tuple[Any, ...] = (ref.kind, ref.name)
        if ref.version is not None:
            query, params = query + " AND a.version = ?", (*params, ref.version)
        row = db.execute(query + " ORDER BY a.version DESC LIMIT 1", params).fetchone()
        return self.artifact(row) if row else None

    def lookup(self, db: sqlite3.Connection, ref: Ref) -> Artifact:
        """Like `get`, but a missing artifact raises ArtifactNotFound with suggestions."""
        artifact = self.get(db, ref)
        if artifact is None:
            raise self._not_found(db, ref)
        return artifact

    def _not_found(self, db: sqlite3.Connection, ref: Ref) -> ArtifactNotFound:
        """The error for a missing ref: existing versions of the line, else close names."""
        versions = [
            row[0]
            for row in db.execute(
                "SELECT version FROM artifacts WHERE kind = ? AND name = ? ORDER BY version",
                (ref.kind, ref.name),
            )
        ]
        lines = db.execute("SELECT DISTINCT kind, name FROM artifacts").fetchall()
        same_kind = [name for kind, name in lines if kind == ref.kind]
        close = difflib.get_close_matches(ref.name, same_kind, n=3)
        other_kinds = [f"{kind}/{name}" for kind, name in lines if name == ref.name]
        suggestions = (other_kinds + [f"{ref.kind}/{name}" for name in close])[:3]
        return ArtifactNotFound.for_ref(str(ref), versions=versions, suggestions=suggestions, home=str(self.home))

    def select(
        self, db: sqlite3.Connection, kind: str | None = None, task: str | None = None, name: str | None = None
    ) -> list[Artifact]:
        """Artifacts by kind, then name, newest version first; each filter is an exact match."""
        query = f"""SELECT {ARTIFACT_COLUMNS} FROM artifacts a
            WHERE (:kind IS NULL OR a.kind = :kind) AND (:name IS NULL OR a.name = :name)
              AND (:task IS NULL OR EXISTS
                   (SELECT 1 FROM tasks t WHERE t.artifact_id = a.id AND t.task = :task))
            ORDER BY a.kind, a.name, a.version DESC"""
        rows = db.execute(query, {"kind": kind, "name": name, "task": task}).fetchall()
        return [self.artifact(row) for row in rows]

    def children(self, db: sqlite3.Connection, parent_ref: str) -> list[Artifact]:
        """Artifacts that name `parent_ref` (pinned) as a parent."""
        rows = db.execute(
            f"SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN parents p ON p.child_id = a.id "
            "WHERE p.parent_ref = ? ORDER BY a.kind, a.name, a.version DESC",
            (parent_ref,),
        )
        return [self.artifact(row) for row in rows]

    def row_id(self, db: sqlite3.Connection, artifact: Artifact) -> int:
        """The index row id of an indexed artifact."""
        return db.execute(
            "SELECT id FROM artifacts WHERE kind = ? AND name = ? AND version = ?",
            (artifact.kind, artifact.name, artifact.version),
        ).fetchone()[0]

    def last_issued(self, db: sqlite3.Connection, kind: str, name: str) -> int:
        """The highest version of kind/name ever issued, indexed or removed since; 0 for none."""
        key = (kind, name)
        issued = db.execute("SELECT max(last_version) FROM lines WHERE kind = ? AND name = ?", key)
        indexed = db.execute("SELECT max(version) FROM artifacts WHERE kind = ? AND name = ?", key)
        return max(issued.fetchone()[0] or 0, indexed.fetchone()[0] or 0)

    def insert(self, db: sqlite3.Connection, manifest: Mapping[str, Any], dest: Path) -> int:
        """Index rows of a version folder `dest` holding `manifest`; returns its artifact id."""
        kind, name, version = manifest["kind"], manifest["name"], manifest["version"]
        artifact_id = db.execute(
            "INSERT INTO artifacts (kind, name, version, created, path, manifest_json) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, name, version, manifest["created"], dest.relative_to(self.home).as_posix(), json.dumps(manifest)),
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

    def delete(self, db: sqlite3.Connection, artifact: Artifact) -> None:
        """Remove an artifact's rows (parents, tasks and remotes go with it); `lines` keeps its number."""
        db.execute(
            "DELETE FROM artifacts WHERE kind = ? AND name = ? AND version = ?",
            (artifact.kind, artifact.name, artifact.version),
        )


def utc_now() -> str:
    """Now, as the index stores times (`created`, `pushed_at`): UTC ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def _use_wal(db: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switch the index to WAL, so readers never block the one writer (a persistent setting).

    The switch needs an exclusive lock, and SQLite answers "locked" at once instead of waiting
    when two fresh connections race for it, so it is retried here up to the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _write_problem(folder: Path) -> DiskError | None:
    """Why no file can be created in `folder` (full, read-only, not yours), found by trying; None if one can."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".pwmctl-write-test-")
    except OSError as e:
        return DiskError.from_os_error(OSError(e.errno, e.strerror, str(folder)))
    os.close(fd)
    os.unlink(probe)
    return None
