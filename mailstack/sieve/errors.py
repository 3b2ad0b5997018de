"""The two ways a Sieve script fails: at compile time (with a position) or at run time."""

from __future__ import annotations


class SieveSyntaxError(Exception):
    """An invalid script, found before any message is seen (RFC 5228 2.10.6: such a script is
    refused at upload, ManageSieve answers with ``str(e)``)."""

    def __init__(self, message: str, line: int = 1, column: int = 1):
        super().__init__(f"line {line}, column {column}: {message}")
        self.message = message
        self.line = line
        self.column = column


class SieveRuntimeError(Exception):
    """A run that cannot finish (RFC 5228 2.10.6): the outcome is an implicit keep."""
