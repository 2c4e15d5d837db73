"""Signals at the edges of a command, the global options, closed pipes, progress bars and training logs (issue 16).

Signals before a command runs, a closed standard output and training in a batch job run as real processes
(`python -m barcodetool`, or a script named `barcodetool` as the console script is); the rest in-process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from barcodetool.cli import _StderrHandler, main
from barcodetool.cli._common import Context, handle_errors
from barcodetool.io import interrupts, read_barcodes
from barcodetool.io.atomic import atomic_text
from barcodetool.io.interrupts import SignalGuard, note_published, signals_held
from barcodetool.reference import build_reference
from barcodetool.reference.build import open_reference
from barcodetool.train import STATE_FILE, checkpoint_folder
from helpers_models import SAMPLE, SINTAX_REFERENCE, load_tiny, make_tiny_model, restore_torch_threads  # noqa: F401

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
CPU = ["--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("signals") / "tiny-sig", seed=0)


@pytest.fixture(scope="module")
def index_path(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signals-index") / "ref.h5"
    build_reference(read_barcodes(SINTAX_REFERENCE), load_tiny(tiny)).save(path)
    return path


# ============================================================================================ signals at the edges
def default_signals():  # pragma: no cover - runs in the child before exec
    # A shell that runs the tests in the background ignores SIGINT for them, and an ignored signal stays ignored
    # across exec (barcodetool then leaves it ignored, on purpose): give the child the default dispositions.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_command_runs_gives_one_line_and_its_status(tmp_path, subprocess_env, sig):
    """What the console script does first (import barcodetool.cli) installs the handlers: a signal that arrives
    right after, before any command runs, gives the one line and 130/143, not a traceback or a silent death."""
    script = tmp_path / "barcodetool"   # the console script's name: only the program installs the handlers
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from barcodetool.cli import main   # as the console script does
        os.kill(os.getpid(), {int(sig)})   # a signal before main() (the command) runs
        time.sleep(20)
        print("not interrupted")
    """))
    result = subprocess.run([sys.executable, str(script)], env=subprocess_env, capture_output=True, text=True,
                            timeout=60, preexec_fn=default_signals)
    assert result.returncode == EXIT[sig], (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "not interrupted" not in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"barcodetool: interrupted {'(SIGINT)' if sig == signal.SIGINT else 'by signal 15'}; "
        "no partial output was left"]


def test_only_the_program_installs_early_handlers(monkeypatch):
    """`python -m barcodetool` and the console script install them; a Python program importing barcodetool does
    not (its own SIGINT handling is left alone)."""
    main_py = str(Path(interrupts.__file__).parent.parent / "__main__.py")
    for argv, expected in [([main_py, "classify"], True), (["/venv/bin/barcodetool", "models"], True),
                           (["/venv/lib/python3.11/site-packages/pytest/__main__.py", "tests"], False),
                           (["script.py"], False), (["-c"], False), ([], False)]:
        monkeypatch.setattr(sys, "argv", argv)
        assert interrupts.launched_as_program() is expected, argv
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this test process: untouched


def test_an_interruption_after_an_output_was_published_says_so(tmp_path):
    """A SIGTERM after the output is in place does not claim that nothing was left: it names the output."""
    published = tmp_path / "out.tsv"

    @click.command()
    @handle_errors
    def command():
        published.write_text("complete\n")
        note_published(published)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 143, result.output
    assert f"barcodetool: interrupted by signal 15 after {published} was written" in result.output
    assert "no partial output was left" not in result.output
    assert published.read_text() == "complete\n"


def test_atomic_outputs_report_that_they_were_published(tmp_path):
    published = tmp_path / "out.tsv"

    @click.command()
    @handle_errors
    def command():
        with atomic_text(published) as handle:
            handle.write("complete\n")
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 130, result.output
    assert f"interrupted (SIGINT) after {published} was written" in result.output


