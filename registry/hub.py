"""Share artifact versions on the Hugging Face Hub: one commit per version, tagged, pinned by sha.

Push: one `create_commit` per version (payload + manifest.json + a generated README.md card, and
deletions of files the previous version had), made on top of the head read just before
(`parent_commit`, so a concurrent push fails instead of mixing), then tag `vN` on exactly that
commit. Tags are never moved. The repo, tag and commit are recorded in the index (`remotes`).

Pull: resolve the revision to a commit sha, download pinned to that sha, check every file against
the pushed manifest.json, register the version locally (next local version number) with its Hub
provenance, and link its parents to local copies (same Hub commit, or same kind/name and payload);
parents not here keep their Hub ids. A commit already registered is never downloaded again.

The pushed manifest.json is the local one plus a `lineage` list: for each parent, its ref, its
payload hash (`content_sha256`) and its Hub copy when it has one. What the card says is
registry/cards.py's business; this module only moves versions and records where they went.

huggingface_hub is imported lazily, and every call passes `endpoint=` explicitly: the library
reads HF_ENDPOINT once, at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from registry.cards import (
    DEFAULT_ENDPOINT,
    DEFAULT_LICENSE,
    PREVIEW_DIR,
    Extra,
    policy_evaluation,
    render_card,
    replay_extras,
)
from registry.errors import AlreadyRegistered, IntegrityError, RegistryError
from registry.index import Artifact
from registry.lineage import LineageNode, Remote, content_sha256
from registry.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    FileProblem,
    manifest_problem,
    read_manifest,
    sha256_file,
)
from registry.refs import KINDS, check_kind, name_problem, shorten
from registry.store import Registry

CARD_NAME = "README.md"
PUSH_ORDER = ("dataset", "worldmodel", "policy")  # lineage order; reports go into policy cards instead
MODEL_REPO_PRIORITY = ("policy", "worldmodel", "report")  # who gets {ns}/{name} when names clash
_KEEP_ON_HUB = {".gitattributes"}  # never deleted by a push
_NOT_PAYLOAD = {MANIFEST_NAME, CARD_NAME, ".gitattributes", ".cache", PREVIEW_DIR}  # skipped when pulling
_OFFLINE_VALUES = ("1", "true", "yes", "on")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
# The Hub's own rule (huggingface_hub's validate_repo_id): each part 1-96 of [A-Za-z0-9._-], not
# starting or ending with '-' or '.', no '--' or '..', no '.git' ending.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"{_REPO_PART}/{_REPO_PART}")
_LICENSE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")  # Hub license ids: mit, apache-2.0, cc-by-nc-4.0, other


class HubError(RegistryError):
    """The Hub could not be reached, refused the request, or holds something else than expected."""


def repo_type_for(kind: str) -> str:
    """Datasets go to dataset repos; world models, policies and reports to model repos."""
    return "dataset" if check_kind(kind) == "dataset" else "model"


def resolve_endpoint(endpoint: str | None = None) -> str:
    """`endpoint` if given, else HF_ENDPOINT (read now, not at import), else the public Hub."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def check_namespace(namespace: str) -> str:
    """Return `namespace` if it can own Hub repos (the ORG of ORG/NAME), else raise HubError."""
    if not re.fullmatch(_REPO_PART, namespace) or ".." in namespace or "--" in namespace:
        raise HubError(
            f"bad Hub namespace {shorten(namespace)!r}: a Hub user or organisation is 1-96 letters, "
            "digits, '-', '_', '.', starting with a letter or digit, not ending with '-' or '.', "
            "no '--' or '..'"
        )
    return namespace


def check_repo_id(repo: str) -> str:
    """Return `repo` if it is "org/name", else raise HubError."""
    if not _REPO_RE.fullmatch(repo) or ".." in repo or "--" in repo or repo.endswith(".git"):
        raise HubError(
            f"bad Hub repo {shorten(repo)!r}: expected ORG/NAME, e.g. me/walker-walk (each part "
            "1-96 letters, digits, '-', '_', '.', starting with a letter or digit, not ending "
            "with '-' or '.', no '--' or '..')"
        )
    return repo


