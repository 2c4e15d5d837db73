"""barcodemae-nano read in one COI-5P phase, fine-tuned with the identity engine as its teacher (identity_teacher).

    .venv/bin/python weights/recipes/identity_nano.py /work/shared/data --output /tmp/id_work/run \\
        --minutes 60 --threads 2 --package /tmp/id_work/barcodemae-nano-id
    # continue the same run for another stage (same data and options; --minutes is this stage's budget):
    .venv/bin/python weights/recipes/identity_nano.py /work/shared/data --output /tmp/id_work/run \\
        --minutes 60 --threads 2 --resume --package /tmp/id_work/barcodemae-nano-id
    # score a model on the choosing sets only (no training):
    .venv/bin/python weights/recipes/identity_nano.py /work/shared/data --choose-only --model MODEL

The model starts from --base (barcodemae-nano), its tokenizer switched to read every barcode of the COI-5P region
in one phase (TokenizerConfig.phase = "coi5p"), and learns to rank each barcode's neighbours as the identity engine
does (each barcode's 16 nearest by coverage-weighted identity among its 24 best k-mer candidates, computed once
and kept in the run folder): batches of --anchors anchors x (1 + --per-anchor) barcodes, student temperature
--temperature, teacher temperature --teacher-temperature, AdamW --lr on a cosine schedule over --steps;
--beyond-weight adds the same ranking with each barcode's own species hidden (each query seen as a new species);
--label-weight adds the hierarchical supervised contrastive loss over genus and species.

Corpus: unique barcodes of bold_insects `train` and of coi_extra, less every record of the species of
bold_insects' `test`, `test_unseen` and `key_unseen`, and less the CHOOSING species: a tenth of the `train`
species whose genus has another species in `train` (seed 0), kept out so that the run is chosen on species it never
saw. `val` is not trained on either. The choosing figures (printed, and written to the run folder as
choose.json): species 1-NN of unique `val` barcodes against the unique `train` barcodes, and genus 1-NN of the
choosing species' unique barcodes against the other `train` barcodes (new species of known genera, as
`test_unseen` is). `test`, `test_unseen` and `key_unseen` are never read for choosing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CHOOSING_FRACTION = 0.1
DESCRIPTION = ("barcodemae-nano read in one COI-5P phase, then fine-tuned to rank barcodes as the identity engine "
               "does (weights/recipes/identity_nano.py)")


def choosing_species(insects: list, fraction: float = CHOOSING_FRACTION, seed: int = 0) -> set[str]:
    """A `fraction` of the `train` species whose genus has another `train` species, drawn with `seed`."""
    genus_species: dict[str, set[str]] = {}
    for r in insects:
        species, genus = r.taxonomy.get("species"), r.taxonomy.get("genus")
        if r.split == "train" and species and genus:
            genus_species.setdefault(genus, set()).add(species)
    eligible = sorted(s for members in genus_species.values() if len(members) >= 2 for s in members)
    rng = np.random.default_rng(seed)
    return set(rng.choice(eligible, size=round(fraction * len(eligible)), replace=False).tolist())


def corpus_records(insects: list, extra: list, choosing: set[str]) -> list:
    """supcon_nano's corpus (bold_insects `train`, coi_extra less the held-out splits' species) less the choosing
    species."""
    from supcon_nano import corpus_records as supcon_corpus

    return [r for r in supcon_corpus(insects, extra) if r.taxonomy.get("species") not in choosing]


def choose_scores(model, insects: list, choosing: set[str], batch_size: int = 256) -> dict:
    """Species 1-NN of `val` against `train`; genus 1-NN of the choosing species against the rest of `train`."""
    from quick_eval import load_split

    from barcodetool.embedding import embed_sequences
    from barcodetool.search import knn_search, normalize

    def vectors(sequences):
        return normalize(embed_sequences(model, sequences, batch_size=batch_size))

    splits = load_split(insects)
    train_species, train_genus = np.array(splits["train"]["species"]), np.array(splits["train"]["genus"])
    train = vectors(splits["train"]["seq"])
    _, nearest = knn_search(vectors(splits["val"]["seq"]), train, 1)
    out = {"species_val": float((train_species[nearest[:, 0]] == np.array(splits["val"]["species"])).mean()),
           "val": len(splits["val"]["seq"])}
    chosen = np.isin(train_species, sorted(choosing))
    _, nearest = knn_search(train[chosen], train[~chosen], 1)
    out["genus_choosing"] = float((train_genus[~chosen][nearest[:, 0]] == train_genus[chosen]).mean())
    out["choosing"] = int(chosen.sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--output", help="the run folder (checkpoints, metrics.jsonl, the neighbour table)")
    parser.add_argument("--base", default="barcodemae-nano")
    parser.add_argument("--phase", default="coi5p", choices=["none", "coi5p"])
    parser.add_argument("--minutes", type=float, default=60.0, help="this stage's budget")
    parser.add_argument("--steps", type=int, default=20000, help="the whole run's steps (cosine schedule)")
    parser.add_argument("--anchors", type=int, default=64)
    parser.add_argument("--per-anchor", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--teacher-temperature", type=float, default=0.01)
    parser.add_argument("--label-weight", type=float, default=0.0)
    parser.add_argument("--beyond-weight", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--limit", type=int, help="read only this many records of each file (dry run)")
    parser.add_argument("--package", help="write the trained model as a float16 model folder here")
    parser.add_argument("--choose-only", action="store_true", help="score --model on the choosing sets and stop")
    parser.add_argument("--model", help="with --choose-only: the model scored (default --base, read in --phase)")
    args = parser.parse_args()

    from corpora import read_shared

    from barcodetool.model.runtime import set_threads
    from barcodetool.model.tokenizer import KmerTokenizer
    from barcodetool.model.weights import load_model
    from barcodetool.train import SUPCON_RANKS, TrainConfig, build_corpus, identity_teach, supcon_tokenizer

    set_threads(args.threads)
    insects, extra = read_shared(Path(args.data_dir), limit=args.limit)
    choosing = choosing_species(insects)
    if args.choose_only:
        model = load_model(args.model or args.base)
        if args.model is None:
            model.tokenizer = KmerTokenizer(supcon_tokenizer(model, args.phase))
        print(json.dumps(choose_scores(model, insects, choosing)), flush=True)
        return
    if not args.output:
        parser.error("--output is required to train")
    base = load_model(args.base)
    tokenizer = KmerTokenizer(supcon_tokenizer(base, args.phase))
    corpus = build_corpus(corpus_records(insects, extra, choosing), tokenizer, label_ranks=SUPCON_RANKS,
                          sources=["bold_insects.csv.gz", "coi_extra.csv.gz"])
    corpus.summary["splits"] = [
        "bold_insects: train, less a tenth of its species (seed 0) kept out for choosing",
        "coi_extra: records whose species is none of bold_insects' test, test_unseen, key_unseen or choosing species"]
    print(f"{len(corpus)} unique barcodes; {len(choosing)} choosing species; {corpus.summary}", flush=True)
    config = TrainConfig(preset="nano", max_steps=args.steps, max_minutes=args.minutes, lr=args.lr,
                         warmup_steps=100, device="cpu", log_every=25, checkpoint_every=200, seed=1,
                         offset_augmentation=True, anchors_per_batch=args.anchors,
                         neighbours_per_anchor=args.per_anchor, temperature=args.temperature,
                         teacher_temperature=args.teacher_temperature, label_weight=args.label_weight,
                         beyond_weight=args.beyond_weight)
    name = Path(args.package).name if args.package else "barcodemae-nano-id"
    started = time.time()
    result = identity_teach(corpus, base, config=config, output=args.output, name=name, phase=args.phase,
                            resume=args.resume, threads=max(1, args.threads), log=lambda m: print(m, flush=True),
                            progress=lambda step, total, entry: print(entry, flush=True))
    print(f"{result.steps} steps in {result.seconds:.0f} s ({time.time() - started:.0f} s with the table)", flush=True)
    scores = choose_scores(load_model(args.output), insects, choosing)
    print(json.dumps(scores), flush=True)
    (Path(args.output) / "choose.json").write_text(json.dumps(scores | {"step": result.steps}) + "\n")
    if args.package:
        from supcon_nano import package
        package(args.output, args.package, name, DESCRIPTION)


if __name__ == "__main__":
    main()
