"""What the command modules share: the run context (progress bars), the error handler that maps errors to exit
statuses, the shared options, the log lines about models and references, and the output helpers.

Exit status: 0 success; 1 a problem with the input, a model or an output (one line on stderr); 2 a usage error;
130 / 143 interrupted by SIGINT / SIGTERM (no partial outputs are left). `--debug` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import signal
import sys
import traceback
from collections.abc import Iterable, Iterator
from typing import IO

import click
from click.core import ParameterSource

from ..errors import BarcodeToolError, InputError, Interrupted, UsageError
from ..io import ReadOptions
from ..io.atomic import (DEVICE_ERRORS, atomic_text, check_output_path, check_outputs_distinct, is_stdout,
                        remove_pending)
from ..io.interrupts import SignalGuard, interrupted, interruption_message, note_reported
from ..io.json_values import json_values
from ..io.sniff import check_readable
from ..search.identity import MAX_ALIGNED_LENGTH
from ..reference import open_reference

log = logging.getLogger("barcodetool")


# ============================================================================================ running a command
class Context:
    """The global options of a run (`ctx.obj` of every command)."""

    UNITS = {"query": "queries", "barcode": "barcodes", "step": "steps"}

    def __init__(self, debug: bool, quiet: bool):
        self.debug = debug
        self.quiet = quiet

    def progress(self, total: int | None, unit: str, desc: str):
        """A tqdm bar on a terminal, otherwise nothing. `unit` is singular ("barcode"): the bar counts in
        " barcodes". The bar's `update` also has a `set_total(n)`, which library code calls once it knows how
        many items to expect (barcodetool.reference.build); the bar then shows a percentage and an ETA."""
        from tqdm import tqdm

        disable = self.quiet or not sys.stderr.isatty()
        bar = tqdm(total=total, unit=" " + self.UNITS.get(unit, unit), desc=desc, disable=disable, file=sys.stderr,
                   dynamic_ncols=True, leave=False)
        update = bar.update

        def counted(n: int = 1):
            return update(n)

        def set_total(n: int) -> None:
            bar.total = n
            bar.refresh()

        counted.set_total = set_total
        bar.update = counted
        return bar

    def read_summary(self, records: Iterable, stats) -> Iterator:
        """`records`, then the log line of their ReadStats as soon as the input is read to its end (before the
        log lines of the work that follows)."""
        yield from records
        log.info(stats.summary())


def one_line(error: BaseException) -> str:
    """The error's message on one line: texts from libraries (HDF5's, for one) may hold line breaks."""
    return " ".join(str(error).split())


def handle_errors(function):
    """Run a command under a SignalGuard: BarcodeToolError -> one line + its exit status; interrupts -> 130/143;
    outputs in progress are removed on every error; a reader of standard output that goes away (`| head`) ends
    the command quietly with status 0."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        state: Context = ctx.find_object(Context) or Context(False, False)
        guard = SignalGuard()
        guard.install()
        try:
            result = function(*args, **kwargs)
            _flush_stdout()  # a closed pipe is found here, not when Python flushes at exit
            if interrupted() is None:
                return result
            raise Interrupted(interrupted())  # the handler's exception was swallowed on the way
        except KeyboardInterrupt:
            guard.caught = True
            _interrupted(ctx, signal.SIGINT)
        except Interrupted as error:
            guard.caught = True
            _interrupted(ctx, error.signal_number)
        except BarcodeToolError as error:
            guard.caught = True
            remove_pending()
            if state.debug:  # the traceback, then the same line and exit status as without --debug
                traceback.print_exc(file=sys.stderr)
            click.echo(f"barcodetool: error: {one_line(error)}", err=True)
            ctx.exit(error.exit_code)
        except (OSError, MemoryError) as error:
            guard.caught = True
            if isinstance(error, BrokenPipeError) and _stdout_closed():
                remove_pending()
                _silence_stdout()
                ctx.exit(0)  # the reader took what it wanted (`| head`): as after SIGPIPE, quietly, and a success
            remove_pending()
            if state.debug:
                raise
            device = DEVICE_ERRORS.get(getattr(error, "errno", None))
            if device is not None and error.filename is None:   # (a file's write says which file: atomic.py)
                # a write to standard output (`-o - > /dev/full`, a full disk behind a redirection)
                _silence_stdout()
                click.echo(f"barcodetool: error: {device.format('standard output')} (free space or write the "
                           "output elsewhere)", err=True)
            else:
                click.echo(f"barcodetool: error: {error.__class__.__name__}: {one_line(error)}", err=True)
            ctx.exit(1)
        finally:
            guard.restore()

    return wrapper


def _interrupted(ctx: click.Context, signal_number: int) -> None:
    """Report an interruption (what was left) and exit 128 + N."""
    remove_pending()
    note_reported()
    with contextlib.suppress(OSError):
        click.echo(f"barcodetool: {interruption_message(signal_number)}", err=True)
    ctx.exit(128 + signal_number)


def _flush_stdout() -> None:
    with contextlib.suppress(ValueError):  # closed by the command
        sys.stdout.flush()