def check_license(license: str) -> str:
    """Return `license` if it looks like a Hub license id, else raise HubError."""
    if not _LICENSE_RE.fullmatch(license):
        raise HubError(
            f"bad license {shorten(license)!r}: give a Hub license id in lower case, e.g. mit, "
            "apache-2.0, cc-by-4.0, cc-by-nc-4.0, or other"
        )
    return license


# ---- push ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    """One file of a push commit: a payload file on disk, or generated content."""

    path: str
    size: int
    sha256: str
    source: Path | None = None
    content: bytes | None = None

    def upload(self) -> str | bytes:
        """What ``CommitOperationAdd`` uploads: the file's path on disk, else its bytes."""
        if self.source is not None:
            return str(self.source)
        assert self.content is not None, f"{self.path}: neither a source file nor content"
        return self.content


@dataclass
class PushPlan:
    """What one push commits, computed without touching the network."""

    artifact: Artifact
    repo: str
    repo_type: str
    tag: str
    endpoint: str
    private: bool
    files: list[PlannedFile]
    already: Remote | None = None  # recorded as pushed to this repo before

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.artifact.ref,
            "repo": self.repo,
            "repo_type": self.repo_type,
            "tag": self.tag,
            "endpoint": self.endpoint,
            "private": self.private,
            "total_bytes": self.total_bytes,
            "already": self.already.to_dict() if self.already else None,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    remote: Remote
    already: bool  # nothing was committed: it was on the Hub already

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.plan.artifact.ref,
            **self.remote.to_dict(),
            "url": self.remote.url,
            "already": self.already,
            "files": len(self.plan.files),
            "total_bytes": self.plan.total_bytes,
        }


def plan_push(
    reg: Registry,
    ref: str,
    repo: str,
    *,
    endpoint: str | None = None,
    private: bool = False,
    default_kind: str | None = None,
    license: str = DEFAULT_LICENSE,
    extras: list[Extra] | None = None,
) -> PushPlan:
    """The commit that would push `ref` to `repo`: files with sizes and sha256, repo type, tag.

    Reads only the local registry. The artifact is re-hashed first, so a damaged copy is never
    shared. The card and the preview/ files come from registry/cards.py: a policy's card shows what
    its eval reports say and the replay video of the newest one that has one (`pwmctl eval --video`),
    committed as preview/replay.mp4; `extras` adds other preview/ files (a dataset's Parquet
    previews, which need pwm_core to read the data).

    Raises:
        IntegrityError: the local copy no longer matches its manifest. HubError: a bad repo id or
        license, or an extra outside preview/.
    """
    check_repo_id(repo)
    check_license(license)
    endpoint = resolve_endpoint(endpoint)
    artifact = reg.resolve(ref, default_kind)
    problems = reg.verify(artifact.ref)
    if problems:
        raise IntegrityError.from_problems(artifact.ref, problems)
    reserved = sorted({p.split("/")[0] for p in artifact.manifest["files"]} & _NOT_PAYLOAD)
    if reserved:
        raise HubError(
            f"{artifact.ref} holds a top-level {reserved[0]}, which the Hub commit needs for itself: "
            f"move it into a folder and publish a new version"
        )
    repo_type, tag = repo_type_for(artifact.kind), f"v{artifact.version}"
    lineage = reg.lineage(artifact.ref)
    pushed = {**artifact.manifest, "lineage": [_lineage_entry(node, endpoint) for node in lineage.parents]}
    manifest_bytes = (json.dumps(pushed, indent=2) + "\n").encode()
    evaluation = policy_evaluation(artifact, reg.children(artifact.ref))
    extras = [*(extras or []), *replay_extras(evaluation)]
    outside = [e.path for e in extras if not e.path.startswith(PREVIEW_DIR + "/")]
    if outside:
        raise HubError(f"{outside[0]}: files for the Hub page go under {PREVIEW_DIR}/")
    card = render_card(
        artifact,
        repo=repo,
        repo_type=repo_type,
        tag=tag,
        endpoint=endpoint,
        lineage=lineage,
        evaluation=evaluation,
        license=license,
        extras={e.path: e.description for e in extras},
    ).encode()
    files = [
        PlannedFile(path, entry["size"], entry["sha256"], source=artifact.path / path)
        for path, entry in artifact.manifest["files"].items()
    ]
    files += [_planned(e) for e in extras]
    files += [
        PlannedFile(name, len(data), _sha256(data), content=data)
        for name, data in ((MANIFEST_NAME, manifest_bytes), (CARD_NAME, card))
    ]
    already = next(
        (r for r in reg.remotes(artifact.ref) if (r.endpoint, r.repo, r.repo_type) == (endpoint, repo, repo_type)), None
    )
    return PushPlan(artifact, repo, repo_type, tag, endpoint, private, files, already)


