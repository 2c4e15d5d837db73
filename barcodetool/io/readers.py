"""Read DNA barcodes from FASTA and barcode tables (BIOSCAN-5M CSV, BOLD v3 and BCDM TSV, any CSV/TSV).

Everything is streamed: a file is read record by record and never held in memory whole. Input may be plain,
gzip, bzip2 or xz compressed (recognised by its first bytes, whatever its name says), and `-` reads standard
input. Every problem met while reading raises `InputError` naming the file, the record where there is one,
and a fix. The reading and cleaning rules are documented in docs/input-formats.md.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import lzma
import os
import re
import sys
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import IO, Iterable, Iterator

from ..errors import InputError, OutputError, UsageError
from ..taxonomy import RANKS, SINTAX_LETTERS, SINTAX_RANKS

FORMATS = ("auto", "fasta", "bioscan", "bold-v3", "bold-bcdm", "table")
MISSING_VALUES = frozenset({"", "None", "NA", "N/A", "NaN", "nan", "null", "NULL"})


_HEAD_BYTES = 1 << 16          # how much (decompressed) content is peeked to recognise the format
_MAX_PEEK_BYTES = 1 << 23      # at most this much compressed input is held while peeking
_CSV_FIELD_LIMIT = 1 << 24     # 16 MiB per table field (the csv module's default is 128 KiB)

# ----------------------------------------------------------------------------------------------- records


@dataclass
class BarcodeRecord:
    id: str
    sequence: str                     # cleaned: upper case, ACGT + IUPAC codes, no gaps, no end Ns
    taxonomy: dict[str, str]          # rank -> label; only ranks with a value; keys from RANKS
    bin: str | None = None            # BIN uri, e.g. "BOLD:AAA1234"
    split: str | None = None          # value of a `split` column when present
    fields: dict[str, str] = field(default_factory=dict)  # other columns of a table row, as read


@dataclass
class ReadStats:
    path: str
    format: str = ""                  # "fasta", "bioscan", "bold-v3", "bold-bcdm", "table"
    records: int = 0                  # records yielded
    skipped_empty: int = 0            # empty (or shorter than min_length) records skipped with skip_empty
    duplicates: int = 0               # duplicate ids seen (yielded with allow_duplicates)
    gaps_removed: int = 0             # records that had gap characters
    ambiguous: int = 0                # records holding IUPAC codes other than ACGT

    def summary(self) -> str:
        """One human line for the log."""
        parts = [f"{self.records:,} record{'s' if self.records != 1 else ''}"]
        if self.format:
            parts[0] += f" ({self.format})"
        if self.gaps_removed:
            parts.append(f"gaps removed from {self.gaps_removed:,}")
        if self.ambiguous:
            parts.append(f"{self.ambiguous:,} with ambiguity codes")
        if self.skipped_empty:
            parts.append(f"{self.skipped_empty:,} empty or too short skipped")
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate id{'s' if self.duplicates != 1 else ''} kept")
        return f"{_display(self.path)}: read " + ", ".join(parts)


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


def _bad_character_error(raw: str, match: re.Match, path: str, record_id: str) -> InputError:
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
                      path=path, record=record_id, fix=fix)


def clean_sequence(raw: str, *, path: str = "<string>", record_id: str = "?") -> str:
    """Clean one sequence: upper case, U -> T, gaps (- .) and white space removed, end N runs trimmed.

    IUPAC ambiguity codes are kept. Any other character raises InputError naming `path`, `record_id`, the
    1-based position in `raw` and the character. The result may be empty.
    """
    if _ALL_VALID(raw) is None:
        raise _bad_character_error(raw, _INVALID.search(raw), path, record_id)
    return raw.translate(_CLEAN).strip("N")


# ----------------------------------------------------------------------------------------- FASTA headers

_KEY_VALUE = re.compile(r"(?:^|[;\s])(tax|bin)=([^;\s]*)")


def parse_sintax_taxonomy(value: str) -> dict[str, str]:
    """`k:Animalia,p:Arthropoda,...,s:Aedes_aegypti` -> {"phylum": "Arthropoda", ..., "species": "Aedes aegypti"}."""
    taxonomy: dict[str, str] = {}
    for item in value.split(","):
        letter, sep, label = item.partition(":")
        rank = SINTAX_RANKS.get(letter.strip().lower())
        label = label.replace("_", " ").strip()
        if sep and rank and label and label not in MISSING_VALUES:
            taxonomy[rank] = label
    return taxonomy


def parse_fasta_header(title: str) -> tuple[str, dict[str, str], str | None]:
    """Split a FASTA title line (without '>') into (id, taxonomy, bin).

    The id is the first word; in a SINTAX header (`id;tax=p:...,s:...;`) it is the part before the first `;`.
    `tax=` and `bin=` keys are read from `;`-separated SINTAX attributes or from words of the description.
    """
    title = title.strip()
    words = title.split(None, 1)
    if not words:
        return "", {}, None
    first = words[0]
    record_id = first.split(";", 1)[0]
    taxonomy: dict[str, str] = {}
    bin_uri = None
    if "=" in title:
        rest = title[len(record_id):]
        for key, value in _KEY_VALUE.findall(rest):
            if key == "tax" and not taxonomy:
                taxonomy = parse_sintax_taxonomy(value)
            elif key == "bin" and bin_uri is None and value and value not in MISSING_VALUES:
                bin_uri = value
    return record_id, taxonomy, bin_uri


def sintax_header(record: "BarcodeRecord") -> str:
    """The SINTAX title `id;tax=p:...,s:Genus_species;` (plus `bin=...;`) for a record."""
    items = [f"{SINTAX_LETTERS[rank]}:{record.taxonomy[rank].replace(' ', '_')}"
             for rank in RANKS if record.taxonomy.get(rank)]
    title = record.id + ";"
    if items:
        title += "tax=" + ",".join(items) + ";"
    if record.bin:
        title += f"bin={record.bin};"
    return title


def write_fasta(records_or_pairs: Iterable, handle: IO[str] | str | os.PathLike, *, width: int = 0,
                sintax: bool = False) -> int:
    """Write records (BarcodeRecord or (id, sequence) pairs) as FASTA; returns the count written.

    `handle` is a text handle or a path (written atomically). `width` > 0 wraps sequence lines; `sintax=True`
    writes each BarcodeRecord's taxonomy and BIN into a SINTAX header.
    """
    if isinstance(handle, (str, os.PathLike)):
        from .atomic import atomic_text

        with atomic_text(handle) as out:
            return write_fasta(records_or_pairs, out, width=width, sintax=sintax)
    count = 0
    for item in records_or_pairs:
        if isinstance(item, BarcodeRecord):
            record_id, sequence = item.id, item.sequence
            title = sintax_header(item) if sintax else item.id
        else:
            record_id, sequence = item
            title = record_id
        if not record_id or record_id.split(None, 1)[0] != record_id:
            raise OutputError(f"cannot write FASTA: record id {record_id!r} is empty or holds white space")
        if width > 0:
            body = "\n".join(sequence[i:i + width] for i in range(0, len(sequence), width))
        else:
            body = sequence
        handle.write(f">{title}\n{body}\n")
        count += 1
    return count


# --------------------------------------------------------------------------------------- opening inputs

_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_UNSUPPORTED_MAGIC = ((b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (zstd -d)"),
                      (b"PK\x03\x04", "a zip archive", "unzip it first"),
                      (b"\x89HDF", "an HDF5 file", "give a FASTA file or a barcode table"),
                      (b"\xff\xfe", "UTF-16 text", "save it as UTF-8"),
                      (b"\xfe\xff", "UTF-16 text", "save it as UTF-8"))
_CORRUPT = (EOFError, OSError, zlib.error, lzma.LZMAError)

# Bytes peeked from standard input by detect_format("-"), handed back to the next read of "-".
_stdin_pushback: list = []  # [source object, bytes] or empty


def _display(path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def _read_upto(stream, n: int) -> bytes:
    chunks, total = [], 0
    while total < n:
        data = stream.read(n - total)
        if not data:
            break
        if isinstance(data, str):
            raise InputError("standard input is open in text mode, not binary", path="<stdin>",
                             fix="pass a binary stream (sys.stdin.buffer)")
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def _stdin_source():
    stdin = sys.stdin
    if stdin is None:
        raise InputError("no standard input to read", path="<stdin>", fix="pipe a file in or give a path")
    return getattr(stdin, "buffer", stdin)


class _Input:
    """An opened input whose first bytes can be peeked and then read again (files and standard input)."""

    def __init__(self, path):
        self.display = _display(path)
        self.is_stdin = str(path) == "-"
        self.eof = False
        if self.is_stdin:
            self.stream = _stdin_source()
            self.close_stream = False
            held = _stdin_pushback[1] if _stdin_pushback and _stdin_pushback[0] is self.stream else b""
            self.head = held
            return
        self.head = b""
        self.close_stream = True
        try:
            self.stream = open(path, "rb")
        except FileNotFoundError:
            raise InputError("file not found", path=self.display, fix="check the path") from None
        except IsADirectoryError:
            raise InputError("is a directory, not a file", path=self.display,
                             fix="give a FASTA file or a table") from None
        except PermissionError:
            raise InputError("permission denied", path=self.display, fix="check the file's permissions") from None
        except OSError as error:
            raise InputError(f"cannot open ({error.strerror or error})", path=self.display) from None

    def peek(self, size: int) -> bytes:
        """The first `size` bytes (fewer at the end of the input), without consuming them."""
        if len(self.head) < size and not self.eof:
            try:
                data = _read_upto(self.stream, size - len(self.head))
            except OSError as error:
                raise InputError(f"cannot read ({error.strerror or error})", path=self.display) from None
            self.eof = len(data) < size - len(self.head)
            self.head += data
            if self.is_stdin:  # keep what was peeked for the next reader of stdin (see detect_format)
                _stdin_pushback[:] = [self.stream, self.head]
        return self.head

    def whole_stream(self) -> "_Prefixed":
        """A raw stream of the entire input: the peeked bytes, then the rest."""
        if self.is_stdin:
            _stdin_pushback.clear()
        return _Prefixed(self.head, self.stream, self.close_stream)

    def close(self) -> None:
        if self.close_stream:
            self.stream.close()


class _Prefixed(io.RawIOBase):
    """Bytes already peeked, then the rest of a stream."""

    def __init__(self, prefix: bytes, rest, close_rest: bool):
        super().__init__()
        self._prefix = prefix
        self._position = 0
        self._rest = rest
        self._close_rest = close_rest
        self._read = getattr(rest, "read1", None) or rest.read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = len(buffer)
        if self._position < len(self._prefix):
            chunk = self._prefix[self._position:self._position + size]
            self._position += len(chunk)
        else:
            chunk = self._read(size)
            if not chunk:
                return 0
            if isinstance(chunk, str):
                raise InputError("standard input is open in text mode, not binary", path="<stdin>")
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed and self._close_rest:
            self._rest.close()
        super().close()


def _compression(head: bytes, display: str) -> str | None:
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    for magic, what, fix in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            raise InputError(f"this is {what}, which barcodetool does not read", path=display, fix=fix)
    return None


def _decompressor(compression: str):
    if compression == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if compression == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor()


def _corrupt_error(compression: str | None, display: str, error: BaseException) -> InputError:
    detail = str(error) or type(error).__name__
    if compression:
        return InputError(f"{compression} file is truncated or corrupt ({detail})", path=display,
                          fix="download or compress the file again")
    return InputError(f"cannot read ({detail})", path=display)


def _decompress_head(source: _Input, compression: str) -> bytes:
    """The first _HEAD_BYTES of the decompressed content (fewer if it is shorter).

    Peeks more compressed bytes as needed: a bzip2 block (up to 900 kB of text) gives no output until it is
    complete. Raises InputError if the data are corrupt or end before the end-of-stream marker.
    """
    out = b""
    decompressor = _decompressor(compression)
    raw = source.peek(_HEAD_BYTES)
    fed = 0
    try:
        while len(out) < _HEAD_BYTES:
            if fed < len(raw):
                chunk, fed = raw[fed:], len(raw)
            elif source.eof:
                if decompressor.eof:
                    break  # all the content is decompressed
                raise EOFError("the compressed data end before the end-of-stream marker")
            elif len(raw) >= _MAX_PEEK_BYTES:
                break  # classify the input with what little was decompressed
            else:
                raw = source.peek(min(_MAX_PEEK_BYTES, 4 * len(raw)))
                continue
            while chunk and len(out) < _HEAD_BYTES:
                if decompressor.eof:  # another member follows (concatenated gzip files, pbzip2 output)
                    if not chunk.strip(b"\x00"):
                        break  # zero padding after the end
                    decompressor = _decompressor(compression)
                out += decompressor.decompress(chunk, _HEAD_BYTES - len(out))
                chunk = decompressor.unused_data if decompressor.eof else b""
    except (zlib.error, OSError, lzma.LZMAError, EOFError) as error:
        raise _corrupt_error(compression, source.display, error) from None
    return out


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    sample = head[:8192].decode("utf-8", errors="replace")
    if not sample:
        return False
    bad = sample.count("\ufffd") + sum(1 for c in sample if c < " " and c not in "\t\n\r\f\v")
    return bad > 0.25 * len(sample)


@dataclass
class _Sniffed:
    format: str
    compression: str | None
    delimiter: str | None = None
    header: list[str] | None = None
    cr_only: bool = False             # line ends are \r alone (classic Mac)


def _first_line(text: str, cr_only: bool) -> str:
    for line in text.split("\r" if cr_only else "\n"):
        if line.strip():
            return line
    return ""


def _table_format(columns: list[str]) -> str:
    lower = {c.lower() for c in columns}
    if "dna_barcode" in lower and "processid" in lower:
        return "bioscan"
    if "nucleotides" in lower and "bin_uri" in lower and any(c.endswith("_name") for c in lower):
        return "bold-v3"
    if "nucraw" in lower and "bin_uri" in lower:
        return "bold-bcdm"
    return "table"


def _sniff(source: _Input, requested: str = "auto") -> _Sniffed:
    display = source.display
    head = source.peek(_HEAD_BYTES)
    compression = _compression(head, display)
    inner = "the compressed content" if compression else "the file"
    if compression:
        head = _decompress_head(source, compression)
        for magic, name in _COMPRESSION_MAGIC:
            if head.startswith(magic):
                raise InputError(f"{compression} file holds {name}-compressed data (compressed twice)",
                                 path=display, fix="decompress it once before reading")
    if _looks_binary(head):
        what = f"{compression}-compressed file holds binary data" if compression else "binary data"
        raise InputError(f"{what}, not FASTA or a barcode table", path=display,
                         fix="give a FASTA file or a CSV/TSV barcode table, plain or compressed with gzip, bzip2 or xz")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = text.lstrip()
    cr_only = "\r" in text and "\n" not in text
    if not stripped:
        raise InputError(f"no records: {inner} is empty" if not text else
                         f"no records: {inner} holds only blank lines", path=display,
                         fix="give a FASTA file or a barcode table with at least one record")
    if stripped[0] == ">":
        if requested not in ("auto", "fasta"):
            raise InputError(f"this is FASTA (it starts with '>'), not a {requested} table", path=display,
                             fix="use --format auto or --format fasta")
        return _Sniffed("fasta", compression, cr_only=cr_only)
    if requested == "fasta":
        raise InputError("not FASTA: the first line does not start with '>'", path=display,
                         fix="check the file, or use --format auto for tables")
    if stripped[0] == "@" and requested == "auto":
        raise InputError("this looks like FASTQ, which barcodetool does not read", path=display,
                         fix="convert it to FASTA first, e.g. with seqkit fq2fa")
    line = _first_line(text, cr_only).replace("\r", "")
    if "\t" in line:
        delimiter = "\t"
    elif "," in line:
        delimiter = ","
    else:
        for other, name in ((";", "semicolons"), ("|", "vertical bars")):
            if other in line:
                raise InputError(f"wrong delimiter: the header line is separated by {name} ({other!r}); "
                                 "tables must be tab- or comma-separated", path=display,
                                 fix=f"convert it to TSV or CSV, e.g. tr '{other}' '\\t' < in > out.tsv")
        raise InputError("not FASTA (the first line does not start with '>') and not a table (the first "
                         "line holds no tab or comma)", path=display,
                         fix="give a FASTA file or a tab/comma-separated barcode table with a header line")
    header = [c.strip() for c in line.split(delimiter)]
    if delimiter == ",":
        with contextlib.suppress(csv.Error):
            header = [c.strip() for c in next(csv.reader([line]))]
    fmt = _table_format(header) if requested == "auto" else requested
    return _Sniffed(fmt, compression, delimiter, header, cr_only)


def detect_format(path: str | os.PathLike) -> str:
    """The format of an input: "fasta", "bioscan", "bold-v3", "bold-bcdm" or "table" (generic CSV/TSV).

    Peeks at the first 64 KiB of content (reading more of a bzip2 file, whose first block must be whole before
    it gives any text); nothing is consumed. For "-" the bytes peeked from standard input are kept and handed
    to the next `read_barcodes("-")`, which therefore still sees the whole input.
    """
    source = _Input(path)
    try:
        return _sniff(source).format
    finally:
        source.close()  # standard input stays open; what was peeked from it is kept for the next reader


# ------------------------------------------------------------------------------------------------ tables


@dataclass
class _Columns:
    id: int
    sequence: int
    taxonomy: list[tuple[str, int]]
    bin: int | None
    split: int | None
    other: list[tuple[str, int]]


_KNOWN = {
    "bioscan": dict(id="processid", sequence="dna_barcode", bin=("dna_bin",), taxonomy="{rank}"),
    "bold-v3": dict(id="processid", sequence="nucleotides", bin=("bin_uri",), taxonomy="{rank}_name"),
    "bold-bcdm": dict(id="processid", sequence="nucraw", bin=("bin_uri",), taxonomy="{rank}"),
}
_SEQUENCE_GUESSES = ("sequence", "seq", "nucleotides", "nucraw", "dna_barcode", "barcode", "dna")
_ID_GUESSES = ("processid", "id", "sampleid", "seqid", "accession", "name")


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
    return _Columns(id_index, sequence_index, taxonomy, bin_index, split_index, other)


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


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReadOptions:
    """How barcodes are read: the options every command that reads barcodes shares.

    `format` is "auto" (recognised from the content), "fasta", "bioscan", "bold-v3", "bold-bcdm" or "table"
    (any CSV/TSV: needs `id_column` and `sequence_column`, which also override the columns of the known
    tables). Records whose cleaned sequence is empty or shorter than `min_length` raise InputError unless
    `skip_empty`; repeated ids raise InputError unless `allow_duplicates`.
    """

    format: str = "auto"
    id_column: str | None = None
    sequence_column: str | None = None
    skip_empty: bool = False
    allow_duplicates: bool = False
    min_length: int = 1

    def __post_init__(self):
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int):
            raise UsageError(f"min_length must be a whole number, got {self.min_length!r}")
        object.__setattr__(self, "min_length", max(1, self.min_length))

    def replace(self, **changes) -> "ReadOptions":
        """A copy with some fields changed (unknown field names raise UsageError)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise UsageError(f"unknown read option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


def read_barcodes(path: str | os.PathLike, options: ReadOptions | None = None, *, stats: ReadStats | None = None,
                  **changes) -> Iterator[BarcodeRecord]:
    """Stream BarcodeRecords from a FASTA file or a barcode table ("-" = standard input).

    How is said by `options` (ReadOptions), or by its fields as keywords (`format="fasta"`, `skip_empty=True`),
    which also override `options`. `stats` is filled in as records are read. Every reading problem raises
    InputError; nothing else escapes.
    """
    options = (options or ReadOptions()).replace(**changes) if changes else (options or ReadOptions())
    if options.format not in FORMATS:
        raise InputError(f"unknown input format {options.format!r}", path=_display(path),
                         fix="use one of " + ", ".join(FORMATS))
    if stats is None:
        stats = ReadStats(path=_display(path))
    elif not stats.path:
        stats.path = _display(path)
    return _read(path, options, stats)


def _read(path, options: ReadOptions, stats: ReadStats) -> Iterator[BarcodeRecord]:
    requested, id_column, sequence_column = options.format, options.id_column, options.sequence_column
    skip_empty, allow_duplicates, min_length = options.skip_empty, options.allow_duplicates, options.min_length
    display = _display(path)
    source = _Input(path)
    sniffed = None
    with contextlib.ExitStack() as stack:
        stack.callback(source.close)
        try:
            sniffed = _sniff(source, requested)
            stats.format = sniffed.format
            raw = source.whole_stream()
            stack.callback(raw.close)
            binary: IO[bytes] = io.BufferedReader(raw, buffer_size=1 << 16)
            if sniffed.compression == "gzip":
                binary = stack.enter_context(gzip.GzipFile(fileobj=binary, mode="rb"))
            elif sniffed.compression == "bzip2":
                binary = stack.enter_context(bz2.BZ2File(binary, mode="rb"))
            elif sniffed.compression == "xz":
                binary = stack.enter_context(lzma.LZMAFile(binary, mode="rb"))
            if sniffed.format == "fasta":
                # Only \n ends a line (CRLF works: the parser strips the \r), so a stray \r inside a header
                # cannot turn the rest of the header into sequence; a file with only \r line ends (classic
                # Mac) is read with universal newlines.
                newline = None if sniffed.cr_only else "\n"
                text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline=newline)
                records = _fasta_records(text, display)
            else:
                # Tables: only \n ends a row; a stray \r (BOLD v3 puts one inside every row) is dropped.
                text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace",
                                        newline=None if sniffed.cr_only else "\n")
                records = _table_records(text, sniffed, id_column, sequence_column, display)
            stack.callback(text.close)  # closes the decompressor; the raw input closes last (stdin never)
            no_records = "" if sniffed.format == "fasta" else ": the table has a header line but no rows"
            yield from _checked(records, display, skip_empty, allow_duplicates, min_length, stats, no_records)
        except _CORRUPT as error:
            raise _corrupt_error(sniffed.compression if sniffed else None, display, error) from None
        except (csv.Error, UnicodeError, ValueError) as error:
            raise InputError(f"cannot read ({error})", path=display) from None


