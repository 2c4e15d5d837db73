"""Identity re-ranking experiments: what the exact-similarity layer (barcodetool.search.identity) earns on the
benchmark.

Sections (identity-rerank.md, beside this script, explains them and holds the measured table):
    pairs     anchored identity vs Biopython PairwiseAligner on real pairs (query x one of its top-50 embedding
              neighbours): mean absolute error, share within 0.5 / 0.1 points, time a pair, per fallback mode
    rerank    species (test vs train) and genus (test_unseen vs train) accuracy of the top identity hit among
              the top-N candidates from the embedding, from a k-mer index, and from both; time a query
    species   the species decision among tied best hits (top hit vs votes), chosen on val, applied to test
    recall    exhaustive identity of a sample of queries against the whole reference: how often the best
              reference is among the top-N candidates of each generator (expensive; cached)
    genus     open-world genus rules beyond the top hit, tuned on train only (whole train species held out and
              queried against the rest of train), then applied once to test_unseen (and test)
    thresholds  species/genus assignment thresholds on the score calibrated on train (held-out species/genera)
    cluster   BIN reconstruction of test + test_unseen: average linkage on identity distance over a candidate
              graph vs on embedding cosine distance; thresholds calibrated on train BINs
    speed     embedding, candidate search and re-ranking time a query on this machine; VSEARCH for scale

Rules: nothing is tuned on test, test_unseen or key_unseen (key_unseen is not read at all). Embeddings of the
splits are cached in --cache (as .npy, with the unique barcodes as .json) and reused.

    python docs/research/identity_rerank.py ../shared/data/bold_insects.csv.gz --cache /tmp/identity_cache
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from identity_rerank_data import Candidates, Timer, codes, load_splits, union

from barcodetool.cluster import calibrate_cluster_threshold, cluster, cluster_metrics
from barcodetool.embedding import embed_sequences
from barcodetool.model.weights import load_model
from barcodetool.search import (KmerIndex, SequenceStore, aligned_identity, coverage_score, identity_graph_cluster,
                                knn_search, neighbour_pairs, pair_identity, rerank)


# ============================================================================================ decisions
def top_label(idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    empty = -1 if np.issubdtype(labels.dtype, np.integer) else ""
    return np.where(idx[:, 0] >= 0, labels[np.maximum(idx[:, 0], 0)], empty)


def weighted_vote(idx: np.ndarray, score: np.ndarray, labels: np.ndarray, *, margin: float | None = None,
                  per_species: np.ndarray | None = None, tau: float | None = None) -> np.ndarray:
    """Label with the largest total weight among candidates: weight = score (identity-weighted vote), or
    exp((score - best) / tau) with `tau` (a soft margin); only candidates within `margin` of the best score when
    given. With `per_species` (species codes of the references), each species votes once, with its best
    candidate."""
    q, n = idx.shape
    valid = (idx >= 0) & np.isfinite(score)
    if margin is not None:
        valid &= score >= score[:, :1] - margin
    lab = np.where(valid, labels[np.maximum(idx, 0)], -1)
    if tau is None:
        w = np.where(valid, np.clip(score, 0, None), 0.0)
    else:
        w = np.where(valid, np.exp(np.minimum(score - score[:, :1], 0.0) / tau), 0.0)
    if per_species is not None:
        sp = np.where(valid, per_species[np.maximum(idx, 0)], -1)
        # candidates are sorted best first: keep the first candidate of each species in a row
        order = np.argsort(sp, axis=1, kind="stable")
        s_sorted = np.take_along_axis(sp, order, axis=1)
        first = np.ones_like(s_sorted, dtype=bool)
        first[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]
        keep = np.zeros_like(first)
        np.put_along_axis(keep, order, first, axis=1)
        w = np.where(keep, w, 0.0)
    same = lab[:, :, None] == lab[:, None, :]
    total = (same * w[:, None, :]).sum(axis=2)
    total = np.where(lab >= 0, total, -1.0)
    best = np.argmax(total, axis=1)
    return lab[np.arange(q), best]


def genus_mean(idx: np.ndarray, score: np.ndarray, genus: np.ndarray, species: np.ndarray, m: int) -> np.ndarray:
    """Genus whose best m species (each by its best candidate) have the highest mean score; a genus with fewer
    than m species among the candidates averages over those it has, padded with the lowest candidate score."""
    q, n = idx.shape
    out = np.full(q, -1, dtype=np.int64)
    for r in range(q):
        best_of_species: dict[int, tuple[int, float]] = {}
        floor = math.inf
        for i, s in zip(idx[r], score[r]):
            if i < 0 or not np.isfinite(s):
                continue
            floor = min(floor, float(s))
            key = int(species[i])
            if key not in best_of_species:
                best_of_species[key] = (int(genus[i]), float(s))
        by_genus: dict[int, list[float]] = {}
        for g, s in best_of_species.values():
            by_genus.setdefault(g, []).append(s)
        if not by_genus:
            continue
        means = {g: np.mean((sorted(v, reverse=True) + [floor] * m)[:m]) for g, v in by_genus.items()}
        out[r] = max(means, key=means.get)
    return out


# ============================================================================================ sections
def section_pairs(data, cands, args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    rows = []
    per = args.pairs // 2
    for split in ("test", "test_unseen"):
        q = cands.queries[split]
        qi = rng.choice(len(q["store"]), per)
        rank = rng.integers(0, min(50, cands.n_max), per)
        ri = q["emb"][qi, rank]
        keep = ri >= 0
        qi, ri = qi[keep], ri[keep]
        seqs = data[split]["seq"]
        cache = Path(args.cache) / f"pairs_{split}_{per}_{args.seed}.npy"
        if cache.is_file():
            exact = np.load(cache)
        else:
            with Timer() as t:
                exact = np.array([aligned_identity(seqs[a], cands.train["seq"][b]) for a, b in zip(qi, ri)])
            np.save(cache, exact)
            rows.append({"section": "pairs", "split": split, "method": "PairwiseAligner",
                         "us_per_pair": 1e6 * t.seconds / len(qi)})
        for fallback in ("none", "two-offset", "align"):
            best = math.inf
            for _ in range(2):
                with Timer() as t:
                    got = pair_identity(q["store"], qi, cands.store, ri, fallback=fallback)
                best = min(best, t.seconds)
            err = np.abs(got.identity - exact)
            rows.append({"section": "pairs", "split": split, "method": fallback, "pairs": int(len(qi)),
                         "mae": float(err.mean()), "within_0.5": float((err <= 0.005).mean()),
                         "within_0.1": float((err <= 0.001).mean()), "max_err": float(err.max()),
                         "mae_above_0.9": float(err[exact >= 0.9].mean()),
                         "two_offset": float((got.method == 2).mean()), "aligned": float((got.method == 3).mean()),
                         "us_per_pair": 1e6 * best / len(qi)})
    return rows


def section_rerank(data, cands, args) -> list[dict]:
    train = data["train"]
    rows = []
    for split, rank in (("test", "species"), ("test_unseen", "genus")):
        q = cands.queries[split]
        truth = data[split][rank]
        labels = train[rank]
        for source in cands.sources():
            base = cands.get(split, source, 1)
            if not source.startswith("union"):   # the generator's own top hit, before re-ranking
                rows.append({"section": "rerank", "split": split, "rank": rank, "source": cands.label(source),
                             "n": 1,
                             "reranked": False, "accuracy": float((labels[base[:, 0]] == truth).mean())})
            for n in args.n:
                cand = cands.get(split, source, n)
                with Timer() as t:
                    idx, score = rerank(q["store"], cands.store, cand)
                pred = np.where(idx[:, 0] >= 0, labels[np.maximum(idx[:, 0], 0)], "")
                gen = train["genus"]
                g_codes, names = codes(gen)
                vote = weighted_vote(idx, score, g_codes)
                inv = {v: k for k, v in names.items()}
                vote_acc = float(np.mean([inv.get(v, "") == t_ for v, t_ in zip(vote, data[split]["genus"])]))
                rows.append({"section": "rerank", "split": split, "rank": rank, "source": cands.label(source),
                             "n": n, "reranked": True, "accuracy": float((pred == truth).mean()),
                             "genus_vote": vote_acc,
                             "ms_per_query": 1000 * t.seconds / len(truth),
                             "candidates_per_query": float((cand >= 0).sum(axis=1).mean())})
            print(f"  rerank {split} {source} done", file=sys.stderr, flush=True)
    return rows


def section_species(data, cands, args) -> list[dict]:
    """Species decision among the re-ranked union candidates: the top hit, or a vote among the references tied
    at (or near) the best score. Chosen on val (seen species), then applied once to test."""
    train = data["train"]
    species_codes, names = codes(train["species"])
    rules = {"top1": lambda i, s: top_label(i, species_codes),
             "tie vote": lambda i, s: weighted_vote(i, s, species_codes, margin=0.0)}
    for margin in (0.002, 0.005):
        rules[f"margin{margin}"] = (lambda m: lambda i, s: weighted_vote(i, s, species_codes, margin=m))(margin)
    for tau in (0.001, 0.002):
        rules[f"soft{tau}"] = (lambda t: lambda i, s: weighted_vote(i, s, species_codes, tau=t))(tau)
    results: dict[tuple, dict] = {}
    for split in ("val", "test"):
        truth, _ = codes(data[split]["species"], names)
        for n in args.n:
            idx, score = rerank(cands.queries[split]["store"], cands.store, cands.get(split, "union", n))
            for name, rule in rules.items():
                results[(split, n, name)] = float((rule(idx, score) == truth).mean())
    order = list(rules)
    chosen = max(((n, name) for n in args.n for name in order),
                 key=lambda key: (results[("val", *key)], -order.index(key[1]), -key[0]))
    rows = []
    for n in args.n:
        for name in order:
            rows.append({"section": "species", "n": n, "rule": name, "val": results[("val", n, name)],
                         "test": results[("test", n, name)], "chosen_on_val": (n, name) == chosen})
    return rows


def exhaustive(split: str, data, cands, args) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(picked query rows, identity [n, refs], overlap [n, refs], seconds) of a seeded sample; cached."""
    n = args.recall_sample
    path = Path(args.cache) / f"exhaustive_{split}_{n}.npz"
    if path.is_file():
        z = np.load(path)
        return z["pick"], z["identity"], z["overlap"], float(z["seconds"]) if "seconds" in z else math.nan
    store = cands.queries[split]["store"]
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(store), n, replace=False))
    identity = np.zeros((n, len(cands.store)), dtype=np.float32)
    overlap = np.zeros((n, len(cands.store)), dtype=np.int16)
    everyone = np.arange(len(cands.store))
    with Timer() as t:
        for j, qi in enumerate(pick):
            got = pair_identity(store, np.full(len(everyone), qi), cands.store, everyone)
            identity[j], overlap[j] = got.identity, got.overlap
    np.savez(path, pick=pick, identity=identity, overlap=overlap, seconds=t.seconds)
    return pick, identity, overlap, t.seconds


