"""Reading barcodes: formats, compression, stdin, cleaning rules and every case of the bad-input corpus."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import random
import stat
import sys
import time
from itertools import islice
from pathlib import Path

import pytest

from barcodetool.errors import BarcodeToolError, InputError, OutputError
from barcodetool.io import (BarcodeRecord, ReadStats, clean_sequence, detect_format, parse_fasta_header, read_barcodes,
                            read_fasta_taxonomy, write_fasta)
from barcodetool.taxonomy import RANKS

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"
BIOSCAN = DATA / "bioscan_sample.csv"
BOLD_V3 = DATA / "bold_v3_sample.tsv"
BCDM = DATA / "bold_bcdm_sample.tsv"
EXAMPLE = DATA / "example.fasta"
SINTAX = DATA / "sintax_reference.fasta"
SHARED = Path("/work/shared/data/bold_insects.csv.gz")
CLEAN_ALPHABET = set("ACGTRYSWKMBDHVN")


def read(path, **options) -> tuple[list[BarcodeRecord], ReadStats]:
    stats = ReadStats(path=str(path))
    records = list(read_barcodes(path, stats=stats, **options))
    return records, stats


def raises_input_error(path, *, record: str | None = None, fix: str | None = None, match: str | None = None,
                       **options) -> InputError:
    with pytest.raises(InputError) as caught:
        list(read_barcodes(path, **options))
    error = caught.value
    shown = "<stdin>" if str(path) == "-" else str(path)
    assert error.path == shown and shown in str(error)
    if record is not None:
        assert error.record == record and repr(record) in str(error)
    if fix is not None:
        assert error.fix and fix in error.fix and fix in str(error)
    if match is not None:
        assert match in str(error), str(error)
    assert "\n" not in str(error)
    return error


def assert_clean(records):
    for record in records:
        assert isinstance(record, BarcodeRecord)
        assert record.id and record.id.split()[0] == record.id
        assert record.sequence and set(record.sequence) <= CLEAN_ALPHABET
        assert record.sequence[0] != "N" and record.sequence[-1] != "N"
        assert set(record.taxonomy) <= set(RANKS)
        assert all(record.taxonomy.values())


def bioscan_rows() -> list[dict]:
    with open(BIOSCAN, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------- table formats


def test_bioscan_sample_detected_and_read():
    assert detect_format(BIOSCAN) == "bioscan"
    records, stats = read(BIOSCAN)
    rows = bioscan_rows()
    assert_clean(records)
    assert stats.format == "bioscan" and stats.records == len(rows) == len(records)
    assert [r.id for r in records] == [row["processid"] for row in rows]
    for record, row in zip(records, rows):
        assert record.sequence == row["dna_barcode"].replace("-", "").strip("N")
        assert record.taxonomy == {rank: row[rank] for rank in RANKS if row[rank]}
        assert record.bin == (row["dna_bin"] or None)
        assert record.split == row["split"]
        assert record.fields == {"country": row["country"], "institution": row["institution"]}
    assert stats.gaps_removed == sum("-" in row["dna_barcode"] for row in rows) > 0
    assert stats.ambiguous == sum(bool(set(r.sequence) - set("ACGT")) for r in records) > 0
    assert any(r.bin is None for r in records)
    assert any("," in r.fields["institution"] for r in records)  # quoted CSV field
    assert {r.split for r in records} == {"train", "val", "test", "key_unseen", "test_unseen", "pretrain"}


def test_bioscan_sample_has_an_unseen_species_of_a_seen_genus():
    records, _ = read(BIOSCAN)
    by_species: dict[str, set] = {}
    for r in records:
        by_species.setdefault(r.taxonomy["species"], set()).add(r.split)
    unseen = [s for s, splits in by_species.items() if "test_unseen" in splits and "train" not in splits]
    train_genera = {r.taxonomy["genus"] for r in records if r.split == "train"}
    assert unseen and all(s.split()[0] in train_genera for s in unseen)
    assert len({r.taxonomy["genus"] for r in records}) >= 5


def test_bold_v3_detected_with_stray_cr():
    raw = BOLD_V3.read_bytes()
    assert b"nucleotides\t\rimage_ids" in raw  # the stray CR inside every line, as BOLD v3 serves it
    assert detect_format(BOLD_V3) == "bold-v3"
    records, stats = read(BOLD_V3)
    assert_clean(records)
    assert stats.format == "bold-v3" and len(records) == 10
    first = records[0]
    assert first.id == "EUCAR584-10" and first.bin == "BOLD:AAO0357"
    assert first.taxonomy == {"phylum": "Arthropoda", "class": "Insecta", "order": "Coleoptera",
                              "family": "Carabidae", "subfamily": "Harpalinae", "genus": "Abax",
                              "species": "Abax parallelus"}
    assert first.fields["markercode"] == "COI-5P" and first.fields["image_ids"] == "1257569"
    assert "phylum_name" not in first.fields and "nucleotides" not in first.fields
    for record in records:
        assert all("\r" not in key and "\r" not in value for key, value in record.fields.items())
        assert len(record.sequence) >= 600


def test_bold_bcdm_detected_with_none_values():
    assert detect_format(BCDM) == "bold-bcdm"
    records, stats = read(BCDM)
    assert_clean(records)
    assert stats.format == "bold-bcdm" and len(records) == 30
    assert records[0].taxonomy["species"] == "Lutzomyia cruciata" and records[0].bin == "BOLD:ADP3520"
    no_species = [r for r in records if "species" not in r.taxonomy]
    assert no_species and all("None" not in r.taxonomy.values() for r in records)
    assert any(r.bin is None for r in records)
    assert records[0].fields["museumid"] == "None"  # carried over raw
    assert records[0].fields["marker_code"] == "COI-5P"
    assert stats.ambiguous > 0


def test_generic_table_needs_columns(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("name\tgenus\tmy_seq\tsplit\tbin\tnote\nq1\tAedes\tacgt-acgtn\ttrain\tBOLD:AAA0001\thi\n"
                    "q2\tNA\tACGTACGT\t\tNone\t\n")
    assert detect_format(path) == "table"
    error = raises_input_error(path, fix="--id-column")
    assert "'name', 'genus', 'my_seq'" in str(error) and "--sequence-column" in str(error)
    records, stats = read(path, id_column="name", sequence_column="my_seq")
    assert stats.format == "table"
    assert records[0] == BarcodeRecord("q1", "ACGTACGT", {"genus": "Aedes"}, "BOLD:AAA0001", "train",
                                       {"note": "hi"})
    assert records[1] == BarcodeRecord("q2", "ACGTACGT", {}, None, None, {"note": ""})
    records, _ = read(path, format="table", id_column="name", sequence_column="my_seq")
    assert len(records) == 2


def test_column_options_override_known_layout(tmp_path):
    records, stats = read(BIOSCAN, id_column="split", sequence_column="dna_barcode", allow_duplicates=True)
    assert records[0].id == "train" and stats.duplicates == len(records) - 6
    assert records[0].split == "train"  # a column can be read as the id and as itself
    error = raises_input_error(BIOSCAN, sequence_column="sequence", fix="--sequence-column")
    assert "'processid'" in str(error) and "'dna_barcode'" in str(error)
    records, _ = read(BIOSCAN, format="table", id_column="processid", sequence_column="DNA_Barcode")
    assert len(records) == len(bioscan_rows())  # column names match case-insensitively


def test_table_with_crlf_bom_and_blank_lines(tmp_path):
    text = BIOSCAN.read_text(encoding="utf-8")
    path = tmp_path / "windows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n\r\n")
    assert detect_format(path) == "bioscan"
    assert read(path)[0] == read(BIOSCAN)[0]


def test_tsv_is_not_quoted(tmp_path):
    path = tmp_path / "quotes.tsv"
    path.write_text('processid\tdna_barcode\tnotes\nA1\tACGTAC\t"in alcohol\nA2\tACGTTT\tsaid "hi"\n')
    records, _ = read(path)
    assert [r.fields["notes"] for r in records] == ['"in alcohol', 'said "hi"']


def test_malformed_csv_quoting(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('processid,dna_barcode,notes\nA1,ACGTAC,"never closed\nA2,ACGTTT,x\n')
    raises_input_error(path, match="line 3: malformed CSV", fix="quoting")


def test_table_with_old_mac_line_ends(tmp_path):
    path = tmp_path / "mac.tsv"
    path.write_bytes(b"processid\tdna_barcode\rA1\tACGT\rA2\tGGCC\r")
    assert detect_format(path) == "bioscan"
    assert [(r.id, r.sequence) for r in read(path)[0]] == [("A1", "ACGT"), ("A2", "GGCC")]


def test_table_non_utf8_field(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("processid,dna_barcode,species\nA1,ACGTAC,Ab\xe9ille\n".encode("latin-1"))
    records, _ = read(path)
    assert records[0].taxonomy["species"] == "Ab\ufffdille"


# ------------------------------------------------------------------------------------------------ FASTA


def test_example_fasta():
    assert detect_format(EXAMPLE) == "fasta"
    records, stats = read(EXAMPLE)
    assert_clean(records)
    assert stats.format == "fasta" and len(records) == 100
    assert all(r.taxonomy == {} and r.bin is None and r.split is None and r.fields == {} for r in records)
    by_id = {r.id: r for r in read(BIOSCAN)[0]}
    assert all(by_id[r.id].sequence == r.sequence for r in records)


def test_sintax_reference():
    records, _ = read(SINTAX)
    assert_clean(records)
    by_id = {r.id: r for r in read(BIOSCAN)[0]}
    for record in records:
        source = by_id[record.id]
        assert record.taxonomy == source.taxonomy and record.bin == source.bin
        assert " " in record.taxonomy["species"]
    assert list(read_fasta_taxonomy(SINTAX)) == records


def test_read_fasta_taxonomy_requires_taxonomy():
    with pytest.raises(InputError) as caught:
        list(read_fasta_taxonomy(EXAMPLE))
    assert caught.value.record and "tax=" in caught.value.fix
    assert len(list(read_fasta_taxonomy(EXAMPLE, require_taxonomy=False))) == 100


@pytest.mark.parametrize("title, expected", [
    ("AB1 some description", ("AB1", {}, None)),
    ("id1;tax=k:Animalia,p:Arthropoda,c:Insecta,o:Diptera,f:Culicidae,g:Aedes,s:Aedes_aegypti;",
     ("id1", {"phylum": "Arthropoda", "class": "Insecta", "order": "Diptera", "family": "Culicidae",
              "genus": "Aedes", "species": "Aedes aegypti"}, None)),
    ("id2;size=3;tax=d:Eukaryota,g:Culex;bin=BOLD:AAA1234;", ("id2", {"genus": "Culex"}, "BOLD:AAA1234")),
    ("id3 bin=BOLD:ACX0001 from a table", ("id3", {}, "BOLD:ACX0001")),
    ("id4;tax=f:Carabidae,t:Harpalinae,s:NA;", ("id4", {"family": "Carabidae", "subfamily": "Harpalinae"}, None)),
    ("  spaced  ", ("spaced", {}, None)),
    ("", ("", {}, None)),
    # labels with spaces (cut at the first space, the species was the genus name and was then dropped)
    ("id5;tax=g:Crambus,s:Crambus agitatellus;bin=BOLD:AAA4505;",
     ("id5", {"genus": "Crambus", "species": "Crambus agitatellus"}, "BOLD:AAA4505")),
    ("id6;tax=g:Foo,s:Foo sp. BOLD:AAA0003;", ("id6", {"genus": "Foo", "species": "Foo sp. BOLD:AAA0003"}, None)),
    ("id7 tax=g:Aedes,s:Aedes aegypti bin=BOLD:AAA1 more words",
     ("id7", {"genus": "Aedes", "species": "Aedes aegypti"}, "BOLD:AAA1")),
])
def test_parse_fasta_header(title, expected):
    assert parse_fasta_header(title) == expected


def test_bold_rows_of_other_markers_are_skipped_and_counted(tmp_path):
    """A BOLD export holds a row per marker of a specimen under one processid: its 28S and ITS rows were read as
    barcodes (after a duplicate-id error, or with --allow-duplicates into a reference under COI's taxonomy)."""
    lines = BCDM.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    marker, sequence = header.index("marker_code"), header.index("nucraw")
    rows = [line.split("\t") for line in lines[1:6]]
    other = []
    for row, gene in zip(rows[:3], ("28S", "ITS2", "COI-3P")):
        copy = list(row)
        copy[marker], copy[sequence] = gene, "ACGT" * 100
        other.append(copy)
    rows[4][marker] = ""                                   # no marker named: read as before
    path = tmp_path / "multimarker.tsv"
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in rows + other]) + "\n", encoding="utf-8")
    records, stats = read(path)
    assert [r.id for r in records] == [r[0] for r in rows] and all("ACGTACGT" not in r.sequence for r in records)
    assert stats.other_markers == {"28S": 1, "ITS2": 1, "COI-3P": 1}
    assert "3 rows of other markers than COI skipped (28S: 1, ITS2: 1, COI-3P: 1)" in stats.summary()
    from barcodetool.io.tables import is_coi
    assert is_coi("COI-5P|COI-5P") and is_coi("coi-5p") and is_coi("") and is_coi("None") and not is_coi("rbcL")


