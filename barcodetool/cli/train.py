"""Commands `train`, `finetune` and `distill`: a model folder from barcodes (barcodetool.train runs them).

barcodetool.train imports PyTorch, so it is imported when a command runs, not with the command line.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

import click

from ..errors import Interrupted, OutputError
from ..io import ReadOptions
from ..io.atomic import check_outputs_distinct
from ..model.runtime import set_threads
from ..model.tokenizer import KmerTokenizer, TokenizerConfig
from ..model.weights import load_model, user_models_dir
from ._common import Context, device_options, handle_errors, log, model_option, read_options, renamed_option


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
                     help="Stop (and save) after this long even if steps remain: a budget for this run alone "
                          "(a run continued with --resume gets its own)."),
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
        click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True,
                     help="Steps between the lines of metrics.jsonl; when standard error is not a terminal (a "
                          "batch job's log), also between progress lines there (step, loss, speed, ETA)."),
        click.option("--compile/--no-compile", default=False, show_default=True,
                     help="torch.compile the training step (CUDA)."),
        click.option("--include-splits", help="Comma list: keep only table rows whose `split` is listed "
                     "(e.g. train,val,pretrain)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command("train")
@click.argument("data", nargs=-1, required=True)
@training_options
@click.option("--preset", type=click.Choice(["base", "small", "fast", "mini", "tiny"]), default="small",
              show_default=True, help="Model shape: base = the paper's 6+6 layers, width 768.")
@renamed_option("--kmer-size", "--k", "kmer_size", type=click.IntRange(1, 8), default=6, show_default=True,
                help="k-mer size.")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="k-mer stride (default: --kmer-size).")
@click.option("--max-length", type=click.IntRange(min=1), default=660, show_default=True,
              help="Longest sequence in nucleotides; longer ones are truncated.")
@click.option("--phase", type=click.Choice(["none", "coi5p"]), default=None,
              help="Reading phase: coi5p drops the leading bases that put each barcode of the COI-5P region in one "
                   "phase before tokenizing (recorded in the model); none reads from the first base. Default: none "
                   "for mae, the --init model's for supcon and identity.")
@click.option("--objective", type=click.Choice(["mae", "supcon", "identity"]), default="mae", show_default=True,
              help="mae: the paper's masked-autoencoder pretraining. supcon: continue --init with a hierarchical "
                   "supervised contrastive loss over the genus and species columns (batches of "
                   "--genera-per-batch x --barcodes-per-genus). identity: continue --init so that cosine ranks "
                   "each barcode's nearest barcodes as the identity engine does (no labels needed; batches of "
                   "--anchors-per-batch x (1 + --neighbours-per-anchor)). For supcon and identity, --batch-size "
                   "and --preset are not used.")
@click.option("--init", "init_model", help="supcon, identity: the model to continue (a bundled name or a model "
              "folder).")
@click.option("--genera-per-batch", type=click.IntRange(min=2), default=48, show_default=True,
              help="supcon: genera in each batch.")
@click.option("--barcodes-per-genus", type=click.IntRange(min=2), default=4, show_default=True,
              help="supcon: barcodes of each genus in a batch (pairs of one species where the genus has them).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="supcon, identity: softmax temperature of the embedding's cosines (default 0.1 for supcon, "
                   "0.05 for identity).")
@click.option("--anchors-per-batch", type=click.IntRange(min=2), default=64, show_default=True,
              help="identity: random barcodes in each batch, each with its neighbours.")
@click.option("--neighbours-per-anchor", type=click.IntRange(min=1), default=3, show_default=True,
              help="identity: neighbours of each anchor in a batch (its identity-nearest, then others of its 16 "
                   "nearest).")
@click.option("--teacher-temperature", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="identity: softmax temperature of the identities (0.01: one identity point is a factor e).")
@click.option("--label-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="identity: weight of the supervised contrastive loss over genus and species added to it.")
@click.option("--beyond-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="identity: weight of the same ranking with each barcode's own species hidden (by the species "
                   "column; without one, barcodes at >= 97% identity), which teaches how new species place.")
@device_options
@read_options
@click.pass_obj
@handle_errors
def train_command(obj: Context, data: tuple[str, ...], read_options: ReadOptions, **settings):
    """Pretrain a BarcodeMAE model on DATA (FASTA or tables). Under `torchrun --nproc_per_node N` it trains with
    DistributedDataParallel. With --objective supcon, continue a trained model (--init) with a hierarchical
    supervised contrastive loss over the taxonomy of DATA instead; with --objective identity, teach it to rank
    DATA's barcodes as alignment identity does. Never on the barcodes you will test on."""
    settings["stride"] = settings["stride"] or settings["kmer_size"]
    read_options = read_options.replace(min_length=settings["kmer_size"])
    check_outputs_distinct([settings["output"]], data)
    objective = settings["objective"]
    if objective in ("supcon", "identity"):
        if not settings["init_model"]:
            raise click.UsageError(f"--objective {objective} needs --init MODEL (the model to continue)")
        _run_training(obj, objective, data, settings, read_options, base=settings["init_model"])
    else:
        if settings["init_model"]:
            raise click.UsageError("--init applies to --objective supcon and identity; mae pretraining starts from "
                                   "scratch")
        settings["temperature"] = None
        _run_training(obj, "pretrain", data, settings, read_options)