def push(reg: Registry, plan: PushPlan, *, token: str | None = None) -> PushResult:
    """Make the plan's commit on main, tag it, and record the remote.

    An artifact already recorded in that repo is not pushed again. A tag that already exists is
    accepted only when it holds this same artifact (same kind, name and payload), and recorded.

    Raises:
        HubError: network or auth failure, a repo holding another artifact, a tag holding other
        content, or main moving while pushing (nothing is recorded in those cases).
    """
    if plan.already is not None:
        return PushResult(plan, plan.already, already=True)
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.hf_api import RepoFile

    artifact, repo, repo_type, tag = plan.artifact, plan.repo, plan.repo_type, plan.tag
    api = _api(plan.endpoint, token)
    with _hub_errors(plan.endpoint, _shown(repo, repo_type), "push to"):
        api.create_repo(repo, repo_type=repo_type, private=plan.private, exist_ok=True)
        head = api.repo_info(repo, repo_type=repo_type, revision="main").sha
        on_hub = (
            [
                f.path
                for f in api.list_repo_tree(repo, repo_type=repo_type, revision=head, recursive=True)
                if isinstance(f, RepoFile)
            ]
            if head
            else []
        )
        if MANIFEST_NAME in on_hub:
            _check_same_line(api, Remote(repo, repo_type, head, plan.endpoint), artifact)
        tags = {t.name: t.target_commit for t in api.list_repo_refs(repo, repo_type=repo_type).tags}
        if tag in tags:
            remote = Remote(repo, repo_type, tags[tag], plan.endpoint, tag)
            _check_same_content(api, remote, artifact)
            reg.add_remote(artifact.ref, remote)
            return PushResult(plan, remote, already=True)
        planned = {f.path for f in plan.files}
        operations: list[Any] = [CommitOperationAdd(f.path, f.upload()) for f in plan.files]
        operations += [CommitOperationDelete(path) for path in on_hub if path not in planned | _KEEP_ON_HUB]
        try:
            commit = api.create_commit(
                repo,
                operations,
                repo_type=repo_type,
                revision="main",
                parent_commit=head,
                commit_message=f"{artifact.ref} ({tag})",
                commit_description=f"pwmctl push: {len(plan.files)} files, {plan.total_bytes} bytes; "
                f"payload sha256 {content_sha256(artifact.manifest)}",
            )
        except _http_error() as e:
            if _status(e) in (409, 412):
                raise HubError(
                    f"{_shown(repo, repo_type)} changed while pushing (main moved past {head[:12]}): "
                    f"nothing was committed; run the push again"
                ) from None
            raise
        try:
            api.create_tag(
                repo,
                tag=tag,
                revision=commit.oid,
                repo_type=repo_type,
                tag_message=f"{artifact.ref}, payload sha256 {content_sha256(artifact.manifest)}",
            )
        except _http_error() as e:
            if _status(e) == 409:
                raise HubError(
                    f"tag {tag} appeared on {_shown(repo, repo_type)} while pushing; commit {commit.oid[:12]} is "
                    f"on main untagged and was not recorded: check the repo, then push again"
                ) from None
            raise
    remote = Remote(repo, repo_type, commit.oid, plan.endpoint, tag)
    reg.add_remote(artifact.ref, remote)
    return PushResult(plan, remote, already=False)


def unpushed(reg: Registry, endpoint: str | None = None) -> list[Artifact]:
    """Local versions with no Hub copy on `endpoint`, in lineage order: datasets, world models,
    policies (reports are left out: their results go into the policy cards), oldest first."""
    endpoint = resolve_endpoint(endpoint)
    remotes = reg.all_remotes()
    todo = [
        a
        for a in reg.list()
        if a.kind in PUSH_ORDER and not any(r.endpoint == endpoint for r in remotes.get(a.ref, ()))
    ]
    return sorted(todo, key=lambda a: (PUSH_ORDER.index(a.kind), a.registered, a.name, a.version))


