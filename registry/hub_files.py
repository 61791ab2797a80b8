"""Single files from Hub repos that pwmctl did not push: TD-MPC2's released chunks and checkpoints,
PWM's world models (docs/algorithm.md#released-data-and-checkpoints-on-the-hub).

A file is named by a ref, pinned to one commit before anything is downloaded, and downloaded into
``<dest>.part`` with huggingface_hub's resumable ``http_get`` (a Range request from the bytes already
there, also after a killed process), then checked against the Hub's own digest (LFS sha256, or the git
blob id of a small file) and renamed into place. A part file never passes for a whole one.

Refs: ``hf://[datasets/|models/]ORG/NAME[@REV]/PATH`` (HfFileSystem's form), or ``ORG/NAME/PATH`` for
a model repo.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import DiskError
from registry.hub import HubError, _api, _hub_errors, _shown, check_repo_id
from registry.manifest import sha256_file
from registry.refs import shorten

HF_SCHEME = "hf://"
PART_SUFFIX = ".part"
_BLOCK = 1 << 20
_SHA_RE = re.compile(r"[0-9a-f]{40}")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class FileRef:
    """A file in a Hub repo, at a revision (None: main)."""

    repo: str
    repo_type: str  # "model" | "dataset"
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{HF_SCHEME}{prefix}{self.repo}{'@' + self.revision if self.revision else ''}/{self.path}"


@dataclass(frozen=True)
class HubFile:
    """A file at one commit, with what the Hub says about it."""

    ref: FileRef  # its revision is the commit sha
    size: int
    sha256: str | None  # LFS files
    git_oid: str  # git blob id (what the Hub reports for small files)
    endpoint: str

    @property
    def name(self) -> str:
        return self.ref.path.rsplit("/", 1)[-1]


def is_file_ref(ref: str) -> bool:
    """Whether ``ref`` is meant as a Hub file: ``hf://...``, or ``ORG/NAME/PATH`` not starting like a local path."""
    return ref.startswith(HF_SCHEME) or (ref.count("/") >= 2 and not ref.startswith(("/", ".", "~")))


def parse_file_ref(ref: str, repo_type: str = "model") -> FileRef:
    """``hf://[datasets/|models/]ORG/NAME[@REV]/PATH`` or ``ORG/NAME/PATH`` -> FileRef (malformed: HubError)."""
    body = ref[len(HF_SCHEME) :] if ref.startswith(HF_SCHEME) else ref
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if body.startswith(prefix):
            body, repo_type = body[len(prefix) :], kind
    parts = body.split("/")
    if len(parts) < 3 or not all(parts):
        raise HubError(
            f"bad Hub file {shorten(ref)!r}: expected hf://ORG/NAME/PATH or hf://ORG/NAME@REV/PATH "
            f"(hf://datasets/... for a dataset repo), e.g. hf://nicklashansen/tdmpc2/multitask/mt30-48M.pt"
        )
    name, _, revision = parts[1].partition("@")
    if "@" in parts[1] and not revision:
        raise HubError(f"bad Hub file {shorten(ref)!r}: nothing after '@'; expected ORG/NAME@REV/PATH")
    return FileRef(check_repo_id(f"{parts[0]}/{name}"), repo_type, "/".join(parts[2:]), revision or None)


def resolve_commit(ref: FileRef, endpoint: str, token: str | None = None) -> str:
    """The commit sha the ref's revision (default main) names."""
    api = _api(endpoint, token)
    with _hub_errors(endpoint, _shown(ref.repo, ref.repo_type), "read"):
        return api.repo_info(ref.repo, repo_type=ref.repo_type, revision=ref.revision).sha


def list_files(ref: FileRef, endpoint: str, token: str | None = None, recursive: bool = False) -> list[HubFile]:
    """The files inside folder ``ref.path`` ("" for the root) at commit ``ref.revision``: directly inside it,
    or at any depth with ``recursive``."""
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    api = _api(endpoint, token)
    with _hub_errors(endpoint, _shown(ref.repo, ref.repo_type), "read"):
        try:
            entries = list(
                api.list_repo_tree(
                    ref.repo,
                    path_in_repo=ref.path or None,
                    repo_type=ref.repo_type,
                    revision=ref.revision,
                    recursive=recursive,
                )
            )
        except EntryNotFoundError:
            return []
    return [
        HubFile(
            FileRef(ref.repo, ref.repo_type, e.path, ref.revision),
            e.size,
            e.lfs.sha256 if e.lfs else None,
            e.blob_id,
            endpoint,
        )
        for e in entries
        if isinstance(e, RepoFile)
    ]


