"""Every case of the bad-input corpus, end to end through the command line (docs/reliability.md).

Each case either works, with the documented note in the log and one output row per input record, or fails with
exit status 1 and exactly one line on stderr that names the file (and the record, where there is one) and the
fix, with no traceback and no output or temporary `.part` file left behind.

The whole matrix runs in-process through Click's test runner (the same `main`, argument parsing and error
handling as the installed command; an exception escaping the handler would show up as `result.exception`).
A representative case of each kind also runs as a real `python -m barcodetool` process, which checks the
real stderr, exit status and absence of a traceback; each of those costs a few seconds of interpreter and
PyTorch start-up, so they are kept few.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from barcodetool.cli import main
from barcodetool.io.readers import read_barcodes
from barcodetool.model.weights import CARD_FILE, TENSORS_FILE
from helpers_models import DATA, make_tiny_model, restore_torch_threads, save_sintax_index  # noqa: F401

BAD = DATA / "bad"
CPU = ["--device", "cpu", "--threads", "1"]
K = 6  # the tiny model's k-mer size: the CLI refuses (or with --skip-empty skips) records shorter than k

# file, extra options, words of the message, record named (None: the problem is the file as a whole), fix
ERRORS = [
    ("empty.fasta", [], "no records: the file is empty", None, "at least one record"),
    ("blank_lines.fasta", [], "holds only blank lines", None, "at least one record"),
    ("header_only.fasta", [], "the sequence is empty", "lonely_header", "--skip-empty"),
    ("empty_sequence.fasta", [], "the sequence is empty", "EMPTY-01", "--skip-empty"),
    ("protein.fasta", [], "invalid character 'Q' at position 4", "COX1_PROT", "protein FASTA"),
    ("digits.fasta", [], "invalid character '1' at position 1", "BBLPA740-10", "position numbers"),
    ("stop_codon.fasta", [], "'*' at position 91", "BBLPA740-10", "stop codon"),
    ("binary_garbage.fasta", [], "binary data, not FASTA or a barcode table", None, "give a FASTA file"),
    ("truncated.fasta.gz", [], "gzip file is truncated or corrupt", None, "compress the file again"),
    ("binary_in_gzip.fasta.gz", [], "gzip-compressed file holds binary data", None, "give a FASTA file"),
    ("text_in_gzip.fasta.gz", [], "not FASTA", None, "give a FASTA file"),
    ("short.fasta", [], "4 nt long, shorter than the minimum of 6", "SHORT-4NT", "--skip-empty"),
    ("duplicate_ids.fasta", [], "duplicate record id", "BBLPA740-10", "--allow-duplicates"),
    ("header_only.csv", [], "the table has a header line but no rows", None, "at least one record"),
    ("no_sequence_column.tsv", [], "no sequence column found", None, "--sequence-column"),
    ("semicolon.csv", [], "wrong delimiter", None, "convert it to TSV or CSV"),
    ("bcdm_none.tsv", [], "the sequence is empty", "NOSEQ001-24", "--skip-empty"),
    ("ragged.tsv", ["--id-column", "processid", "--sequence-column", "sequence"],
     "line 3 has 2 fields but the header has 3", "BBLPA747-10", "delimiter"),
    ("header_only.fasta", ["--skip-empty"], "no records left: all 1 were empty", None, "check the input"),
]

# file, extra options, the note in the log (None: nothing to note)
WORKS = [
    ("crlf.fasta", [], None),
    ("mixed_case.fasta", [], None),
    ("gaps.fasta", [], "gaps removed from 2"),
    ("iupac.fasta", [], "2 with ambiguity codes"),
    ("long_50kb.fasta", [], "1 sequences longer than 660 nt were truncated"),
    ("non_utf8_header.fasta", [], None),
    ("empty_sequence.fasta", ["--skip-empty"], "1 empty or too short skipped"),
    ("short.fasta", ["--skip-empty"], "1 empty or too short skipped"),
    ("duplicate_ids.fasta", ["--allow-duplicates"], "1 duplicate id kept"),
    ("bcdm_none.tsv", ["--skip-empty"], "1 empty or too short skipped"),
    ("reads.fastq", [], None),
]


def case_id(case) -> str:
    return case[0] + ("+" + "".join(o.lstrip("-")[:6] for o in case[1] if o.startswith("--")) if case[1] else "")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bad", seed=0)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-other", seed=1)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, model_dir) -> Path:
    """A small calibrated index: the 100 SINTAX reference records embedded with model_dir's model."""
    return save_sintax_index(model_dir, tmp_path_factory.mktemp("index"))


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


