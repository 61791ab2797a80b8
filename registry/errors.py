"""Errors the registry raises for bad input or a damaged store.

The CLI prints the message as one line and exits 2, so each message says what is wrong and what
to do about it, without needing the traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class RegistryError(Exception):
    """Base class for user-facing registry errors."""


class RefError(RegistryError):
    """An artifact ref, kind or name that does not parse or validate."""


class IntegrityError(RegistryError):
    """Files on disk that disagree with the manifest or the index."""

    @classmethod
    def from_problems(cls, ref: str, problems: Sequence[object], shown: int = 5) -> IntegrityError:
        """One-line error listing the first `shown` file problems found by `Registry.verify`."""
        listed = "; ".join(str(p) for p in problems[:shown])
        more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
        return cls(
            f"artifact {ref} failed verification ({len(problems)} problems: {listed}{more}); "
            f"its files were modified after publishing: pull or re-create it"
        )


class DiskError(RegistryError):
    """A write the file system refused: the disk is full, read-only, or not writable by this user."""

    @classmethod
    def from_os_error(cls, error: OSError, path: str | os.PathLike | None = None) -> DiskError | None:
        """The one-line error for a full, read-only or unwritable disk (naming the file, else
        `path`); None for any other OSError."""
        where = error.filename or path or "a file"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return cls.full(where)
        if error.errno == errno.EROFS:
            return cls(
                f"{where} is on a read-only file system: remount it read-write, or point --home "
                f"(PWM_HOME) at a writable folder"
            )
        if error.errno in (errno.EACCES, errno.EPERM):
            return cls(
                f"{where} is not writable by you ({error.strerror}): fix its permissions, or point "
                f"--home (PWM_HOME) at a writable folder"
            )
        return None

    @classmethod
    def full(cls, where: str | os.PathLike) -> DiskError:
        return cls(f"the disk holding {where} is full (or your quota is used up): free some space")


@contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """A full, read-only or unwritable disk as a one-line DiskError naming `path`; other OSErrors pass."""
    try:
        yield
    except OSError as e:
        error = DiskError.from_os_error(e, path)
        if error is None:
            raise
        raise error from None


class AlreadyRegistered(RegistryError):
    """A Hub commit that another pull registered here first (pulls of one commit racing)."""

    def __init__(self, ref: str, hub_id: str) -> None:
        super().__init__(f"already have {hub_id} as {ref}")
        self.ref = ref


class ArtifactNotFound(RegistryError):
    """A ref that names no artifact in the registry."""

    @classmethod
    def for_ref(
        cls,
        ref: str,
        *,
        versions: Sequence[int] = (),
        suggestions: Sequence[str] = (),
        home: str | None = None,
    ) -> ArtifactNotFound:
        """Build the message: the missing ref, then the versions that exist or close names.

        Args:
            ref: the ref asked for, as "kind/name:vN" or "kind/name:latest".
            versions: the versions of that kind/name that do exist (a wrong version number).
            suggestions: refs of close names, best first (a typo, or the wrong kind).
            home: the registry's home folder, named so a wrong `--home` is easy to spot.
        """
        kind, _, rest = ref.partition("/")
        line = rest.partition(":")[0]
        where = f" in {home}" if home else ""
        if versions:
            have = ", ".join(f"v{v}" for v in versions)
            hint = f"{kind}/{line} has versions {have}; ask for one of those or for :latest"
        elif suggestions:
            hint = f"did you mean {' or '.join(suggestions)}? (`pwmctl ls {kind}` lists them)"
        else:
            hint = f"`pwmctl ls {kind}` lists what there is; publish or pull it first"
        return cls(f"no artifact {ref}{where}: {hint}")