@click.command("finetune")
@click.argument("data", nargs=-1, required=True)
@model_option
@training_options
@device_options
@read_options
@click.pass_obj
@handle_errors
def finetune_command(obj: Context, data: tuple[str, ...], model_name: str, read_options: ReadOptions, **settings):
    """Fine-tune a model on the taxonomy and BINs of labelled barcodes (tables or SINTAX FASTA): cosine
    classifiers per rank plus the MAE loss. Never fine-tune on the barcodes you will test on."""
    _run_training(obj, "finetune", data, settings, read_options, base=model_name)


@click.command("distill")
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
def distill_command(obj: Context, data: tuple[str, ...], model_name: str, read_options: ReadOptions, **settings):
    """Distill a model (--teacher) into a smaller, faster encoder whose embeddings follow the
    teacher's, on unlabelled barcodes (FASTA or tables). Indexes must be rebuilt with the student."""
    if click.get_current_context().get_parameter_source("mask_ratio") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--mask-ratio does not apply to distill: the student and the teacher embed whole, "
                               "unmasked sequences")
    _run_training(obj, "distill", data, settings, read_options, base=model_name)


def _run_training(obj: Context, kind: str, data: tuple[str, ...], settings: dict, read_options: ReadOptions,
                  base: str | None = None) -> None:
    """Read the corpus and run `kind` (pretrain, finetune, supcon or distill) with the command's settings."""
    from ..train import (FINETUNE_RANKS, SUPCON_RANKS, TrainConfig, distill, finetune, identity_teach, pretrain,
                         read_corpus, supcon, supcon_tokenizer)
    from ..train.distributed import launched_world_size

    threads = settings.pop("threads")
    set_threads(threads)
    config = TrainConfig(
        preset=settings.get("preset") or "small", epochs=settings["epochs"], max_steps=settings["max_steps"],
        max_minutes=settings["max_minutes"], batch_size=settings["batch_size"], lr=settings["lr"],
        mask_ratio=settings["mask_ratio"], val_fraction=settings["val_fraction"], seed=settings["seed"],
        checkpoint_every=settings["checkpoint_every"], log_every=settings["log_every"],
        compile=settings["compile"], device=settings["device"],
        **{key: settings[key] for key in ("genera_per_batch", "barcodes_per_genus", "temperature", "anchors_per_batch",
                                          "neighbours_per_anchor", "teacher_temperature", "label_weight",
                                          "beyond_weight")
           if settings.get(key) is not None})
    splits = [s.strip() for s in settings["include_splits"].split(",")] if settings.get("include_splits") else None
    output, name = settings["output"], settings["name"]
    if output is None:  # as the trainer would choose, so that it is known here
        output = str(user_models_dir() / (name or time.strftime("model-%Y%m%d-%H%M%S")))
    if kind == "pretrain":
        tokenizer = KmerTokenizer(TokenizerConfig(k=settings["kmer_size"], stride=settings["stride"],
                                                  max_length=settings["max_length"],
                                                  phase=settings.get("phase") or "none"))
        label_ranks = ()
    else:
        check_outputs_distinct([output], data)
        base = load_model(base, device="cpu")
        if base.path is not None and os.path.realpath(output) == os.path.realpath(base.path):
            raise OutputError(f"{output}: output would overwrite the base model {base.path} "
                              "(choose another -o or --name)")
        tokenizer = base.tokenizer
        if kind in ("supcon", "identity"):
            tokenizer = KmerTokenizer(supcon_tokenizer(base, settings.get("phase")))
        read_options = read_options.replace(min_length=tokenizer.config.k)
        label_ranks = {"finetune": FINETUNE_RANKS, "supcon": SUPCON_RANKS, "identity": SUPCON_RANKS}.get(kind, ())
    if "-" in data and launched_world_size() > 1:
        # each process would read a different part of the one stream: corpora that differ end in a collective
        # mismatch (gloo's abort, a traceback per process)
        raise click.UsageError("standard input (-) cannot be read under torchrun: each process would read a different "
                         "part of it; give the training data as a file every process can read")
    stats = []
    corpus = read_corpus(list(data), tokenizer, include_splits=splits, read_options=read_options,
                         label_ranks=label_ranks, stats_out=stats)
    for item in stats:
        log.info(item.summary())
    summary = corpus.summary
    log.info(f"{summary['unique_barcodes']} unique barcodes from {summary['records']} records "
             f"({summary['duplicates_removed']} duplicates removed, {summary['truncated']} truncated to "
             f"{tokenizer.config.max_length} nt)")
    bar = obj.progress(None, "step", kind)
    pace: list[tuple[float, int]] = []  # (time, step) of the first progress line: the pace is measured from there

    def progress(step, total, entry):
        shown = {k: entry[k] for k in ("loss", "masked_token_accuracy", "teacher_cosine", "batch_species_1nn",
                                       "identity_top1", "barcodes_per_s") if k in entry}
        if not bar.disable:
            bar.total = total
            bar.n = step
            bar.set_postfix(shown, refresh=True)
        elif not obj.quiet:  # no bar (a batch job's log file): one line every --log-every steps
            pace[:] = pace or [(time.monotonic(), step)]
            log.info(_progress_line(kind, step, total, entry, time.monotonic() - pace[0][0], pace[0][1]))

    try:
        if kind == "pretrain":
            result = pretrain(corpus, config=config, output=output, name=name, tokenizer_config=tokenizer.config,
                              resume=settings["resume"], log=log.info, progress=progress)
        elif kind in ("supcon", "identity"):
            run = supcon if kind == "supcon" else functools.partial(identity_teach,
                                                                     threads=threads or os.cpu_count() or 1)
            result = run(corpus, base, config=config, output=output, name=name, phase=tokenizer.config.phase,
                         resume=settings["resume"], log=log.info, progress=progress)
        else:
            run = finetune if kind == "finetune" else distill
            result = run(corpus, base, config=config, output=output, name=name, resume=settings["resume"],
                         log=log.info, progress=progress)
    except BaseException as error:
        _discard_staged_checkpoint(output, error)
        raise
    finally:
        bar.close()
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    log.info(f"{result.steps} steps, {result.barcodes_seen} barcodes in {result.seconds:.0f} s; {metrics}")
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(str(result.output))


