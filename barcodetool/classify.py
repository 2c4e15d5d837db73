"""Taxonomic classification of query barcodes against a reference index.

Methods (docs/classify-and-cluster.md):

- `identity` (default): candidates are the reference sequences sharing the most 12-mers (top 10) and, for queries
  whose best k-mer candidate scores below `embed_below` (0.95: distant queries, where the embedding finds what
  shared k-mers miss), those nearest by embedding (top 20); each is scored by exact sequence identity
  (barcodetool.identity, coverage score),
  the species is the one carried by most of the candidates tied at the best score, and the whole lineage is that
  hit's. A rank is assigned when the best score reaches the rank's threshold calibrated on the reference (and
  the tied-best candidates agree at least `min_confidence` of the time); ranks below an unassigned rank stay
  empty (subfamily is optional and blocks nothing).
- `knn`: the k nearest reference barcodes by cosine similarity vote, weighted by similarity, rank by rank from
  phylum down (each rank votes only among neighbours consistent with the candidates above), gated by cosine
  similarity thresholds calibrated the same way (the embedding-only protocol of the papers).
- `probe`: a linear classifier per rank fitted on the reference embeddings (the papers' linear probe), gated by
  the knn thresholds.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator, Sequence

import numpy as np

from .errors import UsageError
from .io.interrupts import signals_held
from .io.streaming import read_ahead
from .taxonomy import OPTIONAL_RANKS, RANKS, SINTAX_LETTERS
from .reference.index import IdentityHits, identity_hits, nearest_bins  # noqa: F401 (part of this module's API)
from .reference.index import (DEFAULT_K, IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER, IDENTITY_EMBED_BELOW,
                        ReferenceIndex, ScoredCandidates, Thresholds, embedding_needed,
                        identity_decide, kmer_fallback, kmer_hits, knn_search, normalize, sequence_groups, vote)

log = logging.getLogger("barcodetool")

METHODS = ("identity", "knn", "probe")
FORMATS = ("tsv", "sintax")
CHUNK_RECORDS = 4096   # queries a pipeline stage holds (classify_records)
TSV_COLUMNS = (["id"] + [c for r in RANKS for c in (r, f"{r}_confidence")]
               + ["rank", "nearest_id", "similarity", "bin", "identity_overlap"])


@dataclass
class Assignment:
    """The classification of one query."""

    id: str
    labels: dict[str, str] = field(default_factory=dict)                 # assigned ranks only
    confidence: dict[str, float] = field(default_factory=dict)           # assigned ranks only
    candidates: dict[str, tuple[str, float]] = field(default_factory=dict)  # best label and share, every rank
    rank: str = ""                       # deepest assigned rank ("" = nothing assigned)
    nearest_id: str = ""
    similarity: float = math.nan         # identity method: sequence identity to nearest_id; knn/probe: cosine
    bin: str = ""                        # the nearest BIN-labelled reference's BIN, within the BIN threshold
    overlap: int | None = None           # identity method: aligned columns of the query and nearest_id
    score: float = math.nan              # identity method: the coverage score the thresholds apply to

    def label(self, rank: str) -> str:
        return self.labels.get(rank, "")


# ============================================================================================ linear probe
class LinearProbe:
    """Per-rank logistic regression on reference embeddings, fitted lazily and kept in this process only."""

    _cache: dict = {}

    def __init__(self, index: ReferenceIndex, *, max_samples: int = 50_000, seed: int = 0):
        self.index = index
        self.max_samples = max_samples
        self.seed = seed
        self.models: dict[str, object] = {}
        self.parents = self._parent_maps()

    @classmethod
    def for_index(cls, index: ReferenceIndex) -> "LinearProbe":
        key = (id(index), index.model_sha256, len(index))
        probe = cls._cache.get(key)
        if probe is None or probe.index is not index:
            probe = cls._cache[key] = cls(index)
        return probe

    def _parent_maps(self) -> dict[str, dict[str, np.ndarray]]:
        """rank -> higher rank -> int [classes]: the most common higher-rank label of each class (-1 unknown)."""
        codes = self.index.codes
        out: dict[str, dict[str, np.ndarray]] = {}
        ranks = self.index.ranks
        for i, rank in enumerate(ranks):
            out[rank] = {}
            n_classes = len(self.index.label_names[rank])
            for higher in ranks[:i]:
                known = (codes[rank] >= 0) & (codes[higher] >= 0)
                mapping = np.full(n_classes, -1, dtype=np.int64)
                if known.any():
                    pairs = np.stack([codes[rank][known], codes[higher][known]], axis=1)
                    unique, counts = np.unique(pairs, axis=0, return_counts=True)
                    order = np.lexsort((-counts, unique[:, 0]))
                    seen = set()
                    for row in order:
                        c = int(unique[row, 0])
                        if c not in seen:
                            seen.add(c)
                            mapping[c] = unique[row, 1]
                out[rank][higher] = mapping
        return out

    def model(self, rank: str):
        if rank not in self.models:
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            codes = self.index.codes[rank]
            rows = np.nonzero(codes >= 0)[0]
            if len(rows) > self.max_samples:
                rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_samples, replace=False))
            y = codes[rows]
            if len(np.unique(y)) < 2:
                self.models[rank] = int(y[0]) if len(y) else None
            else:
                log.info(f"fitting the linear probe for {rank} ({len(rows):,} barcodes, "
                         f"{len(np.unique(y)):,} labels)")
                import warnings

                from sklearn.exceptions import ConvergenceWarning

                pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    pipeline.fit(np.asarray(self.index.embeddings[rows], dtype=np.float32), y)
                if any(issubclass(w.category, ConvergenceWarning) for w in caught):
                    log.info(f"the {rank} probe stopped after 300 iterations before full convergence")
                self.models[rank] = pipeline
        return self.models[rank]

    def predict(self, vectors: np.ndarray, sims: np.ndarray, thresholds: dict[str, float],
                min_confidence: float):
        """(labels, confidences, assigned) per rank, hierarchically consistent."""
        n = len(vectors)
        labels, confidences, assigned = {}, {}, {}
        blocked = np.zeros(n, dtype=bool)
        chosen: dict[str, np.ndarray] = {}
        top = sims[:, 0] if sims.shape[1] else np.full(n, -np.inf)
        for rank in self.index.ranks:
            model = self.model(rank)
            n_classes = len(self.index.label_names[rank])
            if model is None:
                continue
            if isinstance(model, int):
                proba = np.zeros((n, n_classes), dtype=np.float64)
                proba[:, model] = 1.0
            else:
                proba = np.zeros((n, n_classes), dtype=np.float64)
                proba[:, model.classes_] = model.predict_proba(vectors)
            allowed = np.ones_like(proba, dtype=bool)
            for higher, choice in chosen.items():
                parent = self.parents[rank][higher]  # [classes]
                ok = (parent[None, :] == choice[:, None]) | (parent[None, :] < 0) | (choice[:, None] < 0)
                allowed &= ok
            masked = np.where(allowed, proba, -1.0)
            best = np.argmax(masked, axis=1)
            share = masked[np.arange(n), best]
            has = share >= 0
            choice = np.where(has, best, -1)
            threshold = thresholds.get(rank, math.nan)
            if math.isnan(threshold):
                ok_rank = np.zeros(n, dtype=bool)
            else:
                ok_rank = has & (top >= threshold) & (share >= min_confidence - 1e-6) & ~blocked
                if rank not in OPTIONAL_RANKS:
                    blocked |= has & ~ok_rank
            labels[rank], confidences[rank], assigned[rank] = choice, np.clip(share, 0, 1), ok_rank
            chosen[rank] = choice
        return labels, confidences, assigned


# ============================================================================================ classification
def classify_embeddings(vectors: np.ndarray, ids: Sequence[str], index: ReferenceIndex, thresholds: Thresholds,
                        *, k: int = DEFAULT_K, method: str = "knn", min_confidence: float | None = None,
                        device=None) -> list[Assignment]:
    """Assignments for query embeddings (rows in `ids` order)."""
    if method not in ("knn", "probe"):
        raise UsageError(f"classify_embeddings does method knn or probe, not {method!r}")
    if min_confidence is None:
        min_confidence = thresholds.min_confidence
    vectors = normalize(vectors)
    sims, idx = knn_search(vectors, index.embeddings, max(1, k), device=device)
    codes = index.rank_codes()
    if method == "knn":
        votes = vote(sims, idx, codes, thresholds=thresholds.ranks, min_confidence=min_confidence)
        labels, shares, assigned = votes.label, votes.confidence, votes.assigned
    else:
        probe = LinearProbe.for_index(index)
        labels, shares, assigned = probe.predict(vectors, sims, thresholds.ranks, min_confidence)
    bins = nearest_bins(index, sims, idx, thresholds.bin)
    out = []
    nearest = idx[:, 0].tolist()
    top = sims[:, 0].tolist()
    for row, a in enumerate(_labelled_assignments(ids, labels, shares, assigned, index.label_names)):
        j = nearest[row]
        if j >= 0:
            a.nearest_id = index.ids[j]
            a.similarity = top[row]
        a.bin = bins[row]
        out.append(a)
    return out


def _labelled_assignments(ids: Sequence[str], labels: dict[str, np.ndarray], shares: dict[str, np.ndarray],
                          assigned: dict[str, np.ndarray], names: dict[str, list[str]]) -> Iterator[Assignment]:
    """One Assignment per query id with each rank's best candidate label and its share; the rank is assigned
    (label, confidence, deepest rank) only where the decision says so. labels: rank -> int codes [Q] (-1 =
    none); shares: rank -> float [Q]; assigned: rank -> bool [Q]."""
    ranks = [r for r in RANKS if r in labels]
    label_lists = {r: labels[r].tolist() for r in ranks}
    share_lists = {r: shares[r].tolist() for r in ranks}
    assigned_lists = {r: assigned[r].tolist() for r in ranks}
    for row, query_id in enumerate(ids):
        a = Assignment(id=query_id)
        for rank in ranks:
            code = label_lists[rank][row]
            if code < 0:
                continue
            name = names[rank][code]
            a.candidates[rank] = (name, share_lists[rank][row])
            if assigned_lists[rank][row]:
                a.labels[rank] = name
                a.confidence[rank] = share_lists[rank][row]
                a.rank = rank
        yield a


def classify_identity(sequences, vectors: np.ndarray | None, ids: Sequence[str], index: ReferenceIndex,
                      thresholds: Thresholds, *, candidates: tuple[int, int] = (IDENTITY_CANDIDATES_EMBEDDING,
                                                                                 IDENTITY_CANDIDATES_KMER),
                      min_confidence: float | None = None, device=None, embed=None,
                      kmer: ScoredCandidates | None = None) -> list[Assignment]:
    """Assignments of the identity method for query sequences (rows in `ids` order); `vectors`, `embed` and
    `kmer` as for `identity_hits`."""
    hits = identity_hits(sequences, vectors, index, thresholds, candidates=candidates, min_confidence=min_confidence,
                         device=device, embed=embed, kmer=kmer)
    votes = hits.votes
    layer = index.identity
    rows = np.arange(len(ids))
    chosen = hits.chosen
    best = hits.score[rows, chosen].tolist() if hits.idx.shape[1] else [math.nan] * len(ids)
    overlaps = hits.overlap[rows, chosen].tolist() if hits.idx.shape[1] else [0] * len(ids)
    out = []
    assignments = _labelled_assignments(ids, votes.label, votes.confidence, votes.assigned, index.label_names)
    for row, a in enumerate(assignments):
        g = int(hits.hit[row])
        if g >= 0:
            a.nearest_id = index.ids[int(layer.group_record[g])]
            a.similarity = float(hits.similarity[row])
            a.overlap = int(overlaps[row])
            a.score = float(best[row])
        a.bin = hits.bins[row]
        out.append(a)
    return out


def nearest_labels(index: ReferenceIndex, idx: np.ndarray, rank: str) -> list[str]:
    """The 1-NN label at `rank` (the papers' protocol: no threshold): "" where the neighbour has none."""
    codes = index.codes.get(rank)
    if codes is None:
        return [""] * len(idx)
    names = index.label_names[rank]
    first = idx[:, 0]
    return [names[codes[j]] if j >= 0 and codes[j] >= 0 else "" for j in first.tolist()]


def classify_records(records: Iterable, index: ReferenceIndex, pretrained, *, k: int | None = None,
                     method: str = "identity", precision: float | None = None, min_confidence: float | None = None,
                     candidates_embedding: int = IDENTITY_CANDIDATES_EMBEDDING,
                     candidates_kmer: int = IDENTITY_CANDIDATES_KMER, embed_below: float = IDENTITY_EMBED_BELOW,
                     chunk_size: int = CHUNK_RECORDS, batch_size: int = 256, device=None, progress=None,
                     search_workers: int | None = None) -> Iterator[Assignment]:
    """Stream assignments for query records (objects with .id and .sequence), one per record, in input order.

    Records are processed `chunk_size` at a time (identical sequences of a chunk searched once), so memory does
    not grow with the number of queries. The index must have been built with `pretrained`. With
    `method="identity"` and `candidates_embedding=0` (k-mer candidates only) no embedding is computed and
    `pretrained` may be None. `k` applies to knn and probe only; the candidate numbers and `embed_below` (embedding
    candidates only for queries whose best k-mer candidate scores below it; inf = every query) to identity only.
    `search_workers`: chunks searched at once by worker threads (default: 2 for identity, 1 for knn and probe).
    """
    from .embedding import embed_sequences

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose {', '.join(METHODS)}")
    if k is not None and k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise UsageError(f"--min-confidence must be between 0 and 1, got {min_confidence}")
    if candidates_embedding < 0 or candidates_kmer < 0:
        raise UsageError("candidate numbers must be >= 0")
    if math.isnan(embed_below) or embed_below < 0:
        raise UsageError(f"--embed-below must be a score >= 0 (inf: embed every query), got {embed_below}")
    if method == "identity" and candidates_embedding + candidates_kmer == 0:
        raise UsageError("--candidates-embedding and --candidates-kmer cannot both be 0")
    embed = method != "identity" or candidates_embedding > 0
    if pretrained is None and embed:
        raise UsageError(f"method {method} needs the model (embedding candidates)")
    if pretrained is not None:
        index.check_model(pretrained)
    candidates = (candidates_embedding, candidates_kmer)
    if method == "identity":
        thresholds = index.identity_thresholds_for(precision=precision, min_confidence=min_confidence,
                                                   candidates=candidates, embed_below=embed_below)
    else:
        thresholds = index.thresholds_for(precision=precision, k=k, min_confidence=min_confidence)
        k = thresholds.k if k is None else k

    def search_and_decide(unique: list[str], vectors: np.ndarray | None, unique_ids: list[str],
                          kmer: ScoredCandidates | None = None) -> list[Assignment]:
        if method == "identity":
            return classify_identity(unique, vectors, unique_ids, index, thresholds, candidates=candidates,
                                     min_confidence=min_confidence, device=device, kmer=kmer)
        return classify_embeddings(vectors, unique_ids, index, thresholds, k=k, method=method,
                                   min_confidence=min_confidence, device=device)

    def finish(chunk: list, groups: np.ndarray, decided: list[Future]) -> Iterator[Assignment]:
        assignments = [a for part in decided for a in part.result()]
        for record, group in zip(chunk, groups.tolist()):
            template = assignments[group]
            yield Assignment(id=record.id, labels=template.labels, confidence=template.confidence,
                             candidates=template.candidates, rank=template.rank,
                             nearest_id=template.nearest_id, similarity=template.similarity, bin=template.bin,
                             overlap=template.overlap, score=template.score)
        if progress is not None:
            progress(len(chunk))

    # Stages on different cores: a thread reads ahead (read_ahead), worker threads search and decide (numpy), this
    # thread embeds (PyTorch); both release the GIL in their array loops. The identity method with embedding
    # candidates takes two passes through the workers: k-mer candidates first, then, once this thread has
    # embedded the queries they leave in doubt (embedding_needed), embedding candidates and the decision.
    # Each chunk's distinct queries are cut into `search_workers` slices, so that the workers share one chunk
    # too (an input of a single chunk would otherwise be searched on one core). Assignments come out in input
    # order; at most 2 x (search_workers + 1) chunks are held besides read-ahead.
    two_pass = method == "identity" and candidates_embedding > 0
    if search_workers is None:
        search_workers = 2 if method == "identity" else 1
    if search_workers < 1:
        raise UsageError(f"search_workers must be at least 1, got {search_workers}")
    if method == "identity":
        index.identity  # built or loaded here, not by two workers at once
    fallback = kmer_fallback(candidates_embedding, thresholds.embed_below)
    workers = ThreadPoolExecutor(max_workers=search_workers, thread_name_prefix="barcodetool-classify")

    def submit(*args, **kwargs) -> Future:
        with signals_held():  # submit may start a worker thread
            return workers.submit(*args, **kwargs)

    def slices(n: int) -> list[tuple[int, int]]:
        bounds = np.linspace(0, n, search_workers + 1).round().astype(int).tolist()
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def embed_and_decide(chunk, groups, unique, unique_ids, searched: list[tuple[int, int, Future]]):
        parts = [(a, b, future.result()) for a, b, future in searched]
        needs = [np.nonzero(embedding_needed(kmer, candidates_embedding, thresholds.embed_below))[0]
                 for _, _, kmer in parts]
        doubtful = [a + i for (a, _, _), need in zip(parts, needs) for i in need.tolist()]
        counts[1] += len(doubtful)
        vectors = (embed_sequences(pretrained, [unique[i] for i in doubtful], batch_size=batch_size)
                   if doubtful else None)
        decided, offset = [], 0
        for (a, b, kmer), need in zip(parts, needs):   # each slice's doubtful queries' embeddings, in order
            rows = vectors[offset:offset + len(need)] if len(need) else None
            offset += len(need)
            decided.append(submit(search_and_decide, unique[a:b], rows, unique_ids[a:b], kmer))
        return chunk, groups, decided

    counts = [0, 0]   # distinct queries, embedded ones
    searched: deque = deque()
    pending: deque = deque()
    try:
        for chunk in read_ahead(records, chunk_size):
            groups = sequence_groups([r.sequence for r in chunk])
            _, first = np.unique(groups, return_index=True)
            unique = [chunk[i].sequence for i in first]
            unique_ids = [chunk[i].id for i in first]
            counts[0] += len(unique)
            if two_pass:
                searched.append((chunk, groups, unique, unique_ids,
                                 [(a, b, submit(kmer_hits, unique[a:b], index, candidates_kmer, fallback=fallback))
                                  for a, b in slices(len(unique))]))
                while len(searched) > search_workers:   # the workers search the next chunks meanwhile
                    pending.append(embed_and_decide(*searched.popleft()))
            else:
                if embed:
                    vectors = embed_sequences(pretrained, unique, batch_size=batch_size)
                    counts[1] += len(unique)
                else:
                    vectors = None
                pending.append((chunk, groups, [submit(search_and_decide, unique[a:b],
                                                       None if vectors is None else vectors[a:b], unique_ids[a:b])
                                                for a, b in slices(len(unique))]))
            while len(pending) > search_workers:
                yield from finish(*pending.popleft())
        while searched:
            pending.append(embed_and_decide(*searched.popleft()))
        while pending:
            yield from finish(*pending.popleft())
        if two_pass:
            log.info(f"embedding candidates for {counts[1]:,} of {counts[0]:,} distinct queries (best k-mer "
                     f"candidate below {thresholds.embed_below:g})")
    finally:
        workers.shutdown(wait=True, cancel_futures=True)


def classify(query_records: Iterable, index: ReferenceIndex, pretrained, **options) -> list[Assignment]:
    """All assignments as a list (see classify_records for the options)."""
    return list(classify_records(query_records, index, pretrained, **options))


# ============================================================================================ writing
def _number(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def tsv_header() -> str:
    return "\t".join(TSV_COLUMNS) + "\n"


def tsv_row(a: Assignment) -> str:
    cells = [a.id]
    for rank in RANKS:
        label = a.labels.get(rank, "")
        cells.append(label)
        cells.append(_number(a.confidence.get(rank), 3) if label else "")
    cells += [a.rank, a.nearest_id, _number(a.similarity, 4), a.bin, "" if a.overlap is None else str(a.overlap)]
    return "\t".join(cell.replace("\t", " ") for cell in cells) + "\n"


def sintax_row(a: Assignment) -> str:
    """vsearch --sintax tabbed output: label, prediction with confidences, strand, prediction cut at the cutoff."""
    full, cut = [], []
    for rank in RANKS:
        if rank not in a.candidates:
            continue
        label, share = a.candidates[rank]
        name = label.replace(" ", "_").replace(",", "_")
        full.append(f"{SINTAX_LETTERS[rank]}:{name}({share:.2f})")
        if rank in a.labels:
            cut.append(f"{SINTAX_LETTERS[rank]}:{name}")
    return f"{a.id}\t{','.join(full)}\t+\t{','.join(cut)}\n"


def write_classification(assignments: Iterable[Assignment], handle: IO[str], fmt: str = "tsv") -> int:
    """Write assignments as TSV (with a header) or SINTAX lines; returns the number of rows written."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown output format {fmt!r}; choose {' or '.join(FORMATS)}")
    row = tsv_row if fmt == "tsv" else sintax_row
    if fmt == "tsv":
        handle.write(tsv_header())
    count = 0
    for assignment in assignments:
        handle.write(row(assignment))
        count += 1
    return count