def default_repo(reg: Registry, artifact: Artifact, namespace: str | None, endpoint: str | None = None) -> str | None:
    """The repo a version goes to when none is named (None: it needs a namespace and has none).

    The repo its earlier versions went to, if any; else `{namespace}/{name}`. Two kinds that share
    a name and a repo type (a policy and a world model "cartpole") cannot share a repo: the plain
    name goes to the policy, then the world model, then the report, and the others get
    `{namespace}/{name}-{kind}`; so does a line whose plain repo is already used by another.
    """
    endpoint = resolve_endpoint(endpoint)
    repo_type = repo_type_for(artifact.kind)
    used_by_others = set()
    for ref, remotes in reg.all_remotes().items():
        kind, name = ref.split("/")[0], ref.split("/")[1].split(":")[0]
        for r in remotes:
            if r.endpoint != endpoint or r.repo_type != repo_type:
                continue
            if (kind, name) == (artifact.kind, artifact.name):
                return r.repo
            used_by_others.add(r.repo)
    if namespace is None:
        return None
    plain = f"{namespace}/{artifact.name}"
    rivals = {
        a.kind for a in reg.list(name=artifact.name) if a.kind != artifact.kind and repo_type_for(a.kind) == repo_type
    }
    outranked = any(MODEL_REPO_PRIORITY.index(k) < MODEL_REPO_PRIORITY.index(artifact.kind) for k in rivals)
    return f"{plain}-{artifact.kind}" if outranked or plain in used_by_others else plain


# ---- pull ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    artifact: Artifact
    remote: Remote
    already: bool  # it was here: nothing was downloaded
    linked: list[str] = field(default_factory=list)  # parents found locally
    hub_only: list[str] = field(default_factory=list)  # parents known only by their Hub ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact.ref,
            **self.remote.to_dict(),
            "url": self.remote.url,
            "already": self.already,
            "parents": self.linked,
            "hub_parents": self.hub_only,
        }


def parse_hub_spec(spec: str) -> tuple[str | None, str, str | None]:
    """`[datasets/|models/]ORG/NAME[@REV]` -> (repo type or None, "ORG/NAME", revision or None)."""
    path, at, rev = spec.strip().partition("@")
    repo_type = None
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if path.startswith(prefix) and path.count("/") == 2:
            repo_type, path = kind, path[len(prefix) :]
    if at and not rev:
        raise HubError(f"bad Hub ref {spec!r}: nothing after '@'; expected ORG/NAME[@vN|@SHA]")
    check_repo_id(path)
    return repo_type, path, rev or None