def find_file(ref: FileRef, endpoint: str, token: str | None = None) -> HubFile:
    """The file a ref names, pinned to a commit; a missing one is a HubError naming close matches."""
    commit = ref.revision if ref.revision and _SHA_RE.fullmatch(ref.revision) else resolve_commit(ref, endpoint, token)
    folder = ref.path.rpartition("/")[0]
    files = list_files(FileRef(ref.repo, ref.repo_type, folder, commit), endpoint, token)
    found = next((f for f in files if f.ref.path == ref.path), None)
    if found is not None:
        return found
    others = [f.ref.path for f in files]
    close = difflib.get_close_matches(ref.path, others, n=3, cutoff=0.5) or difflib.get_close_matches(
        ref.path,
        [f.ref.path for f in list_files(FileRef(ref.repo, ref.repo_type, "", commit), endpoint, token, recursive=True)],
        n=3,
        cutoff=0.5,
    )
    hint = (
        f"did you mean {' or '.join(close)}?"
        if close
        else (
            f"{folder or 'its root'} holds {', '.join(sorted(others)[:8])}" if others else f"{folder or 'it'} is empty"
        )
    )
    raise HubError(
        f"no file {ref.path} in {_shown(ref.repo, ref.repo_type)} at {ref.revision or 'main'} on {endpoint}: {hint}"
    )


def download(file: HubFile, dest: Path, progress: Progress | None = None, token: str | None = None) -> Path:
    """Download ``file`` to ``dest``, resuming ``dest.part`` when an earlier try left one; returns ``dest``.

    The bytes are checked against the Hub's digest before ``dest`` appears; a mismatch removes the part
    file and is a HubError. A ``dest`` already there (a finished download whose use was interrupted) is
    checked the same way instead of downloaded again.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    dest = Path(dest)
    part = dest.with_name(dest.name + PART_SUFFIX)
    if dest.is_file() and dest.stat().st_size == file.size:
        part.unlink(missing_ok=True)
        os.replace(dest, part)  # checked as a part file: a bad one is removed, a good one moved back
    have = part.stat().st_size if part.is_file() else 0
    if have > file.size:  # not from this file
        part.unlink()
        have = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if file.size - have > free:
        raise DiskError(
            f"{file.ref.path} needs {file.size - have} more bytes but {dest.parent} has {free} free: "
            "free some space, or point --home (PWM_HOME) at a bigger disk"
        )
    what = f"{file.ref.path} from {_shown(file.ref.repo, file.ref.repo_type)}"
    url = hf_hub_url(
        file.ref.repo, file.ref.path, repo_type=file.ref.repo_type, revision=file.ref.revision, endpoint=file.endpoint
    )
    if progress is not None:
        progress(have, file.size)
    try:
        with open(part, "ab") as f, _hub_errors(file.endpoint, what, "download"):
            http_get(
                url,
                _Counting(f, have, file.size, progress),  # type: ignore[arg-type]
                resume_size=have,
                expected_size=file.size,
                displayed_filename=file.name,
                headers=build_hf_headers(token=token, library_name="pwmctl"),
                tqdm_class=_NoBar,
            )
    except OSError as e:  # a full disk while writing: the part file stays for the next try
        raise DiskError.from_os_error(e, part) or e from None
    except HubError as e:
        kept = part.stat().st_size if part.is_file() else 0
        if not kept:
            part.unlink(missing_ok=True)
            raise
        raise HubError(
            f"{e}; the {kept} bytes downloaded so far are kept in {part} and the next try resumes from there"
        ) from None
    problem = _digest_problem(part, file)
    if problem:
        part.unlink(missing_ok=True)
        raise HubError(
            f"{what} on {file.endpoint} does not match the Hub's {problem}: the download was removed; "
            f"run the command again"
        )
    os.replace(part, dest)
    return dest


def _digest_problem(path: Path, file: HubFile) -> str | None:
    """Which digest the downloaded bytes fail, or None when they are the Hub's file."""
    if path.stat().st_size != file.size:
        return f"size ({path.stat().st_size} bytes, the Hub says {file.size})"
    if file.sha256 is not None:
        return None if sha256_file(path) == file.sha256 else "sha256"
    blob = hashlib.sha1(b"blob %d\0" % file.size)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            blob.update(block)
    return None if blob.hexdigest() == file.git_oid else "git blob id"


class _Counting:
    """The file http_get writes to, reporting the bytes written so far."""

    def __init__(self, f: Any, done: int, total: int, progress: Progress | None) -> None:
        self._f, self.done, self.total, self.progress = f, done, total, progress

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self.done += len(data)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return n

    def seek(self, *args: Any) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, *args: Any) -> int:  # the server ignored the Range: http_get starts over
        self.done = 0
        return self._f.truncate(*args)


class _NoBar:
    """huggingface_hub's own progress bar, switched off: the caller shows progress."""

    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None: ...