def _checked(records: Iterator[tuple[str, str, dict, str | None, str | None, dict]], display: str,
             skip_empty: bool, allow_duplicates: bool, min_length: int,
             stats: ReadStats, no_records: str = "") -> Iterator[BarcodeRecord]:
    seen: set[str] = set()
    found = 0
    all_valid, acgt_only = _ALL_VALID, _ACGT_ONLY
    for record_id, raw, taxonomy, bin_uri, split, fields in records:
        found += 1
        if all_valid(raw) is None:
            raise _bad_character_error(raw, _INVALID.search(raw), display, record_id)
        sequence = raw.translate(_CLEAN).strip("N")
        if len(sequence) < min_length:
            if skip_empty:
                stats.skipped_empty += 1
                continue
            what = ("the sequence is empty" if not sequence else
                    f"the sequence is {len(sequence)} nt long, shorter than the minimum of {min_length}")
            raise InputError(f"{what} after removing gaps and end Ns", path=display, record=record_id,
                             fix="use --skip-empty to skip such records")
        if record_id in seen:
            stats.duplicates += 1
            if not allow_duplicates:
                raise InputError("duplicate record id (an earlier record has the same id)", path=display,
                                 record=record_id, fix="make the ids unique or use --allow-duplicates")
        else:
            seen.add(record_id)
        if "-" in raw or "." in raw:
            stats.gaps_removed += 1
        if acgt_only(sequence) is None:
            stats.ambiguous += 1
        stats.records += 1
        yield BarcodeRecord(record_id, sequence, taxonomy, bin_uri, split, fields)
    if stats.records == 0:
        if found:
            raise InputError(f"no records left: all {found:,} were empty or shorter than {min_length} nt",
                             path=display, fix="check the input; for a table, the --sequence-column")
        raise InputError(f"no records{no_records}", path=display,
                         fix="give a FASTA file or a barcode table with at least one record")