def pull(
    reg: Registry,
    spec: str,
    *,
    repo_type: str | None = None,
    endpoint: str | None = None,
    offline: bool = False,
    token: str | None = None,
) -> PullResult:
    """Download one version from the Hub, verify it, and register it as the next local version.

    Args:
        spec: `ORG/NAME[@vN|@SHA]` (no revision: the head of main).
        repo_type: "model" or "dataset"; None tries both.
        offline: use only what is registered here; never touch the network (also when
            HF_HUB_OFFLINE is set, as in huggingface_hub).

    Raises:
        HubError: the repo or revision does not exist, network or auth failure, not a pwmctl
        artifact, or (offline) not here. IntegrityError: files that differ from the manifest.
    """
    spec_type, repo, rev = parse_hub_spec(spec)
    if repo_type is not None and repo_type not in ("model", "dataset"):
        raise HubError(f"bad repo type {repo_type!r}: use model or dataset")
    repo_type = repo_type or spec_type
    endpoint = resolve_endpoint(endpoint)
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE_VALUES
    local = _local_copy(reg, repo, rev, repo_type, endpoint, latest=offline)
    if local is not None:
        return local
    if offline:
        raise HubError(
            f"{repo}@{rev or 'main'} is not in {reg.home} and --offline forbids downloading: "
            f"pull it once without --offline"
        )
    api = _api(endpoint, token)
    repo_type, sha = _resolve_revision(api, repo, rev, repo_type, endpoint)
    local = _local_copy(reg, repo, sha, repo_type, endpoint)
    if local is not None:
        return local
    shown = _shown(repo, repo_type)
    with _hub_errors(endpoint, shown, "pull from"):
        tag = rev if rev and rev != sha else _tag_at(api, repo, repo_type, sha)
        remote = Remote(repo, repo_type, sha, endpoint, tag)
        reg.tmp_dir.mkdir(parents=True, exist_ok=True)
        work = reg.tmp_dir / f"pull-{secrets.token_hex(4)}"
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(
                repo,
                repo_type=repo_type,
                revision=sha,
                local_dir=work,
                endpoint=endpoint,
                token=token,
                ignore_patterns=[f"{PREVIEW_DIR}/*"],
            )  # for the Hub page, not the artifact
            return _register(reg, work, remote)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _register(reg: Registry, download: Path, remote: Remote) -> PullResult:
    """Move a verified download into the registry with its provenance and lineage."""
    try:
        manifest = read_manifest(download)
    except IntegrityError:
        raise HubError(f"{remote.hub_id} has no valid {MANIFEST_NAME}: it was not pushed by pwmctl") from None
    _check_pulled_manifest(manifest, remote)
    kind, name = manifest["kind"], manifest["name"]
    lineage = manifest.get("lineage")
    if lineage is None:  # pushed by hand: parents by ref only
        lineage = [{"ref": p, "content_sha256": None, "hub": None} for p in manifest["parents"]]
    linked, hub_only, entries = [], [], []
    for entry in lineage:
        local = reg.match_hub_parent(entry)
        if local is not None:
            linked.append(local.ref)
        else:
            hub_only.append(Remote.from_dict(entry["hub"]).hub_id if entry.get("hub") else entry["ref"])
        entries.append({**entry, "local": local.ref if local else None})
    hub = {
        **remote.to_dict(),
        "ref": f"{kind}/{name}:v{manifest['version']}",
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lineage": entries,
    }
    with reg.stage(kind, name) as staging:
        for entry in download.iterdir():
            if entry.name not in _NOT_PAYLOAD:
                os.rename(entry, staging.path / entry.name)
        try:
            artifact = reg.publish_pulled(staging.path, manifest, parents=linked, hub=hub, remote=remote)
        except AlreadyRegistered:  # a concurrent pull of this commit registered it first
            found = _local_copy(reg, remote.repo, remote.commit_sha, remote.repo_type, remote.endpoint)
            assert found is not None, f"{remote.hub_id} was registered, then removed at once"
            return found
    return PullResult(artifact, remote, already=False, linked=linked, hub_only=hub_only)


def _check_pulled_manifest(manifest: Mapping[str, Any], remote: Remote) -> None:
    """Refuse a pulled manifest.json this pwmctl cannot use: from a newer pwmctl, malformed, or
    naming no pwmctl artifact; checked before any of its fields is used."""
    made_by = manifest.get("manifest_version")
    if isinstance(made_by, int) and not isinstance(made_by, bool) and made_by > MANIFEST_VERSION:
        raise HubError(
            f"{remote.hub_id} was made by a newer pwmctl (manifest version {made_by}, this one reads "
            f"up to {MANIFEST_VERSION}): upgrade pwmctl to pull it; nothing was registered"
        )
    problem = manifest_problem(manifest) or _lineage_problem(manifest.get("lineage"))
    if problem:
        raise HubError(
            f"{remote.hub_id}: its {MANIFEST_NAME} is malformed ({problem}): it was not written by "
            f"pwmctl, or was edited after the push; nothing was registered"
        )
    kind, name = manifest["kind"], manifest["name"]
    if kind not in KINDS or name_problem(name):
        raise HubError(
            f"{remote.hub_id}: {MANIFEST_NAME} names no pwmctl artifact "
            f"(kind {shorten(kind, 40)!r}, name {shorten(name, 60)!r})"
        )


def _lineage_problem(lineage: Any) -> str | None:
    """What is wrong with a pushed manifest's `lineage` list (see `_lineage_entry`), or None."""
    if lineage is None:
        return None
    if not isinstance(lineage, list):
        return f"'lineage' is {shorten(json.dumps(lineage), 60)}, not a list"
    bad = next((entry for entry in lineage if not _is_lineage_entry(entry)), None)
    if bad is not None:
        return f"lineage entry {shorten(json.dumps(bad), 60)} is not {{ref, content_sha256, hub}}"
    return None