def test_fasta_old_mac_line_ends(tmp_path):
    path = tmp_path / "mac.fasta"
    path.write_bytes(b">a\rACGTAC\rGTAC\r>b\rTTTT\r")
    records, _ = read(path)
    assert [(r.id, r.sequence) for r in records] == [("a", "ACGTACGTAC"), ("b", "TTTT")]


def test_fasta_stray_cr_inside_header(tmp_path):
    path = tmp_path / "cr.fasta"
    path.write_bytes(b">a;tax=g:Aedes;\rcomment\r\nAC\rGT\r\n>b\r\nTT\r\n")
    records, _ = read(path)  # the \r does not end the header line: "comment" is not read as sequence
    assert [(r.id, r.sequence, r.taxonomy) for r in records] == [("a", "ACGT", {"genus": "Aedes"}),
                                                                ("b", "TT", {})]


def test_fasta_header_without_id(tmp_path):
    path = tmp_path / "noid.fasta"
    path.write_text(">\nACGT\n")
    raises_input_error(path, fix="id", match="record #1 has no id")


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("source", [BIOSCAN, BOLD_V3, BCDM, EXAMPLE, SINTAX])
@pytest.mark.parametrize("width", [0, 60])
def test_round_trip_through_fasta(tmp_path, source, width):
    records, _ = read(source)
    path = tmp_path / "round.fasta"
    assert write_fasta(records, path, width=width, sintax=True) == len(records)
    back, stats = read(path)
    assert stats.format == "fasta"
    assert [(r.id, r.sequence, r.taxonomy, r.bin) for r in back] == \
           [(r.id, r.sequence, r.taxonomy, r.bin) for r in records]
    plain = tmp_path / "plain.fasta"
    with open(plain, "w") as handle:
        write_fasta(((r.id, r.sequence) for r in records), handle)
    assert [(r.id, r.sequence) for r in read(plain)[0]] == [(r.id, r.sequence) for r in records]


