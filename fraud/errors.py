"""Errors raised while reading rule text."""

from __future__ import annotations

__all__ = ["RuleError"]


class RuleError(Exception):
    """A rule file is malformed or ill-typed.

    The message always names the file, the line and the column (both 1-based) so an
    operator can jump straight to the offending character.
    """

    def __init__(self, filename: str, line: int, column: int, message: str) -> None:
        self.filename = filename
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{filename}:{line}:{column}: {message}")

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}: {self.message}"

    def __reduce__(self) -> tuple[type, tuple[str, int, int, str]]:
        # Keep the four fields when pickled (e.g. across a process pool).
        return (RuleError, (self.filename, self.line, self.column, self.message))
