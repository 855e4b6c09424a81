"""Errors a user can act on. The CLI prints these as one clear message (no traceback) and exits 2."""

from __future__ import annotations

from pathlib import Path


class UserFacingError(Exception):
    """A problem with the user's input or configuration, explained in words they can act on."""

    hint: str | None = None

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
    pass
