"""Distill barcodemae-fast into a smaller CPU model: barcodemae-mini (half the encoder depth) or barcodemae-nano
(half mini's width, its pooled state mapped to the teacher's 128 dimensions).

    .venv/bin/python weights/recipes/distill_mini.py /work/shared/data --output /tmp/mini --minutes 40 --threads 2
    .venv/bin/python weights/recipes/distill_mini.py /work/shared/data --preset nano --lr 1e-3 --epochs 6 \
        --output /tmp/nano --minutes 40 --threads 2

The corpus is the teacher's fine-tuning corpus (device_weights.py; corpora.py, beside this script): unique barcodes
of bold_insects `train` and `val`, and of coi_extra the records whose species is not held out
(`test_unseen`/`key_unseen` species of bold_insects); `test` and `test_unseen` barcodes are never seen. The student
starts from the teacher's token embedding, positions, final norm and its first and last blocks where the shapes
allow (mini; nano starts from random weights: train.student_from_teacher) and learns the teacher's embedding
direction (train.DistillTask). The run stops after --minutes and still writes its weights; `--package` then writes
the float16 folder for weights/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTIONS = {"mini": "barcodemae-fast distilled into 2 encoder layers",
                "nano": "barcodemae-fast distilled into 2 encoder layers of width 64, mapped to 128 dimensions"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--output", required=True)
    parser.add_argument("--teacher", default="barcodemae-fast")
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--limit", type=int, help="read only this many records of each file (dry run)")
    parser.add_argument("--package", help="write the trained student as a float16 model folder here")
    args = parser.parse_args()

    from corpora import FINE_TUNING_SPLITS, SOURCES, fine_tuning_records, read_shared

    from barcodetool.model.runtime import set_threads
    from barcodetool.model.weights import load_model, save_model
    from barcodetool.train import TrainConfig, build_corpus, distill

    set_threads(args.threads)
    teacher = load_model(args.teacher)
    data = Path(args.data_dir)
    insects, extra = read_shared(data, limit=args.limit)
    corpus = build_corpus(fine_tuning_records(insects, extra), teacher.tokenizer, sources=SOURCES)
    corpus.summary["splits"] = FINE_TUNING_SPLITS
    print(f"{len(corpus)} unique barcodes", flush=True)
    config = TrainConfig(preset=args.preset, epochs=args.epochs, max_minutes=args.minutes,
                         batch_size=args.batch_size, lr=args.lr, device="cpu", log_every=20,
                         checkpoint_every=200, val_fraction=0.01, seed=1)
    name = f"barcodemae-{args.preset}"
    result = distill(corpus, teacher, config=config, output=args.output, name=name,
                     log=lambda m: print(m, flush=True),
                     progress=lambda step, total, entry: print(entry, flush=True))
    print(f"{result.steps} steps in {result.seconds:.0f} s: {result.metrics}", flush=True)
    if args.package:
        trained = load_model(args.output)
        save_model(trained.model, trained.tokenizer.config, args.package, name=name, dtype="float16",
                   training=trained.card.get("training"), metrics=trained.card.get("metrics"),
                   description=DESCRIPTIONS.get(args.preset, f"{args.teacher} distilled into the {args.preset} preset")
                   + " (weights/recipes/distill_mini.py)")


if __name__ == "__main__":
    main()