def _subset(store, rows: np.ndarray):
    return SequenceStore.from_sequences([store.sequence(int(i)) for i in rows])


def section_recall(data, cands, args) -> list[dict]:
    rows = []
    train = data["train"]
    for split, rank in (("test", "species"), ("test_unseen", "genus")):
        pick, identity, overlap, seconds = exhaustive(split, data, cands, args)
        store = cands.queries[split]["store"]
        score = coverage_score(identity, overlap, store.lengths[pick][:, None])
        best = score.max(axis=1)
        nn = score.argmax(axis=1)
        truth = data[split][rank][pick]
        rows.append({"section": "recall", "split": split, "source": "exhaustive", "n": len(train["seq"]),
                     "accuracy": float((train[rank][nn] == truth).mean()),
                     "raw_identity_accuracy": float((train[rank][identity.argmax(axis=1)] == truth).mean()),
                     "ms_per_query": 1000 * seconds / len(pick), "queries": int(len(pick))})
        for source in cands.sources():
            for n in args.n:
                cand = cands.get(split, source, n)[pick]
                got = np.where(cand >= 0, np.take_along_axis(score, np.maximum(cand, 0), axis=1), -np.inf).max(1)
                idx, _ = rerank(_subset(store, pick), cands.store, cand)
                rows.append({"section": "recall", "split": split, "source": cands.label(source), "n": n,
                             "accuracy": float((top_label(idx, train[rank]) == truth).mean()),
                             "recall_exact": float(np.mean(got >= best - 1e-6)),
                             "recall_0.5": float(np.mean(got >= best - 0.005))})
    return rows