def test_write_fasta_refuses_bad_ids():
    with pytest.raises(OutputError):
        write_fasta([("two words", "ACGT")], io.StringIO())
    with pytest.raises(OutputError):
        write_fasta([("", "ACGT")], io.StringIO())


# ---------------------------------------------------------------------------------------- compression


COMPRESSORS = {"gzip": lambda b: gzip.compress(b, compresslevel=5, mtime=0), "bzip2": bz2.compress,
               "xz": lambda b: lzma.compress(b, preset=1)}


@pytest.mark.parametrize("kind", list(COMPRESSORS))
@pytest.mark.parametrize("source, name", [(EXAMPLE, "looks_plain.txt"), (BIOSCAN, "sample.tsv"),
                                          (BCDM, "bcdm.fasta.gz"), (SINTAX, "ref.fa.bz2")])
def test_compression_by_magic_bytes(tmp_path, kind, source, name):
    path = tmp_path / name  # the extension says nothing (or lies) about the compression
    path.write_bytes(COMPRESSORS[kind](source.read_bytes()))
    assert detect_format(path) == detect_format(source)
    assert read(path)[0] == read(source)[0]


def test_concatenated_gzip_members(tmp_path):
    lines = EXAMPLE.read_bytes().split(b"\n>")
    half = len(lines) // 2
    first = b"\n>".join(lines[:half]) + b"\n"
    second = b">" + b"\n>".join(lines[half:])
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(first) + gzip.compress(second))
    assert read(path)[0] == read(EXAMPLE)[0]


