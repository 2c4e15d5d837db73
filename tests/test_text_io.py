"""Text in and out: ids and labels that would break output rows, FASTQ input, --skip-invalid, and an input error
with `-o -` leaving standard output empty (issue 16, items 3 and the pipeline items on FASTQ, --skip-invalid and
the TSV header)."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from barcodetool.classify import TSV_COLUMNS, Assignment, sintax_row, tsv_row, write_classification
from barcodetool.cli import main
from barcodetool.cluster import ClusterResult, write_clusters
from barcodetool.errors import InputError
from barcodetool.io import BarcodeRecord, ReadStats, detect_format, parse_fasta_header, read_barcodes, sintax_header
from barcodetool.reference import build_reference
from helpers_models import SINTAX_REFERENCE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401

BASES = "ACGT"


def barcode(seed: int, length: int = 120) -> str:
    rng = np.random.default_rng(seed)
    return "".join(BASES[i] for i in rng.integers(0, 4, length))


@pytest.fixture(scope="module")
def reference_records():
    return list(read_barcodes(SINTAX_REFERENCE))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-text", seed=0)
    return folder, load_tiny(folder)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, tiny, reference_records):
    """A built index of the SINTAX reference: `classify --kmer-only` against it needs no model."""
    index = build_reference(reference_records, tiny[1])
    return index.save(tmp_path_factory.mktemp("index") / "ref.h5")


def write_fasta_text(records) -> str:
    return "".join(f">{r.id}\n{r.sequence}\n" for r in records)


def write_fastq_text(records, wrap: int = 0) -> str:
    out = []
    for r in records:
        title = sintax_header(r) if r.taxonomy else r.id
        if wrap:
            seq = "\n".join(r.sequence[i:i + wrap] for i in range(0, len(r.sequence), wrap))
            qual = "\n".join("I" * len(r.sequence[i:i + wrap]) for i in range(0, len(r.sequence), wrap))
        else:
            seq, qual = r.sequence, "@" * len(r.sequence)  # qualities may start with '@'
        out.append(f"@{title}\n{seq}\n+\n{qual}\n")
    return "".join(out)


def read(path, **options):
    stats = ReadStats(str(path))
    return list(read_barcodes(path, stats=stats, **options)), stats


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("barcodetool: error")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ============================================================================ item 3: ids and labels in outputs
def test_csv_id_with_a_line_break_is_refused(tmp_path, index_path):
    path = tmp_path / "q.csv"
    path.write_text(f'processid,dna_barcode\nGOOD1,{barcode(1)}\n"ID\nX",{barcode(2)}\n')
    with pytest.raises(InputError) as caught:
        read(path)
    assert caught.value.record == "ID\nX" and "line break" in str(caught.value)
    assert "\n" not in str(caught.value) and "--skip-invalid" in caught.value.fix
    result = CliRunner().invoke(main, ["classify", str(path), "-r", str(index_path), "--kmer-only",
                                       "-o", str(tmp_path / "out.tsv")])
    assert result.exit_code == 1, result.output
    line = one_error_line(result.stderr)
    assert str(path) in line and "record 'ID\\nX'" in line and "line break" in line
    assert not (tmp_path / "out.tsv").exists()


@pytest.mark.parametrize("label, name", [("Aedes\naegypti", "line break"), ("Aedes\taegypti", "tab"),
                                         ("Aedes\u2028aegypti", "control"), ("Aedes\x07", "control")])
def test_label_with_a_control_character_is_refused(tmp_path, label, name):
    path = tmp_path / "q.csv"
    quoted = '"' + label + '"'
    path.write_text(f"processid,dna_barcode,genus,species\nREC1,{barcode(1)},Aedes,{quoted}\n", newline="")
    with pytest.raises(InputError) as caught:
        read(path)
    assert caught.value.record == "REC1" and "species label" in str(caught.value) and name in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="no records left: 1 of 1 were invalid"):
        read(path, skip_invalid=True)


def test_output_rows_never_split_whatever_the_ids_and_labels():
    nasty = "a\tb\nc\rd,e;f\x00g\u2028h"
    a = Assignment(id="q" + nasty, labels={"genus": "G" + nasty, "species": "S" + nasty},
                   confidence={"genus": 1.0, "species": 0.9},
                   candidates={"genus": ("G" + nasty, 1.0), "species": ("S" + nasty, 0.9)}, rank="species",
                   nearest_id="n" + nasty, similarity=0.99, bin="B" + nasty, overlap=100)
    row = sintax_row(a)
    assert row.endswith("\n") and len(row.splitlines()) == 1
    fields = row[:-1].split("\t")
    assert len(fields) == 4 and fields[2] == "+"
    assert len(fields[1].split(",")) == 2 and len(fields[3].split(",")) == 2  # one item per rank, no more
    assert all(";" not in f for f in fields[1:])
    row = tsv_row(a)
    assert len(row.splitlines()) == 1 and len(row[:-1].split("\t")) == len(TSV_COLUMNS)
    for fmt in ("tsv", "sintax"):
        out = io.StringIO()
        assert write_classification([a, Assignment(id="plain")], out, fmt) == 2
        assert len(out.getvalue().splitlines()) == 2 + (fmt == "tsv")
    result = ClusterResult(ids=["x" + nasty, "y"], clusters=np.array([0, 1]), threshold=0.03, n_clusters=2,
                           reference_bin=["B" + nasty, "new"], similarity=np.array([0.99, 0.5]))
    out = io.StringIO()
    write_clusters(result, out)
    assert [len(line.split("\t")) for line in out.getvalue().splitlines()] == [4, 4, 4]


def test_sintax_header_keeps_one_item_per_rank():
    record = BarcodeRecord("r1", "ACGT", {"genus": "Aedes", "species": "Aedes sp. 1, group;x", "order": "a\tb"},
                           bin="BOLD:A;B")
    title = sintax_header(record)
    assert title.count(";") == 3 and "\t" not in title
    record_id, taxonomy, bin_uri = parse_fasta_header(title)
    assert record_id == "r1" and set(taxonomy) == {"genus", "species", "order"}
    assert taxonomy["species"] == "Aedes sp. 1  group x" and bin_uri == "BOLD:A_B"


# ============================================================================================ FASTQ
@pytest.fixture(scope="module")
def some(reference_records):
    return reference_records[:12]


@pytest.mark.parametrize("wrap", [0, 60])
@pytest.mark.parametrize("compress", [False, True])
def test_fastq_reads_as_the_same_fasta(tmp_path, some, wrap, compress):
    text = write_fastq_text(some, wrap=wrap)
    path = tmp_path / ("r.fq.gz" if compress else "r.fq")
    path.write_bytes(gzip.compress(text.encode(), mtime=0) if compress else text.encode())
    assert detect_format(path) == "fastq"
    records, stats = read(path)
    assert stats.format == "fastq" and "(fastq)" in stats.summary()
    assert records == some  # ids, sequences, SINTAX taxonomy and BINs as in the FASTA
    fasta = tmp_path / "r.fasta"
    fasta.write_text("".join(f">{sintax_header(r)}\n{r.sequence}\n" for r in some))
    assert read(fasta)[0] == records
    assert read(path, format="fastq")[0] == records


def test_fastq_ids_are_the_first_word_and_blank_lines_and_crlf_are_fine(tmp_path):
    path = tmp_path / "r.fastq"
    path.write_bytes(f"@read1 runid=abc ch=5\r\n{barcode(1, 20)}\r\n+read1\r\n{'#' * 20}\r\n\r\n"
                     f"@read2;tax=g:Aedes;\n{barcode(2, 30)}\n+\n{'@' * 30}\n".encode())
    records, _ = read(path)
    assert [r.id for r in records] == ["read1", "read2"]
    assert records[0].sequence == barcode(1, 20) and records[1].taxonomy == {"genus": "Aedes"}


@pytest.mark.parametrize("text, words, record", [
    ("@r1\nACGTACGT\n+\nIIII\n@r2\nACGT\n+\nIIII\n", "line 4: the quality line holds 4 characters but the "
                                                    "sequence 8", "r1"),
    ("@r1\nACGT\n+\nIIII\nr2\nACGT\n+\nIIII\n", "line 5: FASTQ record #2 does not start with '@'", None),
    ("@r1\nACGT\n+\nIIII\n@r2\nACGT\n", "line 6: the FASTQ record ends without its '+' line", "r2"),
    ("@r1\nACGT\n+\n", "the quality line holds 0 characters but the sequence 4", "r1"),
    ("@ \nACGT\n+\nIIII\n", "line 1: FASTQ record #1 has no id after '@'", None),
    ("@r1\nAC?T\n+\nIIII\n", "invalid character '?' at position 3", "r1"),
    ("@just a line\n", "not FASTQ", None),
])
def test_bad_fastq_names_the_record_and_line(tmp_path, text, words, record):
    path = tmp_path / "bad.fastq"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        read(path)
    assert words in str(caught.value) and caught.value.record == record and str(path) in str(caught.value)


def test_format_fastq_refuses_other_inputs(tmp_path):
    fasta = tmp_path / "a.fasta"
    fasta.write_text(f">a\n{barcode(1)}\n")
    with pytest.raises(InputError, match="this is FASTA .*not FASTQ"):
        read(fasta, format="fastq")
    table = tmp_path / "a.csv"
    table.write_text(f"processid,dna_barcode\na,{barcode(1)}\n")
    with pytest.raises(InputError, match="not FASTQ"):
        read(table, format="fastq")


def test_fastq_on_stdin_classifies_as_the_fasta(tmp_path, subprocess_env, index_path, some):
    """A real process reading FASTQ from standard input writes what it writes for the same records as FASTA."""
    fasta = tmp_path / "q.fasta"
    fasta.write_text(write_fasta_text(some))
    command = [sys.executable, "-m", "barcodetool", "-q", "classify", "-", "-r", str(index_path), "--kmer-only",
               "-o", "-"]
    from_fastq = subprocess.run(command, input=gzip.compress(write_fastq_text(some).encode()), capture_output=True,
                                env=subprocess_env, timeout=120)
    assert from_fastq.returncode == 0, from_fastq.stderr.decode()
    out = tmp_path / "fasta.tsv"
    from_fasta = CliRunner().invoke(main, ["-q", "classify", str(fasta), "-r", str(index_path), "--kmer-only",
                                           "-o", str(out)])
    assert from_fasta.exit_code == 0, from_fasta.output
    assert from_fastq.stdout.decode() == out.read_text()
    assert len(out.read_text().splitlines()) == len(some) + 1


# ============================================================================================ --skip-invalid
def test_skip_invalid_counts_and_names_the_first_few(tmp_path):
    lines = [f">ok{i}\n{barcode(i)}\n" for i in range(3)]
    lines += [f">bad{i}\nACGT?ACGT{barcode(10 + i)}\n" for i in range(7)]
    path = tmp_path / "r.fasta"
    path.write_text("".join(lines))
    with pytest.raises(InputError) as caught:
        read(path)
    assert caught.value.record == "bad0" and "'?'" in str(caught.value) and "--skip-invalid" in caught.value.fix
    records, stats = read(path, skip_invalid=True)
    assert [r.id for r in records] == ["ok0", "ok1", "ok2"]
    assert stats.skipped_invalid == 7 and stats.invalid_ids == ["bad0", "bad1", "bad2", "bad3", "bad4"]
    assert "7 invalid skipped (first: bad0, bad1, bad2, bad3, bad4, ...)" in stats.summary()
    only_bad = tmp_path / "bad.fasta"
    only_bad.write_text("".join(lines[3:]))
    with pytest.raises(InputError, match="no records left: 7 of 7 were invalid"):
        read(only_bad, skip_invalid=True)


def test_skip_invalid_through_the_cli(tmp_path, tiny, caplog):
    """`reference build` of a reference with one `?` works with --skip-invalid, and so does classify of queries
    with one; without it, both stop with the one-line error that names the option."""
    source = SINTAX_REFERENCE.read_text().splitlines(keepends=True)
    source[3] = source[3][:40] + "?" + source[3][41:]  # the second record's sequence
    reference = tmp_path / "ref.fasta"
    reference.write_text("".join(source))
    bad_id = parse_fasta_header(source[2][1:])[0]
    runner = CliRunner()
    build = ["reference", "build", str(reference), "-o", str(tmp_path / "ref.h5"), "--model", str(tiny[0]),
             "--device", "cpu", "--threads", "1"]
    refused = runner.invoke(main, build)
    assert refused.exit_code == 1
    line = one_error_line(refused.stderr)
    assert f"record '{bad_id}'" in line and "--skip-invalid" in line
    with caplog.at_level("INFO", logger="barcodetool"):
        built = runner.invoke(main, build + ["--skip-invalid"])
    assert built.exit_code == 0, built.output
    assert f"1 invalid skipped (first: {bad_id})" in caplog.text
    queries = tmp_path / "q.fasta"
    queries.write_text(f">q1\n{barcode(1)}\n>q2\nACGT?{barcode(2)}\n>q3\n{barcode(3)}\n")
    args = ["-q", "classify", str(queries), "-r", str(tmp_path / "ref.h5"), "--kmer-only", "-o", "-"]
    assert runner.invoke(main, args).exit_code == 1
    kept = runner.invoke(main, args + ["--skip-invalid"])
    assert kept.exit_code == 0, kept.output
    assert [row.split("\t")[0] for row in kept.stdout.splitlines()] == ["id", "q1", "q3"]


# ============================================================================ item: -o - and the TSV header
def test_input_error_with_stdout_output_writes_nothing(tmp_path, subprocess_env, index_path):
    queries = tmp_path / "q.fasta"
    queries.write_text(f">q1\n{barcode(1)}\n>q2\nACGT*ACGT\n")
    for fmt in ("tsv", "sintax"):
        done = subprocess.run([sys.executable, "-m", "barcodetool", "classify", str(queries), "-r", str(index_path),
                               "--kmer-only", "--output-format", fmt, "-o", "-"], capture_output=True, text=True,
                              env=subprocess_env, timeout=120)
        assert done.returncode == 1
        assert done.stdout == ""
        assert "record 'q2'" in one_error_line(done.stderr)


def test_cluster_input_error_with_stdout_output_writes_nothing(tmp_path, tiny):
    queries = tmp_path / "q.fasta"
    queries.write_text(f">q1\n{barcode(1)}\n>q2\nACGT*ACGT\n")
    result = CliRunner().invoke(main, ["cluster", str(queries), "-o", "-", "--model", str(tiny[0]), "--device",
                                       "cpu", "--threads", "1"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "record 'q2'" in one_error_line(result.stderr)


def test_write_classification_writes_nothing_before_the_first_row():
    def failing():
        raise InputError("bad", path="q.fasta", record="q1")
        yield  # pragma: no cover

    for fmt in ("tsv", "sintax"):
        out = io.StringIO()
        with pytest.raises(InputError):
            write_classification(failing(), out, fmt)
        assert out.getvalue() == ""
    out = io.StringIO()
    assert write_classification([], out, "tsv") == 0 and out.getvalue() == "\t".join(TSV_COLUMNS) + "\n"