def _fasta_records(text, display: str):
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    number = 0
    for title, sequence in SimpleFastaParser(text):
        number += 1
        record_id, taxonomy, bin_uri = parse_fasta_header(title)
        if not record_id:
            raise InputError(f"FASTA record #{number} has no id after '>'", path=display,
                             fix="give every record an id on its '>' line")
        yield record_id, sequence, taxonomy, bin_uri, None, {}


def _table_records(text, sniffed: _Sniffed, id_column, sequence_column, display: str):
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    if sniffed.delimiter == "\t":
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
    columns = _column_map(sniffed.format, header, id_column, sequence_column, display)
    width = len(header)
    id_index, sequence_index = columns.id, columns.sequence
    taxonomy_columns, other_columns = columns.taxonomy, columns.other
    bin_index, split_index = columns.bin, columns.split
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


def read_fasta_taxonomy(path: str | os.PathLike, options: ReadOptions | None = None, *,
                        require_taxonomy: bool = True, stats: ReadStats | None = None,
                        **changes) -> Iterator[BarcodeRecord]:
    """Read a reference FASTA whose headers carry SINTAX taxonomy (`>id;tax=p:...,g:...,s:...;`).

    Takes read_barcodes' options (a ReadOptions, or its fields as keywords; the format defaults to fasta). With
    `require_taxonomy`, a record without any taxonomy in its header raises InputError.
    """
    display = _display(path)
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
