"""The reference index: embedded, labelled barcodes, their identity layer and thresholds, in one HDF5 file.

HDF5 layout (format `barcodetool-reference`, version 2; see docs/file-formats.md):

    /ids                    UTF-8 strings [n], reference order
    /sequences              UTF-8 strings [n], cleaned sequences (for alignment re-ranking; read lazily)
    /sequence_group         int32 [n]; records with identical cleaned sequences share a number
    /embeddings             float32 or float16 [n, dim], every row L2-normalised (cosine = dot product)
    /labels/<name>          int32 [n] codes into /label_names/<name>, -1 = unknown; name = a rank or `bin`
    /label_names/<name>     UTF-8 strings
    /calibration/<level>/queries       int32 [m], reference rows used as leave-out calibration queries
    /calibration/<level>/neighbours    int32 [m, K], their nearest references outside the left-out group
    /calibration/<level>/similarities  float32 [m, K]   (level: sequence, species, genus)
    /identity/kmer/{kmers,df,refs}     the KmerIndex of the distinct sequences (int32; attrs k, size)
    /identity/calibration/<level>/{queries,embedding,embedding_score,embedding_overlap,kmer,kmer_score,
                            kmer_overlap}   leave-out identity candidates of distinct sequences (sequence groups);
                            with widening also kmer_wide{,_score,_overlap} (the wide search's candidates beyond
                            the first stage, chosen by shared 8-mers) and kmer_wide_setting int32 [3] (first
                            stage, wide search, scored)
    /identity/isolation/<rank>/{rows,scores}   int32 / float32 [groups, 3]: each distinct sequence's nearest
                            references of another species / genus (isolation.py; absent in older indexes)
    root attributes         format, format_version, barcodetool_version, model_name, model_sha256, pooling,
                            embedding_dim, dtype, count, source, created, tokenizer (JSON),
                            threshold_<rank> and threshold_bin (similarity; inf = never assigned, nan = the
                            reference has no such labels), cluster_distance_threshold, calibration_precision,
                            calibration_k, calibration_min_confidence, calibration (JSON details);
                            identity_threshold_<rank>, identity_threshold_bin (identity score),
                            identity_cluster_distance_threshold (identity distance), identity_calibration_precision,
                            identity_calibration_min_confidence, identity_calibration_candidates (JSON [embedding,
                            k-mer]), identity_calibration_embed_below (embedding candidates only for queries
                            whose best k-mer candidate scores below it; absent = inf),
                            identity_calibration_widen_candidates, _widen_below and _widen_scored (the wide
                            k-mer search of queries whose best k-mer candidate scores below it, and how many of
                            its candidates beyond the first stage are scored; absent = 0: no widening, every
                            one scored), identity_calibration (JSON details)

The identity layer (docs/research/identity-rerank.md) works on distinct sequences ("groups", numbered by first record):
each group's labels are those of its representative record (the most common full label set among its records).

Search is exact: queries and references are unit vectors, similarities are matrix products of a block of
queries with a block of references, and only the running top k of each query is kept, so memory is bounded by
the block sizes whatever the reference size.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import IndexMismatchError, InputError, UsageError
from ..io.atomic import atomic_hdf5, is_stdout
from ..io.hdf5 import DatasetRows, open_hdf5
from ..io.json_values import json_values
from ..search import KmerIndex, SequenceStore, knn_search, normalize
from ..taxonomy import LABELS, RANKS
from .calibrate import thresholds_for
from .checks import REBUILD, Checker, check_attrs
from .candidates import IdentityHits, identity_hits, nearest_bins
from .decide import (DEFAULT_K, DEFAULT_MIN_CONFIDENCE, IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER,
                     IdentityThresholds, KnnThresholds, Thresholds, widen_parts, widening)

log = logging.getLogger("barcodetool")

REFERENCE_FORMAT = "barcodetool-reference"
REFERENCE_FORMAT_VERSION = 2     # 2: identity layer (k-mer index, identity calibration); older ones are refused

Progress = Callable[[int], None]
SEQUENCE_BLOCK = 65536   # records whose sequences are read or written at a time
# embeddings larger than this stay in the file and are read a block at a time (DatasetRows): a million 128-wide
# float32 rows are 489 MiB that a classification reads once a batch but never needs whole
EMBEDDINGS_HELD_BYTES = 256 << 20


def representative_records(groups: np.ndarray, codes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(first record, representative record) of each sequence group (groups numbered 0.. by first record).

    The representative carries the group's most common full set of labels (ranks and BIN); ties go to the more
    completely labelled set, then to the earliest record."""
    groups = np.asarray(groups, dtype=np.int64)
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, first = np.unique(groups, return_index=True)
    names = [name for name in LABELS if name in codes]
    table = np.stack([groups] + [np.asarray(codes[name], dtype=np.int64) for name in names], axis=1)
    combos, where, counts = np.unique(table, axis=0, return_index=True, return_counts=True)
    complete = (combos[:, 1:] >= 0).sum(axis=1)
    order = np.lexsort((where, -complete, -counts, combos[:, 0]))
    group_sorted = combos[order, 0]
    take = np.r_[True, group_sorted[1:] != group_sorted[:-1]]
    representative = np.empty(len(first), dtype=np.int64)
    representative[group_sorted[take]] = where[order][take]
    return first.astype(np.int64), representative