pytestmark = pytest.mark.usefixtures("private_folders")   # conftest.py: a private cache and data folder


def invoke(arguments: list[str]):
    return CliRunner().invoke(main, arguments)


def assert_one_error_line(result, *, exit_code: int = 1, names: list[str] = (), words: list[str] = ()):
    """Exactly one stderr line (run with -q), `barcodetool: error: ...`, naming each of `names`; no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("barcodetool: error: "), line
    assert "Traceback" not in result.output
    for part in [*names, *words]:
        assert part in line, (part, line)
    return line


def assert_nothing_written(folder: Path):
    assert sorted(p.name for p in folder.iterdir()) == [], "partial or temporary output left behind"


def read_ids(path: Path) -> list[str]:
    with h5py.File(path, "r") as handle:
        return handle["ids"].asstr()[:].tolist()


# ============================================================================================ embed
@pytest.mark.parametrize("case", ERRORS, ids=case_id)
def test_embed_bad_input_fails_with_one_line(case, model_dir, out_dir):
    name, options, words, record, fix = case
    path = BAD / name
    result = invoke(["-q", "embed", str(path), "-o", str(out_dir / "out.h5"), "-m", str(model_dir), *CPU,
                     *options])
    names = [str(path)] + ([f"record {record!r}"] if record else [])
    assert_one_error_line(result, names=names, words=[words, fix])
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("case", WORKS, ids=case_id)
def test_embed_tolerated_input_gives_one_row_per_record(case, model_dir, out_dir):
    name, options, note = case
    path = BAD / name
    output = out_dir / "out.h5"
    result = invoke(["embed", str(path), "-o", str(output), "-m", str(model_dir), *CPU, *options])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error" not in result.stderr
    reader_options = {"skip_empty": "--skip-empty" in options, "allow_duplicates": "--allow-duplicates" in options}
    expected = [r.id for r in read_barcodes(path, min_length=K, **reader_options)]
    assert expected and read_ids(output) == expected  # one row per record, in input order
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.h5"]
    if note:
        assert note in result.stderr, result.stderr


def test_embed_lower_case_equals_upper_case(model_dir, tmp_path):
    """Lower/mixed case gives the same embeddings as the upper-case sequence (the same cleaned input)."""
    outputs = []
    for name in ("mixed_case.fasta", "crlf.fasta"):
        output = tmp_path / f"{name}.h5"
        assert invoke(["-q", "embed", str(BAD / name), "-o", str(output), "-m", str(model_dir), *CPU]).exit_code == 0
        with h5py.File(output, "r") as handle:
            outputs.append(handle["embeddings"][:2])
    assert (outputs[0] == outputs[1]).all()


def test_embed_without_quiet_ends_with_the_error_line(model_dir, out_dir):
    """Without -q the log's INFO lines may come first; the error is still one line, the last one."""
    path = BAD / "protein.fasta"
    result = invoke(["embed", str(path), "-o", str(out_dir / "out.h5"), "-m", str(model_dir), *CPU])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert [line for line in lines if "error" in line] == lines[-1:]
    assert lines[-1].startswith("barcodetool: error: ") and str(path) in lines[-1]
    assert all(line.startswith("barcodetool: ") for line in lines)
    assert_nothing_written(out_dir)