def big_fasta(n: int = 600, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return "".join(f">r{i}\n{''.join(rng.choices('ACGT', k=658))}\n" for i in range(n)).encode()


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_large_compressed_input_from_file_and_stdin(tmp_path, monkeypatch, kind):
    # A bzip2 block holds up to 900 kB of text and gives nothing until it is whole: the peek must read on.
    data = COMPRESSORS[kind](big_fasta(1600))
    path = tmp_path / "big.dat"
    path.write_bytes(data)
    assert detect_format(path) == "fasta"
    assert sum(1 for _ in read_barcodes(path)) == 1600
    set_stdin(monkeypatch, data)
    assert detect_format("-") == "fasta"
    assert [r.id for r in read_barcodes("-")] == [f"r{i}" for i in range(1600)]


def test_truncated_gzip_after_the_peeked_head(tmp_path):
    data = gzip.compress(big_fasta())
    assert len(data) > 100_000
    path = tmp_path / "cut.fasta.gz"
    path.write_bytes(data[: int(len(data) * 0.9)])
    stats = ReadStats(str(path))
    records = read_barcodes(path, stats=stats)
    with pytest.raises(InputError) as caught:
        for _ in records:
            pass
    assert stats.records > 100  # records before the cut were streamed out first
    assert str(path) in str(caught.value) and "truncated or corrupt" in str(caught.value)


@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_corrupt_compressed_file(tmp_path, kind):
    data = bytearray(COMPRESSORS[kind](big_fasta(50)))
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path = tmp_path / "corrupt.bin"
    path.write_bytes(bytes(data))
    raises_input_error(path, match="truncated or corrupt", fix="again")


@pytest.mark.parametrize("magic, what", [(b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"),
                                         (b"\xff\xfe>\x00a\x00", "UTF-16")])
def test_unsupported_containers(tmp_path, magic, what):
    path = tmp_path / "thing"
    path.write_bytes(magic + b"\x00" * 40)
    raises_input_error(path, match=what)


def test_double_gzip(tmp_path):
    path = tmp_path / "twice.gz"
    path.write_bytes(gzip.compress(gzip.compress(EXAMPLE.read_bytes())))
    raises_input_error(path, match="compressed twice", fix="decompress")


# ----------------------------------------------------------------------------------------------- stdin


class FakeStdin(io.TextIOWrapper):
    pass


def set_stdin(monkeypatch, data: bytes, *, text_wrapper: bool = True):
    stream = FakeStdin(io.BytesIO(data)) if text_wrapper else io.BytesIO(data)
    monkeypatch.setattr(sys, "stdin", stream)
    return stream


@pytest.mark.parametrize("source", [EXAMPLE, BIOSCAN, BOLD_V3])
@pytest.mark.parametrize("compress", [None, "gzip", "xz"])
def test_stdin(monkeypatch, source, compress):
    data = source.read_bytes()
    if compress:
        data = COMPRESSORS[compress](data)
    set_stdin(monkeypatch, data)
    records, stats = read("-")
    assert records == read(source)[0]
    assert stats.format == detect_format(source)


def test_stdin_detect_then_read(monkeypatch):
    data = gzip.compress(big_fasta(300))  # longer than the peeked head
    stream = set_stdin(monkeypatch, data, text_wrapper=False)
    assert detect_format("-") == "fasta"
    assert detect_format("-") == "fasta"  # peeking twice does not lose bytes either
    assert stream.tell() > 0
    records = list(read_barcodes("-"))
    assert [r.id for r in records] == [f"r{i}" for i in range(300)]


def test_stdin_errors_name_stdin(monkeypatch):
    set_stdin(monkeypatch, b"")
    raises_input_error("-", match="no records: the file is empty")
    set_stdin(monkeypatch, b">x\nACGTQ\n")
    raises_input_error("-", record="x", match="position 5")
    monkeypatch.setattr(sys, "stdin", io.StringIO(">x\nACGT\n"))
    raises_input_error("-", match="text mode")


class EndlessFasta(io.RawIOBase):
    """A stream of FASTA that never ends; counts the bytes handed out."""

    def __init__(self):
        self.given = 0
        self.record = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = b"".join(f">e{self.record + i}\n{'ACGT' * 165}\n".encode() for i in range(50))
        self.record += 50
        n = min(len(buffer), len(chunk))
        buffer[:n] = chunk[:n]  # the tail of the chunk is dropped: records stay well formed enough
        self.given += n
        return n


def test_reading_streams(monkeypatch):
    endless = EndlessFasta()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(endless)))
    records = read_barcodes("-")
    first = list(islice(records, 20))
    records.close()
    assert len(first) == 20 and endless.given < 2_000_000