def _stdout_closed() -> bool:
    """True when standard output is a pipe whose reader has gone (POLLERR), as after `| head`."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):  # Windows: a BrokenPipeError is on standard output there in practice
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """Point standard output at the null device, so that Python's flush of what is still buffered at exit does
    not fail again ("Exception ignored ... BrokenPipeError"; see "Note on SIGPIPE" in Python's signal docs)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# ============================================================================================ shared options
def read_options(function):
    """Options shared by every command that reads barcodes; the command gets them as one ReadOptions,
    `read_options`."""

    @functools.wraps(function)
    def with_read_options(*args, read_format, id_column, sequence_column, skip_empty, allow_duplicates, skip_invalid,
                          **kwargs):
        kwargs["read_options"] = ReadOptions(format=read_format, id_column=id_column, sequence_column=sequence_column,
                                             skip_empty=skip_empty, allow_duplicates=allow_duplicates,
                                             skip_invalid=skip_invalid)
        return function(*args, **kwargs)

    options = [
        click.option("--format", "read_format", type=click.Choice(list(ReadOptions.formats)), default="auto",
                     show_default=True,
                     help="Input format; auto detects FASTA, FASTQ and BIOSCAN-5M / BOLD tables from the content."),
        click.option("--id-column", help="Column holding record ids (any CSV/TSV)."),
        click.option("--sequence-column", help="Column holding sequences (any CSV/TSV)."),
        click.option("--skip-empty", is_flag=True, help="Skip empty (or shorter than k) sequences instead of failing."),
        click.option("--allow-duplicates", is_flag=True, help="Accept repeated record ids instead of failing."),
        click.option("--skip-invalid", is_flag=True,
                     help="Skip invalid records (a sequence character that is not a nucleotide code; a line break, "
                          "tab or control character in an id or label) instead of failing; they are counted and "
                          "the first few named in the log."),
    ]
    for option in reversed(options):
        with_read_options = option(with_read_options)
    return with_read_options


def device_options(function):
    function = click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                            help="CPU threads (0 = all cores).")(function)
    function = click.option("--device", default="auto", show_default=True,
                            help="auto, cpu, cuda or cuda:N.")(function)
    return function


def model_option(function=None, *, task: str = "classify"):
    """--model; `task` says which default `auto` stands for (barcodetool.model.weights.default_model_name). Used
    bare (@model_option) or with the task (@model_option(task="embed"))."""
    if function is None:
        return functools.partial(model_option, task=task)
    from ..model.weights import DEFAULT_CPU_EMBED_MODEL, DEFAULT_CPU_MODEL, DEFAULT_GPU_MODEL

    cpu_model = DEFAULT_CPU_EMBED_MODEL if task == "embed" else DEFAULT_CPU_MODEL
    return click.option("--model", "-m", "model_name", default="auto", show_default=True,
                        help=f"Bundled model name (see `barcodetool models`) or a model folder; auto = "
                             f"{DEFAULT_GPU_MODEL} on a GPU, {cpu_model} on a CPU.")(function)


def _remember_compute(ctx, param, value):
    ctx.meta["barcodetool.compute"] = value
    return value


def inference_model_option(function=None, *, task: str = "classify"):
    """--model plus --compute, for commands that embed barcodes (the value of --compute: `requested_compute`)."""
    if function is None:
        return functools.partial(inference_model_option, task=task)
    function = click.option("--compute", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
                            show_default=True, expose_value=False, callback=_remember_compute,
                            help="Inference arithmetic: auto = bfloat16 on GPUs and on CPUs that run it natively "
                                 "(AVX-512 BF16, AMX), float32 elsewhere. `classify` against a built index on a "
                                 "CPU runs a model's exported encoder.onnx, where there is one, in float32 with ONNX "
                                 "Runtime and never imports PyTorch; bfloat16 keeps PyTorch.")(function)
    return model_option(function, task=task)


def requested_compute() -> str:
    """The --compute value of the running command (auto outside a command that has the option)."""
    context = click.get_current_context(silent=True)
    return context.meta.get("barcodetool.compute", "auto") if context else "auto"


def renamed_option(name: str, old_name: str, destination: str, **attributes):
    """The option `name` (Click attributes as for click.option), with its former name `old_name` still accepted as
    a hidden alias that logs a notice. Giving both is a usage error."""

    def decorate(function):
        @functools.wraps(function)
        def with_old_name(*args, **kwargs):
            old_value = kwargs.pop(f"old_{destination}")
            if old_value is not None:
                if click.get_current_context().get_parameter_source(destination) is not ParameterSource.DEFAULT:
                    raise click.UsageError(f"give {name} or {old_name}, not both")
                log.warning(f"{old_name} is deprecated; use {name}")
                kwargs[destination] = old_value
            return function(*args, **kwargs)

        with_old_name = click.option(old_name, f"old_{destination}", type=attributes.get("type"), default=None,
                                     hidden=True)(with_old_name)
        return click.option(name, destination, **attributes)(with_old_name)

    return decorate


