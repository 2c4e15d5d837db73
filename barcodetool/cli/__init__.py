"""The `barcodetool` command line: parses and validates options, calls the library, maps errors to exit codes.

Exit status: 0 success; 1 a problem with the input, a model or an output (one line on stderr); 2 a usage error;
130 / 143 interrupted by SIGINT / SIGTERM (no partial outputs are left). `--debug` shows tracebacks.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import click

from .._version import __version__
from ..errors import BarcodeToolError, Interrupted
from ..io.interrupts import holding_signals
from ..io.readers import ReadOptions

log = logging.getLogger("barcodetool")

CITATION = (
    "If you use barcodetool, please cite BarcodeMAE: Safari et al., 'Enhancing DNA Foundation Models to Address "
    "Masking Inefficiencies', arXiv:2502.18405 (2025), and BOLD (Ratnasingham & Hebert 2007, Mol. Ecol. Notes "
    "7:355) for the reference data."
)
READ_FORMATS = ["auto", "fasta", "bioscan", "bold-v3", "bold-bcdm", "table"]


# ============================================================================================ plumbing
class Context:
    def __init__(self, debug: bool, quiet: bool):
        self.debug = debug
        self.quiet = quiet

    def progress(self, total: int | None, unit: str, desc: str):
        """A tqdm bar on a terminal, otherwise nothing."""
        from tqdm import tqdm

        disable = self.quiet or not sys.stderr.isatty()
        return tqdm(total=total, unit=unit, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True,
                    leave=False)


class _SignalGuard:
    """SIGINT/SIGTERM handlers for one command.

    The handler records the signal (barcodetool.atomic then refuses to publish any output) and raises
    KeyboardInterrupt (SIGINT) or Interrupted (SIGTERM). Python drops an exception raised while it runs a
    `__del__` method or a weakref callback, so until the command's error handler has caught the interruption,
    a watchdog thread sends the signal again every REDELIVER_S seconds.
    """

    REDELIVER_S = 0.5

    def __init__(self):
        import threading

        self.caught = False  # the error handler has the interruption in hand (or the command is over)
        self.previous: dict[int, object] = {}
        self.watchdog = None
        self.lock = threading.Lock()  # no signal is sent again once the handlers are restored
        self.over = threading.Event()
        self.unraisablehook = None

    def install(self) -> None:
        from ..io.interrupts import clear_signals

        clear_signals()
        if not _main_thread():
            return
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self.handle)
        # SIGINT ignored by whoever started us (a background job of a shell) stays ignored.
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self.handle)
        self.unraisablehook = sys.unraisablehook
        sys.unraisablehook = self.unraisable

    def restore(self) -> None:
        from ..io.interrupts import clear_signals

        with self.lock:
            self.caught = True
            self.over.set()
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()
        if self.unraisablehook is not None:
            sys.unraisablehook = self.unraisablehook
            self.unraisablehook = None
        clear_signals()  # the command is over (library calls in the same process write again)

    def handle(self, signal_number, frame):
        from ..io.interrupts import note_signal

        note_signal(signal_number)
        if self.caught:
            return
        if self.watchdog is None and self.previous:
            import threading

            self.watchdog = threading.Thread(target=self._redeliver, args=(signal_number,), daemon=True,
                                             name="barcodetool-signal-watchdog")
            self.watchdog.start()
        if holding_signals():  # a thread is being started: raised when that is done (streaming.signals_held)
            return
        if signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signal_number)

    def unraisable(self, info) -> None:
        """Python's report of an exception it had to drop: silent for our own interruption (it is recorded
        and delivered again), as usual for anything else."""
        if isinstance(info.exc_value, (KeyboardInterrupt, Interrupted)) and not self.caught:
            return
        (self.unraisablehook or sys.__unraisablehook__)(info)

    def _redeliver(self, signal_number: int) -> None:
        while not self.over.wait(self.REDELIVER_S):
            with self.lock:
                if self.caught:
                    return
                os.kill(os.getpid(), signal_number)


def handle_errors(function):
    """Run a command: BarcodeToolError -> one line + its exit status; interrupts -> 130/143."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from ..io.interrupts import interrupted

        ctx = click.get_current_context()
        state: Context = ctx.find_object(Context) or Context(False, False)
        guard = _SignalGuard()
        guard.install()
        try:
            result = function(*args, **kwargs)
            if interrupted() is None:
                return result
            raise Interrupted(interrupted())  # the handler's exception was swallowed on the way
        except KeyboardInterrupt:
            guard.caught = True
            _cleanup()
            click.echo("barcodetool: interrupted (SIGINT); no partial output was left", err=True)
            ctx.exit(130)
        except Interrupted as error:
            guard.caught = True
            _cleanup()
            click.echo(f"barcodetool: {error}", err=True)
            ctx.exit(error.exit_code)
        except BarcodeToolError as error:
            guard.caught = True
            _cleanup()
            if state.debug:  # the traceback, then the same line and exit status as without --debug
                import traceback

                traceback.print_exc(file=sys.stderr)
            click.echo(f"barcodetool: error: {error}", err=True)
            ctx.exit(error.exit_code)
        except BrokenPipeError:
            guard.caught = True
            _cleanup()
            ctx.exit(1)
        except (OSError, MemoryError) as error:
            guard.caught = True
            _cleanup()
            if state.debug:
                raise
            click.echo(f"barcodetool: error: {error.__class__.__name__}: {error}", err=True)
            ctx.exit(1)
        finally:
            guard.restore()

    return wrapper


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _cleanup():
    from ..io.atomic import remove_pending

    remove_pending()


