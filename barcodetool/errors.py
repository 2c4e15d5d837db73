"""Typed errors raised by the library.

Library code never prints or exits; it raises one of these. The command-line layer maps every
`BarcodeToolError` to a one-line message on stderr and the exit status in `exit_code`.
"""

from __future__ import annotations


class BarcodeToolError(Exception):
    """Base class: a problem the user can fix. `str(error)` is a complete one-line message."""

    exit_code = 1


class InputError(BarcodeToolError):
    """An input file cannot be read as barcodes: wrong format, bad record, bad character."""

    def __init__(self, message: str, *, path: str | None = None, record: str | None = None,
                 fix: str | None = None):
        self.message = message
        self.path = path
        self.record = record
        self.fix = fix
        parts = []
        if path is not None:
            parts.append(str(path))
        if record is not None:
            parts.append(f"record {record!r}")
        text = ": ".join(parts + [message]) if parts else message
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class TokenizerError(BarcodeToolError):
    """Tokenizer settings are invalid or do not match a model."""


class ModelError(BarcodeToolError):
    """A weight file or model name is missing, corrupt, of a newer format, or does not fit."""


class IndexMismatchError(BarcodeToolError):
    """A reference index was built with another model than the one in use."""


class OutputError(BarcodeToolError):
    """An output path is unusable (for example, it would overwrite an input)."""


class UsageError(BarcodeToolError):
    """Arguments that do not make sense together; exit status 2 like Click's own usage errors."""

    exit_code = 2


class Interrupted(BarcodeToolError):
    """SIGINT/SIGTERM arrived; outputs in progress were removed."""

    def __init__(self, signal_number: int):
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
        super().__init__(f"interrupted by signal {signal_number}; no partial output was left")
