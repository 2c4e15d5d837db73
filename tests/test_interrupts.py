"""SIGINT and SIGTERM while a command is working: exit status 130 / 143, one line on stderr, no partial output.

Every command runs as a real `python -m barcodetool` process on an input that keeps it busy for a while. Once
the process is working (its temporary `.part` output exists, or its log says it is reading, or training has
written a checkpoint), the test sends the signal and checks what is left: the final output must not exist,
no `.part` file may remain, and a training run keeps at most its last complete checkpoint (the point of
`--resume`) and no half-written model.

All runs are started together by one module fixture and signalled as each becomes ready, so the suite pays the
interpreter and PyTorch start-up once rather than once per case.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from barcodetool.cli._common import handle_errors
from barcodetool.io.atomic import atomic_text
from barcodetool.io.readers import BarcodeRecord, read_barcodes, sintax_header
from barcodetool.reference import build_reference
from barcodetool.train import CHECKPOINT_DIR, STATE_FILE, checkpoint_folder, read_training_state
from barcodetool.model.weights import CARD_FILE, TENSORS_FILE, load_model_folder, sha256_file
from helpers_models import SAMPLE, SINTAX_REFERENCE, load_tiny, make_tiny_model

CPU = ["--device", "cpu", "--threads", "1"]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
READY_TIMEOUT = 150.0


def mutated_fasta(path: Path, n: int, seed: int = 0, taxonomy: bool = False) -> Path:
    """N barcodes of the sample with ~2% random substitutions each (distinct sequences, unique ids); with
    `taxonomy`, SINTAX headers carrying each source record's taxonomy."""
    rng = np.random.default_rng(seed)
    records = [r for r in read_barcodes(SAMPLE, skip_empty=True, min_length=6) if r.taxonomy]
    lines = []
    for i in range(n):
        record = records[i % len(records)]
        sequence = bytearray(record.sequence.encode())
        for position in rng.integers(0, len(sequence), max(1, len(sequence) // 50)):
            sequence[position] = b"ACGT"[rng.integers(4)]
        header = sintax_header(BarcodeRecord(f"q{i}", "", record.taxonomy)) if taxonomy else f"q{i}"
        lines.append(f">{header}\n{sequence.decode()}\n")
    path.write_text("".join(lines))
    return path


@dataclass
class Run:
    name: str
    signal: int
    arguments: list[str]
    folder: Path                       # holds the outputs (and nothing else)
    ready: Callable[[Run], bool]
    process: subprocess.Popen | None = None
    signalled: bool = False
    returncode: int | None = None
    stderr: str = ""
    listing: list[str] = field(default_factory=list)

    @property
    def stderr_path(self) -> Path:
        return self.folder.parent / f"{self.name}.stderr"


def part_file_exists(run: Run) -> bool:
    return any(p.name.endswith(".part") for p in run.folder.iterdir())


def log_says(words: str) -> Callable[[Run], bool]:
    def ready(run: Run) -> bool:
        return words in run.stderr_path.read_text(errors="replace")
    return ready


def checkpoint_written(run: Run) -> bool:
    return (run.folder / "model" / CHECKPOINT_DIR / STATE_FILE).is_file()


def restore_default_sigint():  # pragma: no cover - runs in the child before exec
    # A shell that starts a job in the background ignores SIGINT for it, and an ignored signal stays ignored
    # across exec; give the command the default disposition so that Python turns SIGINT into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, subprocess_env) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("interrupts")
    model = make_tiny_model(root / "tiny-int", seed=0)
    index = build_reference(read_barcodes(SINTAX_REFERENCE), load_tiny(model)).save(root / "ref.h5")
    queries = mutated_fasta(root / "queries.fasta", 6000)
    few = mutated_fasta(root / "few.fasta", 3000, seed=1)
    labelled = mutated_fasta(root / "labelled.fasta", 6000, seed=2, taxonomy=True)
    env = dict(subprocess_env, XDG_CACHE_HOME=str(root / "cache"), XDG_DATA_HOME=str(root / "data"))

    def out(name: str) -> Path:
        folder = root / name
        folder.mkdir()
        return folder

    specs = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        tag = sig.name
        folder = out(f"embed-{tag}")
        specs.append(Run(f"embed-{tag}", sig, ["-q", "embed", str(queries), "-o", str(folder / "out.h5"),
                                               "-m", str(model), *CPU], folder, part_file_exists))
        folder = out(f"classify-{tag}")
        specs.append(Run(f"classify-{tag}", sig, ["-q", "classify", str(queries), "-r", str(index), "-o",
                                                  str(folder / "out.tsv"), "-m", str(model), *CPU],
                         folder, part_file_exists))
        folder = out(f"cluster-{tag}")
        specs.append(Run(f"cluster-{tag}", sig, ["cluster", str(few), "-o", str(folder / "clusters.tsv"),
                                                 "--metrics", str(folder / "metrics.json"), "-m", str(model),
                                                 *CPU], folder, log_says("few.fasta: read 3,000 records")))
        folder = out(f"train-{tag}")
        specs.append(Run(f"train-{tag}", sig, ["-q", "train", str(SAMPLE), "--preset", "tiny", "--max-steps",
                                               "100000", "--batch-size", "8", "--checkpoint-every", "3",
                                               "--log-every", "1", "-o", str(folder / "model"), *CPU],
                         folder, checkpoint_written))
    folder = out("reference-build-SIGINT")
    specs.append(Run("reference-build-SIGINT", signal.SIGINT, ["reference", "build", str(labelled), "-o",
                                                               str(folder / "ref.h5"), "-m", str(model), *CPU],
                     folder, log_says("model tiny-int")))

    for run in specs:
        with open(run.stderr_path, "wb") as stderr:
            run.process = subprocess.Popen([sys.executable, "-m", "barcodetool", *run.arguments], env=env,
                                           stdout=subprocess.DEVNULL, stderr=stderr,
                                           preexec_fn=restore_default_sigint)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while not all(run.signalled or run.process.poll() is not None for run in specs):
            for run in specs:
                if run.signalled or run.process.poll() is not None:
                    continue
                if run.ready(run):
                    run.process.send_signal(run.signal)
                    run.signalled = True
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        for run in specs:
            try:
                run.returncode = run.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.returncode = run.process.wait()
    finally:
        for run in specs:
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
    for run in specs:
        run.stderr = run.stderr_path.read_text(errors="replace")
        run.listing = sorted(str(p.relative_to(run.folder)) for p in run.folder.rglob("*"))
    return {run.name: run for run in specs}


def check_interrupted(run: Run) -> None:
    assert run.signalled, f"{run.name} ended (status {run.returncode}) before it was seen working:\n{run.stderr}"
    assert run.returncode == EXIT[run.signal], (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("barcodetool: interrupted") and "no partial output" in last, run.stderr
    assert not [name for name in run.listing if name.endswith(".part")], run.listing


@pytest.mark.parametrize("name", ["embed-SIGINT", "embed-SIGTERM", "classify-SIGINT", "classify-SIGTERM",
                                  "cluster-SIGINT", "cluster-SIGTERM", "reference-build-SIGINT"])
def test_interrupted_command_leaves_no_output(runs, name):
    run = runs[name]
    check_interrupted(run)
    assert run.listing == [], f"{name} left {run.listing}"


@pytest.mark.parametrize("name", ["train-SIGINT", "train-SIGTERM"])
def test_interrupted_training_keeps_only_complete_checkpoints(runs, name):
    run = runs[name]
    check_interrupted(run)
    model = run.folder / "model"
    # no model in the run folder itself: it is written only when training ends
    assert not (model / TENSORS_FILE).exists() and not (model / CARD_FILE).exists(), run.listing
    # nothing half-written: the checkpoint staging folder is gone, and the checkpoint --resume would use is whole
    assert not [name for name in run.listing if ".partial" in name], run.listing
    folder = checkpoint_folder(model)
    assert folder is not None, run.listing
    state = read_training_state(folder)
    assert sha256_file(folder / TENSORS_FILE) == state["model_sha256"]
    assert sha256_file(folder / "optimizer.safetensors") == state["optimizer_sha256"]
    load_model_folder(folder)  # verifies the card's sha256 too
    assert state["step"] >= 3 and state["step"] % 3 == 0
    # the message names the checkpoint in place, once, not the files of its staging folder (gone by then)
    last = run.stderr.strip().splitlines()[-1]
    assert ".partial" not in last and last.count(str(model / "checkpoint")) == 1, last


# ============================================================================================ swallowed signals
class SwallowsASignal:
    """Sends SIGTERM from its __del__ and runs on: the handler's exception is raised inside __del__, where
    Python prints "Exception ignored in ..." and drops it (as it does in weakref callbacks run by the GC)."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100_000):
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_swallowed_signal_still_blocks_the_output(tmp_path):
    """Even when the interruption is lost on the way, the output is not published and the exit status is 143."""

    @click.command()
    @handle_errors
    def command():
        SwallowsASignal()  # deleted at once
        with atomic_text(tmp_path / "out.txt") as handle:
            handle.write("a whole output, but the run was interrupted\n")

    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 143, result.output
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handlers are gone again


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_swallowed_signal_is_delivered_again(tmp_path):
    """A long computation after a swallowed SIGTERM is stopped by the re-delivered signal, within a second."""
    finished = []

    @click.command()
    @handle_errors
    def command():
        SwallowsASignal()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)

    start = time.monotonic()
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 143, result.output
    assert not finished and time.monotonic() - start < 10