def holdout_queries(data, args) -> dict:
    """Whole train species held out (from genera with at least two train species), queried against the rest
    of train: the open-world condition of test_unseen, on train only."""
    train = data["train"]
    rng = np.random.default_rng(args.seed)
    genus_species: dict[str, set] = {}
    for g, s in zip(train["genus"], train["species"]):
        if g and s:
            genus_species.setdefault(g, set()).add(s)
    eligible = sorted(s for g, ss in genus_species.items() if len(ss) >= 2 for s in ss)
    chosen = set(rng.choice(eligible, min(args.holdout_species, len(eligible)), replace=False).tolist())
    rows = []
    per_species: dict[str, int] = {}
    for i in rng.permutation(len(train["seq"])):
        s = train["species"][i]
        if s in chosen and per_species.get(s, 0) < args.holdout_per_species:
            per_species[s] = per_species.get(s, 0) + 1
            rows.append(i)
    return {"rows": np.array(sorted(rows)), "species": chosen}


def candidates_for(rows: np.ndarray, data, cands, args, n_emb: int, n_kmer: int, exclude_species):
    """Union candidates of train rows queried against train without their own species (True or "species"),
    their own genus ("genus"), or only their own sequence (False)."""
    train = data["train"]
    if exclude_species:
        groups, _ = codes(train["genus" if exclude_species == "genus" else "species"])
    else:
        groups = np.arange(len(train["seq"]))
    store = SequenceStore.from_sequences([train["seq"][i] for i in rows])
    _, emb = knn_search(train["emb"][rows], train["emb"], n_emb, exclude=[(groups[rows], groups)])
    _, km = cands.kmer.search(store, n_kmer, max_df=cands.max_df, exclude=(groups[rows], groups))
    return store, union(emb, km)