# -------------------------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize("raw, clean", [
    ("acgt", "ACGT"),
    ("AcGu", "ACGT"),
    ("--AC-GT..A.", "ACGTA"),
    ("AC GT\tA\nC\r\n", "ACGTAC"),
    ("NNNACGTNNNN", "ACGT"),
    ("N-N-ACNGT-N", "ACNGT"),
    ("ryswkmbdhvn" + "ACGT", "RYSWKMBDHVNACGT"),
    ("ACGT\u00a0\u3000T", "ACGTT"),
    ("NNNN", ""),
    ("---", ""),
    ("", ""),
])
def test_clean_sequence(raw, clean):
    assert clean_sequence(raw) == clean


@pytest.mark.parametrize("raw, position, char, fix", [
    ("ACGTE", 5, "'E'", "protein"),
    ("MKQ", 3, "'Q'", "protein"),
    ("AC1GT", 3, "'1'", "position numbers"),
    ("ACGT*", 5, "'*'", "stop codon"),
    ("AC?T", 3, "'?'", "protein"),
    ("AC\ufffdT", 3, "undecodable", "protein"),
])
def test_clean_sequence_errors(raw, position, char, fix):
    with pytest.raises(InputError) as caught:
        clean_sequence(raw, path="in.fa", record_id="r7")
    message = str(caught.value)
    assert message.startswith("in.fa: record 'r7': ")
    assert f"position {position}" in message and char in message and fix in caught.value.fix