reference_format_option = click.option(
    # a table of unknown layout needs --id-column/--sequence-column, which a reference does not take
    "--reference-format", type=click.Choice([f for f in ReadOptions.formats if f != "table"]),
    default="auto", show_default=True,
    help="Format of a --reference that is a table or FASTA (a built index is recognised).")


# ============================================================================================ models, references
def log_model(model, device) -> None:
    """The log line naming the model in use, its shape, device and arithmetic."""
    config = model.config
    shape = f"{config.encoder_layers} layers, width {config.encoder_width}"
    if config.embedding_dim != config.encoder_width:
        shape += f", embedding {config.embedding_dim}"
    log.info(f"model {model.name} ({shape}) on {device}, {model.compute}")


def log_reference(index, note: str = "") -> None:
    """The log line saying what a reference index holds."""
    log.info(f"reference: {len(index):,} barcodes, ranks {', '.join(index.ranks) or 'none'}"
             f"{', BINs' if index.bin_codes is not None else ''}{note}")


def open_reference_index(obj: Context, reference: str, model, batch_size: int, reference_format: str,
                         skip_invalid: bool = False):
    """A built index, or a table/FASTA indexed once and cached (barcodetool.reference.open_reference), logged."""
    options = ReadOptions(format=reference_format, skip_invalid=skip_invalid)
    try:
        with obj.progress(None, "barcode", "reference") as bar:
            index = open_reference(reference, model, read_options=options, batch_size=batch_size,
                                   progress=bar.update)
    except InputError as error:
        # the reading options of the command (--allow-duplicates, --id-column, ...) are the queries'; a reference
        # that needs one is indexed once with `reference build`, which takes them all
        needed = [option for option in REFERENCE_BUILD_OPTIONS if error.fix and option in error.fix]
        if not needed:
            raise
        raise InputError(error.message, path=error.path, record=error.record,
                         fix=f"{error.fix}; for a reference (-r) {' and '.join(needed)} "
                             f"{'are options' if len(needed) > 1 else 'is an option'} of `barcodetool reference "
                             f"build {reference} -o ref.h5`: index it so, then give -r ref.h5") from None
    log_reference(index)
    return index


def aligned_read_options(read_options: ReadOptions, k: int) -> ReadOptions:
    """How the commands that align whole sequences (classify, cluster, reference build and add) read their
    records: shorter than k bases is empty (no k-mer to embed), longer than MAX_ALIGNED_LENGTH invalid."""
    return read_options.replace(min_length=k, max_length=MAX_ALIGNED_LENGTH)


# reading options `reference build` takes that the reference of classify/cluster (-r TABLE) is not read with
REFERENCE_BUILD_OPTIONS = ("--allow-duplicates", "--id-column", "--sequence-column")


# ============================================================================================ outputs
@contextlib.contextmanager
def output(path: str) -> Iterator[IO[str]]:
    """A text handle: stdout for `-` (or /dev/stdout), else an atomic file (written through to a device or FIFO)."""
    if is_stdout(path):
        yield sys.stdout
        sys.stdout.flush()
    else:
        with atomic_text(path) as handle:
            yield handle


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(path: str, data: dict) -> None:
    """`data` as indented JSON to `path` (`-` = stdout)."""
    with output(path) as handle:
        json.dump(json_values(data), handle, indent=2, default=_json_default)
        handle.write("\n")


# ============================================================================================ checks before the work
INPUT_FIX = "give a FASTA, FASTQ file or a table"
REFERENCE_FIX = "give a built index (`barcodetool reference build`), a table or FASTA"


def check_paths(inputs: Iterable[tuple[str | None, str]] = (),
                outputs: Iterable[tuple[str | None, str]] = ()) -> None:
    """Before any model is loaded or record read: every input (path, fix if it is a directory) exists and can be
    read (or is `-`), every output (path, option) can be written (see io.atomic.check_output_path), no output
    names an input, and no two outputs name the same file or both standard output."""
    inputs, outputs = list(inputs), [(path, option) for path, option in outputs if path is not None]
    for path, fix in inputs:
        check_readable(path, fix)
    for path, option in outputs:
        check_output_path(path, option)
    check_outputs_distinct([path for path, _ in outputs], [path for path, _ in inputs])
    seen: dict[str, str] = {}
    for path, option in outputs:
        key = "-" if is_stdout(path) else os.path.realpath(path)
        if key in seen:
            what = "cannot both be standard output" if key == "-" else "name the same file"
            raise UsageError(f"{seen[key]} and {option} {what}")
        seen[key] = option


def refuse_binary_terminal(path: str, option: str = "-o") -> None:
    """A binary output (HDF5, a figure) to standard output that is a terminal is a usage error."""
    if is_stdout(path) and sys.stdout is not None and sys.stdout.isatty():
        raise UsageError(f"{option} {path}: standard output is a terminal, and this output is binary; redirect it "
                         "(> file, | command) or give a file name")


def output_name(path: str) -> str:
    """How log lines name an output."""
    return "standard output" if is_stdout(path) else path