def genus_rules(idx, score, genus_codes, species_codes) -> dict[str, np.ndarray]:
    rules = {"top1": top_label(idx, genus_codes), "vote": weighted_vote(idx, score, genus_codes)}
    for margin in (0.01, 0.02, 0.03, 0.05):
        rules[f"margin{margin}"] = weighted_vote(idx, score, genus_codes, margin=margin)
        rules[f"margin{margin}_species"] = weighted_vote(idx, score, genus_codes, margin=margin,
                                                         per_species=species_codes)
    for tau in (0.002, 0.005, 0.01):
        rules[f"soft{tau}"] = weighted_vote(idx, score, genus_codes, tau=tau)
        rules[f"soft{tau}_species"] = weighted_vote(idx, score, genus_codes, tau=tau, per_species=species_codes)
    for m in (2, 3):
        rules[f"mean{m}"] = genus_mean(idx, score, genus_codes, species_codes, m)
    return rules


def gated(rule_pred: np.ndarray, top1: np.ndarray, best: np.ndarray, gate: float) -> np.ndarray:
    """The open-world rule only for queries whose best score is below `gate` (no near-identical reference)."""
    return np.where(best < gate, rule_pred, top1)


def section_genus(data, cands, args) -> list[dict]:
    train = data["train"]
    genus_codes, gnames = codes(train["genus"])
    species_codes, snames = codes(train["species"])
    n = args.genus_n
    rows = []
    # ---- tuning on train: held-out species (open world) and held-out sequences of val-like seen species
    hold = holdout_queries(data, args)
    store, cand = candidates_for(hold["rows"], data, cands, args, n, n, exclude_species=True)
    idx, score = rerank(store, cands.store, cand)
    truth_g, _ = codes(train["genus"][hold["rows"]], gnames)
    rules = genus_rules(idx, score, genus_codes, species_codes)
    tuned = {name: float((pred == truth_g).mean()) for name, pred in rules.items()}
    for name, acc in tuned.items():
        rows.append({"section": "genus", "split": "train-holdout", "rule": name, "gate": "always",
                     "accuracy": acc, "queries": int(len(truth_g))})
    chosen = max(tuned, key=lambda k: (tuned[k], k == "top1"))
    # the gate (best score below which the open-world rule replaces the top hit) is set on val: seen species,
    # where the top hit is right, must not lose their genus
    val = cands.queries["val"]
    vidx, vscore = rerank(val["store"], cands.store, cands.get("val", "union", n))
    vtruth, _ = codes(data["val"]["genus"], gnames)
    vrules = genus_rules(vidx, vscore, genus_codes, species_codes)
    gates = {}
    for gate in (0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 1.01):
        h = float((gated(rules[chosen], rules["top1"], score[:, 0], gate) == truth_g).mean())
        v = float((gated(vrules[chosen], vrules["top1"], vscore[:, 0], gate) == vtruth).mean())
        gates[gate] = (h + v) / 2
        rows.append({"section": "genus", "split": "train-holdout+val", "rule": chosen, "gate": gate,
                     "holdout": h, "val": v})
    gate = max(gates, key=lambda g: (gates[g], -g))
    # ---- applied once to the test splits
    for split in ("test_unseen", "test"):
        q = cands.queries[split]
        tidx, tscore = rerank(q["store"], cands.store, cands.get(split, "union", n))
        truth, _ = codes(data[split]["genus"], gnames)
        trules = genus_rules(tidx, tscore, genus_codes, species_codes)
        for name, pred in trules.items():
            rows.append({"section": "genus", "split": split, "rule": name, "gate": "always",
                         "accuracy": float((pred == truth).mean()), "chosen": name == chosen})
        final = gated(trules[chosen], trules["top1"], tscore[:, 0], gate)
        rows.append({"section": "genus", "split": split, "rule": f"{chosen} below {gate}", "gate": gate,
                     "accuracy": float((final == truth).mean()), "chosen": True})
    return rows