def test_clean_sequence_is_fast():
    sequences = ["ACGT-NRY" * 82] * 20_000
    start = time.perf_counter()
    for s in sequences:
        clean_sequence(s)
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------------------------------- arguments


def test_unknown_format():
    with pytest.raises(InputError, match="unknown input format"):
        read_barcodes(EXAMPLE, format="genbank")


def test_format_mismatch():
    raises_input_error(BIOSCAN, format="fasta", match="not FASTA", fix="--format")
    raises_input_error(EXAMPLE, format="bioscan", match="this is FASTA", fix="--format")
    records, _ = read(BOLD_V3, format="bold-bcdm", sequence_column="nucleotides")
    assert len(records) == 10 and records[0].taxonomy == {}  # BCDM rank columns are not in a v3 file


def test_missing_file_and_directory(tmp_path):
    raises_input_error(tmp_path / "nope.fasta", match="file not found", fix="path")
    raises_input_error(tmp_path, match="directory")
    with pytest.raises(InputError, match="file not found"):
        detect_format(tmp_path / "nope.fasta")


def test_input_error_is_a_barcodetool_error():
    assert issubclass(InputError, BarcodeToolError)


def test_read_stats_summary():
    _, stats = read(DATA / "bad" / "gaps.fasta")
    assert stats.summary() == f"{DATA / 'bad' / 'gaps.fasta'}: read 3 records (fasta), gaps removed from 2"
    assert ReadStats("-").summary() == "<stdin>: read 0 records"
    stats = ReadStats("x.fa", "fasta", records=1, skipped_empty=2, duplicates=1, gaps_removed=1, ambiguous=1)
    assert stats.summary() == ("x.fa: read 1 record (fasta), gaps removed from 1, 1 with ambiguity codes, "
                               "2 empty or too short skipped, 1 duplicate id kept")


def test_a_species_label_that_is_the_genus_name_is_no_species(tmp_path):
    """A genus-level identification filed as the species (`species` = `genus`, as in 4,162 Annelida records of
    coi_extra) is read as no species, whatever the format, and counted in the summary; real species stay."""
    table = tmp_path / "t.tsv"
    table.write_text("processid\tgenus\tspecies\tdna_barcode\n"
                     "a\tAmynthas\tAmynthas\tACGTACGTAC\n"
                     "b\tAmynthas\tAmynthas morrisi\tACGTACGTAC\n"
                     "c\tPolydora\tpolydora\tACGTACGTAC\n", encoding="utf-8")
    fasta = tmp_path / "s.fasta"
    fasta.write_text(">d;tax=g:Amynthas,s:Amynthas;\nACGTACGTAC\n>e;tax=s:Amynthas;\nACGTACGTAC\n", encoding="utf-8")
    for path, expected in ((table, [{"genus": "Amynthas"}, {"genus": "Amynthas", "species": "Amynthas morrisi"},
                                    {"genus": "Polydora"}]),
                           (fasta, [{"genus": "Amynthas"}, {"species": "Amynthas"}])):   # no genus to compare with
        stats = ReadStats(str(path))
        records = list(read_barcodes(path, stats=stats))
        assert [r.taxonomy for r in records] == expected
        assert stats.genus_as_species == (2 if path == table else 1)
        assert f"{stats.genus_as_species} whose species is the genus name (read as no species)" in stats.summary()


