"""Barcode tables (CSV/TSV): the known layouts (BIOSCAN-5M, BOLD v3, BOLD BCDM), mapping a header to the columns
to read, and the table's rows as records."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from ..errors import InputError
from ..taxonomy import RANKS
from .records import MISSING_VALUES

_CSV_FIELD_LIMIT = 1 << 24     # 16 MiB per table field (the csv module's default is 128 KiB)

_KNOWN = {
    "bioscan": dict(id="processid", sequence="dna_barcode", bin=("dna_bin",), taxonomy="{rank}"),
    "bold-v3": dict(id="processid", sequence="nucleotides", bin=("bin_uri",), taxonomy="{rank}_name"),
    "bold-bcdm": dict(id="processid", sequence="nucraw", bin=("bin_uri",), taxonomy="{rank}"),
}
_SEQUENCE_GUESSES = ("sequence", "seq", "nucleotides", "nucraw", "dna_barcode", "barcode", "dna")
# BOLD exports hold a row per marker of a specimen (COI-5P, 28S, ITS, rbcL, ...) under one processid: a row whose
# marker column names none of these is another gene, not a barcode for these models, and is skipped (counted)
MARKER_COLUMNS = ("marker_code", "markercode", "marker_codes", "marker")
COI_MARKERS = frozenset({"coi-5p", "coi", "co1", "cox1", "coxi"})
_ID_GUESSES = ("processid", "id", "sampleid", "seqid", "accession", "name")


def table_format(columns: list[str]) -> str:
    """The layout a header's column names show: "bioscan", "bold-v3", "bold-bcdm" or "table" (any other)."""
    lower = {c.lower() for c in columns}
    if "dna_barcode" in lower and "processid" in lower:
        return "bioscan"
    if "nucleotides" in lower and "bin_uri" in lower and any(c.endswith("_name") for c in lower):
        return "bold-v3"
    if "nucraw" in lower and "bin_uri" in lower:
        return "bold-bcdm"
    return "table"


@dataclass
class _Columns:
    id: int
    sequence: int
    taxonomy: list[tuple[str, int]]
    bin: int | None
    split: int | None
    other: list[tuple[str, int]]
    marker: int | None = None


def _list_columns(header: list[str]) -> str:
    shown = ", ".join(repr(c) for c in header[:60])
    return shown + (f", ... ({len(header)} in all)" if len(header) > 60 else "")


def _column_map(fmt: str, header: list[str], id_column: str | None, sequence_column: str | None,
                display: str) -> _Columns:
    exact = {}
    lower = {}
    for index, name in enumerate(header):
        exact.setdefault(name, index)
        lower.setdefault(name.lower(), index)

    def find(name: str) -> int | None:
        index = exact.get(name)
        return index if index is not None else lower.get(name.lower())

    def require(name: str, option: str) -> int:
        index = find(name)
        if index is None:
            raise InputError(f"no column {name!r} in the header; columns: {_list_columns(header)}",
                             path=display, fix=f"pass {option} with one of the columns listed")
        return index

    known = _KNOWN.get(fmt)
    if known is None and (id_column is None or sequence_column is None):
        missing = " and ".join(o for o, v in (("--id-column", id_column), ("--sequence-column", sequence_column))
                               if v is None)
        guess_seq = next((header[find(g)] for g in _SEQUENCE_GUESSES if find(g) is not None), None)
        guess_id = next((header[find(g)] for g in _ID_GUESSES if find(g) is not None), None)
        if guess_seq is None and sequence_column is None:
            problem = ("no sequence column found (looked for dna_barcode, nucleotides, nucraw) and the table's "
                       "layout is not BIOSCAN-5M or BOLD")
        else:
            problem = "a table of unknown layout (not BIOSCAN-5M or BOLD)"
        hint = ""
        if guess_seq or guess_id:
            hint = "; perhaps " + " ".join(
                f"{opt} {val}" for opt, val in (("--id-column", guess_id if id_column is None else None),
                                                ("--sequence-column",
                                                 guess_seq if sequence_column is None else None)) if val)
        raise InputError(f"{problem}; columns: {_list_columns(header)}", path=display,
                         fix=f"pass {missing} to name the columns to read{hint}")
    id_index = require(id_column or known["id"], "--id-column")
    sequence_index = require(sequence_column or known["sequence"], "--sequence-column")
    taxonomy = []
    for rank in RANKS:
        names = [known["taxonomy"].format(rank=rank)] if known else [rank, f"{rank}_name"]
        for name in names:
            index = find(name)
            if index is not None and index not in (id_index, sequence_index):
                taxonomy.append((rank, index))
                break
    bin_index = None
    for name in (known["bin"] if known else ("bin_uri", "dna_bin", "bin")):
        bin_index = find(name)
        if bin_index is not None:
            break
    split_index = find("split")
    used = {id_index, sequence_index, bin_index, split_index} | {i for _, i in taxonomy}
    other = [(name, index) for index, name in enumerate(header) if index not in used]
    marker_index = next((find(name) for name in MARKER_COLUMNS if find(name) is not None), None)
    return _Columns(id_index, sequence_index, taxonomy, bin_index, split_index, other, marker_index)


