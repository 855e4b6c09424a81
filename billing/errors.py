"""Errors a user can act on. The CLI prints these as one clear message (no traceback) and exits with the
error's ``exit_code``: 2 for the user's input or configuration, 1 for an outage of another system, 3 when
another run holds the period and this one was asked not to wait."""

from __future__ import annotations

import errno
from pathlib import Path


class UserFacingError(Exception):
    """A problem with the user's input or configuration, explained in words they can act on."""

    hint: str | None = None
    exit_code: int = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InputError(UserFacingError):
    """Bad input that names where it is: the file, and the row and field when known."""

    def __init__(
        self,
        path: Path | str,
        problem: str,
        row: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path, self.row, self.field, self.problem, self.line = Path(path), row, field, problem, line
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}", hint)


class ConfigurationError(UserFacingError):
    """A setting, option, credential or file the user gave is wrong (exit 2)."""


class SystemUnavailable(UserFacingError):
    """Another system (an ERP, a helpdesk) could not be reached or kept failing after retries: an outage, not
    the user's mistake (exit 1). The message names the system and what to check; what was begun stays in
    the ledger for the next run."""

    exit_code = 1


class StorageError(UserFacingError):
    """The home or ledger cannot be written (a full disk, a read-only folder): the message names the path.
    Nothing is lost: what was begun stays in the ledger, and the next run goes on from there."""


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# What SQLite says (through SQLAlchemy) when the ledger's file or folder cannot be written.
SQLITE_STORAGE_MESSAGES = ("database or disk is full", "attempt to write a readonly database",
                           "unable to open database file", "disk I/O error")  # fmt: skip


def storage_problem(error: BaseException, ledger: str = "the ledger", home: Path | None = None) -> StorageError | None:
    """The ``StorageError`` a low-level error stands for (a full disk, a read-only file), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            where = current.filename or (f"a file under {home}" if home else "a file of the home folder")
            return StorageError(f"cannot write {where}: {current.strerror}", hint=STORAGE_HINT)
        said = next((m for m in SQLITE_STORAGE_MESSAGES if m in str(current)), None)
        if said:
            return StorageError(f"cannot write {ledger}: {said}", hint=STORAGE_HINT)
        current = current.__cause__ or current.__context__
    return None


STORAGE_HINT = "free some space or make the folder writable, then run again: the next run goes on from here"


class RunInProgress(UserFacingError):
    """Another run holds the period (and this one was asked not to wait): nothing was written (exit 3)."""

    exit_code = 3
