"""Taxonomic classification of query barcodes against a reference index.

Methods (docs/classify-and-cluster.md):

- `identity` (default): candidates are the reference sequences sharing the most 12-mers (top 10) and, for queries
  whose best k-mer candidate scores below `embed_below` (0.95: distant queries, where the embedding finds what
  shared k-mers miss), those nearest by embedding (top 20); each is scored by exact sequence identity
  (barcodetool.search.identity, coverage score),
  the species is the one carried by most of the candidates tied at the best score, and the whole lineage is that
  hit's. Each rank's confidence is the probability that its label is right, from the whole candidate list, by a
  model fitted on the reference (barcodetool.reference.confidence); a rank is assigned when it reaches
  `min_confidence`; ranks below an unassigned rank stay empty (subfamily is optional and blocks nothing).
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
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

import numpy as np

from . import embedding
from .errors import ModelError, UsageError
from .io.fasta import sintax_label, tab_separated
from .io.interrupts import signals_held
from .io.streaming import read_ahead
from .model.onnx import OnnxModel, load_onnx_model
from .model.runtime import available_cores, cuda_impossible, resolve_device, set_threads
from .model.weights import PretrainedModel, asks_for_default, load_model, locate_model
from .options import Options
from .reference import IdentityHits, identity_hits, nearest_bins  # noqa: F401 (part of this module's API)
from .reference import (DEFAULT_K, IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER, IDENTITY_EMBED_BELOW,
                        MIN_NAMED_COLUMNS, NO_WIDENING, ReferenceIndex, ScoredCandidates, Thresholds, embedding_needed,
                        gate, index_model_name, kmer_fallback, oriented_kmer_hits, resolve_model_for_reference,
                        thresholds_for, vote, widen_parts, widen_setting)
from .search import knn_search, normalize, reverse_complement, sequence_groups
from .taxonomy import RANKS, SINTAX_LETTERS

if TYPE_CHECKING:  # PyTorch is imported when a model is loaded, not with this module
    import torch

log = logging.getLogger("barcodetool")

METHODS = ("identity", "knn", "probe")
FORMATS = ("tsv", "sintax")
CHUNK_RECORDS = 4096   # queries a pipeline stage holds (classify_records)
TSV_COLUMNS = (["id"] + [c for r in RANKS for c in (r, f"{r}_confidence")]
               + ["rank", "nearest_id", "similarity", "bin", "identity_overlap"])


@dataclass(frozen=True)
class ClassifyOptions(Options):
    """How queries are classified: the options of `barcodetool classify`, validated once.

    `method`: "identity" (default), "knn" or "probe". `neighbours` (knn and probe: neighbours that vote),
    `precision` and `min_confidence` default (None) to the index's calibration. The identity method scores the
    `candidates_kmer` reference sequences sharing the most 12-mers and, for queries whose best k-mer candidate
    scores below `embed_below` (inf: every query), the `candidates_embedding` nearest by embedding (0: no
    embedding, no model needed); `candidates_wide` (None: the index's calibration; 0: none) k-mer candidates are
    searched for queries whose best k-mer candidate scores below IDENTITY_WIDEN_BELOW, nearer ones kept.
    `chunk_size` queries are read, embedded and written at a time, `batch_size` per
    forward pass; `search_workers` chunks are searched at once by worker threads (default: 2 for identity, 1 for
    knn and probe).
    """

    method: str = "identity"
    neighbours: int | None = None
    precision: float | None = None
    min_confidence: float | None = None
    candidates_embedding: int = IDENTITY_CANDIDATES_EMBEDDING
    candidates_kmer: int = IDENTITY_CANDIDATES_KMER
    embed_below: float = IDENTITY_EMBED_BELOW
    candidates_wide: int | None = None
    chunk_size: int = CHUNK_RECORDS
    batch_size: int = 256
    search_workers: int | None = None

    kind = "classify"
    renamed = {"k": "neighbours"}

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose {', '.join(METHODS)}")
        if self.neighbours is not None and self.neighbours < 1:
            raise UsageError(f"--neighbours must be at least 1, got {self.neighbours}")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError(f"--min-confidence must be between 0 and 1, got {self.min_confidence}")
        if self.candidates_embedding < 0 or self.candidates_kmer < 0 or (self.candidates_wide or 0) < 0:
            raise UsageError("candidate numbers must be >= 0")
        if math.isnan(self.embed_below) or self.embed_below < 0:
            raise UsageError(f"--embed-below must be a score >= 0 (inf: embed every query), got {self.embed_below}")
        if self.method == "identity" and self.candidates_embedding + self.candidates_kmer == 0:
            raise UsageError("--candidates-embedding and --candidates-kmer cannot both be 0")
        if self.chunk_size < 1 or self.batch_size < 1:
            raise UsageError(f"chunk_size and batch_size must be at least 1, got {self.chunk_size} and "
                             f"{self.batch_size}")
        if self.search_workers is not None and self.search_workers < 1:
            raise UsageError(f"search_workers must be at least 1, got {self.search_workers}")

    @property
    def candidates(self) -> tuple[int, int]:
        """(embedding candidates, k-mer candidates) of the identity method."""
        return self.candidates_embedding, self.candidates_kmer

    @property
    def widen(self) -> tuple[int, float] | None:
        """The widened k-mer search asked for (k-mer candidates, below): None = the index's."""
        if self.candidates_wide is None:
            return None
        return widen_setting(self.candidates_wide)

    @property
    def embeds(self) -> bool:
        """Whether queries are embedded (and a model is needed): every method but identity with k-mer candidates
        only."""
        return self.method != "identity" or self.candidates_embedding > 0


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
    def for_index(cls, index: ReferenceIndex) -> LinearProbe:
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
            ok_rank, blocked = gate(rank, has, top, share, thresholds, min_confidence, blocked)
            labels[rank], confidences[rank], assigned[rank] = choice, np.clip(share, 0, 1), ok_rank
            chosen[rank] = choice
        return labels, confidences, assigned


# ============================================================================================ classification
def classify_embeddings(vectors: np.ndarray, ids: Sequence[str], index: ReferenceIndex, thresholds: Thresholds,
                        *, neighbours: int = DEFAULT_K, method: str = "knn", min_confidence: float | None = None,
                        device=None) -> list[Assignment]:
    """Assignments for query embeddings (rows in `ids` order)."""
    if method not in ("knn", "probe"):
        raise UsageError(f"classify_embeddings does method knn or probe, not {method!r}")
    if min_confidence is None:
        min_confidence = thresholds.min_confidence
    vectors = normalize(vectors)
    sims, idx = knn_search(vectors, index.embeddings, max(1, neighbours), device=device)
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


def _say_unnamed_ranks(index: ReferenceIndex, thresholds: Thresholds) -> None:
    """Warn of the ranks the index labels but the identity rule can never name: a reference of a few dozen
    distinct sequences gives too few labelled leave-out queries at a rank to fit its confidence (MIN_EXAMPLES)."""
    labelled = [rank for rank in RANKS if rank in index.codes and (index.codes[rank] >= 0).any()]
    never = [rank for rank in labelled if not math.isfinite(thresholds.ranks.get(rank, math.nan))]
    if never:
        what = "no rank" if never == labelled else "no " + "/".join(never)
        log.warning(f"the reference names {what}: too few labelled leave-out queries to calibrate a confidence "
                    f"({len(index.identity):,} distinct sequences; `barcodetool reference info` shows the "
                    "calibration); use a larger reference, or `--method knn`, whose thresholds need fewer")


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


# ============================================================================================ the model
def load_inference_model(model_name: str | None, reference: str | None = None, *, device: str = "auto",
                         threads: int = 0, compute: str = "auto", onnx: bool = True
                         ) -> tuple[PretrainedModel | OnnxModel, torch.device | None]:
    """The model that embeds queries for `reference` (a built index or a table/FASTA path, or None), and the
    PyTorch device it runs on.

    `model_name` is a bundled or user model name or a model folder; "auto" (or None) picks the model a built
    index records, where that model is installed, else the default for the device. With `onnx`, the model's
    exported encoder runs in ONNX Runtime where it can, so that PyTorch is never imported: on the CPU, in float32
    (`compute` "auto" or "float32"), with onnxruntime installed and an `encoder.onnx` in the model folder; the
    device is then None. Otherwise PyTorch runs the model on `device` with `threads` CPU threads (0 = all cores).
    """
    if onnx:
        exported = exported_model(model_name, reference, device, threads, compute)
        if exported is not None:
            return exported, None
    set_threads(threads)
    torch_device = resolve_device(device)
    try:
        model = load_model(resolve_model_for_reference(model_name, reference), device=torch_device,
                                compute=compute)
    except ModelError as error:
        built_with = index_model_name(reference) if reference and asks_for_default(model_name) else None
        if built_with is None:
            raise
        raise ModelError(f"{reference} was built with model {built_with!r}, which is not installed here, and the "
                         f"default model cannot be loaded ({error}); pass --model with that model's folder") from None
    return model, torch_device


def exported_model(model_name: str | None, reference: str | None, device: str, threads: int,
                   compute: str) -> OnnxModel | None:
    """The exported encoder in ONNX Runtime where `load_inference_model` can use it, else None."""
    if compute == "bfloat16" or not cuda_impossible(device):
        return None
    try:
        path, name = locate_model(resolve_model_for_reference(model_name, reference), "cpu")
    except ModelError:
        return None   # loading through PyTorch says why, as without the graph
    return load_onnx_model(path, name=name, threads=threads)


# ============================================================================================ streaming
def classify_records(records: Iterable, index: ReferenceIndex, model, options: ClassifyOptions | None = None, *,
                     device=None, progress=None) -> Iterator[Assignment]:
    """Stream assignments for query records (objects with .id and .sequence), one per record, in input order.

    Records are processed `options.chunk_size` at a time (identical sequences of a chunk searched once), so
    memory does not grow with the number of queries. The index must have been built with `model` (a loaded
    model, or its exported encoder). With `method="identity"` and `candidates_embedding=0` (k-mer candidates
    only) no embedding is computed and `model` may be None. `device` runs the neighbour search in PyTorch (None:
    numpy); `progress` is called with the number of records of each chunk written. Until the iteration ends (or
    is closed), numpy's BLAS threads are held to the cores divided among the search workers (process-wide:
    threadpoolctl), where there are two or more and queries are embedded.
    """
    options = options or ClassifyOptions()
    if model is None and options.embeds:
        raise UsageError(f"method {options.method} needs the model (embedding candidates)")
    if model is not None:
        index.check_model(model)
    pipeline = _Pipeline(index, model, options, device)
    yield from pipeline.run(records, progress)


def classify(records: Iterable, index: ReferenceIndex, model, options: ClassifyOptions | None = None,
             **changes) -> list[Assignment]:
    """All assignments as a list. How is said by `options` (ClassifyOptions) or by its fields as keywords
    (`method="knn"`, `neighbours=1`), which also override `options`; see classify_records."""
    options = (options or ClassifyOptions()).replace(**changes) if changes else options
    return list(classify_records(records, index, model, options))


@dataclass
class _Chunk:
    """A chunk of query records in the pipeline, and the work submitted for it."""

    records: list
    groups: np.ndarray       # int [records]: each record's distinct sequence, numbered by first occurrence
    unique: list[str]        # the distinct sequences
    unique_ids: list[str]    # the id of each distinct sequence's first record
    searches: list[tuple[int, int, Future]] = field(default_factory=list)  # k-mer candidates of unique[a:b]
    decisions: list[Future] = field(default_factory=list)   # assignments of unique[a:b], slice after slice

    @classmethod
    def of(cls, records: list) -> _Chunk:
        groups = sequence_groups([r.sequence for r in records])
        _, first = np.unique(groups, return_index=True)
        return cls(records, groups, [records[i].sequence for i in first], [records[i].id for i in first])


class _Pipeline:
    """The stages of classify_records, on different cores.

    A thread reads ahead (read_ahead), worker threads search and decide (numpy), the caller's thread embeds
    (PyTorch); both release the GIL in their array loops. The identity method with embedding candidates takes two
    passes through the workers: k-mer candidates first, then, once the caller's thread has embedded the queries
    they leave in doubt (embedding_needed), embedding candidates and the decision. Each chunk's distinct queries
    are cut into `search_workers` slices, so that the workers share one chunk too (an input of a single chunk
    would otherwise be searched on one core). Assignments come out in input order; at most
    2 x (search_workers + 1) chunks are held besides read-ahead.
    """

    def __init__(self, index: ReferenceIndex, model, options: ClassifyOptions, device):
        self.index = index
        self.model = model
        self.options = options
        self.device = device
        neighbours = options.neighbours
        if options.method == "identity":
            self.thresholds = thresholds_for(
                index, "identity", precision=options.precision, min_confidence=options.min_confidence,
                candidates=options.candidates, embed_below=options.embed_below, widen=options.widen)
            _say_unnamed_ranks(index, self.thresholds)
        else:
            self.thresholds = thresholds_for(index, "knn", precision=options.precision, k=neighbours,
                                             min_confidence=options.min_confidence)
            neighbours = self.thresholds.k if neighbours is None else neighbours
        self.neighbours = neighbours
        # identity: k-mer candidates first (queries of the other strand are read reverse-complemented from then on),
        # then embedding candidates for the queries left in doubt (none with --kmer-only)
        self.two_pass = options.method == "identity"
        self.search_workers = options.search_workers
        if self.search_workers is None:
            self.search_workers = 2 if options.method == "identity" else 1
        self.fallback = None   # identity: whether queries with too common k-mers are searched again
        if options.method == "identity":
            _ = index.identity  # built or loaded here, not by two workers at once
            self.fallback = kmer_fallback(options.candidates_embedding, self.thresholds.embed_below)
        self.workers: ThreadPoolExecutor | None = None
        self.distinct = 0   # distinct queries seen
        self.embedded = 0   # distinct queries embedded
        self.too_short = 0  # queries (records) whose nearest reference aligns over under MIN_NAMED_COLUMNS columns
        self.reversed: list[str] = []   # ids of the distinct queries read as reverse complements

    def run(self, records: Iterable, progress) -> Iterator[Assignment]:
        """Assignments in input order; the worker threads are gone when this ends (or is closed)."""
        # the cores shared among the workers: each worker's neighbour search (a matrix product) gets its share
        share = max(1, available_cores() // self.search_workers)
        with _blas_threads(share if self.search_workers > 1 and self.options.embeds else None):
            yield from self._run(records, progress)

    def _run(self, records: Iterable, progress) -> Iterator[Assignment]:
        self.workers = ThreadPoolExecutor(max_workers=self.search_workers, thread_name_prefix="barcodetool-classify")
        searched: deque[_Chunk] = deque()   # two-pass: k-mer candidates submitted
        pending: deque[_Chunk] = deque()    # decisions submitted
        try:
            for records_chunk in read_ahead(records, self.options.chunk_size):
                chunk = _Chunk.of(records_chunk)
                self.distinct += len(chunk.unique)
                if self.two_pass:
                    searched.append(self.search_kmers(chunk))
                    while len(searched) > self.search_workers:   # the workers search the next chunks meanwhile
                        pending.append(self.embed_doubtful_and_decide(searched.popleft()))
                else:
                    pending.append(self.embed_and_decide(chunk))
                while len(pending) > self.search_workers:
                    yield from self.finish(pending.popleft(), progress)
            while searched:
                pending.append(self.embed_doubtful_and_decide(searched.popleft()))
            while pending:
                yield from self.finish(pending.popleft(), progress)
            if self.two_pass and self.options.candidates_embedding > 0:
                log.info(f"embedding candidates for {self.embedded:,} of {self.distinct:,} distinct queries (best "
                         f"k-mer candidate below {self.thresholds.embed_below:g})")
            if self.reversed:
                shown = ", ".join(self.reversed[:5]) + (", ..." if len(self.reversed) > 5 else "")
                log.warning(f"{len(self.reversed):,} distinct queries match the reference only as reverse "
                            f"complements (reads of the other strand) and were classified so: {shown}")
            if self.too_short:
                what = ("align with their nearest reference over" if self.options.method == "identity"
                        else "are")
                log.warning(f"{self.too_short:,} queries {what} fewer than {MIN_NAMED_COLUMNS} bases: too short to "
                            "name a rank or a BIN (fragments match references of other orders by chance); their "
                            "nearest reference is reported")
        finally:
            self.workers.shutdown(wait=True, cancel_futures=True)

    def submit(self, *args, **kwargs) -> Future:
        with signals_held():  # submit may start a worker thread
            return self.workers.submit(*args, **kwargs)

    def slices(self, n: int) -> list[tuple[int, int]]:
        """[start, end) of each worker's share of n distinct queries."""
        bounds = np.linspace(0, n, self.search_workers + 1).round().astype(int).tolist()
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def embed(self, sequences: list[str]) -> np.ndarray:
        self.embedded += len(sequences)
        return embedding.embed_sequences(self.model, sequences, batch_size=self.options.batch_size)

    def decide(self, unique: list[str], vectors: np.ndarray | None, unique_ids: list[str],
               kmer: ScoredCandidates | None = None) -> list[Assignment]:
        """Search (what is left to search) and decide for distinct queries: run by the workers."""
        options = self.options
        if options.method == "identity":
            return classify_identity(unique, vectors, unique_ids, self.index, self.thresholds,
                                     candidates=options.candidates, min_confidence=options.min_confidence,
                                     device=self.device, kmer=kmer)
        assignments = classify_embeddings(vectors, unique_ids, self.index, self.thresholds,
                                          neighbours=self.neighbours, method=options.method,
                                          min_confidence=options.min_confidence, device=self.device)
        for a, sequence in zip(assignments, unique):   # as the identity rule: no name from a fragment
            if len(sequence) < MIN_NAMED_COLUMNS:
                a.labels, a.confidence, a.rank, a.bin = {}, {}, "", ""
        return assignments

    def embed_and_decide(self, chunk: _Chunk) -> _Chunk:
        """One pass: embed every distinct query of the chunk (unless k-mer candidates only), then decide."""
        vectors = self.embed(chunk.unique) if self.options.embeds else None
        chunk.decisions = [self.submit(self.decide, chunk.unique[a:b], None if vectors is None else vectors[a:b],
                                       chunk.unique_ids[a:b])
                           for a, b in self.slices(len(chunk.unique))]
        return chunk

    def search_kmers(self, chunk: _Chunk) -> _Chunk:
        """First of two passes: the workers find the k-mer candidates."""
        wide = widen_parts(getattr(self.thresholds, "widen", NO_WIDENING))[0]
        chunk.searches = [(a, b, self.submit(oriented_kmer_hits, chunk.unique[a:b], self.index,
                                             self.options.candidates_kmer, fallback=self.fallback, wide=wide))
                          for a, b in self.slices(len(chunk.unique))]
        return chunk

    def embed_doubtful_and_decide(self, chunk: _Chunk) -> _Chunk:
        """Second pass: embed the queries the k-mer candidates leave in doubt, then the workers add their
        embedding candidates and decide."""
        parts = []
        for a, b, future in chunk.searches:
            kmer, flipped = future.result()
            for i in (a + flipped).tolist():   # read as the other strand from here on: embedded and decided so
                chunk.unique[i] = reverse_complement(chunk.unique[i])
                self.reversed.append(chunk.unique_ids[i])
            parts.append((a, b, kmer))
        needs = [np.nonzero(embedding_needed(kmer, self.options.candidates_embedding, self.thresholds.embed_below))[0]
                 for _, _, kmer in parts]
        doubtful = [a + i for (a, _, _), need in zip(parts, needs) for i in need.tolist()]
        vectors = self.embed([chunk.unique[i] for i in doubtful]) if doubtful else None
        chunk.decisions, offset = [], 0
        for (a, b, kmer), need in zip(parts, needs):   # each slice's doubtful queries' embeddings, in order
            rows = vectors[offset:offset + len(need)] if len(need) else None
            offset += len(need)
            chunk.decisions.append(self.submit(self.decide, chunk.unique[a:b], rows, chunk.unique_ids[a:b], kmer))
        return chunk

    def finish(self, chunk: _Chunk, progress) -> Iterator[Assignment]:
        """The chunk's assignments, one per record in order (records of one distinct sequence share its
        decision)."""
        assignments = [a for part in chunk.decisions for a in part.result()]
        for record, group in zip(chunk.records, chunk.groups.tolist()):
            template = assignments[group]
            self.too_short += (template.overlap if template.overlap is not None
                               else len(record.sequence)) < MIN_NAMED_COLUMNS
            yield Assignment(id=record.id, labels=template.labels, confidence=template.confidence,
                             candidates=template.candidates, rank=template.rank,
                             nearest_id=template.nearest_id, similarity=template.similarity, bin=template.bin,
                             overlap=template.overlap, score=template.score)
        if progress is not None:
            progress(len(chunk.records))


@contextmanager
def _blas_threads(limit: int | None):
    """numpy's BLAS held to `limit` threads meanwhile (None: as it is). The search workers run their neighbour
    searches (matrix products) at the same time: with BLAS's own threads on every core each, the extra threads
    only wait for a core, spinning (test_unseen on 2 cores, one BLAS thread a worker: 7% less CPU time, 6% less
    wall time)."""
    if limit is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits   # installed with scikit-learn
    except ImportError:
        yield
        return
    with threadpool_limits(limit, user_api="blas"):
        yield


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
    return tab_separated(cells)


def sintax_row(a: Assignment) -> str:
    """vsearch --sintax tabbed output: label, prediction with confidences, strand, prediction cut at the cutoff."""
    full, cut = [], []
    for rank in RANKS:
        if rank not in a.candidates:
            continue
        label, share = a.candidates[rank]
        name = sintax_label(label)
        full.append(f"{SINTAX_LETTERS[rank]}:{name}({share:.2f})")
        if rank in a.labels:
            cut.append(f"{SINTAX_LETTERS[rank]}:{name}")
    return tab_separated([a.id, ",".join(full), "+", ",".join(cut)])


def write_classification(assignments: Iterable[Assignment], handle: IO[str], fmt: str = "tsv") -> int:
    """Write assignments as TSV (with a header) or SINTAX lines; returns the number of rows written.

    Nothing is written before the first assignment is ready, so that an error met on the way (an input error in
    the first chunk) leaves the output empty, not a TSV header alone."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown output format {fmt!r}; choose {' or '.join(FORMATS)}")
    row = tsv_row if fmt == "tsv" else sintax_row
    assignments = iter(assignments)
    first = next(assignments, None)
    if fmt == "tsv":
        handle.write(tsv_header())
    if first is None:
        return 0
    handle.write(row(first))
    count = 1
    for assignment in assignments:
        handle.write(row(assignment))
        count += 1
    return count