def _progress_line(kind: str, step: int, total: int, entry: dict, seconds: float, since_step: int) -> str:
    """`pretrain step 200/5000 (4%): loss 2.1034, masked_token_accuracy 0.2104, 812 barcodes/s, about 45 min left`,
    the time left from the pace of the `seconds` since step `since_step`."""
    metrics = [f"{key} {entry[key]:.4f}" for key in ("loss", "masked_token_accuracy", "teacher_cosine",
                                                     "batch_species_1nn", "identity_top1") if key in entry]
    if "barcodes_per_s" in entry:
        metrics.append(f"{entry['barcodes_per_s']:,.0f} barcodes/s")
    line = f"{kind} step {step:,}/{total:,} ({100 * step / max(1, total):.0f}%): {', '.join(metrics)}"
    if step > since_step and step < total:
        line += f", about {_duration(seconds / (step - since_step) * (total - step))} left"
    return line


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _discard_staged_checkpoint(output: str, error: BaseException) -> None:
    """After a failed or interrupted run: remove a checkpoint that was being written (its staging folder), and
    say where the last complete one is. Only rank 0 writes checkpoints."""
    from ..train import CHECKPOINT_DIR, checkpoint_folder

    if int(os.environ.get("RANK", "0")) != 0:
        return
    shutil.rmtree(Path(output) / (CHECKPOINT_DIR + ".partial"), ignore_errors=True)
    if isinstance(error, (KeyboardInterrupt, Interrupted)) and checkpoint_folder(output) is not None:
        log.warning(f"{output}: the last complete checkpoint is kept; continue with the same command and --resume")
