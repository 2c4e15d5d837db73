"""Read DNA barcodes from FASTA and barcode tables (BIOSCAN-5M CSV, BOLD v3 and BCDM TSV, any CSV/TSV).

Everything is streamed: a file is read record by record and never held in memory whole. Input may be plain,
gzip, bzip2 or xz compressed (recognised by its first bytes, whatever its name says), and `-` reads standard
input. Every problem met while reading raises `InputError` naming the file, the record where there is one,
and a fix. The reading and cleaning rules are documented in docs/input-formats.md.

This module cleans and checks the records and counts them; opening an input and recognising its compression and
format is `io.sniff`, the FASTA and table parsers are `io.fasta` and `io.tables`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import InputError, UsageError
from ..options import Options
from .fasta import fasta_records, fastq_records, parse_fasta_header, parse_sintax_taxonomy, sintax_header, write_fasta
from .sniff import CORRUPT_ERRORS, InputSource, corrupt_error, detect_format, display_name, open_text, sniff
from .records import MISSING_VALUES, BarcodeRecord
from .tables import table_records

# Reading's public names; those of the other io modules stay importable from here, where they lived until io was split
__all__ = ["FORMATS", "MISSING_VALUES", "BarcodeRecord", "ReadOptions", "ReadStats", "clean_sequence", "detect_format",
           "parse_fasta_header", "parse_sintax_taxonomy", "read_barcodes", "read_fasta_taxonomy", "sintax_header",
           "write_fasta"]

FORMATS = ("auto", "fasta", "fastq", "bioscan", "bold-v3", "bold-bcdm", "table")
_SHOWN_INVALID = 5   # how many ids of skipped invalid records ReadStats keeps to name

# -------------------------------------------------------------------------------------------- statistics


@dataclass
class ReadStats:
    path: str
    format: str = ""                  # "fasta", "fastq", "bioscan", "bold-v3", "bold-bcdm", "table"
    records: int = 0                  # records yielded
    skipped_empty: int = 0            # empty (or shorter than min_length) records skipped with skip_empty
    duplicates: int = 0               # duplicate ids seen (yielded with allow_duplicates)
    gaps_removed: int = 0             # records that had gap characters
    ambiguous: int = 0                # records holding IUPAC codes other than ACGT
    genus_as_species: int = 0         # records whose species label is their genus's name (read as no species)
    skipped_invalid: int = 0          # invalid records skipped with skip_invalid
    invalid_ids: list[str] = field(default_factory=list)  # the ids of the first few of them
    other_markers: dict[str, int] = field(default_factory=dict)  # table rows of other genes skipped, by marker

    def summary(self) -> str:
        """One human line for the log."""
        parts = [f"{self.records:,} record{'s' if self.records != 1 else ''}"]
        if self.format:
            parts[0] += f" ({self.format})"
        if self.gaps_removed:
            parts.append(f"gaps removed from {self.gaps_removed:,}")
        if self.ambiguous:
            parts.append(f"{self.ambiguous:,} with ambiguity codes")
        if self.genus_as_species:
            parts.append(f"{self.genus_as_species:,} whose species is the genus name (read as no species)")
        if self.skipped_empty:
            parts.append(f"{self.skipped_empty:,} empty or too short skipped")
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate id{'s' if self.duplicates != 1 else ''} kept")
        if self.other_markers:
            count = sum(self.other_markers.values())
            shown = ", ".join(f"{m}: {n:,}" for m, n in sorted(self.other_markers.items(), key=lambda x: -x[1])[:5])
            parts.append(f"{count:,} row{'s' if count != 1 else ''} of other markers than COI skipped ({shown})")
        if self.skipped_invalid:
            first = ", ".join(self.invalid_ids)
            more = ", ..." if self.skipped_invalid > len(self.invalid_ids) else ""
            parts.append(f"{self.skipped_invalid:,} invalid skipped (first: {first}{more})")
        return f"{display_name(self.path)}: read " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------- cleaning

_IUPAC = "ACGTURYSWKMBDHVN"
_INVALID = re.compile(r"[^" + _IUPAC + _IUPAC.lower() + r".\-\s]")
_ALL_VALID = re.compile(r"[" + _IUPAC + _IUPAC.lower() + r".\-\s]*").fullmatch  # faster than _INVALID
_ACGT_ONLY = re.compile(r"[ACGT]*").fullmatch
_PROTEIN_ONLY = set("EFIJLOPQXZefijlopqxz")


def _clean_table() -> dict[int, int | None]:
    table: dict[int, int | None] = {ord(c.lower()): ord(c) for c in _IUPAC}
    table[ord("U")] = table[ord("u")] = ord("T")
    table[ord("-")] = table[ord(".")] = None
    for code in range(0x3001):  # every white-space character (the highest is U+3000)
        if chr(code).isspace():
            table[code] = None
    return table


_CLEAN = _clean_table()


def _bad_character_error(raw: str, match: re.Match, path: str, record_id: str, hint: str = "") -> InputError:
    char = match.group()
    position = match.start() + 1
    shown = "an undecodable (non-UTF-8) byte" if char == "\ufffd" else repr(char)
    if char.isdigit():
        fix = "not a nucleotide sequence; remove position numbers (GenBank-style numbering?) from sequence lines"
    elif char == "*":
        fix = "not a nucleotide sequence; '*' is a stop codon: is this a protein FASTA?"
    elif char in _PROTEIN_ONLY:
        fix = "not a nucleotide sequence; is this a protein FASTA?"
    else:
        fix = ("not a nucleotide sequence; only A C G T U, IUPAC codes R Y S W K M B D H V N and gaps - . "
               "are allowed; is this a protein FASTA?")
    return InputError(f"invalid character {shown} at position {position} of the sequence",
                      path=path, record=record_id, fix=fix + hint)


# Characters that would break a line or a field of the outputs (TSV, SINTAX, FASTA) if an id or a label held them:
# the C0 and C1 controls (tab and line breaks among them), DEL, and the Unicode line and paragraph separators
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SKIP_HINT = "; or use --skip-invalid to skip such records"


def _control_error(record_id: str, taxonomy: dict[str, str], bin_uri: str | None, path: str) -> InputError | None:
    """The InputError for a record whose id, taxonomy labels or BIN hold a control character, or None."""
    if _CONTROL.search(record_id):
        what, value = "id", record_id
    else:
        found = [(f"{rank} label", label) for rank, label in taxonomy.items() if _CONTROL.search(label)]
        if bin_uri and _CONTROL.search(bin_uri):
            found.append(("BIN", bin_uri))
        if not found:
            return None
        what, value = found[0]
    char = _CONTROL.search(value).group()
    name = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab"}.get(char, "a control character")
    shown = "" if what == "id" else f" {value!r}"
    return InputError(f"the {what}{shown} holds {name} ({char!r}), which would break the output's rows",
                      path=path, record=record_id,
                      fix="remove line breaks, tabs and control characters from ids and labels" + _SKIP_HINT)


def _shown(record_id: str) -> str:
    """An id as ReadStats names it: as is, or escaped when it holds control characters."""
    return ascii(record_id) if _CONTROL.search(record_id) else record_id


def clean_sequence(raw: str, *, path: str = "<string>", record_id: str = "?") -> str:
    """Clean one sequence: upper case, U -> T, gaps (- .) and white space removed, end N runs trimmed.

    IUPAC ambiguity codes are kept. Any other character raises InputError naming `path`, `record_id`, the
    1-based position in `raw` and the character. The result may be empty.
    """
    if _ALL_VALID(raw) is None:
        raise _bad_character_error(raw, _INVALID.search(raw), path, record_id)
    return raw.translate(_CLEAN).strip("N")


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReadOptions(Options):
    """How barcodes are read: the options every command that reads barcodes shares.

    `format` is "auto" (recognised from the content), "fasta", "fastq", "bioscan", "bold-v3", "bold-bcdm" or
    "table" (any CSV/TSV: needs `id_column` and `sequence_column`, which also override the columns of the known
    tables). Records whose cleaned sequence is empty or shorter than `min_length` raise InputError unless
    `skip_empty`; repeated ids raise InputError unless `allow_duplicates`; invalid records (a sequence with a
    character that is not a nucleotide code, or an id, label or BIN holding a line break, tab or other control
    character) raise InputError unless `skip_invalid`, which skips them (counted in ReadStats), as do sequences
    longer than `max_length` (None: any length).
    """

    format: str = "auto"
    id_column: str | None = None
    sequence_column: str | None = None
    skip_empty: bool = False
    allow_duplicates: bool = False
    min_length: int = 1
    skip_invalid: bool = False
    max_length: int | None = None   # longer cleaned sequences are invalid (commands that align the whole query)

    kind = "read"
    formats = FORMATS   # the values of `format`

    def __post_init__(self):
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int):
            raise UsageError(f"min_length must be a whole number, got {self.min_length!r}")
        object.__setattr__(self, "min_length", max(1, self.min_length))
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < 1):
            raise UsageError(f"max_length must be a positive whole number or None, got {self.max_length!r}")


def read_barcodes(path: str | os.PathLike, options: ReadOptions | None = None, *, stats: ReadStats | None = None,
                  **changes) -> Iterator[BarcodeRecord]:
    """Stream BarcodeRecords from a FASTA file or a barcode table ("-" = standard input).

    How is said by `options` (ReadOptions), or by its fields as keywords (`format="fasta"`, `skip_empty=True`),
    which also override `options`. `stats` is filled in as records are read. Every reading problem raises
    InputError; nothing else escapes.
    """
    options = (options or ReadOptions()).replace(**changes) if changes else (options or ReadOptions())
    if options.format not in FORMATS:
        raise InputError(f"unknown input format {options.format!r}", path=display_name(path),
                         fix="use one of " + ", ".join(FORMATS))
    if stats is None:
        stats = ReadStats(path=display_name(path))
    elif not stats.path:
        stats.path = display_name(path)
    return _read(path, options, stats)


def _read(path, options: ReadOptions, stats: ReadStats) -> Iterator[BarcodeRecord]:
    display = display_name(path)
    source = InputSource(path)
    sniffed = None
    with contextlib.ExitStack() as stack:
        stack.callback(source.close)
        try:
            sniffed = sniff(source, options.format)
            stats.format = sniffed.format
            text = open_text(source, sniffed, stack)  # closes the decompressor; the raw input closes last
            if sniffed.format == "fasta":
                records = fasta_records(text, display)
            elif sniffed.format == "fastq":
                records = fastq_records(text, display)
            else:
                records = table_records(text, sniffed.format, sniffed.delimiter, options.id_column,
                                        options.sequence_column, display, stats.other_markers)
            no_records = "" if sniffed.format in ("fasta", "fastq") else ": the table has a header line but no rows"
            yield from _checked(records, display, options, stats, no_records)
        except CORRUPT_ERRORS as error:
            raise corrupt_error(sniffed.compression if sniffed else None, display, error) from None
        except (csv.Error, UnicodeError, ValueError) as error:
            raise InputError(f"cannot read ({error})", path=display) from None


def _checked(records: Iterator[tuple[str, str, dict, str | None, str | None, dict]], display: str,
             options: ReadOptions, stats: ReadStats, no_records: str = "") -> Iterator[BarcodeRecord]:
    """Clean and check the raw records of a reader (see ReadOptions), counting into `stats`."""
    skip_empty, allow_duplicates, min_length = options.skip_empty, options.allow_duplicates, options.min_length
    skip_invalid, max_length = options.skip_invalid, options.max_length
    hint = "" if skip_invalid else _SKIP_HINT
    seen: set[str] = set()
    found = 0
    all_valid, acgt_only, control = _ALL_VALID, _ACGT_ONLY, _CONTROL.search
    for record_id, raw, taxonomy, bin_uri, split, other_fields in records:
        found += 1
        invalid = None
        if all_valid(raw) is None:
            invalid = _bad_character_error(raw, _INVALID.search(raw), display, record_id, hint)
        else:
            # str.isprintable() (one pass in C) is False for every character _CONTROL matches: the search runs only
            # for the rare text that holds a non-printable character
            text = "".join((record_id, *taxonomy.values(), bin_uri or "")) if taxonomy or bin_uri else record_id
            if not text.isprintable() and control(text):
                invalid = _control_error(record_id, taxonomy, bin_uri, display)
            sequence = raw.translate(_CLEAN).strip("N")
            if invalid is None and max_length is not None and len(sequence) > max_length:
                # (a contig or a mitochondrial genome: aligned whole against each candidate, one such record took
                # minutes, and a signal waited for the array operation to end)
                invalid = InputError(f"the sequence is {len(sequence):,} nt long, longer than a COI barcode or gene "
                                     f"(at most {max_length:,} nt here)", path=display, record=record_id,
                                     fix="cut the COI region out of it, or use --skip-invalid to skip such records")
        if invalid is not None:
            if not skip_invalid:
                raise invalid
            stats.skipped_invalid += 1
            if len(stats.invalid_ids) < _SHOWN_INVALID:
                stats.invalid_ids.append(_shown(record_id))
            continue
        if len(sequence) < min_length:
            if skip_empty:
                stats.skipped_empty += 1
                continue
            what = ("the sequence is empty" if not sequence else
                    f"the sequence is {len(sequence)} nt long, shorter than the minimum of {min_length}")
            raise InputError(f"{what} after removing gaps and end Ns", path=display, record=record_id,
                             fix="use --skip-empty to skip such records")
        if record_id in seen:
            if not allow_duplicates:
                raise InputError("duplicate record id (an earlier record has the same id)", path=display,
                                 record=record_id, fix="make the ids unique or use --allow-duplicates")
            stats.duplicates += 1
        else:
            seen.add(record_id)
        if "-" in raw or "." in raw:
            stats.gaps_removed += 1
        if acgt_only(sequence) is None:
            stats.ambiguous += 1
        species = taxonomy.get("species")
        if species is not None and species.casefold() == taxonomy.get("genus", "").casefold():
            # a genus-level identification filed as the species (4,162 Annelida records of coi_extra): one
            # "species" spanning a whole genus would be named for any new species of it
            taxonomy = {rank: label for rank, label in taxonomy.items() if rank != "species"}
            stats.genus_as_species += 1
        stats.records += 1
        yield BarcodeRecord(record_id, sequence, taxonomy, bin_uri, split, other_fields)
    if stats.records == 0:
        if found and stats.skipped_invalid:
            raise InputError(f"no records left: {stats.skipped_invalid:,} of {found:,} were invalid"
                             + (f" and {stats.skipped_empty:,} empty or shorter than {min_length} nt"
                                if stats.skipped_empty else ""),
                             path=display, fix="check the input; for a table, the --sequence-column")
        if found:
            raise InputError(f"no records left: all {found:,} were empty or shorter than {min_length} nt",
                             path=display, fix="check the input; for a table, the --sequence-column")
        raise InputError(f"no records{no_records}", path=display,
                         fix="give a FASTA file or a barcode table with at least one record")


def read_fasta_taxonomy(path: str | os.PathLike, options: ReadOptions | None = None, *,
                        require_taxonomy: bool = True, stats: ReadStats | None = None,
                        **changes) -> Iterator[BarcodeRecord]:
    """Read a reference FASTA whose headers carry SINTAX taxonomy (`>id;tax=p:...,g:...,s:...;`).

    Takes read_barcodes' options (a ReadOptions, or its fields as keywords; the format defaults to fasta). With
    `require_taxonomy`, a record without any taxonomy in its header raises InputError.
    """
    display = display_name(path)
    options = (options or ReadOptions(format="fasta")).replace(**changes)
    if options.format == "auto":
        options = options.replace(format="fasta")
    if options.format != "fasta":
        raise InputError("a taxonomy reference must be FASTA", path=display, fix="use --format fasta")
    records = read_barcodes(path, options, stats=stats)

    def checked() -> Iterator[BarcodeRecord]:
        for record in records:
            if require_taxonomy and not record.taxonomy:
                raise InputError("no taxonomy in the FASTA header", path=display, record=record.id,
                                 fix="write headers as >id;tax=p:Arthropoda,o:Diptera,g:Aedes,s:Aedes_aegypti;")
            yield record

    return checked()