def section_thresholds(data, cands, args) -> list[dict]:
    """Assignment thresholds on the score, calibrated on train only, the library's way (reference.py): a rank's
    threshold is the lowest score at which at most 1 - precision of the queries whose own taxon at that rank is
    absent from the reference still get a (necessarily wrong) label. Novel species: whole train species held
    out; novel genera: the same queries with their whole genus held out. Val (seen species) shows the cost."""
    train = data["train"]
    rows = []
    hold = holdout_queries(data, args)
    n = args.genus_n
    best = {}
    for level, exclude in (("species", "species"), ("genus", "genus")):
        store, cand = candidates_for(hold["rows"], data, cands, args, n, n, exclude_species=exclude)
        _, score = rerank(store, cands.store, cand)
        best[level] = score[:, 0]
    vidx, vscore = rerank(cands.queries["val"]["store"], cands.store, cands.get("val", "union", n))
    val_species_right = train["species"][vidx[:, 0]] == data["val"]["species"]
    for level in ("species", "genus"):
        threshold = float(np.quantile(best[level], args.precision, method="higher"))
        rows.append({"section": "thresholds", "rank": level, "precision": args.precision, "threshold": threshold,
                     "novel_queries": int(len(best[level])),
                     "novel_median_best": float(np.median(best[level])),
                     "val_assigned": float(np.mean(vscore[:, 0] >= threshold)),
                     "val_assigned_right": float(np.mean((vscore[:, 0] >= threshold) & (
                         val_species_right if level == "species" else
                         train["genus"][vidx[:, 0]] == data["val"]["genus"])))})
    for t in (0.95, 0.96, 0.97, 0.98, 0.985, 0.99):
        rows.append({"section": "thresholds", "rank": "species", "threshold": t,
                     "novel_species_assigned": float(np.mean(best["species"] >= t)),
                     "val_assigned": float(np.mean(vscore[:, 0] >= t)),
                     "val_assigned_right": float(np.mean((vscore[:, 0] >= t) & val_species_right))})
    return rows