def read_options(function):
    """Options shared by every command that reads barcodes."""
    options = [
        click.option("--format", "read_format", type=click.Choice(READ_FORMATS), default="auto", show_default=True,
                     help="Input format; auto detects FASTA and BIOSCAN-5M / BOLD tables from the content."),
        click.option("--id-column", help="Column holding record ids (any CSV/TSV)."),
        click.option("--sequence-column", help="Column holding sequences (any CSV/TSV)."),
        click.option("--skip-empty", is_flag=True, help="Skip empty (or shorter than k) sequences instead of failing."),
        click.option("--allow-duplicates", is_flag=True, help="Accept repeated record ids instead of failing."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def gather_read_options(kwargs: dict) -> ReadOptions:
    return ReadOptions(format=kwargs.pop("read_format"), id_column=kwargs.pop("id_column"),
                       sequence_column=kwargs.pop("sequence_column"), skip_empty=kwargs.pop("skip_empty"),
                       allow_duplicates=kwargs.pop("allow_duplicates"))


def device_options(function):
    function = click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                            help="CPU threads (0 = all cores).")(function)
    function = click.option("--device", default="auto", show_default=True,
                            help="auto, cpu, cuda or cuda:N.")(function)
    return function


def model_option(function):
    return click.option("--model", "-m", "model_name", default="auto", show_default=True,
                        help="Bundled model name (see `barcodetool models`) or a model folder; auto = "
                             "barcodemae-base on a GPU, barcodemae-nano on a CPU.")(function)


def _remember_compute(ctx, param, value):
    ctx.meta["barcodetool.compute"] = value
    return value


def inference_model_option(function):
    """--model plus --compute, for commands that embed barcodes."""
    function = click.option("--compute", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
                            show_default=True, expose_value=False, callback=_remember_compute,
                            help="Inference arithmetic: auto = bfloat16 on GPUs and on CPUs that run it natively "
                                 "(AVX-512 BF16, AMX), float32 elsewhere. `classify` against a built index on a "
                                 "CPU runs a model's exported encoder.onnx, where there is one, in float32 with ONNX "
                                 "Runtime and never imports PyTorch; bfloat16 keeps PyTorch.")(function)
    return model_option(function)


def log_model(pretrained, device) -> None:
    """The log line naming the model in use, its shape, device and arithmetic."""
    config = pretrained.config
    shape = f"{config.encoder_layers} layers, width {config.encoder_width}"
    if config.embedding_dim != config.encoder_width:
        shape += f", embedding {config.embedding_dim}"
    log.info(f"model {pretrained.name} ({shape}) on {device}, {pretrained.compute}")


def requested_compute() -> str:
    """The --compute value of the running command (auto outside a command that has the option)."""
    context = click.get_current_context(silent=True)
    return context.meta.get("barcodetool.compute", "auto") if context else "auto"


def _print_version(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    click.echo(__version__)
    click.echo(CITATION)
    ctx.exit()


# ============================================================================================ group
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, callback=_print_version, expose_value=False, is_eager=True,
              help="Print the version (first line) and the citation, then exit.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr; no progress bars.")
@click.pass_context
def main(ctx, debug, quiet):
    """barcodetool: BarcodeMAE embeddings for DNA barcodes: train, embed, classify and cluster."""
    # Under torchrun only rank 0 talks; the other ranks keep warnings and errors.
    quiet = quiet or int(os.environ.get("RANK", "0")) != 0
    _configure_logging(quiet)
    ctx.obj = Context(debug=debug, quiet=quiet)


def _configure_logging(quiet: bool) -> None:
    """Log lines on stderr through barcodetool's own logger only (other libraries' loggers are left alone)."""
    logger = logging.getLogger("barcodetool")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("barcodetool: %(message)s"))
        logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@main.command("models")