def test_default_stats_path():
    stats = ReadStats(path="")
    list(read_barcodes(EXAMPLE, stats=stats))
    assert stats.path == str(EXAMPLE) and stats.records == 100


@pytest.mark.skipif(not SHARED.exists(), reason="needs /work/shared/data")
def test_full_bold_insects_reads_quickly():
    start = time.perf_counter()
    stats = ReadStats(str(SHARED))
    count = sum(1 for _ in read_barcodes(SHARED, stats=stats))
    assert count == stats.records == 108_655
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------------ bad-input corpus


def test_bad_empty_file():
    raises_input_error(BAD / "empty.fasta", match="no records: the file is empty", fix="at least one record")


def test_bad_only_blank_lines():
    raises_input_error(BAD / "blank_lines.fasta", match="no records: the file holds only blank lines")


def test_bad_header_only_fasta():
    raises_input_error(BAD / "header_only.fasta", record="lonely_header", match="sequence is empty",
                       fix="--skip-empty")
    raises_input_error(BAD / "header_only.fasta", skip_empty=True, match="no records left: all 1 were empty",
                       fix="check the input")


def test_bad_empty_sequence():
    path = BAD / "empty_sequence.fasta"
    raises_input_error(path, record="EMPTY-01", match="sequence is empty", fix="--skip-empty")
    records, stats = read(path, skip_empty=True)
    assert len(records) == 2 and stats.skipped_empty == 1 and "EMPTY-01" not in {r.id for r in records}
    assert "1 empty or too short skipped" in stats.summary()


def test_bad_protein_fasta():
    raises_input_error(BAD / "protein.fasta", record="COX1_PROT", match="invalid character 'Q' at position 4",
                       fix="is this a protein FASTA?")


def test_bad_digits():
    raises_input_error(BAD / "digits.fasta", record="BBLPA740-10", match="invalid character '1' at position 1",
                       fix="not a nucleotide sequence")


def test_bad_stop_codon():
    raises_input_error(BAD / "stop_codon.fasta", record="BBLPA740-10", match="'*' at position 91",
                       fix="protein FASTA")


def test_bad_binary_garbage():
    raises_input_error(BAD / "binary_garbage.fasta", match="binary data, not FASTA or a barcode table",
                       fix="give a FASTA file")


def test_bad_truncated_gzip():
    raises_input_error(BAD / "truncated.fasta.gz", match="gzip file is truncated or corrupt", fix="again")


def test_bad_binary_in_gzip():
    raises_input_error(BAD / "binary_in_gzip.fasta.gz", match="gzip-compressed file holds binary data")


def test_bad_text_in_gzip():
    raises_input_error(BAD / "text_in_gzip.fasta.gz", match="not FASTA", fix="FASTA file")


def test_bad_crlf_fasta():
    records, _ = read(BAD / "crlf.fasta")
    assert b"\r\n" in (BAD / "crlf.fasta").read_bytes()
    assert_clean(records)
    assert [len(r.sequence) for r in records] == [658, 658, 658]


def test_bad_mixed_case():
    records, _ = read(BAD / "mixed_case.fasta")
    crlf, _ = read(BAD / "crlf.fasta")
    assert [r.sequence for r in records] == [r.sequence for r in crlf[:2]]


def test_bad_gaps():
    records, stats = read(BAD / "gaps.fasta")
    crlf, _ = read(BAD / "crlf.fasta")
    assert [r.sequence for r in records] == [r.sequence for r in crlf]
    assert stats.gaps_removed == 2


def test_bad_iupac_codes():
    records, stats = read(BAD / "iupac.fasta")
    crlf, _ = read(BAD / "crlf.fasta")
    assert "RYSWKMBDHV" in records[0].sequence and records[0].sequence[:4] != "NNNN"
    assert len(records[0].sequence) == 658 + 10  # end Ns trimmed, inner codes kept
    assert "NNNNN" in records[1].sequence
    assert records[2].id.endswith("_RNA") and records[2].sequence == crlf[2].sequence  # U -> T
    assert stats.ambiguous == 2


def test_bad_50kb_record():
    records, _ = read(BAD / "long_50kb.fasta")
    assert records[0].id == "LONG-50KB" and len(records[0].sequence) == 50_000
    path = BAD / "long_50kb.fasta"
    assert len(list(read_barcodes(path, min_length=600))) == 2