def section_cluster(data, cands, args) -> list[dict]:
    rows = []
    train = data["train"]
    # the items: test + test_unseen with a BIN, each sequence once
    seqs, bins, embs = [], [], []
    seen = set()
    for split in ("test", "test_unseen"):
        d = data[split]
        for i, s in enumerate(d["seq"]):
            if d["bin"][i] and s not in seen:
                seen.add(s)
                seqs.append(s)
                bins.append(d["bin"][i])
                embs.append(d["emb"][i])
    embs = np.array(embs)
    store = SequenceStore.from_sequences(seqs)
    # calibration set: a seeded subsample of train's BIN-labelled sequences
    rng = np.random.default_rng(args.seed)
    labelled = np.flatnonzero(train["bin"] != "")
    sub = np.sort(rng.choice(labelled, min(args.cluster_calibration, len(labelled)), replace=False))
    sub_store = SequenceStore.from_sequences([train["seq"][i] for i in sub])
    sub_bins = train["bin"][sub]

    def graph(vectors, store_, k):
        _, nb = knn_search(vectors, vectors, k + 1)
        return nb[:, 1:]

    def kmer_graph(store_, k):
        index = KmerIndex(store_)
        _, nb = index.search(store_, k + 1, max_df=cands.max_df, exclude=(np.arange(len(store_)),
                                                                            np.arange(len(store_))))
        return nb

    thresholds = [float(t) for t in args.cluster_thresholds]
    # ---- identity, embedding-kNN candidate graph (and the union with a k-mer graph)
    for source in ("embedding", "union"):
        def edges(vectors, store_, source=source):   # called within this iteration only
            nb = graph(vectors, store_, args.cluster_k)
            if source == "union":
                nb = union(nb, kmer_graph(store_, args.cluster_k))
            return nb
        with Timer() as t_cal:
            nb = edges(train["emb"][sub], sub_store)
            pairs = neighbour_pairs(sub_store, nb)
            cal = {t: cluster_metrics(sub_bins, identity_graph_cluster(sub_store, nb, t, pairs=pairs))["ami"]
                   for t in thresholds}
        chosen = max(cal, key=cal.get)
        with Timer() as t_run:
            nb = edges(embs, store)
            pairs = neighbour_pairs(store, nb)
            labels = identity_graph_cluster(store, nb, chosen, pairs=pairs)
        m = cluster_metrics(bins, labels)
        rows.append({"section": "cluster", "method": f"identity/{source}-graph", "threshold": chosen,
                     "calibration_ami": cal[chosen], "ami": m["ami"], "ari": m["ari"], "clusters": m["clusters"],
                     "true_bins": m["true_groups"], "seconds": t_run.seconds, "calibration_seconds": t_cal.seconds,
                     "curve_calibration": cal,
                     "curve_test": {t: cluster_metrics(bins, identity_graph_cluster(store, nb, t, pairs=pairs))["ami"]
                                    for t in thresholds} if args.cluster_curve else None})
        print(f"  cluster identity/{source} done", file=sys.stderr, flush=True)
    # ---- embedding cosine, threshold calibrated the library's way on the same subsample
    bin_codes, _ = codes(train["bin"][sub])
    threshold, _ = calibrate_cluster_threshold(train["emb"][sub], bin_codes, np.arange(len(sub)),
                                               max_size=len(sub), seed=args.seed)
    with Timer() as t_run:
        labels = cluster(embs, threshold=threshold)
    m = cluster_metrics(bins, labels)
    rows.append({"section": "cluster", "method": "embedding cosine", "threshold": threshold, "ami": m["ami"],
                 "ari": m["ari"], "clusters": m["clusters"], "true_bins": m["true_groups"],
                 "seconds": t_run.seconds})
    return rows


def section_speed(data, cands, args) -> list[dict]:
    rows = []
    pretrained = load_model(args.model)
    test = data["test"]
    sample = test["seq"][:args.speed_sample]
    embed_sequences(pretrained, sample[:64])          # warm-up
    with Timer() as t:
        embed_sequences(pretrained, sample, batch_size=256)
    per_embed = t.seconds / len(sample)
    q = cands.queries["test"]
    nq = len(test["seq"])
    rows.append({"section": "speed", "step": "embed (barcodemae-fast)", "ms_per_query": 1000 * per_embed})
    rows.append({"section": "speed", "step": f"embedding kNN search (top {cands.n_max})",
                 "ms_per_query": 1000 * q["emb_seconds"] / nq})
    rows.append({"section": "speed", "step": f"k-mer search (top {cands.n_max}, max_df {cands.max_df})",
                 "ms_per_query": 1000 * q["kmer_seconds"] / nq})
    if cands.alt_max_df:
        rows.append({"section": "speed", "step": f"k-mer search (top {cands.n_max}, max_df {cands.alt_max_df})",
                     "ms_per_query": 1000 * q["kmer_alt_seconds"] / nq})
    rows.append({"section": "speed", "step": "k-mer index build (train)", "seconds": cands.kmer_build_seconds})
    for n in args.n:
        with Timer() as t:
            rerank(q["store"], cands.store, cands.get("test", "union", n))
        rows.append({"section": "speed", "step": f"rerank union emb {n} + kmer {n}",
                     "ms_per_query": 1000 * t.seconds / nq})
    if args.vsearch and shutil.which("vsearch"):
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            for name, seqs_ in (("q.fa", test["seq"]), ("r.fa", data["train"]["seq"])):
                with open(folder / name, "w") as handle:
                    handle.writelines(f">{i}\n{s}\n" for i, s in enumerate(seqs_))
            with Timer() as t:
                subprocess.run(["vsearch", "--usearch_global", str(folder / "q.fa"), "--db", str(folder / "r.fa"),
                                "--id", "0.5", "--maxaccepts", "1", "--maxrejects", "32", "--top_hits_only",
                                "--blast6out", str(folder / "out.b6"), "--threads", str(args.threads), "--quiet"],
                               check=True, capture_output=True)
            hits = {}
            for line in open(folder / "out.b6"):
                f = line.split("\t")
                hits.setdefault(int(f[0]), int(f[1]))
            acc = np.mean([data["train"]["species"][hits[i]] == s if i in hits else False
                           for i, s in enumerate(test["species"])])
        rows.append({"section": "speed", "step": f"vsearch usearch_global, {args.threads} threads (all of it)",
                     "ms_per_query": 1000 * t.seconds / nq, "species_accuracy": float(acc)})
    return rows