@handle_errors
def models_command():
    """List the named models (bundled, then user-trained)."""
    from ..model.weights import available_models, read_card

    for name, path in available_models().items():
        card = read_card(path)
        config = card.get("model_config", {})
        metrics = card.get("metrics", {})
        accuracy, cosine = metrics.get("val_masked_token_accuracy"), metrics.get("val_teacher_cosine")
        extra = (f"\tmasked-token accuracy {accuracy:.3f}" if isinstance(accuracy, float) else
                 f"\tcosine to its teacher {cosine:.3f}" if isinstance(cosine, float) else "")
        shape = f"{config.get('encoder_layers')}x{config.get('encoder_width')}"
        if config.get("embedding_width"):
            shape += f"->{config['embedding_width']}"
        click.echo(f"{name}\t{shape}\t{path}{extra}")


# ============================================================================================ train
def _train_config(kwargs: dict):
    from ..train.trainer import TrainConfig

    return TrainConfig(
        preset=kwargs.get("preset") or "small", epochs=kwargs["epochs"], max_steps=kwargs["max_steps"],
        max_minutes=kwargs["max_minutes"], batch_size=kwargs["batch_size"], lr=kwargs["lr"],
        mask_ratio=kwargs["mask_ratio"], val_fraction=kwargs["val_fraction"], seed=kwargs["seed"],
        checkpoint_every=kwargs["checkpoint_every"], log_every=kwargs["log_every"],
        compile=kwargs["compile"], device=kwargs["device"])


def _check_model_name(ctx, param, value):
    """A model name is also a folder name in the user models folder: one plain path component."""
    if value is not None and (not value.strip() or value in {".", ".."} or value.startswith(".")
                              or any(c in value for c in "/\\\0")):
        raise click.BadParameter(f"{value!r} is not a plain name (no '/', '\\', or leading '.'); "
                                 "use -o to choose the folder")
    return value