def _is_lineage_entry(entry: Any) -> bool:
    """{"ref": str, "content_sha256": str | None, "hub": None | {repo, repo_type, commit, endpoint, tag}}."""
    if not isinstance(entry, dict) or not isinstance(entry.get("ref"), str):
        return False
    if not isinstance(entry.get("content_sha256"), (str, type(None))):
        return False
    hub = entry.get("hub")
    if hub is None:
        return True
    return (
        isinstance(hub, dict)
        and isinstance(hub.get("tag"), (str, type(None)))
        and all(isinstance(hub.get(key), str) for key in ("repo", "repo_type", "commit", "endpoint"))
    )


# ---- reachability (pwmctl doctor) ----------------------------------------------------------


@dataclass(frozen=True)
class HubStatus:
    """What one short request to the Hub's whoami endpoint told: reachable (None: not tried, offline),
    the login it accepted, and a one-line detail."""

    endpoint: str
    reachable: bool | None
    token_source: str | None  # "HF_TOKEN" | "token file" | None (not logged in)
    user: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "reachable": self.reachable,
            "logged_in": self.token_source is not None,
            "token_source": self.token_source,
            "user": self.user,
            "detail": self.detail,
        }


def hub_status(endpoint: str | None = None, *, timeout_s: float = 3.0) -> HubStatus:
    """Ask `endpoint`'s whoami (one GET, `timeout_s`) whether it answers and who the token is.

    Never raises for network trouble: no network is an answer (`reachable` False), not an error.
    With HF_HUB_OFFLINE set, nothing is sent (`reachable` None).
    """
    import urllib.error
    import urllib.request

    endpoint = resolve_endpoint(endpoint)
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # a broken token file or OIDC setup: report it as not logged in
        token = None
    source = None if token is None else "HF_TOKEN" if os.environ.get("HF_TOKEN") else "token file"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE_VALUES:
        return HubStatus(endpoint, None, source, None, "HF_HUB_OFFLINE is set: not contacted")
    request = urllib.request.Request(f"{endpoint}/api/whoami-v2", headers={"User-Agent": "pwmctl"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(1 << 16)
    except urllib.error.HTTPError as e:  # it answered: reachable
        if e.code in (401, 403) and token:
            return HubStatus(endpoint, True, source, None, f"the token was refused (HTTP {e.code})")
        return HubStatus(endpoint, True, source, None, f"answered HTTP {e.code} to whoami")
    except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: a malformed endpoint URL
        reason = getattr(e, "reason", None) or e
        return HubStatus(endpoint, False, source, None, f"not reachable within {timeout_s:g} s ({reason})")
    try:
        user = json.loads(body).get("name")
    except (ValueError, AttributeError):
        user = None
    return HubStatus(endpoint, True, source, user if isinstance(user, str) else None, "answered")


# ---- remote verification -------------------------------------------------------------------


def verify_remote(reg: Registry, ref: str, *, token: str | None = None) -> list[tuple[Remote, list[FileProblem]]]:
    """Compare an artifact's files table with the manifest.json of each Hub commit it is recorded
    at: [(remote, problems)], problems [] when they agree.

    Raises:
        HubError: no Hub copy recorded, network or auth failure, or the commit has no manifest.
    """
    artifact = reg.resolve(ref)
    remotes = reg.remotes(artifact.ref)
    if not remotes:
        raise HubError(
            f"{artifact.ref} has no Hub copy recorded: push it first (`pwmctl push {artifact.ref} --repo ORG/NAME`)"
        )
    results = []
    for remote in remotes:
        api = _api(remote.endpoint, token)
        with _hub_errors(remote.endpoint, _shown(remote.repo, remote.repo_type), "read"):
            manifest = _remote_manifest(api, remote)
        if manifest is None:
            raise HubError(f"{remote.hub_id} (commit {remote.commit_sha[:12]}) has no {MANIFEST_NAME}")
        results.append((remote, compare_files(artifact.manifest["files"], manifest["files"])))
    return results


def compare_files(local: Mapping[str, Any], remote: Mapping[str, Any]) -> list[FileProblem]:
    """How a local files table differs from the Hub copy's, sorted by path."""
    problems = [FileProblem(p, "missing", "not in the Hub copy") for p in local if p not in remote]
    problems += [FileProblem(p, "unexpected", "only in the Hub copy") for p in remote if p not in local]
    for path in local.keys() & remote.keys():
        mine, theirs = local[path], remote[path]
        if (mine["sha256"], mine["size"]) != (theirs["sha256"], theirs["size"]):
            problems.append(
                FileProblem(path, "changed", f"Hub copy has sha256 {theirs['sha256'][:12]}..., {theirs['size']} bytes")
            )
    return sorted(problems, key=lambda p: p.path)


# ---- helpers -------------------------------------------------------------------------------


def _api(endpoint: str, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token, library_name="pwmctl")


def _shown(repo: str, repo_type: str | None) -> str:
    return f"{'dataset repo' if repo_type == 'dataset' else 'model repo'} {repo}" if repo_type else repo


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _planned(extra: Extra) -> PlannedFile:
    """A preview/ file as one file of the push commit."""
    if extra.content is not None:
        return PlannedFile(extra.path, len(extra.content), _sha256(extra.content), content=extra.content)
    assert extra.source is not None, f"{extra.path}: neither content nor a source file"
    return PlannedFile(extra.path, extra.source.stat().st_size, sha256_file(extra.source), source=extra.source)


def _lineage_entry(node: LineageNode, endpoint: str) -> dict[str, Any]:
    """A parent as the pushed manifest names it: ref, payload hash, Hub copy (this endpoint's first)."""
    remotes = sorted(node.remotes, key=lambda r: r.endpoint != endpoint)
    digest = content_sha256(node.artifact.manifest) if node.artifact is not None else None
    return {"ref": node.ref, "content_sha256": digest, "hub": remotes[0].to_dict() if remotes else None}


def _local_copy(
    reg: Registry, repo: str, rev: str | None, repo_type: str | None, endpoint: str, latest: bool = False
) -> PullResult | None:
    """The version already registered for this repo and revision: a commit sha matches on any
    endpoint (it names the content), a tag on this endpoint (pwmctl never moves tags); with
    `latest` and no revision, the newest copy of the repo."""
    if rev is not None and _SHA_RE.fullmatch(rev):
        found = reg.find_remote(repo, commit_sha=rev, repo_type=repo_type)
    elif rev is not None:
        found = reg.find_remote(repo, tag=rev, endpoint=endpoint, repo_type=repo_type)
    elif latest:
        found = reg.find_remote(repo, endpoint=endpoint, repo_type=repo_type)
    else:
        return None
    if found is None:
        return None
    remote = next(r for r in reg.remotes(found.ref) if r.repo == repo and (rev is None or rev in (r.commit_sha, r.tag)))
    return PullResult(found, remote, already=True, linked=found.parents)


def _resolve_revision(api, repo: str, rev: str | None, repo_type: str | None, endpoint: str) -> tuple[str, str]:
    """(repo type, commit sha) of a revision; without a repo type, both are tried and exactly one
    must have it (a dataset and a policy may share a name)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    found, missing_rev = {}, {}
    for kind in [repo_type] if repo_type else ["model", "dataset"]:
        with _hub_errors(endpoint, _shown(repo, kind), "read"):
            try:
                found[kind] = api.repo_info(repo, repo_type=kind, revision=rev).sha
            except RepositoryNotFoundError:
                pass
            except RevisionNotFoundError:
                missing_rev[kind] = sorted(t.name for t in api.list_repo_refs(repo, repo_type=kind).tags)
    if len(found) == 1:
        return next(iter(found.items()))
    if found:
        raise HubError(
            f"both a model and a dataset repo {repo} on {endpoint} have {rev or 'main'}: "
            f"pass --repo-type model or --repo-type dataset"
        )
    if missing_rev:
        kind, tags = next(iter(missing_rev.items()))
        have = f"its tags are {', '.join(tags)}" if tags else "it has no tags"
        raise HubError(f"{_shown(repo, kind)} on {endpoint} has no revision {rev!r}: {have}; pull ORG/NAME@TAG or @SHA")
    tried = f"{repo_type} repo" if repo_type else "model or dataset repo"
    raise HubError(
        f"no {tried} {repo} on {endpoint}, or it is private and your token cannot read it: "
        f"check the name (and --repo-type), or log in with `hf auth login` / HF_TOKEN"
    )


def _tag_at(api, repo: str, repo_type: str, sha: str) -> str | None:
    """A tag on `sha`, preferring vN tags."""
    tags = sorted(
        (t.name for t in api.list_repo_refs(repo, repo_type=repo_type).tags if t.target_commit == sha),
        key=lambda name: (not re.fullmatch(r"v[0-9]+", name), name),
    )
    return tags[0] if tags else None


def _remote_manifest(api, remote: Remote) -> dict[str, Any] | None:
    """manifest.json at a Hub commit, or None when the commit has none."""
    from huggingface_hub.errors import EntryNotFoundError

    with tempfile.TemporaryDirectory(prefix="pwmctl-hub-") as tmp:
        try:
            path = api.hf_hub_download(
                remote.repo, MANIFEST_NAME, repo_type=remote.repo_type, revision=remote.commit_sha, local_dir=tmp
            )
        except EntryNotFoundError:
            return None
        try:
            return read_manifest(Path(path).parent)
        except IntegrityError:
            return None


def _check_same_content(api, remote: Remote, artifact: Artifact) -> None:
    """Refuse an existing tag unless it holds this artifact (same kind, name and payload)."""
    manifest = _remote_manifest(api, remote)
    same = (
        manifest is not None
        and (manifest.get("kind"), manifest.get("name")) == (artifact.kind, artifact.name)
        and content_sha256(manifest) == content_sha256(artifact.manifest)
    )
    if not same:
        if manifest is None:
            held = "files not pushed by pwmctl"
        else:
            held = (
                f"{manifest.get('kind')}/{manifest.get('name')}:v{manifest.get('version')} with payload sha256 "
                f"{content_sha256(manifest)[:12]}... (yours: {content_sha256(artifact.manifest)[:12]}...)"
            )
        raise HubError(
            f"{_shown(remote.repo, remote.repo_type)} already has tag {remote.tag} (commit {remote.commit_sha[:12]}) "
            f"holding {held}: pwmctl never moves a tag; push {artifact.ref} to another repo (--repo)"
        )


def _check_same_line(api, head: Remote, artifact: Artifact) -> None:
    """Refuse to push into a repo whose head holds another artifact line."""
    manifest = _remote_manifest(api, head) or {}
    if (manifest.get("kind"), manifest.get("name")) not in ((artifact.kind, artifact.name), (None, None)):
        raise HubError(
            f"{_shown(head.repo, head.repo_type)} holds {manifest['kind']}/{manifest['name']}, not "
            f"{artifact.kind}/{artifact.name}: one repo holds the versions of one artifact; pass another --repo"
        )


def _http_error():
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


@contextmanager
def _hub_errors(endpoint: str, what: str, action: str) -> Iterator[None]:
    """Turn huggingface_hub and transport errors into one-line HubErrors."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(
            f"HF_HUB_OFFLINE is set, so pwmctl cannot {action} {what}: unset it, "
            f"or pull with --offline to use local copies only"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"no {what} on {endpoint}, or it is private and your token cannot read it: check "
            f"the name, or log in with `hf auth login` / HF_TOKEN"
        ) from None
    except HfHubHTTPError as e:
        status = _status(e)
        if status in (401, 403):
            raise HubError(
                f"the Hub at {endpoint} refused to let you {action} {what} (HTTP {status}): log in with "
                f"`hf auth login` or set HF_TOKEN to a token with {'write' if 'push' in action else 'read'} "
                f"access"
            ) from None
        detail = (e.server_message or str(e)).strip().splitlines()
        raise HubError(
            f"the Hub at {endpoint} answered HTTP {status} when trying to {action} {what}"
            f"{': ' + detail[0] if detail else ''}"
        ) from None
    except (HTTPError, LocalEntryNotFoundError, ConnectionError, TimeoutError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(
            f"cannot reach the Hub at {endpoint} to {action} {what} ({reason}): check the network, "
            f"or point --hub-endpoint / `pwmctl config set hub.endpoint URL` at a reachable Hub"
        ) from None
    except OSError as e:  # after the network errors, which are OSErrors too
        if "Consistency check failed" not in str(e):  # a download cut short; other OSErrors are local
            raise
        raise HubError(f"a download from {what} on {endpoint} was cut short: run it again") from None
