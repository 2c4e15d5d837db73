"""The record every reader yields, and the cell values that mean "no value"."""

from __future__ import annotations

from dataclasses import dataclass, field

MISSING_VALUES = frozenset({"", "None", "NA", "N/A", "NaN", "nan", "null", "NULL"})


@dataclass
class BarcodeRecord:
    id: str
    sequence: str                     # cleaned: upper case, ACGT + IUPAC codes, no gaps, no end Ns
    taxonomy: dict[str, str]          # rank -> label; only ranks with a value; keys from RANKS
    bin: str | None = None            # BIN uri, e.g. "BOLD:AAA1234"
    split: str | None = None          # value of a `split` column when present
    fields: dict[str, str] = field(default_factory=dict)  # other columns of a table row, as read