def training_options(function):
    options = [
        click.option("--output", "-o", type=click.Path(file_okay=False), help="Model folder to write "
                     "(default: the user data folder's models/NAME)."),
        click.option("--name", callback=_check_model_name,
                     help="Model name (default: the output folder's name)."),
        click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
        click.option("--max-steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs)."),
        click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
                     help="Stop (and save) after this long even if steps remain."),
        click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Barcodes per step and process."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True,
                     help="Peak learning rate (AdamW, linear warm-up then cosine decay)."),
        click.option("--mask-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
                     show_default=True, help="Share of each barcode's tokens hidden from the encoder (train, "
                     "finetune; distill compares whole sequences and refuses it)."),
        click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.02, show_default=True,
                     help="Unique barcodes held out to report validation metrics (masked-token accuracy; for "
                          "distill the cosine to the teacher)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint."),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=1000, show_default=True),
        click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True),
        click.option("--compile/--no-compile", default=False, show_default=True,
                     help="torch.compile the training step (CUDA)."),
        click.option("--include-splits", help="Comma list: keep only table rows whose `split` is listed "
                     "(e.g. train,val,pretrain)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run_training(ctx_obj: Context, kind: str, data, kwargs, read_opts, base=None):
    from ..model.runtime import set_threads
    from ..model.tokenizer import KmerTokenizer, TokenizerConfig
    from ..train.trainer import FINETUNE_RANKS, distill, finetune, pretrain, read_corpus

    if kind == "distill" and \
            click.get_current_context().get_parameter_source("mask_ratio") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--mask-ratio does not apply to distill: the student and the teacher embed whole, "
                               "unmasked sequences")
    set_threads(kwargs.pop("threads"))
    config = _train_config(kwargs)
    splits = [s.strip() for s in kwargs["include_splits"].split(",")] if kwargs.get("include_splits") else None
    if kwargs["output"] is None:  # as train._prepare_output would choose, so that it is known here
        from ..model.weights import user_models_dir

        kwargs["output"] = str(user_models_dir() / (kwargs["name"] or time.strftime("model-%Y%m%d-%H%M%S")))
    if kind == "pretrain":
        tokenizer = KmerTokenizer(TokenizerConfig(k=kwargs["k"], stride=kwargs["stride"],
                                                  max_length=kwargs["max_length"]))
        label_ranks = ()
    else:
        from ..io.atomic import check_outputs_distinct
        from ..errors import OutputError
        from ..model.weights import load_model

        check_outputs_distinct([kwargs["output"]], data)
        base = load_model(base, device="cpu")
        if base.path is not None and os.path.realpath(kwargs["output"]) == os.path.realpath(base.path):
            raise OutputError(f"{kwargs['output']}: output would overwrite the base model {base.path} "
                              "(choose another -o or --name)")
        tokenizer = base.tokenizer
        read_opts = read_opts.replace(min_length=tokenizer.config.k)
        label_ranks = FINETUNE_RANKS if kind == "finetune" else ()
    stats = []
    corpus = read_corpus(list(data), tokenizer, include_splits=splits, read_options=read_opts,
                         label_ranks=label_ranks, stats_out=stats)
    for item in stats:
        log.info(item.summary())
    summary = corpus.summary
    log.info(f"{summary['unique_barcodes']} unique barcodes from {summary['records']} records "
             f"({summary['duplicates_removed']} duplicates removed, {summary['truncated']} truncated to "
             f"{tokenizer.config.max_length} nt)")
    bar = ctx_obj.progress(None, "step", kind)

    def progress(step, total, entry):
        bar.total = total
        bar.n = step
        shown = {k: entry[k] for k in ("loss", "masked_token_accuracy", "teacher_cosine", "barcodes_per_s")
                 if k in entry}
        bar.set_postfix(shown, refresh=True)

    try:
        if kind == "pretrain":
            result = pretrain(corpus, config=config, output=kwargs["output"], name=kwargs["name"],
                              tokenizer_config=tokenizer.config, resume=kwargs["resume"], log=log.info,
                              progress=progress)
        else:
            run = finetune if kind == "finetune" else distill
            result = run(corpus, base, config=config, output=kwargs["output"], name=kwargs["name"],
                         resume=kwargs["resume"], log=log.info, progress=progress)
    except BaseException as error:
        _discard_staged_checkpoint(kwargs["output"], error)
        raise
    finally:
        bar.close()
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    log.info(f"{result.steps} steps, {result.barcodes_seen} barcodes in {result.seconds:.0f} s; {metrics}")
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(str(result.output))


def _discard_staged_checkpoint(output: str, error: BaseException) -> None:
    """After a failed or interrupted run: remove a checkpoint that was being written (its staging folder), and
    say where the last complete one is. Only rank 0 writes checkpoints."""
    from ..train.trainer import CHECKPOINT_DIR, checkpoint_folder

    if int(os.environ.get("RANK", "0")) != 0:
        return
    shutil.rmtree(Path(output) / (CHECKPOINT_DIR + ".partial"), ignore_errors=True)
    if isinstance(error, (KeyboardInterrupt, Interrupted)) and checkpoint_folder(output) is not None:
        log.warning(f"{output}: the last complete checkpoint is kept; continue with the same command and --resume")


@main.command("train")
@click.argument("data", nargs=-1, required=True)
@training_options
@click.option("--preset", type=click.Choice(["base", "small", "fast", "mini", "tiny"]), default="small",
              show_default=True, help="Model shape: base = the paper's 6+6 layers, width 768.")
