"""Outputs that never destroy what their path names, and paths checked before the work (issue 16).

- An output that is not a regular file (a device, a FIFO) is written through, never replaced by the atomic rename;
  a symlink stays a symlink (its target is replaced atomically); `-` is standard output for every command.
- A full disk while writing (HDF5, TSV, SINTAX, JSON) ends with exit status 1 and one line naming the output and
  the fix, the old file kept and no temporary file left (real processes: HDF5 used to crash the interpreter).
- An output may not overwrite a file of the model in use.
- Inputs and outputs are checked before any model is loaded: a directory, a missing file or folder, a read-only
  file system give one line with a fix, not the raw errno after all the work.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from barcodetool.cli import main
from barcodetool.embedding import read_embeddings
from barcodetool.io.atomic import atomic_hdf5, atomic_path, atomic_text
from barcodetool.io.readers import read_barcodes
from barcodetool.reference import ReferenceIndex, build_reference
from helpers_models import DATA, SAMPLE, load_tiny, make_tiny_model

FASTA = DATA / "example.fasta"
CPU = ["--device", "cpu", "--threads", "1"]
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-out", seed=0)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, model_dir) -> Path:
    records = list(read_barcodes(SAMPLE, skip_empty=True))
    index = build_reference([r for r in records if r.split in ("train", "val")], load_tiny(model_dir))
    return index.save(tmp_path_factory.mktemp("index") / "ref.h5")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *arguments) -> object:
    return runner.invoke(main, [str(a) for a in arguments], catch_exceptions=False)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("barcodetool: error")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_part_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".part")]


@contextlib.contextmanager
def fifo_reader(path: Path):
    """A FIFO at `path` and a thread reading it whole; yields a dict whose "data" holds the bytes once read."""
    os.mkfifo(path)
    got: dict[str, bytes] = {}

    def read():
        with open(path, "rb") as handle:   # blocks until the writer opens it
            got["data"] = handle.read()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        if thread.is_alive():   # the writer never came: open the write end so that the reader returns
            with contextlib.suppress(OSError):
                descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.close(descriptor)
        thread.join(timeout=60)
    assert not thread.is_alive()


# ============================================================================================ devices, FIFOs, links
def test_dev_null_stays_a_device(model_dir, tmp_path, subprocess_env):
    """`-o /dev/null` (as root too) writes through: /dev/null is still the character device afterwards."""
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    runs = [subprocess.Popen([sys.executable, "-m", "barcodetool", *command, "-m", str(model_dir), *CPU,
                              "-o", os.devnull], env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for command in (["embed", str(FASTA)], ["reference", "build", str(SAMPLE)])]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert list(tmp_path.iterdir()) == []


def test_fifo_outputs_are_written_through(runner, model_dir, index_path, tmp_path):
    """A FIFO output stays a FIFO and its reader gets the whole output: TSV as it is made, HDF5 once complete."""
    regular = tmp_path / "regular.tsv"
    assert invoke(runner, "classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", regular).exit_code == 0
    with fifo_reader(tmp_path / "tsv.fifo") as got:
        result = invoke(runner, "classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", tmp_path / "tsv.fifo")
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.stat(tmp_path / "tsv.fifo").st_mode)
    assert got["data"] == regular.read_bytes()

    with fifo_reader(tmp_path / "h5.fifo") as got:
        result = invoke(runner, "embed", FASTA, "-m", model_dir, *CPU, "-o", tmp_path / "h5.fifo")
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.stat(tmp_path / "h5.fifo").st_mode)
    (tmp_path / "copied.h5").write_bytes(got["data"])
    assert len(read_embeddings(tmp_path / "copied.h5").ids) == 100
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_symlink_output_stays_a_symlink(runner, model_dir, index_path, tmp_path):
    target = tmp_path / "data" / "result.tsv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "link.tsv"
    link.symlink_to(target)
    result = invoke(runner, "classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text().startswith("id\t")
    # a dangling link: its target is created, the link kept
    dangling = tmp_path / "embeddings.h5"
    dangling.symlink_to(tmp_path / "data" / "new.h5")
    result = invoke(runner, "embed", FASTA, "-m", model_dir, *CPU, "-o", dangling)
    assert result.exit_code == 0, result.output
    assert dangling.is_symlink() and len(read_embeddings(tmp_path / "data" / "new.h5").ids) == 100
    assert no_part_files(tmp_path) and no_part_files(tmp_path / "data")


def test_library_writers_keep_devices_and_links(tmp_path):
    """atomic_text / atomic_path / atomic_hdf5 to a symlink replace its target; to a FIFO they write through."""
    target = tmp_path / "target.txt"
    target.write_text("old")
    (tmp_path / "link").symlink_to(target)
    with atomic_text(tmp_path / "link") as handle:
        handle.write("new")
    assert (tmp_path / "link").is_symlink() and target.read_text() == "new"
    with fifo_reader(tmp_path / "fifo") as got, atomic_path(tmp_path / "fifo") as temporary:
        Path(temporary).write_bytes(b"bytes made whole, then copied")
    assert got["data"] == b"bytes made whole, then copied"
    with fifo_reader(tmp_path / "fifo2") as got, atomic_hdf5(tmp_path / "fifo2") as handle:
        handle.create_dataset("x", data=[1, 2, 3])
    assert got["data"].startswith(HDF5_SIGNATURE)
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode) and stat.S_ISFIFO(os.stat(tmp_path / "fifo2").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "fifo2", "link", "target.txt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_dev_full_is_one_line(runner, model_dir, index_path):
    """/dev/full is written through (never replaced) and its ENOSPC is one line with the fix."""
    for arguments in (["classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", "/dev/full"],
                      ["embed", FASTA, "-m", model_dir, *CPU, "-o", "/dev/full"],
                      ["cluster", FASTA, "-m", model_dir, *CPU, "-o", os.devnull, "--metrics", "/dev/full"]):
        result = invoke(runner, *arguments)
        assert result.exit_code == 1
        assert error_lines(result) == ["barcodetool: error: no space left on the device holding /dev/full (free "
                                       "space or choose another output path)"]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_standard_output_on_a_full_device_and_a_pseudo_file_system_are_one_true_line(model_dir, index_path,
                                                                                       subprocess_env):
    """`classify -o - > /dev/full` printed a bare "OSError: [Errno 28]"; `-o /proc/out.tsv` claimed "no space left"
    (a pseudo file system reports no blocks, so none free)."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "barcodetool", "-q", "classify", FASTA, "-r", str(index_path),
                               "-m", str(model_dir), *CPU, "-o", "-"], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=subprocess_env, timeout=120)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "barcodetool: error: no space left on the device holding standard output (free space or write the output "
        "elsewhere)"], done.stderr
    if os.path.isdir("/proc") and os.statvfs("/proc").f_blocks == 0:
        result = invoke(CliRunner(), "classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o",
                        "/proc/barcodetool-out.tsv")
        assert result.exit_code == 1 and "no space" not in result.stderr, result.stderr
        assert error_lines(result)[0].startswith("barcodetool: error: /proc/barcodetool-out.tsv: cannot create")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_clusters_are_not_left_where_their_metrics_cannot_be_written(runner, model_dir, tmp_path):
    """The two outputs of `cluster` succeed or fail together: metrics that cannot be written leave no clusters
    file (a pipeline that checks only for it would go on with a run that failed)."""
    clusters = tmp_path / "clusters.tsv"
    result = invoke(runner, "cluster", FASTA, "-m", model_dir, *CPU, "-o", str(clusters), "--metrics", "/dev/full")
    assert result.exit_code == 1 and "no space left" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_text_outputs_named_gz_bz2_or_xz_are_compressed(runner, model_dir, index_path, tmp_path):
    """`-o out.tsv.gz` wrote plain text under a .gz name (zcat failed); named so, a text output is compressed, with
    the same content as the plain one, and the same bytes twice (no name or time stamp in the gzip header)."""
    plain = tmp_path / "plain.tsv"
    assert invoke(runner, "classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", plain).exit_code == 0
    for suffix, opener in ((".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)):
        packed = tmp_path / f"out.tsv{suffix}"
        result = invoke(runner, "classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", packed)
        assert result.exit_code == 0, result.stderr
        with opener(packed, "rt", encoding="utf-8") as handle:
            assert handle.read() == plain.read_text()
    first = (tmp_path / "out.tsv.gz").read_bytes()
    invoke(runner, "classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", tmp_path / "out.tsv.gz")
    assert (tmp_path / "out.tsv.gz").read_bytes() == first and b"part" not in first[:64]
    metrics = tmp_path / "metrics.json.gz"
    result = invoke(runner, "cluster", FASTA, "-m", model_dir, *CPU, "-o", tmp_path / "c.tsv", "--metrics", metrics)
    assert result.exit_code == 0 and json.loads(gzip.decompress(metrics.read_bytes()))["n_clusters"] > 0


# ============================================================================================ standard output
def test_dash_means_standard_output(runner, model_dir, index_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(runner, "embed", FASTA, "-m", model_dir, *CPU, "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith(HDF5_SIGNATURE)
    Path("stdout.h5").write_bytes(result.stdout_bytes)
    assert len(read_embeddings("stdout.h5").ids) == 100
    assert "to standard output" in result.stderr

    result = invoke(runner, "reference", "build", SAMPLE, "-m", model_dir, *CPU, "-o", "-")
    assert result.exit_code == 0, result.stderr
    Path("stdout-ref.h5").write_bytes(result.stdout_bytes)
    assert len(ReferenceIndex.load("stdout-ref.h5")) == 249

    pytest.importorskip("matplotlib")
    result = invoke(runner, "plot", "embeddings", "stdout.h5", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith(PNG_SIGNATURE)
    assert not Path("-").exists()   # never a file literally named "-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stdout-ref.h5", "stdout.h5"]


def test_dash_refused_where_it_makes_no_sense(runner, model_dir, tmp_path):
    result = invoke(runner, "cluster", FASTA, "-m", model_dir, *CPU, "-o", "-", "--metrics", "-")
    assert result.exit_code == 2 and "cannot both be standard output" in result.stderr
    result = invoke(runner, "benchmark", SAMPLE, "-m", model_dir, *CPU, "--json", "-")
    assert result.exit_code == 2 and "the table goes to standard output" in result.stderr


# ============================================================================================ the model in use
def test_outputs_may_not_overwrite_the_model(runner, model_dir, index_path, tmp_path):
    before = {p.name: sha256(p) for p in model_dir.iterdir()}
    cases = [
        ["embed", FASTA, "-m", model_dir, *CPU, "-o", model_dir / "model.safetensors"],
        ["embed", FASTA, "-m", model_dir, *CPU, "-o", model_dir / "encoder.onnx"],   # not there yet: still its own
        ["reference", "build", SAMPLE, "-m", model_dir, *CPU, "-o", model_dir / "barcodetool.json"],
        ["classify", FASTA, "-r", index_path, "-m", model_dir, *CPU, "-o", model_dir / "model.safetensors"],
        ["cluster", FASTA, "-m", model_dir, *CPU, "-o", tmp_path / "c.tsv", "--metrics",
         model_dir / "barcodetool.json"],
    ]
    for arguments in cases:
        result = invoke(runner, *arguments)
        assert result.exit_code == 1, (arguments, result.output)
        assert len(error_lines(result)) == 1 and "would overwrite a file of the model in use" in result.stderr
    assert {p.name: sha256(p) for p in model_dir.iterdir()} == before
    assert not (tmp_path / "c.tsv").exists()


# ============================================================================================ checked before the work
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading a model or a reference."""
    import barcodetool.cli.benchmark as benchmark_cli
    import barcodetool.cli.classify as classify_cli
    import barcodetool.cli.cluster as cluster_cli
    import barcodetool.cli.embed as embed_cli
    import barcodetool.cli.reference as reference_cli
    import barcodetool.plot as plot_module

    def forbidden(*args, **kwargs):
        raise AssertionError("the work started before the paths were checked")

    for module, name in ((classify_cli, "_index_and_model"), (cluster_cli, "load_inference_model"),
                         (embed_cli, "load_model"), (reference_cli, "load_inference_model"),
                         (benchmark_cli, "load_inference_model"), (plot_module, "read_embedding_rows")):
        monkeypatch.setattr(module, name, forbidden)


def test_paths_are_checked_before_the_work(runner, no_work, model_dir, index_path, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    embeddings = tmp_path / "e.h5"
    embeddings.write_bytes(b"")
    cases = {
        # outputs
        "is a directory (give a file name for the output)": [
            ["classify", FASTA, "-r", index_path, "-m", model_dir, "-o", folder],
            ["cluster", FASTA, "-m", model_dir, "-o", folder],
            ["cluster", FASTA, "-m", model_dir, "-o", tmp_path / "c.tsv", "--metrics", folder],
            ["benchmark", SAMPLE, "-m", model_dir, "--json", folder]],
        "does not exist (create it first, or choose another": [
            ["classify", FASTA, "-r", index_path, "-m", model_dir, "-o", tmp_path / "none" / "x.tsv"],
            ["embed", FASTA, "-m", model_dir, "-o", tmp_path / "none" / "x.h5"],
            ["reference", "build", SAMPLE, "-m", model_dir, "-o", tmp_path / "none" / "x.h5"],
            ["plot", "embeddings", embeddings, "-o", tmp_path / "none" / "x.png"]],
        # inputs
        "file not found (check the path)": [
            ["classify", tmp_path / "missing.fa", "-r", index_path, "-m", model_dir, "-o", tmp_path / "x.tsv"],
            ["classify", FASTA, "-r", tmp_path / "missing.h5", "-m", model_dir, "-o", tmp_path / "x.tsv"],
            ["cluster", tmp_path / "missing.fa", "-m", model_dir, "-o", tmp_path / "x.tsv"],
            ["embed", tmp_path / "missing.fa", "-m", model_dir, "-o", tmp_path / "x.h5"],
            ["reference", "build", tmp_path / "missing.csv", "-m", model_dir, "-o", tmp_path / "x.h5"],
            ["benchmark", tmp_path / "missing.csv", "-m", model_dir],
            ["plot", "embeddings", tmp_path / "missing.h5", "-o", tmp_path / "x.png"],
            ["plot", "benchmark", tmp_path / "missing.json", "-o", tmp_path / "x.png"]],
        "is a directory, not a file": [
            ["classify", FASTA, "-r", folder, "-m", model_dir, "-o", tmp_path / "x.tsv"],
            ["classify", folder, "-r", index_path, "-m", model_dir, "-o", tmp_path / "x.tsv"],
            ["cluster", FASTA, "-r", folder, "-m", model_dir, "-o", tmp_path / "x.tsv"],
            ["embed", folder, "-m", model_dir, "-o", tmp_path / "x.h5"],
            ["plot", "embeddings", embeddings, "--clusters", folder, "-o", tmp_path / "x.png"]],
    }
    for words, commands in cases.items():
        for arguments in commands:
            result = invoke(runner, *arguments)
            assert result.exit_code == 1, (arguments, result.output)
            assert len(error_lines(result)) == 1 and words in result.stderr, (arguments, result.stderr)
            assert "Errno" not in result.stderr and "Error:" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "folder"]


# ============================================================================================ full disk (root)
@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs mounted in tmp_path (root only; the test is skipped where mounting is not possible)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` but for `leave` bytes."""
    filler = disk / "filler"
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))


def test_full_disk_is_one_line_and_keeps_the_old_file(tiny_disk, model_dir, index_path, subprocess_env):
    """Real processes: HDF5 (embed, reference build), TSV and SINTAX outputs on a full disk exit 1 with one line,
    never a crash (HDF5 used to end in a segmentation fault), the old file kept, no temporary left. (A JSON output
    fits in the last free page: see test_dev_full_is_one_line.)"""
    outputs = {name: tiny_disk / name for name in ("e.h5", "r.h5", "c.tsv", "s.txt")}
    for path in outputs.values():
        path.write_text("old\n")
    fill(tiny_disk, 8192)   # room to pass the checks before the work, not for any of the outputs
    commands = {
        "e.h5": ["embed", FASTA, "-m", model_dir],
        "r.h5": ["reference", "build", SAMPLE, "-m", model_dir],
        "c.tsv": ["classify", FASTA, "-r", index_path, "-m", model_dir],
        "s.txt": ["classify", FASTA, "-r", index_path, "-m", model_dir, "--output-format", "sintax"],
    }
    runs = {}
    for name, command in commands.items():
        runs[name] = subprocess.Popen([sys.executable, "-m", "barcodetool", *map(str, command), "-o",
                                       str(outputs[name]), *CPU], env=subprocess_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, run in runs.items():
        _, err = run.communicate(timeout=300)
        assert run.returncode == 1, (name, run.returncode, err)
        errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert errors == [f"barcodetool: error: no space left on the device holding {outputs[name]} (free space "
                          "or choose another output path)"], (name, err)
        assert outputs[name].read_text() == "old\n"
    assert sorted(p.name for p in tiny_disk.iterdir()) == sorted([*outputs, "filler"])


def test_full_disk_found_before_the_work(tiny_disk, runner, no_work, model_dir):
    fill(tiny_disk, 0)
    result = invoke(runner, "embed", FASTA, "-m", model_dir, "-o", tiny_disk / "e.h5")
    assert result.exit_code == 1
    assert error_lines(result) == [f"barcodetool: error: no space left on the device holding {tiny_disk / 'e.h5'} "
                                   "(free space or choose another -o)"]


def test_read_only_file_system(tmp_path, runner, no_work, model_dir, index_path):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "ro"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    try:
        result = invoke(runner, "classify", FASTA, "-r", index_path, "-m", model_dir, "-o", disk / "x.tsv")
        assert result.exit_code == 1
        assert error_lines(result) == [f"barcodetool: error: {disk / 'x.tsv'}: cannot write in folder {disk} "
                                       "(read-only file system; choose another -o)"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
