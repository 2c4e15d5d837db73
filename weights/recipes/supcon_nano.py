"""Hierarchical supervised contrastive fine-tuning of barcodemae-nano, read in one phase (barcodemae-nano-supcon).

    .venv/bin/python weights/recipes/supcon_nano.py /work/shared/data --output /tmp/phase_work/run \\
        --minutes 25 --threads 2 --package /tmp/phase_work/barcodemae-nano-supcon
    # continue the same run for another stage (same data, same options; --minutes is this stage's budget):
    .venv/bin/python weights/recipes/supcon_nano.py /work/shared/data --output /tmp/phase_work/run \\
        --minutes 25 --threads 2 --resume --package /tmp/phase_work/barcodemae-nano-supcon

The model starts from --base (barcodemae-nano), its tokenizer switched to read every barcode of the COI-5P region
in one phase (TokenizerConfig.phase = "coi5p": model.phase), and learns the genus and species of its corpus with
train.supcon (batches of --genera genera x --per-genus barcodes, temperature 0.1, AdamW --lr 3e-4).

Corpus: unique barcodes of bold_insects `train` only (`val` is kept for choosing) and of coi_extra the records
whose species is none of bold_insects' `test`, `test_unseen` or `key_unseen` species. `test`, `test_unseen` and
`key_unseen` barcodes are never seen. `--package` writes the float16 model folder (model card, weights, and the
ONNX encoder when the onnx package is installed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELD_OUT = ("test", "test_unseen", "key_unseen")
DESCRIPTION = ("barcodemae-nano read in one COI-5P phase, then fine-tuned with a hierarchical supervised "
               "contrastive loss over genus and species (weights/recipes/supcon_nano.py)")


def corpus_records(insects: list, extra: list) -> list:
    """bold_insects `train` records, and coi_extra records of species outside bold_insects' held-out splits."""
    held_out = {r.taxonomy.get("species") for r in insects if r.split in HELD_OUT} - {None, ""}
    return [r for r in insects if r.split == "train"] + [
        r for r in extra if r.taxonomy.get("species") not in held_out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--output", required=True, help="the run folder (checkpoints, metrics.jsonl)")
    parser.add_argument("--base", default="barcodemae-nano")
    parser.add_argument("--phase", default="coi5p", choices=["none", "coi5p"])
    parser.add_argument("--minutes", type=float, default=25.0, help="this stage's budget")
    parser.add_argument("--steps", type=int, default=20000, help="the whole run's steps (cosine schedule)")
    parser.add_argument("--genera", type=int, default=48)
    parser.add_argument("--per-genus", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--no-extra", action="store_true", help="bold_insects train only")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--limit", type=int, help="read only this many records of each file (dry run)")
    parser.add_argument("--package", help="write the trained model as a float16 model folder here")
    args = parser.parse_args()

    from corpora import read_shared

    from barcodetool.model.runtime import set_threads
    from barcodetool.model.tokenizer import KmerTokenizer
    from barcodetool.model.weights import load_model
    from barcodetool.train import SUPCON_RANKS, TrainConfig, build_corpus, supcon, supcon_tokenizer

    set_threads(args.threads)
    base = load_model(args.base)
    tokenizer = KmerTokenizer(supcon_tokenizer(base, args.phase))
    insects, extra = read_shared(Path(args.data_dir), limit=args.limit)
    records = corpus_records(insects, [] if args.no_extra else extra)
    corpus = build_corpus(records, tokenizer, label_ranks=SUPCON_RANKS, sources=["bold_insects.csv.gz"] + (
        [] if args.no_extra else ["coi_extra.csv.gz"]))
    corpus.summary["splits"] = ["bold_insects: train", "coi_extra: records whose species is not in bold_insects' "
                                "test, test_unseen or key_unseen"]
    print(f"{len(corpus)} unique barcodes; {corpus.summary}", flush=True)
    config = TrainConfig(preset="nano", max_steps=args.steps, max_minutes=args.minutes, lr=args.lr,
                         warmup_steps=100, device="cpu", log_every=20, checkpoint_every=200, seed=1,
                         offset_augmentation=True, rank_weights={"genus": 1.0, "species": 1.0},
                         genera_per_batch=args.genera, barcodes_per_genus=args.per_genus,
                         temperature=args.temperature)
    name = Path(args.package).name if args.package else "barcodemae-nano-supcon"
    result = supcon(corpus, base, config=config, output=args.output, name=name, phase=args.phase,
                    resume=args.resume, log=lambda m: print(m, flush=True),
                    progress=lambda step, total, entry: print(entry, flush=True))
    print(f"{result.steps} steps in {result.seconds:.0f} s", flush=True)
    if args.package:
        package(args.output, args.package, name)


def package(run: str, folder: str, name: str, description: str = DESCRIPTION) -> None:
    """The run's model as a float16 folder, with its ONNX encoder where the onnx package is installed."""
    from barcodetool.errors import ModelError
    from barcodetool.model.onnx import export_onnx
    from barcodetool.model.weights import load_model, save_model

    trained = load_model(run)
    save_model(trained.model, trained.tokenizer.config, folder, name=name, dtype="float16",
               training=trained.card.get("training"), metrics=trained.card.get("metrics"), description=description)
    try:
        export_onnx(load_model(folder))
    except ModelError as error:
        print(f"no encoder.onnx: {error}", flush=True)


if __name__ == "__main__":
    main()
