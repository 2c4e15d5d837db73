"""Opening an input (a file or standard input) and recognising what it holds: compression, FASTA or a table.

The first bytes are peeked and read again by the reader: compression is recognised by its magic bytes, whatever
the file's name says, and the format from the (decompressed) content. Corrupt or unreadable input raises
InputError naming the file and a fix.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import lzma
import os
import stat
import sys
import zlib
from dataclasses import dataclass
from typing import IO

from ..errors import InputError
from .tables import table_format

_HEAD_BYTES = 1 << 16          # how much (decompressed) content is peeked to recognise the format
_MAX_PEEK_BYTES = 1 << 23      # at most this much compressed input is held while peeking

_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_UNSUPPORTED_MAGIC = ((b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (zstd -d)"),
                      (b"PK\x03\x04", "a zip archive", "unzip it first"),
                      (b"\x89HDF", "an HDF5 file", "give a FASTA file or a barcode table"),
                      (b"\xff\xfe", "UTF-16 text", "save it as UTF-8"),
                      (b"\xfe\xff", "UTF-16 text", "save it as UTF-8"))
CORRUPT_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)

# Bytes peeked from standard input by detect_format("-"), handed back to the next read of "-".
_stdin_pushback: list = []  # [source object, bytes] or empty


def display_name(path) -> str:
    """How errors and logs name an input: its path, or `<stdin>` for "-"."""
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


DIRECTORY_FIX = "give a FASTA file or a table"


def open_error(error: OSError, display: str, directory_fix: str = DIRECTORY_FIX) -> InputError:
    """The one-line InputError of an input that cannot be opened (`directory_fix`: what to give instead of a
    directory)."""
    if isinstance(error, FileNotFoundError):
        return InputError("file not found", path=display, fix="check the path")
    if isinstance(error, IsADirectoryError):
        return InputError("is a directory, not a file", path=display, fix=directory_fix)
    if isinstance(error, PermissionError):
        return InputError("permission denied", path=display, fix="check the file's permissions")
    return InputError(f"cannot open ({error.strerror or error})", path=display)


def check_readable(path: str | os.PathLike | None, directory_fix: str = DIRECTORY_FIX) -> None:
    """Before any work: an input that exists, is not a directory and can be read, with the messages that opening
    it would give; `-` (standard input) and None pass. The input is only looked at, not opened (a FIFO must be read
    once)."""
    if path is None or str(path) == "-":
        return
    display = display_name(path)
    try:
        mode = os.stat(path).st_mode
    except NotADirectoryError:   # a path through a file: nothing of that name exists
        raise open_error(FileNotFoundError(), display) from None
    except OSError as error:
        raise open_error(error, display) from None
    if stat.S_ISDIR(mode):
        raise open_error(IsADirectoryError(), display, directory_fix)
    if not os.access(path, os.R_OK):
        raise open_error(PermissionError(), display)


class InputSource:
    """An opened input whose first bytes can be peeked and then read again (files and standard input)."""

    def __init__(self, path):
        self.display = display_name(path)
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
        except OSError as error:
            raise open_error(error, self.display) from None

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

    def whole_stream(self) -> _Prefixed:
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


def corrupt_error(compression: str | None, display: str, error: BaseException) -> InputError:
    """The InputError for one of CORRUPT_ERRORS met while reading (`compression`: the input's, or None)."""
    detail = str(error) or type(error).__name__
    if compression:
        return InputError(f"{compression} file is truncated or corrupt ({detail})", path=display,
                          fix="download or compress the file again")
    return InputError(f"cannot read ({detail})", path=display)


def _decompress_head(source: InputSource, compression: str) -> bytes:
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
        raise corrupt_error(compression, source.display, error) from None
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
class Sniffed:
    """What the first bytes of an input show."""

    format: str                       # "fasta", "fastq", "bioscan", "bold-v3", "bold-bcdm" or "table"
    compression: str | None           # "gzip", "bzip2", "xz" or None
    delimiter: str | None = None      # tables: "\t" or ","
    header: list[str] | None = None   # tables: the column names
    cr_only: bool = False             # line ends are \r alone (classic Mac)


def _first_line(text: str, cr_only: bool) -> str:
    for line in text.split("\r" if cr_only else "\n"):
        if line.strip():
            return line
    return ""


def sniff(source: InputSource, requested: str = "auto") -> Sniffed:
    """Recognise an input's compression and format from its peeked first bytes (nothing is consumed).

    `requested` is the format asked for ("auto" recognises it); an input that cannot be of that format, or of
    any, raises InputError.
    """
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
            what = "FASTQ" if requested == "fastq" else f"a {requested} table"
            raise InputError(f"this is FASTA (it starts with '>'), not {what}", path=display,
                             fix="use --format auto or --format fasta")
        return Sniffed("fasta", compression, cr_only=cr_only)
    if requested == "fasta":
        raise InputError("not FASTA: the first line does not start with '>'", path=display,
                         fix="check the file, or use --format auto for tables")
    if stripped[0] == "@" and requested in ("auto", "fastq"):
        # all of a short input is seen: without a '+' line anywhere it is not FASTQ
        if "\n+" not in stripped and "\r+" not in stripped and len(head) < _HEAD_BYTES:
            raise InputError("not FASTQ: the first line starts with '@' but no '+' separator line follows",
                             path=display, fix="give FASTA, FASTQ or a barcode table")
        return Sniffed("fastq", compression, cr_only=cr_only)
    if requested == "fastq":
        raise InputError("not FASTQ: the first line does not start with '@'", path=display,
                         fix="check the file, or use --format auto")
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
    fmt = table_format(header) if requested == "auto" else requested
    return Sniffed(fmt, compression, delimiter, header, cr_only)


def detect_format(path: str | os.PathLike) -> str:
    """The format of an input: "fasta", "fastq", "bioscan", "bold-v3", "bold-bcdm" or "table" (any CSV/TSV).

    Peeks at the first 64 KiB of content (reading more of a bzip2 file, whose first block must be whole before
    it gives any text); nothing is consumed. For "-" the bytes peeked from standard input are kept and handed
    to the next `read_barcodes("-")`, which therefore still sees the whole input.
    """
    source = InputSource(path)
    try:
        return sniff(source).format
    finally:
        source.close()  # standard input stays open; what was peeked from it is kept for the next reader


def open_text(source: InputSource, sniffed: Sniffed, stack: contextlib.ExitStack) -> io.TextIOWrapper:
    """The whole input as decompressed UTF-8 text (a BOM is dropped, undecodable bytes become U+FFFD).

    The streams opened are closed by `stack`: the text and the decompressor first, the raw input last (standard
    input is never closed).
    """
    raw = source.whole_stream()
    stack.callback(raw.close)
    binary: IO[bytes] = io.BufferedReader(raw, buffer_size=1 << 16)
    if sniffed.compression == "gzip":
        binary = stack.enter_context(gzip.GzipFile(fileobj=binary, mode="rb"))
    elif sniffed.compression == "bzip2":
        binary = stack.enter_context(bz2.BZ2File(binary, mode="rb"))
    elif sniffed.compression == "xz":
        binary = stack.enter_context(lzma.LZMAFile(binary, mode="rb"))
    # Only \n ends a line. In FASTA (CRLF works: the parser strips the \r) a stray \r inside a header cannot turn
    # the rest of the header into sequence; in a table a stray \r (BOLD v3 puts one inside every row) stays in
    # its row, where the table reader drops it. Input with only \r line ends (classic Mac) is read with
    # universal newlines.
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace",
                            newline=None if sniffed.cr_only else "\n")
    stack.callback(text.close)
    return text