# ============================================================================================ report
def print_table(rows: list[dict]) -> None:
    by_section: dict[str, list[dict]] = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row)
    for section, items in by_section.items():
        keys = [k for k in dict.fromkeys(k for r in items for k in r) if k != "section"
                and not k.startswith("curve")]
        print(f"\n## {section}")
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in items:
            cells = []
            for k in keys:
                v = r.get(k, "")
                cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
            print("| " + " | ".join(cells) + " |")
        for r in items:
            for k in r:
                if k.startswith("curve") and r[k]:
                    print(f"{r.get('method', '')} {k}: " + ", ".join(f"{t}: {a:.4f}" for t, a in r[k].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split_file")
    parser.add_argument("--cache", default="/tmp/identity_cache")
    parser.add_argument("--model", default="barcodemae-fast")
    parser.add_argument("--sections", default="pairs,rerank,species,recall,genus,thresholds,cluster,speed")
    parser.add_argument("--n", default="5,10,20,50", help="candidate counts N to evaluate")
    parser.add_argument("--kmer-max-df", type=int, default=1000, help="k-mer search skips k-mers in more refs")
    parser.add_argument("--kmer-max-df-alt", type=int, default=3000, help="a second k-mer search (0: none)")
    parser.add_argument("--pairs", type=int, default=3000, help="real pairs compared with PairwiseAligner")
    parser.add_argument("--recall-sample", type=int, default=300, help="queries of each split searched exhaustively")
    parser.add_argument("--holdout-species", type=int, default=200, help="train species held out to tune genus rules")
    parser.add_argument("--holdout-per-species", type=int, default=10)
    parser.add_argument("--precision", type=float, default=0.95, help="for the calibrated thresholds")
    parser.add_argument("--genus-n", type=int, default=20, help="N (embedding + k-mer) for the genus rules")
    parser.add_argument("--cluster-k", type=int, default=30, help="candidate-graph neighbours per barcode")
    parser.add_argument("--cluster-calibration", type=int, default=6000, help="train barcodes to calibrate on")
    parser.add_argument("--cluster-thresholds", default="0.01,0.015,0.02,0.025,0.03,0.035,0.04,0.05")
    parser.add_argument("--cluster-curve", action="store_true", help="also print AMI on test for every threshold")
    parser.add_argument("--speed-sample", type=int, default=1000)
    parser.add_argument("--vsearch", action="store_true", help="time VSEARCH on the same queries")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write all rows here")
    args = parser.parse_args()
    args.n = [int(x) for x in args.n.split(",")]
    args.cluster_thresholds = args.cluster_thresholds.split(",")
    sections = args.sections.split(",")

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    data = load_splits(args.split_file, Path(args.cache), args.model)
    with Timer() as t:
        cands = Candidates(data, max(max(args.n), args.genus_n, 50), args.kmer_max_df, args.kmer_max_df_alt or None)
    print(f"candidates ready ({t.seconds:.0f} s)", file=sys.stderr, flush=True)
    rows: list[dict] = []
    for name in sections:
        with Timer() as t:
            rows += globals()[f"section_{name}"](data, cands, args)
        print(f"section {name}: {t.seconds:.0f} s", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