@dataclass
class IdentityLayer:
    """What identity classification needs: the distinct reference sequences, their k-mer index and labels."""

    store: SequenceStore          # the distinct sequences, in group order
    kmer: KmerIndex               # over `store`
    group_first: np.ndarray       # int64 [groups] first record of each distinct sequence (its embedding)
    group_record: np.ndarray      # int64 [groups] representative record (its id and labels are reported)
    codes: dict[str, np.ndarray]  # label name -> int32 [groups] the representative record's codes

    def __len__(self) -> int:
        return len(self.group_first)


@dataclass
class ReferenceIndex:
    """Embedded reference barcodes with their labels and calibrated thresholds."""

    ids: list[str]
    embeddings: np.ndarray | DatasetRows         # [n, dim] unit rows, float32 or float16 (large: read on demand)
    codes: dict[str, np.ndarray]                 # label name (rank or "bin") -> int32 [n], -1 unknown
    label_names: dict[str, list[str]]
    groups: np.ndarray                           # int32 [n] identical-sequence groups
    model_name: str
    model_sha256: str
    thresholds: KnnThresholds | None = None      # of the k-NN vote (cosine similarities)
    attrs: dict = field(default_factory=dict)
    path: Path | None = None
    calibration: dict | None = None              # level -> {"queries", "neighbours", "similarities"} arrays
    identity_thresholds: IdentityThresholds | None = None   # of the identity rule (identity scores)
    identity_calibration: dict | None = None     # level -> stored leave-out identity candidates (group space)
    # rank -> (rows int32, scores float32) [groups, K]: each distinct sequence's nearest references of another label
    identity_isolation: dict | None = None
    # the distinct sequences (group order): held while an index is built, else read from `path` on first use
    _distinct: SequenceStore | None = field(default=None, init=False, repr=False)
    _identity: IdentityLayer | None = field(default=None, init=False, repr=False)
    _group_embeddings: np.ndarray | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def hold_distinct(self, store: SequenceStore) -> None:
        """Keep the distinct sequences (one row per sequence group, in group order) in memory: an index being built,
        before it has a file."""
        if len(store) != int(self.groups.max(initial=-1)) + 1:
            raise UsageError(f"{len(store):,} distinct sequences for {int(self.groups.max(initial=-1)) + 1:,} "
                             "sequence groups")
        self._distinct = store

    def release_sequences(self) -> None:
        """Forget the sequences held in memory: they are read from the index file again when needed."""
        if self.path is None:
            raise UsageError("an index without a file cannot release its sequences (save it first)")
        self._distinct = None

    @property
    def distinct_store(self) -> SequenceStore:
        """The distinct sequences, one row per sequence group in group order (read from the file on first use, a
        block of records at a time: half a byte a base, no Python string per record)."""
        if self._distinct is None:
            if self.path is None:
                raise InputError("this index holds no sequences")
            import h5py

            check = Checker(self.path)
            with h5py.File(self.path, "r") as handle:
                if "sequences" not in handle:
                    raise InputError("this index holds no sequences", path=str(self.path),
                                     fix="rebuild it with `barcodetool reference build`")
                dataset = check.dataset(handle, "sequences", "str", (len(self.ids),))
                # groups are numbered by first record: the first record of each new group, in record order, is
                # the next group's sequence
                seen = np.r_[-1, np.maximum.accumulate(self.groups)[:-1]] if len(self.groups) else self.groups
                new_group = self.groups > seen
                parts = []
                for start in range(0, len(self.ids), SEQUENCE_BLOCK):
                    stop = min(len(self.ids), start + SEQUENCE_BLOCK)
                    try:
                        block = dataset.asstr()[start:stop]
                    except UnicodeDecodeError:
                        raise check.error("/sequences is not UTF-8 text") from None
                    try:
                        parts.append(SequenceStore.from_sequences(block[new_group[start:stop]].tolist()))
                    except InputError as error:
                        raise check.error(f"/sequences holds a non-nucleotide character ({error})") from None
            self._distinct = SequenceStore.concatenate(parts)
        return self._distinct

    @property
    def sequences(self) -> list[str]:
        """The cleaned reference sequences, one per record (made from the distinct sequences on each call)."""
        store = self.distinct_store
        return [store.sequence(int(g)) for g in self.groups]

    @property
    def ranks(self) -> list[str]:
        """Ranks at which at least one reference record is labelled."""
        return [r for r in RANKS if r in self.codes and (self.codes[r] >= 0).any()]

    @property
    def bin_codes(self) -> np.ndarray | None:
        return self.codes.get("bin")

    def label(self, name: str, code: int) -> str:
        return self.label_names[name][code] if code >= 0 else ""

    def rank_codes(self) -> dict[str, np.ndarray]:
        return {r: self.codes[r] for r in self.ranks}

    # ------------------------------------------------------------------------------------ identity layer
    @property
    def identity(self) -> IdentityLayer:
        """The identity layer: read from the index file (k-mer index stored there), else built (~17 s for 31k
        distinct barcodes) and kept."""
        if self._identity is None:
            self._identity = self._read_identity() if self.path is not None else None
            if self._identity is None:
                self._identity = self.build_identity()
        return self._identity

    def _identity_base(self):
        first, representative = representative_records(self.groups, self.codes)
        store = self.distinct_store
        codes = {name: values[representative].astype(np.int32) for name, values in self.codes.items()}
        self.unlabel_odd_records(codes, representative)
        return store, first, representative, codes

    def unlabel_odd_records(self, codes: dict[str, np.ndarray], representative: np.ndarray,
                            odd: list | None = None) -> None:
        """Read the odd records of conflicting pairs (`odd`: [{"id", "rank"}], conflicts.odd_records; default:
        those of the identity calibration's details) as unlabelled, in place in the identity layer's group codes
        `codes` (int32 [groups]), at their rank and the ranks below, where the record is its group's
        representative."""
        if odd is None:
            details = self.identity_thresholds.details if self.identity_thresholds is not None else {}
            odd = details.get("conflicts", {}).get("odd", [])
        if not odd:
            return
        row_of = {record_id: row for row, record_id in enumerate(self.ids)}
        for entry in odd:
            record, rank = row_of.get(entry.get("id")), entry.get("rank")
            if record is None or rank not in RANKS:
                continue
            group = int(self.groups[record])
            if int(representative[group]) != record:
                continue       # the group's labels are another record's
            for below in RANKS[RANKS.index(rank):]:
                if below in codes:
                    codes[below][group] = -1

    def hold_identity(self, layer: IdentityLayer) -> None:
        """Use this identity layer (an index grown in memory: barcodetool.reference.update)."""
        self._identity = layer

    def build_identity(self) -> IdentityLayer:
        """Build the identity layer from the reference sequences (the k-mer index of the distinct ones)."""
        store, first, representative, codes = self._identity_base()
        log.info(f"indexing the k-mers of {len(store):,} distinct reference sequences")
        return IdentityLayer(store=store, kmer=KmerIndex(store), group_first=first, group_record=representative,
                             codes=codes)

    def _read_identity(self) -> IdentityLayer | None:
        import h5py

        check = Checker(self.path)
        with h5py.File(self.path, "r") as handle:
            if "kmer" not in check.members(handle, "identity"):
                return None
            try:
                k, size, max_stored_df = check.kmer_layout(handle, None)
                # int32 as stored: the postings are the largest part of a large index
                kmers = check.integers(handle, "identity/kmer/kmers", (None,), 0, 4 ** k, np.int32)
                df = check.integers(handle, "identity/kmer/df", kmers.shape, 1, 1 << 31, np.int32)
                refs = check.integers(handle, "identity/kmer/refs", (None,), 0, max(size, 1), np.int32)
            except KeyError as error:
                raise check.error(f"the stored k-mer index is incomplete ({error})") from None
        store, first, representative, codes = self._identity_base()
        if size != len(store):
            raise check.error(f"the stored k-mer index covers {size:,} sequences, the index {len(store):,}")
        try:
            kmer = KmerIndex.from_arrays(k, size, kmers, df, refs, max_stored_df)
        except InputError:
            raise check.error("the stored k-mer index is inconsistent (postings do not match their counts, or "
                              "k-mers are not in order)") from None
        return IdentityLayer(store=store, kmer=kmer, group_first=first, group_record=representative, codes=codes)

    @property
    def group_embeddings(self) -> np.ndarray:
        """Embeddings of the distinct sequences (group order): the embedding candidates of the identity layer."""
        if self._group_embeddings is None:
            first = self.identity.group_first
            if len(first) == len(self.embeddings) and (first == np.arange(len(first))).all():
                self._group_embeddings = self.embeddings
            elif isinstance(self.embeddings, DatasetRows):
                self._group_embeddings = self.embeddings.rows(first)
            else:
                self._group_embeddings = np.ascontiguousarray(self.embeddings[first])
        return self._group_embeddings

    def identity_hits(self, queries, vectors: np.ndarray | None, thresholds: IdentityThresholds | None = None,
                      **options) -> IdentityHits:
        """`candidates.identity_hits` against this index, with the thresholds calibrated for the candidates asked
        for by default (for callers, such as clustering, that get an index and do not import this package)."""
        if thresholds is None:
            candidates = options.get("candidates", (IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER))
            thresholds = thresholds_for(self, "identity", candidates=candidates)
        return identity_hits(queries, vectors, self, thresholds, **options)

    def nearest_bins(self, sims: np.ndarray, idx: np.ndarray, threshold: float) -> list[str]:
        """`nearest_bins` for neighbours found in this index."""
        return nearest_bins(self, sims, idx, threshold)

    def search(self, queries: np.ndarray, k: int, *, device=None, progress: Progress | None = None):
        """Top-k neighbours of query embeddings (normalised here): (similarities, indices)."""
        return knn_search(normalize(queries), self.embeddings, k, device=device, progress=progress)

    def check_model(self, model, *, source: str | None = None) -> None:
        """Raise IndexMismatchError unless `model` is the model the index was built with."""
        if model.sha256 == self.model_sha256:
            return
        where = source or (str(self.path) if self.path else "the reference index")
        raise IndexMismatchError(
            f"{where} was built with model {self.model_name!r} (sha256 {self.model_sha256[:12]}), but model "
            f"{model.name!r} (sha256 {model.sha256[:12]}) is in use; embeddings of different models "
            f"cannot be compared (rebuild the index with `barcodetool reference build ... --model "
            f"{model.name}` or pass {self._model_argument()})")

    def _model_argument(self) -> str:
        """How to name the index's model on the command line: by name where the registry knows it, else its folder
        (a model trained into a folder of one's own is found by path only)."""
        from ..model.weights import available_models

        if self.model_name in available_models():
            return f"--model {self.model_name}"
        return f"--model with the folder of model {self.model_name!r}"

    # ------------------------------------------------------------------------------------ calibration
    # ------------------------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike, *, source: str | None = None) -> Path:
        """Write the index to one HDF5 file, atomically."""
        import h5py

        path = Path(path)
        strings = h5py.string_dtype("utf-8")
        store = self._distinct if self._distinct is not None else (
            self.distinct_store if self.path is not None else None)
        dtype = "float16" if self.embeddings.dtype == np.float16 else "float32"

        def create(group, name, **options):
            # flushed at once: a write that fails (a full disk) raises here, not in the close of a dataset that is
            # dropped, where HDF5 cannot report it and is left unable to close the file
            group.create_dataset(name, **options).flush()

        with atomic_hdf5(path) as handle:
            n = len(self.ids)
            chunk = (min(max(n, 1), 65536),)
            create(handle, "ids", data=np.array(self.ids, dtype=object), dtype=strings, chunks=chunk if n else None)
            if store is not None:    # written a block at a time from the distinct sequences
                dataset = handle.create_dataset("sequences", shape=(n,), dtype=strings, chunks=chunk if n else None,
                                                compression="gzip" if n else None, compression_opts=4 if n else None)
                for start in range(0, n, SEQUENCE_BLOCK):
                    groups = self.groups[start:start + SEQUENCE_BLOCK].tolist()
                    dataset[start:start + len(groups)] = np.array([store.sequence(g) for g in groups], dtype=object)
                dataset.flush()
            create(handle, "sequence_group", data=self.groups.astype(np.int32))
            rows = max(1, min(n, max(1, (1 << 20) // max(1, 4 * self.embedding_dim))))
            embeddings = handle.create_dataset("embeddings", shape=(n, self.embedding_dim), dtype=dtype,
                                               chunks=(rows, self.embedding_dim) if n else None)
            for start in range(0, n, SEQUENCE_BLOCK):   # (an index read from a file may not hold them in memory)
                embeddings[start:start + SEQUENCE_BLOCK] = self.embeddings[start:start + SEQUENCE_BLOCK]
            embeddings.flush()
            for name, codes in self.codes.items():
                create(handle, f"labels/{name}", data=codes.astype(np.int32))
                create(handle, f"label_names/{name}", data=np.array(self.label_names[name], dtype=object),
                       dtype=strings)
            for level, stored in (self.calibration or {}).items():
                create(handle, f"calibration/{level}/queries", data=stored["queries"].astype(np.int32))
                create(handle, f"calibration/{level}/neighbours", data=stored["neighbours"].astype(np.int32))
                create(handle, f"calibration/{level}/similarities",
                       data=stored["similarities"].astype(np.float32))
            if store is not None:  # the identity layer needs the sequences
                layer = self.identity
                kmer = handle.create_group("identity/kmer")
                kmer.attrs.update({"k": int(layer.kmer.k), "size": int(layer.kmer.size)})
                if layer.kmer.max_stored_df is not None:
                    kmer.attrs["max_stored_df"] = int(layer.kmer.max_stored_df)
                for name in ("kmers", "df", "refs"):
                    values = getattr(layer.kmer, name).astype(np.int32, copy=False)
                    # gzip 1 + shuffle: the postings shrink ~10x (78 -> 8 MiB for 31k barcodes), ~0.4 s to read
                    if len(values):
                        create(kmer, name, data=values, chunks=(min(len(values), 1 << 20),), compression="gzip",
                               compression_opts=1, shuffle=True)
                    else:
                        create(kmer, name, data=values)
                confidence = self.identity_thresholds.confidence if self.identity_thresholds else None
                if confidence is not None:   # JSON as gzip'd bytes: too large for an attribute
                    text = np.frombuffer(json.dumps(confidence.to_json()).encode(), dtype=np.uint8)
                    create(handle, "identity/confidence_model", data=text, chunks=(max(1, len(text)),),
                           compression="gzip", compression_opts=4)
                for rank, (rows, scores) in (self.identity_isolation or {}).items():
                    create(handle, f"identity/isolation/{rank}/rows", data=np.asarray(rows, dtype=np.int32))
                    create(handle, f"identity/isolation/{rank}/scores", data=np.asarray(scores, dtype=np.float32))
                for level, stored in (self.identity_calibration or {}).items():
                    for name, values in stored.items():
                        dtype_ = np.float32 if name.endswith("_score") else np.int32
                        create(handle, f"identity/calibration/{level}/{name}",
                               data=np.asarray(values).astype(dtype_))
            attrs = {
                "format": REFERENCE_FORMAT,
                "format_version": REFERENCE_FORMAT_VERSION,
                "barcodetool_version": __version__,
                "model_name": self.model_name,
                "model_sha256": self.model_sha256,
                "pooling": self.attrs.get("pooling", "mean"),
                "embedding_dim": self.embedding_dim,
                "dtype": dtype,
                "count": n,
                "source": source if source is not None else self.attrs.get("source", ""),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "tokenizer": self.attrs.get("tokenizer", ""),
            }
            if self.thresholds is not None:
                attrs.update(_thresholds_attrs(self.thresholds, ""))
                attrs["calibration_k"] = int(self.thresholds.k)
            if self.identity_thresholds is not None:
                attrs.update(_thresholds_attrs(self.identity_thresholds, "identity_"))
                attrs["identity_calibration_candidates"] = json.dumps(list(self.identity_thresholds.candidates))
                attrs["identity_calibration_embed_below"] = float(self.identity_thresholds.embed_below)
                n_wide, below, scored = widen_parts(self.identity_thresholds.widen)
                attrs["identity_calibration_widen_candidates"] = n_wide
                attrs["identity_calibration_widen_below"] = below
                attrs["identity_calibration_widen_scored"] = scored
            handle.attrs.update(attrs)
        if not is_stdout(path) and path.is_file():  # not standard output, a device or a FIFO: it can be read back
            self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceIndex:
        """Read an index written by `save` (sequences are read lazily), every dataset and attribute checked before
        use: a damaged or crafted file raises InputError naming the file and what is wrong."""
        path = Path(path)
        check = Checker(path)
        with open_hdf5(path, format_name=REFERENCE_FORMAT, version=REFERENCE_FORMAT_VERSION, what="reference index",
                       fix="build one with `barcodetool reference build`", rebuild=REBUILD) as handle:
            attrs = dict(handle.attrs)
            check.integer(attrs, "format_version", minimum=0)
            try:
                ids = check.strings(handle, "ids")
                n = len(ids)
                stored = check.dataset(handle, "embeddings", "float", (n, None), ("float16", "float32"))
                if stored.size * stored.dtype.itemsize > EMBEDDINGS_HELD_BYTES:
                    embeddings = DatasetRows(path, "embeddings")
                else:
                    embeddings = stored[()]
                groups = check.groups(handle, n)
                if "sequences" in handle:
                    check.dataset(handle, "sequences", "str", (n,))
                codes, names = check.labels(handle, n)
                calibration = check.calibration(handle, n)
                distinct = int(groups.max(initial=-1)) + 1
                identity_calibration = check.identity_calibration(handle, distinct)
                identity_isolation = check.isolation(handle, distinct)
                if "kmer" in check.members(handle, "identity"):
                    check.kmer_layout(handle, distinct)
                confidence = check.confidence_model(handle)
            except KeyError as error:
                raise check.error(f"the reference index is incomplete ({error})") from None
        check.embeddings(embeddings)
        check_attrs(check, attrs, n, embeddings.shape[1])
        thresholds = _thresholds_from_attrs(check, attrs, "", KnnThresholds,
                                            k=check.integer(attrs, "calibration_k", DEFAULT_K, minimum=1))
        identity_thresholds = _thresholds_from_attrs(
            check, attrs, "identity_", IdentityThresholds,
            candidates=check.candidates(attrs, "identity_calibration_candidates"),
            # indexes written before the attribute existed embedded every query
            embed_below=check.number(attrs, "identity_calibration_embed_below", math.inf, nan=False),
            # indexes written before widening existed calibrated without it, and before `scored` existed scored
            # every wide candidate (0)
            widen=widening(check.integer(attrs, "identity_calibration_widen_candidates", 0, minimum=0),
                         check.number(attrs, "identity_calibration_widen_below", math.inf, nan=False),
                         check.integer(attrs, "identity_calibration_widen_scored", 0, minimum=0)),
            confidence=confidence)
        return cls(ids=ids, embeddings=embeddings, codes=codes, label_names=names, groups=groups,
                   model_name=check.string(attrs, "model_name"), model_sha256=check.string(attrs, "model_sha256"),
                   thresholds=thresholds, attrs=attrs, path=path, calibration=calibration,
                   identity_thresholds=identity_thresholds, identity_calibration=identity_calibration or None,
                   identity_isolation=identity_isolation)


def _thresholds_attrs(thresholds: Thresholds, prefix: str) -> dict:
    """HDF5 root attributes of one set of thresholds (prefix "" for the k-NN vote, "identity_" for identity)."""
    attrs = {f"{prefix}threshold_{rank}": float(thresholds.ranks.get(rank, math.nan)) for rank in RANKS}
    attrs.update({f"{prefix}threshold_bin": float(thresholds.bin),
                  f"{prefix}cluster_distance_threshold": float(thresholds.cluster_distance),
                  f"{prefix}calibration_precision": float(thresholds.precision),
                  f"{prefix}calibration_min_confidence": float(thresholds.min_confidence),
                  f"{prefix}calibration": json.dumps(json_values(thresholds.details, nan="nan"))})
    return attrs


def _thresholds_from_attrs(check: Checker, attrs, prefix: str, kind: type[Thresholds], **fixed) -> Thresholds | None:
    """The thresholds written by _thresholds_attrs (each checked), or None when the index holds no such
    calibration."""
    if f"{prefix}calibration_precision" not in attrs:
        return None
    return kind(
        ranks={r: check.number(attrs, f"{prefix}threshold_{r}", math.nan) for r in RANKS},
        bin=check.number(attrs, f"{prefix}threshold_bin", math.nan),
        cluster_distance=check.number(attrs, f"{prefix}cluster_distance_threshold", math.nan),
        precision=check.number(attrs, f"{prefix}calibration_precision", math.nan, nan=False, within=(0.0, 1.0)),
        min_confidence=check.number(attrs, f"{prefix}calibration_min_confidence", DEFAULT_MIN_CONFIDENCE,
                                    nan=False, within=(0.0, 1.0)),
        details=check.json(attrs, f"{prefix}calibration", dict, "{}"), **fixed)


def is_reference_file(path: str | os.PathLike) -> bool:
    """True when `path` is an HDF5 file (a prebuilt index, or something else that load() will refuse)."""
    if str(path) == "-":
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False
