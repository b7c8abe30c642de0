"""The exceptions of the data layer.

``DataError`` is what a user sees when data cannot be found or read: its message says what
was looked for, where, and how to get it. ``UnknownNameError`` is a ``DataError`` that is also
a ``KeyError`` so that callers can catch either; its message lists the valid names.
"""

from __future__ import annotations

from collections.abc import Iterable


class DataError(Exception):
    """Data that is missing, malformed or unreadable; the message says how to fix it."""


class ListError(DataError):
    """An image list with a bad line: malformed, a label out of range, or a path outside the data set's root."""


class UnknownNameError(DataError, KeyError):
    """An unknown data set, domain, protocol or setting name."""

    def __init__(self, kind: str, name: object, valid: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.valid = list(valid)
        message = f"unknown {kind} {name!r}; valid: {', '.join(self.valid) or '(none)'}"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    def __str__(self) -> str:
        """The plain message (``KeyError`` would otherwise quote it)."""
        return str(self.args[0])
