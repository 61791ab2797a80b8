"""Hub remotes and lineage: where each version has copies on a Hub, and the tree of what it was made from.

A version pushed to or pulled from the Hugging Face Hub has a `remotes` row per (endpoint, repo)
naming the commit it is pinned to. A pulled version keeps its Hub provenance and the parents its
Hub manifest named under `extra["hub"]` of its manifest (see registry/hub.py); each such parent
is matched to a local version recorded at the same Hub commit, or else of the same kind/name with
the same payload (`content_sha256`), so a lineage tree links up whatever order versions were
pulled in, and a parent only on the Hub shows its Hub id.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.index import ARTIFACT_COLUMNS, Artifact, Index, utc_now
from registry.refs import KINDS, name_problem, parse_ref


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
        """ "org/name@v3" ("datasets/org/name@v3" for a dataset repo), the short sha without a tag."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{prefix}{self.repo}@{self.tag or self.commit_sha[:12]}"

    @property
    def url(self) -> str:
        """The commit's page on the Hub."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{self.endpoint}/{prefix}{self.repo}/tree/{self.commit_sha}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "repo_type": self.repo_type,
            "commit": self.commit_sha,
            "tag": self.tag,
            "endpoint": self.endpoint,
        }

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


def content_sha256(manifest: Mapping[str, Any]) -> str:
    """sha256 of a manifest's files table (paths, sizes, hashes): the identity of a payload,
    equal for a version and its copies elsewhere whatever their version numbers."""
    files = manifest["files"]
    canonical = json.dumps({p: [files[p]["sha256"], files[p]["size"]] for p in sorted(files)})
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---- remotes rows --------------------------------------------------------------------------


def insert_remote(db: sqlite3.Connection, artifact_id: int, remote: Remote) -> None:
    """Record (or refresh) the Hub copy of one artifact in one repo."""
    db.execute(
        "INSERT INTO remotes (artifact_id, repo, repo_type, tag, commit_sha, endpoint, pushed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (artifact_id, endpoint, repo_type, repo) DO UPDATE "
        "SET tag = excluded.tag, commit_sha = excluded.commit_sha, pushed_at = excluded.pushed_at",
        (
            artifact_id,
            remote.repo,
            remote.repo_type,
            remote.tag,
            remote.commit_sha,
            remote.endpoint,
            remote.pushed_at or utc_now(),
        ),
    )


def remotes_of(db: sqlite3.Connection, ref: str) -> list[Remote]:
    """The Hub copies of the pinned `ref`, most recently recorded first."""
    parsed = parse_ref(ref)
    rows = db.execute(
        "SELECT r.* FROM remotes r JOIN artifacts a ON a.id = r.artifact_id "
        "WHERE a.kind = ? AND a.name = ? AND a.version = ? ORDER BY r.pushed_at DESC, r.id DESC",
        (parsed.kind, parsed.name, parsed.version or 0),
    )
    return [_remote(row) for row in rows]


def remotes_by_ref(db: sqlite3.Connection) -> dict[str, list[Remote]]:
    """{pinned ref: its Hub copies, most recently recorded first} for every version that has one."""
    rows = db.execute(
        "SELECT a.kind, a.name, a.version, r.* FROM remotes r JOIN artifacts a ON a.id = r.artifact_id "
        "ORDER BY r.pushed_at DESC, r.id DESC"
    ).fetchall()
    found: dict[str, list[Remote]] = {}
    for row in rows:
        found.setdefault(f"{row['kind']}/{row['name']}:v{row['version']}", []).append(_remote(row))
    return found


def with_remote(
    index: Index,
    db: sqlite3.Connection,
    repo: str,
    *,
    commit_sha: str | None = None,
    tag: str | None = None,
    endpoint: str | None = None,
    repo_type: str | None = None,
) -> Artifact | None:
    """The newest local version recorded as on the Hub in `repo` (at that commit, tag, endpoint,
    repo type when given), or None."""
    row = db.execute(
        f"SELECT {ARTIFACT_COLUMNS} FROM artifacts a JOIN remotes r ON r.artifact_id = a.id WHERE r.repo = :repo "
        "AND (:sha IS NULL OR r.commit_sha = :sha) AND (:tag IS NULL OR r.tag = :tag) "
        "AND (:endpoint IS NULL OR r.endpoint = :endpoint) AND (:type IS NULL OR r.repo_type = :type) "
        "ORDER BY a.version DESC LIMIT 1",
        {"repo": repo, "sha": commit_sha, "tag": tag, "endpoint": endpoint, "type": repo_type},
    ).fetchone()
    return index.artifact(row) if row else None


# ---- lineage -------------------------------------------------------------------------------


def local_parent(index: Index, db: sqlite3.Connection, entry: Mapping[str, Any]) -> Artifact | None:
    """The local artifact a parent named by a pulled manifest ({"ref", "content_sha256", "hub"}) is:
    one recorded at the same Hub commit, else one of that kind/name with the same payload; None when
    there is none."""
    hub = entry.get("hub")
    if hub:
        found = with_remote(index, db, hub["repo"], commit_sha=hub["commit"])
        if found is not None:
            return found
    kind, _, rest = str(entry.get("ref", "")).partition("/")
    name = rest.partition(":")[0]
    if name_problem(name) or kind not in KINDS or not entry.get("content_sha256"):
        return None
    return next(
        (a for a in index.select(db, kind=kind, name=name) if content_sha256(a.manifest) == entry["content_sha256"]),
        None,
    )


def lineage_tree(index: Index, db: sqlite3.Connection, ref: str, below: frozenset[str] = frozenset()) -> LineageNode:
    """The pinned `ref` and its ancestors, as a tree; ancestors not in this registry are leaves.

    A pulled artifact's Hub parents are matched again (they may have been pulled since), except to a
    descendant in `below` (same payload as a descendant: not its parent).
    """
    artifact = index.get(db, parse_ref(ref))
    if artifact is None:
        return LineageNode(ref, None)
    below = below | {artifact.ref}
    parents = [lineage_tree(index, db, parent, below) for parent in artifact.parents]
    hub_of = {
        e["local"]: Remote.from_dict(e["hub"])
        for e in _hub_lineage(artifact.manifest)
        if e.get("local") and e.get("hub")
    }
    parents = [
        p if p.exists or p.ref not in hub_of else LineageNode(p.ref, None, remotes=(hub_of[p.ref],)) for p in parents
    ]  # a linked parent removed since: its Hub id still shows
    for entry in (e for e in _hub_lineage(artifact.manifest) if not e.get("local")):
        local = local_parent(index, db, entry)  # pulled since this artifact was
        if local is not None and local.ref in below:  # same payload as a descendant: not its parent
            local = None
        if local is not None and local.ref not in artifact.parents:
            parents.append(lineage_tree(index, db, local.ref, below))
        elif local is None:
            hub = (Remote.from_dict(entry["hub"]),) if entry.get("hub") else ()
            parents.append(LineageNode(entry["ref"], None, remotes=hub))
    return LineageNode(ref, artifact, tuple(parents), tuple(remotes_of(db, artifact.ref)))


def _hub_lineage(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The parents a pulled artifact's Hub manifest named, each with "local": the ref it was
    linked to when pulled, or None (see registry/hub.py)."""
    hub = manifest.get("extra", {}).get("hub") or {}
    return list(hub.get("lineage", []))


def _remote(row: sqlite3.Row) -> Remote:
    return Remote(row["repo"], row["repo_type"], row["commit_sha"], row["endpoint"], row["tag"], row["pushed_at"])