def is_coi(marker: str) -> bool:
    """True for a marker field naming the COI barcode region (`COI-5P`, BOLD v3's `COI-5P|COI-5P`), or empty."""
    parts = [part.strip().lower() for part in marker.split("|") if part.strip() and part.strip() not in MISSING_VALUES]
    return not parts or any(part in COI_MARKERS for part in parts)


def _rows(reader, display: str) -> Iterator[list[str]]:
    """The reader's rows; a malformed row raises InputError with its line number."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise InputError(f"line {reader.line_num}: malformed CSV ({error})", path=display,
                             fix="check the quoting: a field that starts with '\"' must end with '\"'") from None
        yield row


def _strip_cr(handle) -> Iterator[str]:
    for line in handle:
        yield line.replace("\r", "") if "\r" in line else line


def table_records(text: IO[str], fmt: str, delimiter: str, id_column: str | None, sequence_column: str | None,
                  display: str, other_markers: dict[str, int] | None = None
                  ) -> Iterator[tuple[str, str, dict, str | None, str | None, dict]]:
    """(id, raw sequence, taxonomy, bin, split, other fields) of each row of a table text stream, uncleaned.

    `fmt` is the table's layout ("bioscan", "bold-v3", "bold-bcdm", "table"), `delimiter` "\\t" or ",";
    `id_column` and `sequence_column` override the layout's columns (a generic "table" needs both). `display`
    names the input in errors. Rows whose marker column (MARKER_COLUMNS) names another gene than COI are skipped
    and counted by marker in `other_markers`.
    """
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    if delimiter == "\t":
        # BOLD TSVs are not quoted, and their free-text fields may start with '"'.
        reader = csv.reader(_strip_cr(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(_strip_cr(text), delimiter=",", strict=True)
    rows = _rows(reader, display)
    header = None
    for row in rows:
        if any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    if header is None:  # pragma: no cover - the sniffer already saw a header line
        raise InputError("no records", path=display)
    columns = _column_map(fmt, header, id_column, sequence_column, display)
    width = len(header)
    id_index, sequence_index = columns.id, columns.sequence
    taxonomy_columns, other_columns = columns.taxonomy, columns.other
    bin_index, split_index, marker_index = columns.bin, columns.split, columns.marker
    id_name = header[id_index]
    missing = MISSING_VALUES
    for row in rows:
        if len(row) != width:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if len(row) < width or any(cell.strip() for cell in row[width:]):
                record = row[id_index].strip() if len(row) > id_index else None
                raise InputError(f"line {reader.line_num} has {len(row)} fields but the header has {width}",
                                 path=display, record=record or None,
                                 fix="check the delimiter and that fields holding it are quoted "
                                     "(or that a free-text field does not hold a line break)")
        if marker_index is not None and not is_coi(row[marker_index]):
            if other_markers is not None:
                marker = row[marker_index].strip()
                other_markers[marker] = other_markers.get(marker, 0) + 1
            continue
        record_id = row[id_index].strip()
        if record_id in missing:
            raise InputError(f"line {reader.line_num} has no record id in column {id_name!r}", path=display,
                             fix="fill in the id, or choose another column with --id-column")
        sequence = row[sequence_index].strip()
        if sequence in missing:
            sequence = ""
        taxonomy = {}
        for rank, index in taxonomy_columns:
            value = row[index].strip()
            if value not in missing:
                taxonomy[rank] = value
        bin_uri = split = None
        if bin_index is not None:
            bin_uri = row[bin_index].strip()
            if bin_uri in missing:
                bin_uri = None
        if split_index is not None:
            split = row[split_index].strip()
            if split in missing:
                split = None
        fields = {name: row[index].strip() for name, index in other_columns}
        yield record_id, sequence, taxonomy, bin_uri, split, fields