# ============================================================================================ classify
@pytest.mark.parametrize("name", ["protein.fasta", "truncated.fasta.gz", "empty.fasta", "semicolon.csv",
                                  "duplicate_ids.fasta"])
def test_classify_bad_queries(name, model_dir, index_path, out_dir):
    case = next(c for c in ERRORS if c[0] == name and not c[1])
    path = BAD / name
    result = invoke(["-q", "classify", str(path), "-r", str(index_path), "-o", str(out_dir / "out.tsv"),
                     "-m", str(model_dir), *CPU])
    assert_one_error_line(result, names=[str(path)] + ([f"record {case[3]!r}"] if case[3] else []),
                          words=[case[2]])
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("name, options", [("gaps.fasta", []), ("duplicate_ids.fasta", ["--allow-duplicates"]),
                                           ("bcdm_none.tsv", ["--skip-empty"])])
def test_classify_tolerated_queries(name, options, model_dir, index_path, out_dir):
    path = BAD / name
    output = out_dir / "out.tsv"
    result = invoke(["-q", "classify", str(path), "-r", str(index_path), "-o", str(output), "-m", str(model_dir),
                     *CPU, *options])
    assert result.exit_code == 0, result.output
    rows = output.read_text(encoding="utf-8").splitlines()
    expected = [r.id for r in read_barcodes(path, min_length=K, skip_empty="--skip-empty" in options,
                                            allow_duplicates="--allow-duplicates" in options)]
    assert [row.split("\t")[0] for row in rows[1:]] == expected
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.tsv"]