def test_bad_short_record():
    path = BAD / "short.fasta"
    records, _ = read(path)  # min_length defaults to 1: kept (the tokenizer gives it no k-mer token)
    assert records[1].id == "SHORT-4NT" and records[1].sequence == "ACGT"
    raises_input_error(path, min_length=6, record="SHORT-4NT", match="4 nt long, shorter than the minimum of 6",
                       fix="--skip-empty")
    records, stats = read(path, min_length=6, skip_empty=True)
    assert [r.id for r in records] == ["BBLPA740-10"] and stats.skipped_empty == 1


def test_bad_duplicate_ids():
    path = BAD / "duplicate_ids.fasta"
    raises_input_error(path, record="BBLPA740-10", match="duplicate record id", fix="--allow-duplicates")
    records, stats = read(path, allow_duplicates=True)
    assert [r.id for r in records] == ["BBLPA740-10", "BBLPA747-10", "BBLPA740-10"]
    assert stats.duplicates == 1 and "1 duplicate id kept" in stats.summary()


def test_bad_header_only_table():
    path = BAD / "header_only.csv"
    assert detect_format(path) == "bioscan"
    raises_input_error(path, match="no records: the table has a header line but no rows")


def test_bad_table_without_sequence_column():
    error = raises_input_error(BAD / "no_sequence_column.tsv", match="no sequence column found",
                               fix="--sequence-column")
    assert "'processid', 'bin_uri', 'species'" in str(error)


def test_bad_wrong_delimiter():
    raises_input_error(BAD / "semicolon.csv", match="wrong delimiter", fix="TSV or CSV")


def test_bad_non_utf8_header():
    records, _ = read(BAD / "non_utf8_header.fasta")
    assert [r.id for r in records] == ["BBLPA740-10", "caf\ufffd-02"]  # invalid UTF-8 -> U+FFFD
    assert_clean(records)


def test_bad_bcdm_none_values():
    path = BAD / "bcdm_none.tsv"
    raises_input_error(path, record="NOSEQ001-24", match="sequence is empty", fix="--skip-empty")
    records, stats = read(path, skip_empty=True)
    assert len(records) == 5 and stats.skipped_empty == 1
    assert all(r.bin is None and "species" not in r.taxonomy for r in records[:3])
    assert all(r.taxonomy.get("phylum") for r in records)


def test_bad_corpus_fastq_is_read():
    records, stats = read(BAD / "reads.fastq")
    assert [r.id for r in records] == ["read1"] and len(records[0].sequence) == 50 and stats.format == "fastq"


def test_bad_ragged_table():
    path = BAD / "ragged.tsv"
    raises_input_error(path, id_column="processid", sequence_column="sequence", record="BBLPA747-10",
                       match="line 3 has 2 fields but the header has 3", fix="delimiter")


def test_every_bad_file_has_a_test():
    names = {p.name for p in BAD.iterdir()}
    source = Path(__file__).read_text()
    assert all(f'"{name}"' in source for name in names), sorted(n for n in names if f'"{n}"' not in source)


def test_outputs_get_the_umask_mode_or_keep_the_replaced_files(tmp_path):
    from barcodetool.io.atomic import atomic_text

    mask = os.umask(0o022)
    os.umask(mask)
    with atomic_text(tmp_path / "new.tsv") as handle:
        handle.write("x\n")
    assert stat.S_IMODE((tmp_path / "new.tsv").stat().st_mode) == 0o666 & ~mask   # not mkstemp's private 0600
    existing = tmp_path / "old.tsv"
    existing.write_text("old\n")
    existing.chmod(0o640)
    with atomic_text(existing) as handle:
        handle.write("new\n")
    assert existing.read_text() == "new\n" and stat.S_IMODE(existing.stat().st_mode) == 0o640


def test_json_values_are_plain_json():
    import json
    import math

    import numpy as np

    from barcodetool.io.json_values import json_values

    data = {1: [np.float32(0.5), np.int64(3), (math.inf, -math.inf)], "nan": math.nan, "ok": "text", "flag": True}
    assert json_values(data) == {"1": [0.5, 3, ["inf", "-inf"]], "nan": None, "ok": "text", "flag": True}
    assert json_values(data, nan="nan")["nan"] == "nan"
    json.dumps(json_values(data), allow_nan=False)   # valid JSON: no NaN or Infinity literals