def test_no_resent_signal_reaches_the_restored_handler():
    """The watchdog that sends a swallowed signal again is stopped and joined before the previous handlers
    return: nothing it sent lands on them (once seen as a classify run killed by SIGINT after its message)."""
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: calls.append(number))
    try:
        guard = SignalGuard()
        guard.REDELIVER_S = 0.005   # the watchdog sends often: a signal is in flight when restore() begins
        guard.install()
        deadline = time.monotonic() + 20
        with signals_held():   # the handler records without raising: the watchdog sends the signal again
            os.kill(os.getpid(), signal.SIGTERM)
            while guard.resent < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            guard.restore()   # inside the hold: nothing is raised when it ends (restore() cleared the signal)
        assert guard.resent >= 3
        assert not guard.watchdog.is_alive()
        time.sleep(0.05)
        assert calls == []
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stale_part_files_are_removed_from_the_reference_cache(tiny, tmp_path, monkeypatch):
    """A `.part` left in the cache folder by a run killed while writing (kill -9) is removed when the cache is
    used; one being written now (recent) is kept."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "barcodetool" / "references"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".abc.h5.x1y2z3.part", folder / ".def.h5.a1b2c3.part"
    stale.write_bytes(b"half an index")
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    index = open_reference(SINTAX_REFERENCE, load_tiny(tiny))
    assert len(index) > 0
    assert not stale.exists() and fresh.exists()
    assert len(list(folder.glob("*.h5"))) == 1   # the cached index itself


# ============================================================================================ global options
def test_global_options_are_accepted_after_the_command(tiny, index_path, tmp_path):
    runner = CliRunner()
    for arguments in (["models", "-q"], ["models", "--debug"], ["-q", "models"], ["models", "-q", "--debug"]):
        result = runner.invoke(main, arguments)
        assert result.exit_code == 0, (arguments, result.output)
    queries = tmp_path / "q.fasta"
    queries.write_text(">q1\n" + next(iter(read_barcodes(SINTAX_REFERENCE))).sequence + "\n")
    out = tmp_path / "out.tsv"
    loud = runner.invoke(main, ["classify", str(queries), "-r", str(index_path), "-o", str(out), "-m", str(tiny),
                                "--kmer-only", *CPU])
    quiet = runner.invoke(main, ["classify", str(queries), "-r", str(index_path), "-o", str(out), "-m", str(tiny),
                                 "--kmer-only", *CPU, "-q"])
    assert loud.exit_code == 0 and quiet.exit_code == 0, (loud.output, quiet.output)
    assert "barcodetool: classified 1 queries" in loud.output
    assert "barcodetool:" not in quiet.output
    # a group's commands too, and the help lists them
    assert "--quiet" in runner.invoke(main, ["reference", "build", "--help"]).output
    assert runner.invoke(main, ["reference", "build", "-q", "--help"]).exit_code == 0
    logging.getLogger("barcodetool").setLevel(logging.INFO)


def test_dash_V_prints_the_version():
    result = CliRunner().invoke(main, ["-V"])
    assert result.exit_code == 0
    from barcodetool import __version__
    assert result.output.splitlines()[0] == __version__


# ============================================================================================ closed pipes
def test_a_signal_after_the_last_log_line_never_kills_the_finished_program_silently(tmp_path, index_path,
                                                                                      subprocess_env):
    """After a command returned, the interpreter's teardown (0.4-0.7 s of freeing PyTorch and scikit-learn) ran
    with the default signal handlers back in place: a SIGTERM 20-150 ms after `classify`'s last log line killed
    the program (status -15, not a word) although its output was complete. The program now exits as soon as the
    command returns: the signal finds it ended (0), or still in the command (143, with its line); never killed."""
    out = tmp_path / "out.tsv"
    for delay in (0.02, 0.05, 0.15):
        process = subprocess.Popen([sys.executable, "-m", "barcodetool", "classify", str(SINTAX_REFERENCE), "-r",
                                    str(index_path), "--kmer-only", "-o", str(out), *CPU], env=subprocess_env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=default_signals)
        lines = []
        for line in process.stderr:
            lines.append(line)
            if line.startswith("barcodetool: classified "):     # classify's last line
                break
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        returncode = process.wait(timeout=60)
        assert returncode in (0, EXIT[signal.SIGTERM]), (delay, returncode, lines, rest)
        if returncode:
            assert "barcodetool: interrupted by signal 15" in rest, rest
        else:
            assert out.read_text().startswith("id\t")


def test_a_closed_standard_output_ends_quietly_with_status_0(tmp_path, index_path, subprocess_env):
    """`classify ... -o - | head -2`: the reader takes two lines and goes; the command ends quietly with 0, so that
    `set -o pipefail` pipelines do not fail (no traceback, no "Exception ignored" at exit)."""
    records = list(read_barcodes(SINTAX_REFERENCE))
    queries = tmp_path / "queries.fasta"
    queries.write_text("".join(f">q{i}\n{records[i % len(records)].sequence}\n" for i in range(6000)))
    process = subprocess.Popen([sys.executable, "-m", "barcodetool", "classify", str(queries), "-r",
                                str(index_path), "--kmer-only", "-o", "-", *CPU], env=subprocess_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [process.stdout.readline() for _ in range(2)]
    process.stdout.close()   # as `head -2` does: far more than a pipe's buffer is still to come
    stderr = process.stderr.read().decode()
    returncode = process.wait(timeout=120)
    assert lines[0].split(b"\t")[0] == b"id" and lines[1].startswith(b"q0\t"), lines
    assert returncode == 0, (returncode, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "error" not in stderr, stderr


# ============================================================================================ progress and logs
class Terminal:
    """A stderr that says it is a terminal (progress bars are drawn), keeping what is written."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_bars_count_in_plural_units_and_take_a_total(monkeypatch):
    """ "2304 barcodes", not "2304barcode"; a total (a percentage and an ETA) once the library knows it."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = Context(debug=False, quiet=False).progress(None, "query", "classify")
    assert bar.unit == " queries"
    bar.update.set_total(2304)
    bar.update(10)
    assert bar.total == 2304
    bar.refresh()
    drawn = "".join(terminal.parts)
    bar.close()
    assert "10/2304" in drawn and " queries" in drawn and "10queries" not in drawn
    bar = Context(False, False).progress(None, "barcode", "embed")
    bar.update(2304)
    bar.refresh()
    bar.close()
    assert "2304 barcodes" in "".join(terminal.parts)


def test_reference_build_announces_its_total_of_distinct_sequences(tiny):
    records = list(read_barcodes(SINTAX_REFERENCE))
    seen, totals = [], []

    def progress(n):
        seen.append(n)

    progress.set_total = totals.append
    build_reference(records + records[:5], load_tiny(tiny), calibrate=False, progress=progress)
    distinct = len({r.sequence for r in records})
    assert totals == [distinct] and sum(seen) == distinct


def test_log_lines_are_written_above_a_progress_bar(monkeypatch):
    """While a bar is on the screen, a log line clears it, is written, and the bar is drawn again."""
    import tqdm

    used = []
    original = tqdm.tqdm.external_write_mode

    def recording(*args, **kwargs):
        used.append(kwargs.get("file"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tqdm.tqdm, "external_write_mode", recording)

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("barcodetool: %(message)s"))
    record = logging.LogRecord("barcodetool", logging.INFO, __file__, 1, "read 5 records", None, None)
    handler.emit(record)
    assert used == []   # no bar: written as usual
    bar = tqdm.tqdm(total=10, file=terminal, unit=" barcodes")
    try:
        handler.emit(record)
    finally:
        bar.close()
    assert used == [terminal]
    assert "barcodetool: read 5 records\n" in terminal.parts


def test_read_summary_is_logged_as_soon_as_the_input_is_read(caplog):
    stats = type("Stats", (), {"summary": lambda self: "read 2 records"})()
    caplog.set_level(logging.INFO, logger="barcodetool")
    logger = logging.getLogger("barcodetool")
    propagate, logger.propagate = logger.propagate, True
    try:
        records = Context(False, False).read_summary(iter(["a", "b"]), stats)
        assert list(records) == ["a", "b"]
        logger.info("embedding candidates for 1 of 2 distinct queries")
    finally:
        logger.propagate = propagate
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index("read 2 records") < messages.index("embedding candidates for 1 of 2 distinct queries")


def test_classify_logs_what_it_read_before_the_embedding_summary(tiny, index_path, tmp_path):
    records = list(read_barcodes(SINTAX_REFERENCE))
    queries = tmp_path / "q.fasta"
    queries.write_text("".join(f">q{i}\nTTTT{records[i].sequence[4:]}\n" for i in range(5)))
    result = CliRunner().invoke(main, ["classify", str(queries), "-r", str(index_path), "-o",
                                       str(tmp_path / "out.tsv"), "-m", str(tiny), "--embed-below", "inf", *CPU])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    read = next(i for i, line in enumerate(lines) if "5 records" in line)
    embedding = next(i for i, line in enumerate(lines) if "embedding candidates" in line)
    assert read < embedding, lines


# ============================================================================================ training in batch jobs
def test_training_logs_progress_without_a_terminal_and_resumes_with_its_own_budget(tmp_path, subprocess_env):
    """stderr a file (a batch job): a progress line every --log-every steps. A resumed run gets its own
    --max-minutes: the time of the runs before it (here a recorded 11 days) does not stop it after one step."""
    out = tmp_path / "model"
    common = ["train", str(SAMPLE), "--preset", "tiny", "--max-steps", "6", "--batch-size", "8", "--log-every",
              "2", "--checkpoint-every", "2", "--val-fraction", "0", "-o", str(out), *CPU]
    first = CliRunner().invoke(main, [*common, "--max-minutes", "1e-9"])   # stops after its first step
    assert first.exit_code == 0, first.output
    assert "stopped at step 1 of 6" in first.output
    folder = checkpoint_folder(out)
    state = json.loads((folder / STATE_FILE).read_text())
    assert state["step"] == 1
    state["seconds"] = 11 * 24 * 3600.0   # as if earlier runs had trained for 11 days
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))

    stderr_path = tmp_path / "train.stderr"
    with open(stderr_path, "wb") as stderr:
        returncode = subprocess.run([sys.executable, "-m", "barcodetool", *common, "--resume", "--max-minutes",
                                     "60"], env=subprocess_env, stdout=subprocess.DEVNULL, stderr=stderr,
                                    timeout=300).returncode
    log = stderr_path.read_text()
    assert returncode == 0, log
    assert "resumed from step 1 of 6" in log
    assert "stopped at step" not in log
    for step in (2, 4, 6):
        assert f"pretrain step {step}/6 (" in log, log
    assert "left" in log.split("pretrain step 4/6")[1].splitlines()[0]   # an ETA once the pace is known


def test_threads_are_left_as_they_were():
    # the watchdog thread of every guard above is gone
    assert not [t for t in threading.enumerate() if t.name == "barcodetool-signal-watchdog" and t.is_alive()]


def test_a_signal_while_a_log_line_is_written_ends_the_command(monkeypatch):
    """Interrupted raised by the signal handler inside the log handler's write (the CI run that found it: a
    SIGTERM during `cluster`'s "read N records" line) propagates; logging would print it as a "Logging error" with
    a traceback and go on."""
    import logging
    import sys

    from barcodetool.cli import _StderrHandler
    from barcodetool.errors import Interrupted

    class SignalledStream:       # the signal arrives during the first write only
        written: list[str] = []

        def write(self, text):
            if not self.written:
                self.written.append("")
                raise Interrupted(15)
            self.written.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", SignalledStream())
    handler = _StderrHandler()
    record = logging.LogRecord("barcodetool", logging.INFO, __file__, 1, "read 3,000 records", None, None)
    with pytest.raises(Interrupted):
        handler.emit(record)

    class BrokenStream(SignalledStream):
        def write(self, text):
            raise ValueError("an ordinary write error")

    monkeypatch.setattr(sys, "stderr", BrokenStream())
    monkeypatch.setattr(logging, "raiseExceptions", False)
    handler.emit(record)          # other errors are still logging's to report


def test_the_library_prints_no_log_line_unless_the_program_configures_logging():
    """A warning of the library (a plot's unmatched ids, queries too short to place) reached a Python user's stderr
    through logging's last-resort handler: library code never prints."""
    code = ("import logging, barcodetool\n"
            "logging.getLogger('barcodetool.plot').warning('unmatched ids')\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "logging.getLogger('barcodetool').info('shown once configured')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "unmatched ids" not in done.stderr and "shown once configured" in done.stderr