def test_classify_and_cluster_refuse_a_record_longer_than_a_gene(model_dir, index_path, out_dir):
    """`embed` reads a 50 kb record from its first 660 nt; aligned whole, such a record took classify 9.9 s (20 kb),
    39 s (80 kb) or minutes (a 3 Mb contig, which then kept a SIGTERM waiting): classify and cluster refuse it by
    name, or with --skip-invalid skip it (counted)."""
    path = BAD / "long_50kb.fasta"
    for command in (["classify", str(path), "-r", str(index_path)], ["cluster", str(path)]):
        result = invoke(["-q", *command, "-o", str(out_dir / "out.tsv"), "-m", str(model_dir), *CPU])
        assert_one_error_line(result, names=[str(path), "record 'LONG-50KB'"],
                              words=["50,000 nt long, longer than a COI barcode or gene", "cut the COI region"])
        assert_nothing_written(out_dir)
    result = invoke(["classify", str(path), "-r", str(index_path), "-o", str(out_dir / "out.tsv"), "-m",
                     str(model_dir), *CPU, "--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert "1 invalid skipped (first: LONG-50KB)" in result.stderr
    rows = (out_dir / "out.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == [r.id for r in read_barcodes(path) if r.id != "LONG-50KB"]


def test_reference_without_taxonomy(model_dir, out_dir):
    """A reference FASTA without SINTAX taxonomy (or BINs) cannot classify: one line naming it and the fix."""
    reference = DATA / "example.fasta"  # 100 plain FASTA records, no taxonomy in the headers
    for command in (["classify", str(BAD / "crlf.fasta"), "-r", str(reference), "-o", str(out_dir / "out.tsv")],
                    ["reference", "build", str(reference), "-o", str(out_dir / "ref.h5")]):
        result = invoke(["-q", *command, "-m", str(model_dir), *CPU])
        assert_one_error_line(result, names=[str(reference)], words=["no taxonomy and no BIN", "SINTAX"])
        assert_nothing_written(out_dir)


def test_a_reference_that_needs_reading_options_points_to_reference_build(model_dir, out_dir, tmp_path):
    """classify's --allow-duplicates, --id-column and --sequence-column are the queries': the error for a reference
    table that needs them told the user to pass them, and passing them gave the same error."""
    table = tmp_path / "generic.tsv"
    table.write_text("sample\tseq\tgenus\n" + "".join(f"s{i}\t{r.sequence}\t{r.taxonomy.get('genus', '')}\n"
                                                       for i, r in enumerate(read_barcodes(DATA / "example.fasta"))))
    cases = [(BAD / "duplicate_ids.fasta", ["--allow-duplicates"], "--allow-duplicates is an option of"),
             (table, ["--id-column", "sample", "--sequence-column", "seq"], "--id-column and --sequence-column are")]
    for reference, options, words in cases:
        for extra in ([], options):
            result = invoke(["-q", "classify", str(BAD / "crlf.fasta"), "-r", str(reference), "-o",
                             str(out_dir / "out.tsv"), "-m", str(model_dir), *CPU, *extra])
            assert_one_error_line(result, names=[str(reference)],
                                  words=[words, f"barcodetool reference build {reference} -o ref.h5", "-r ref.h5"])
            assert_nothing_written(out_dir)


def test_index_built_with_another_model(other_model_dir, index_path, out_dir):
    for command in (["classify", str(BAD / "crlf.fasta"), "-o", str(out_dir / "out.tsv")],
                    ["cluster", str(BAD / "crlf.fasta"), "-o", str(out_dir / "out.tsv")]):
        result = invoke(["-q", *command, "-r", str(index_path), "-m", str(other_model_dir), *CPU])
        # tiny-bad is a folder, not a registry name: `--model tiny-bad` would be refused as unknown
        assert_one_error_line(result, names=[str(index_path)], words=["tiny-bad", "tiny-other", "rebuild",
                                                                       "--model with the folder of model 'tiny-bad'"])
        assert_nothing_written(out_dir)


def test_a_file_that_is_not_an_index(model_dir, tmp_path, out_dir):
    """An HDF5 file of embeddings given as --reference is refused by name."""
    embeddings = tmp_path / "embeddings.h5"
    assert invoke(["-q", "embed", str(BAD / "crlf.fasta"), "-o", str(embeddings), "-m", str(model_dir),
                   *CPU]).exit_code == 0
    result = invoke(["-q", "classify", str(BAD / "crlf.fasta"), "-r", str(embeddings), "-o",
                     str(out_dir / "out.tsv"), "-m", str(model_dir), *CPU])
    assert_one_error_line(result, names=[str(embeddings)], words=["not a barcodetool reference index"])
    assert_nothing_written(out_dir)



def test_a_folder_given_as_an_index_is_one_line(tmp_path):
    """HDF5's own message holds a line break (after its time stamp): the error stays one line."""
    folder = tmp_path / "folder.h5"
    folder.mkdir()
    assert_one_error_line(invoke(["-q", "reference", "info", str(folder)]), names=[str(folder)],
                          words=["cannot open as HDF5", "reference build"])

# ============================================================================================ weights
def broken_model(model_dir: Path, folder: Path, how: str) -> Path:
    shutil.copytree(model_dir, folder)
    tensors, card = folder / TENSORS_FILE, folder / CARD_FILE
    if how == "flipped byte":
        data = bytearray(tensors.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif how == "truncated":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    elif how == "missing tensors":
        tensors.unlink()
    elif how == "unknown keys":
        content = json.loads(card.read_text())
        content["quantum_pooling"] = True
        card.write_text(json.dumps(content))
    elif how == "newer version":
        content = json.loads(card.read_text())
        content["format_version"] = 99
        card.write_text(json.dumps(content))
    elif how == "card not JSON":
        card.write_text('{"format": "barcodetool-model", "format_version": 1,')
    return folder


MODEL_CASES = [("flipped byte", TENSORS_FILE, "sha256 does not match"),
               ("truncated", TENSORS_FILE, "sha256 does not match"),
               ("missing tensors", "", "model.safetensors is missing"),
               ("unknown keys", CARD_FILE, "unknown keys quantum_pooling"),
               ("newer version", CARD_FILE, "model format version 99 is newer"),
               ("card not JSON", CARD_FILE, "not valid JSON")]


@pytest.mark.parametrize("how, file, words", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_broken_model_folder(how, file, words, model_dir, tmp_path, out_dir):
    folder = broken_model(model_dir, tmp_path / "broken", how)
    named = str(folder / file) if file else str(folder)
    result = invoke(["-q", "embed", str(BAD / "crlf.fasta"), "-o", str(out_dir / "out.h5"), "-m", str(folder), *CPU])
    assert_one_error_line(result, names=[named], words=[words])
    assert_nothing_written(out_dir)


# ============================================================================================ --debug
def test_debug_shows_the_traceback_and_keeps_the_exit_status(model_dir, out_dir):
    path = BAD / "protein.fasta"
    result = invoke(["--debug", "embed", str(path), "-o", str(out_dir / "out.h5"), "-m", str(model_dir), *CPU])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "InputError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("barcodetool: error: ")
    assert_nothing_written(out_dir)
    # a usage error found by barcodetool (not by Click) keeps its exit status 2 under --debug
    usage = invoke(["--debug", "cluster", str(BAD / "crlf.fasta"), "-o", str(out_dir / "out.tsv"),
                    "--threshold", "0.1", "--n-clusters", "2"])
    assert usage.exit_code == 2, usage.output
    assert "Traceback" in usage.stderr and "not both" in usage.stderr.splitlines()[-1]
    assert_nothing_written(out_dir)


# ============================================================================================ real processes
def run_cli(arguments: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "barcodetool", *arguments], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture
def process_env(subprocess_env, tmp_path) -> dict:
    return dict(subprocess_env, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))


@pytest.mark.parametrize("kind", ["input", "model", "index"])
def test_real_process_one_line_and_exit_1(kind, model_dir, other_model_dir, index_path, tmp_path, out_dir,
                                          process_env):
    if kind == "input":  # a bad query file, found while classifying
        path = BAD / "truncated.fasta.gz"
        arguments = ["classify", str(path), "-r", str(index_path), "-o", str(out_dir / "out.tsv"),
                     "-m", str(model_dir)]
    elif kind == "model":
        path = broken_model(model_dir, tmp_path / "broken", "truncated") / TENSORS_FILE
        arguments = ["embed", str(BAD / "crlf.fasta"), "-o", str(out_dir / "out.h5"), "-m", str(path.parent)]
    else:
        path = index_path
        arguments = ["classify", str(BAD / "crlf.fasta"), "-r", str(index_path), "-o", str(out_dir / "out.tsv"),
                     "-m", str(other_model_dir)]
    done = run_cli(["-q", *arguments, *CPU], process_env)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("barcodetool: error: ") and str(path) in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert_nothing_written(out_dir)


def test_real_process_tolerated_input_and_debug(model_dir, out_dir, process_env):
    output = out_dir / "out.h5"
    done = run_cli(["embed", str(BAD / "gaps.fasta"), "-o", str(output), "-m", str(model_dir), *CPU], process_env)
    assert done.returncode == 0, done.stderr
    assert "gaps removed from 2" in done.stderr and "Traceback" not in done.stderr
    assert read_ids(output) == [r.id for r in read_barcodes(BAD / "gaps.fasta")]

    path = BAD / "semicolon.csv"
    debug = run_cli(["--debug", "embed", str(path), "-o", str(out_dir / "bad.h5"), "-m", str(model_dir), *CPU],
                    process_env)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "wrong delimiter" in debug.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.h5"]


def test_usage_error_exit_2_in_a_real_process(model_dir, out_dir, process_env):
    done = run_cli(["embed", str(BAD / "crlf.fasta"), "-o", str(out_dir / "out.h5"), "--batch-size", "0"],
                   process_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--batch-size" in done.stderr
    assert_nothing_written(out_dir)
