"""Fuzzing read_barcodes: whatever the bytes, it yields clean BarcodeRecords or raises InputError, nothing else."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import sys
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barcodetool.errors import InputError
from barcodetool.io import FORMATS, BarcodeRecord, ReadStats, detect_format, read_barcodes
from barcodetool.taxonomy import RANKS

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLEAN = set("ACGTRYSWKMBDHVN")
COMPRESS = {"none": lambda b: b, "gzip": lambda b: gzip.compress(b, mtime=0), "bzip2": bz2.compress,
            "xz": lzma.compress, "gzip-cut": lambda b: gzip.compress(b, mtime=0)[:-7],
            "bzip2-cut": lambda b: bz2.compress(b)[:-5], "xz-cut": lambda b: lzma.compress(b)[:-9]}

options = st.fixed_dictionaries({}, optional={
    "format": st.sampled_from(FORMATS),
    "skip_empty": st.booleans(),
    "allow_duplicates": st.booleans(),
    "min_length": st.integers(-1, 30),
    "id_column": st.sampled_from(["processid", "id", "a", "ID"]),
    "sequence_column": st.sampled_from(["dna_barcode", "nucraw", "seq", "b"]),
})


def check(path, opts) -> None:
    stats = ReadStats(str(path))
    try:
        records = list(read_barcodes(path, stats=stats, **opts))
    except InputError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert records and stats.records == len(records)
    min_length = max(1, opts.get("min_length", 1))
    for record in records:
        assert isinstance(record, BarcodeRecord)
        assert record.id
        assert len(record.sequence) >= min_length and set(record.sequence) <= CLEAN
        assert record.sequence[0] != "N" and record.sequence[-1] != "N"
        assert set(record.taxonomy) <= set(RANKS) and all(record.taxonomy.values())
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in record.fields.items())
    if not opts.get("allow_duplicates"):
        assert len({r.id for r in records}) == len(records)


def check_bytes(data: bytes, opts: dict, suffix: str = ".fasta") -> None:
    handle, name = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        with contextlib.suppress(InputError):
            detect_format(name)
        check(name, opts)
    finally:
        os.unlink(name)


@FUZZ
@given(data=st.binary(max_size=3000), kind=st.sampled_from(sorted(COMPRESS)), opts=options)
def test_random_bytes(data, kind, opts):
    check_bytes(COMPRESS[kind](data), opts)


@FUZZ
@given(magic=st.sampled_from([b"\x1f\x8b", b"\x1f\x8b\x08\x00", b"BZh", b"BZh9", b"\xfd7zXZ\x00", b">",
                              b"\xef\xbb\xbf"]),
       data=st.binary(max_size=500), opts=options)
def test_magic_then_garbage(magic, data, opts):
    check_bytes(magic + data, opts)


sequence_text = st.text(alphabet="ACGTacgtuUNnRYKM-. \t\r*1EQX\u00e9\ufeff", max_size=80)
header_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
                      max_size=40)


@st.composite
def fasta_text(draw) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        sep = draw(st.sampled_from([">", ">", ">", "", " >"]))
        title = draw(st.one_of(header_text, st.builds(
            lambda i, tax: f"id{i};tax={tax};",
            st.integers(0, 5), st.text(alphabet="kpcofgst:,_;= AZaz", max_size=30))))
        lines = draw(st.lists(sequence_text, max_size=4))
        parts.append(f"{sep}{title}\n" + "\n".join(lines))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return "\n".join(parts).replace("\n", newline)


@st.composite
def table_text(draw) -> str:
    delimiter = draw(st.sampled_from(["\t", ",", ";", "|", " "]))
    names = ["processid", "dna_barcode", "nucraw", "nucleotides", "bin_uri", "species_name", "genus", "split",
             "dna_bin", "id", "seq", "a", "b", "\rimage_ids"]
    header = draw(st.lists(st.sampled_from(names), min_size=1, max_size=7))
    cell = st.one_of(sequence_text, st.sampled_from(["None", "NA", "", "BOLD:AAA0001", "x"]),
                     st.text(alphabet='ACGT"\'\r,\t;x ', max_size=10))
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=len(header) + 1), max_size=6))
    lines = [delimiter.join(header)] + [delimiter.join(row) for row in rows]
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n", "\n\n"]))


@FUZZ
@given(text=st.one_of(fasta_text(), table_text(), st.text(max_size=300)),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-8-sig"]),
       kind=st.sampled_from(["none", "gzip", "xz", "gzip-cut"]), opts=options)
def test_fasta_and_table_like_text(text, encoding, kind, opts):
    data = text.encode(encoding, errors="replace")
    check_bytes(COMPRESS[kind](data), opts, suffix=".csv")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(fasta_text(), table_text(), st.binary(max_size=400).map(lambda b: b.decode("latin-1"))),
       kind=st.sampled_from(["none", "gzip", "bzip2-cut"]), opts=options, peek=st.booleans())
def test_stdin(monkeypatch, text, kind, opts, peek):
    data = COMPRESS[kind](text.encode("utf-8", errors="replace"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    if peek:
        with contextlib.suppress(InputError):
            detect_format("-")
    check("-", opts)
