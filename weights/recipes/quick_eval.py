"""Embedding-only evaluation on a BIOSCAN-5M-style split, used while training default weights.

It scores raw embeddings the way the BarcodeMAE/BarcodeBERT papers do (unique barcodes; 1-NN species of `test`
against `train`; 1-NN genus of `test_unseen` against `train`; AMI of average-linkage clusters of
`test` + `test_unseen` against their BINs with the true number of BINs and over a grid of distance thresholds).
The user-facing benchmark with the full classifier, calibrated thresholds and VSEARCH/BLAST side by side is
`barcodetool benchmark`. device_weights.py (beside this script) runs it on every weight it trains; the model
cards' embedding figures come from it.

    python weights/recipes/quick_eval.py ../shared/data/bold_insects.csv.gz --model barcodemae-fast
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def load_split(source) -> dict[str, dict]:
    """Unique cleaned barcodes per split with species, genus and BIN of their first record; `source`: a table's
    path, or its records already read."""
    from barcodetool.io import read_barcodes

    splits: dict[str, dict] = {}
    for record in read_barcodes(source) if isinstance(source, (str, os.PathLike)) else source:
        part = splits.setdefault(record.split or "", {"seq": [], "species": [], "genus": [], "bin": [],
                                                     "_seen": set()})
        if record.sequence in part["_seen"] or len(record.sequence) < 6:
            continue
        part["_seen"].add(record.sequence)
        part["seq"].append(record.sequence)
        part["species"].append(record.taxonomy.get("species", ""))
        part["genus"].append(record.taxonomy.get("genus", ""))
        part["bin"].append(record.bin or "")
    for part in splits.values():
        del part["_seen"]
    return splits


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(queries: np.ndarray, reference: np.ndarray, k: int = 10, block: int = 4096):
    """Top-k cosine neighbours (indices, similarities) of normalized queries in a normalized reference."""
    indices = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        s = queries[start:start + block] @ reference.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top_s = np.take_along_axis(s, top, 1)
        order = np.argsort(-top_s, axis=1)
        indices[start:start + block] = np.take_along_axis(top, order, 1)
        sims[start:start + block] = np.take_along_axis(top_s, order, 1)
    return indices, sims


def vote(labels: np.ndarray, indices: np.ndarray, sims: np.ndarray) -> np.ndarray:
    out = []
    for row, weights in zip(indices, sims):
        tally: dict[str, float] = {}
        for i, w in zip(row, weights):
            tally[labels[i]] = tally.get(labels[i], 0.0) + max(float(w), 0.0)
        out.append(max(tally, key=tally.get))
    return np.array(out)


def evaluate_embeddings(emb: dict[str, np.ndarray], splits: dict[str, dict], ami: bool = True,
                        thresholds=(0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5)) -> dict:
    from sklearn.metrics import adjusted_mutual_info_score

    train = normalize(emb["train"])
    train_species = np.array(splits["train"]["species"])
    train_genus = np.array(splits["train"]["genus"])
    result = {}
    idx, sim = knn(normalize(emb["test"]), train)
    truth = np.array(splits["test"]["species"])
    result["species_1nn"] = float((train_species[idx[:, 0]] == truth).mean())
    result["species_knn10"] = float((vote(train_species, idx, sim) == truth).mean())
    idx, sim = knn(normalize(emb["test_unseen"]), train)
    truth = np.array(splits["test_unseen"]["genus"])
    result["genus_unseen_1nn"] = float((train_genus[idx[:, 0]] == truth).mean())
    result["genus_unseen_knn10"] = float((vote(train_genus, idx, sim) == truth).mean())
    if ami:
        from scipy.cluster.hierarchy import fcluster, linkage

        both = np.concatenate([emb["test"], emb["test_unseen"]])
        bins = np.array(splits["test"]["bin"] + splits["test_unseen"]["bin"])
        keep = bins != ""
        points = normalize(both[keep]).astype(np.float64)
        tree = linkage(points, method="average", metric="cosine")
        true_k = len(set(bins[keep]))
        result["ami_true_k"] = float(adjusted_mutual_info_score(bins[keep], fcluster(tree, true_k, "maxclust")))
        result["ami_by_threshold"] = {
            str(t): float(adjusted_mutual_info_score(bins[keep], fcluster(tree, t, "distance")))
            for t in thresholds}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split_file")
    parser.add_argument("--model", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-ami", action="store_true")
    args = parser.parse_args()
    from barcodetool.embedding import embed_sequences
    from barcodetool.model.runtime import resolve_device
    from barcodetool.model.weights import load_model

    pretrained = load_model(args.model, device=resolve_device(args.device))
    splits = load_split(args.split_file)
    start = time.perf_counter()
    emb = {name: embed_sequences(pretrained, splits[name]["seq"], batch_size=512)
           for name in ("train", "test", "test_unseen")}
    seconds = time.perf_counter() - start
    result = evaluate_embeddings(emb, splits, ami=not args.no_ami)
    result["embed_seconds"] = seconds
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