@click.option("--k", type=click.IntRange(1, 8), default=6, show_default=True, help="k-mer size.")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="k-mer stride (default: k).")
@click.option("--max-length", type=click.IntRange(min=1), default=660, show_default=True,
              help="Longest sequence in nucleotides; longer ones are truncated.")
@device_options
@read_options
@click.pass_obj
@handle_errors
def train_command(obj, data, **kwargs):
    """Pretrain a BarcodeMAE model on DATA (FASTA or tables). Under `torchrun --nproc_per_node N` it trains with
    DistributedDataParallel."""
    read_opts = gather_read_options(kwargs)
    kwargs["stride"] = kwargs["stride"] or kwargs["k"]
    read_opts = read_opts.replace(min_length=kwargs["k"])
    from ..io.atomic import check_outputs_distinct

    check_outputs_distinct([kwargs["output"]], data)
    _run_training(obj, "pretrain", data, kwargs, read_opts)


@main.command("finetune")
@click.argument("data", nargs=-1, required=True)
@model_option
@training_options
@device_options
@read_options
@click.pass_obj
@handle_errors
def finetune_command(obj, data, model_name, **kwargs):
    """Fine-tune a model on the taxonomy and BINs of labelled barcodes (tables or SINTAX FASTA): cosine
    classifiers per rank plus the MAE loss. Never fine-tune on the barcodes you will test on."""
    read_opts = gather_read_options(kwargs)
    _run_training(obj, "finetune", data, kwargs, read_opts, base=model_name)


@main.command("distill")
@click.argument("data", nargs=-1, required=True)
@click.option("--teacher", "model_name", default="barcodemae-fast", show_default=True,
              help="The model to distill: a bundled name or a model folder.")
@training_options
@click.option("--preset", type=click.Choice(["small", "fast", "mini", "nano", "tiny"]), default="mini",
              show_default=True,
              help="The student's shape. With the teacher's width and heads it starts from the teacher's first and "
                   "last blocks; with another width its pooled state is mapped linearly to the teacher's embedding "
                   "width.")
@device_options
@read_options
@click.pass_obj
@handle_errors
def distill_command(obj, data, model_name, **kwargs):
    """Distill a model (--teacher) into a smaller, faster encoder whose embeddings follow the
    teacher's, on unlabelled barcodes (FASTA or tables). Indexes must be rebuilt with the student."""
    read_opts = gather_read_options(kwargs)
    _run_training(obj, "distill", data, kwargs, read_opts, base=model_name)


# ============================================================================================ embed
@main.command("embed")
@click.argument("input_path", metavar="INPUT")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write.")
@inference_model_option
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Barcodes per forward pass (larger is faster on a GPU, needs more memory).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage type of the embeddings in the HDF5 file.")
@device_options
@read_options
@click.pass_obj
@handle_errors
def embed_command(obj, input_path, output, model_name, batch_size, dtype, device, threads, **kwargs):
    """Embed barcodes from INPUT (FASTA, tables; `-` = stdin) into an HDF5 file, in input order."""
    from ..embedding import embed_file
    from ..io.readers import ReadStats
    from ..model.runtime import resolve_device, set_threads
    from ..model.weights import load_model

    read_opts = gather_read_options(kwargs)
    set_threads(threads)
    torch_device = resolve_device(device)
    pretrained = load_model(model_name, device=torch_device, compute=requested_compute())
    read_opts = read_opts.replace(min_length=pretrained.tokenizer.config.k)
    log_model(pretrained, torch_device)
    stats = ReadStats(path=input_path)
    with obj.progress(None, "barcode", "embed") as bar:
        summary = embed_file(input_path, output, pretrained, batch_size=batch_size, dtype=dtype,
                             read_options=read_opts, stats=stats, progress=bar.update)
    log.info(stats.summary())
    if summary.truncated:
        log.info(f"{summary.truncated} sequences longer than {pretrained.tokenizer.config.max_length} nt were "
                 "truncated")
    log.info(f"wrote {summary.count} embeddings of dimension {summary.dim} to {output}")


from .reference import register; register(main)  # noqa: E402, E702
from .plot import register as register_plot; register_plot(main)  # noqa: E402, E702

if __name__ == "__main__":  # pragma: no cover
    main()
