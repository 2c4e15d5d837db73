"""The splits and their candidates for identity_rerank.py (beside this file): unique barcodes of each split with
labels and cached embeddings, and the embedding and k-mer candidates of the query splits against train."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from barcodetool.embedding import embed_sequences
from barcodetool.io import read_barcodes
from barcodetool.model.weights import load_model
from barcodetool.search import KmerIndex, SequenceStore, knn_search, normalize

SPLITS = ("train", "val", "test", "test_unseen")


def load_splits(path: str, cache: Path, model_name: str, splits=SPLITS) -> dict[str, dict]:
    """Unique barcodes of each split (first record of each cleaned sequence) with labels and embeddings."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [s for s in splits if not (cache / f"{s}.json").is_file()]
    if missing:
        k = load_model(model_name).tokenizer.config.k
        found: dict[str, dict] = {}
        seen: dict[str, set] = {}
        for r in read_barcodes(path, skip_empty=True, min_length=k):
            if r.split not in splits or r.sequence in seen.setdefault(r.split, set()):
                continue
            seen[r.split].add(r.sequence)
            d = found.setdefault(r.split, {"id": [], "seq": [], "species": [], "genus": [], "family": [], "bin": []})
            d["id"].append(r.id)
            d["seq"].append(r.sequence)
            d["species"].append(r.taxonomy.get("species", ""))
            d["genus"].append(r.taxonomy.get("genus", ""))
            d["family"].append(r.taxonomy.get("family", ""))
            d["bin"].append(r.bin or "")
        for s in missing:
            with open(cache / f"{s}.json", "w") as handle:
                json.dump(found[s], handle)
    out = {}
    pretrained = None
    for s in splits:
        with open(cache / f"{s}.json") as handle:
            d = json.load(handle)
        d = {key: (value if key == "seq" else np.array(value)) for key, value in d.items()}
        if not (cache / f"{s}.npy").is_file():
            pretrained = pretrained or load_model(model_name)
            print(f"embedding {len(d['seq']):,} {s} barcodes (cached in {cache})", file=sys.stderr, flush=True)
            np.save(cache / f"{s}.npy", embed_sequences(pretrained, d["seq"], batch_size=256))
        d["emb"] = normalize(np.load(cache / f"{s}.npy"))
        out[s] = d
    return out


def codes(values: np.ndarray, names: dict | None = None) -> tuple[np.ndarray, dict]:
    names = {} if names is None else names
    out = np.array([names.setdefault(v, len(names)) if v else -1 for v in values], dtype=np.int64)
    return out, names


class Timer:
    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


# ============================================================================================ candidates
class Candidates:
    """Embedding and k-mer candidates of the query splits against train (computed once, largest N)."""

    def __init__(self, data: dict, n_max: int, kmer_max_df: int, alt_max_df: int | None = None):
        self.train = data["train"]
        self.store = SequenceStore.from_sequences(self.train["seq"])
        with Timer() as t:
            self.kmer = KmerIndex(self.store)
        self.kmer_build_seconds = t.seconds
        self.max_df = kmer_max_df
        self.alt_max_df = alt_max_df
        self.n_max = n_max
        self.queries: dict[str, dict] = {}
        for split in ("val", "test", "test_unseen"):
            q = data[split]
            store = SequenceStore.from_sequences(q["seq"])
            with Timer() as te:
                _, emb = knn_search(q["emb"], self.train["emb"], n_max)
            with Timer() as tk:
                _, km = self.kmer.search(store, n_max, max_df=kmer_max_df)
            self.queries[split] = {"store": store, "emb": emb, "kmer": km, "emb_seconds": te.seconds,
                                   "kmer_seconds": tk.seconds}
            if alt_max_df and split != "val":
                with Timer() as ta:
                    _, self.queries[split]["kmer-alt"] = self.kmer.search(store, n_max, max_df=alt_max_df)
                self.queries[split]["kmer_alt_seconds"] = ta.seconds

    def sources(self) -> list[str]:
        return ["embedding", "kmer", "union"] + (["kmer-alt", "union-alt"] if self.alt_max_df else [])

    def label(self, source: str) -> str:
        return {"kmer": f"kmer(df<={self.max_df})", "union": f"emb+kmer(df<={self.max_df})",
                "kmer-alt": f"kmer(df<={self.alt_max_df})",
                "union-alt": f"emb+kmer(df<={self.alt_max_df})"}.get(source, source)

    def get(self, split: str, source: str, n: int) -> np.ndarray:
        q = self.queries[split]
        if source == "embedding":
            return q["emb"][:, :n]
        if source in ("kmer", "kmer-alt"):
            return q[source][:, :n]
        kmer = q["kmer-alt" if source == "union-alt" else "kmer"]
        return union(q["emb"][:, :n], kmer[:, :n])


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise union of two candidate tables (-1 = empty), duplicates replaced by -1."""
    both = np.concatenate([a, b], axis=1)
    s = np.sort(both, axis=1)
    order = np.argsort(both, axis=1, kind="stable")
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return np.where(dup, -1, both)
