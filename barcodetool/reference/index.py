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
                            kmer_overlap}   leave-out identity candidates of distinct sequences (sequence groups)
    root attributes         format, format_version, barcodetool_version, model_name, model_sha256, pooling,
                            embedding_dim, dtype, count, source, created, tokenizer (JSON),
                            threshold_<rank> and threshold_bin (similarity; inf = never assigned, nan = the
                            reference has no such labels), cluster_distance_threshold, calibration_precision,
                            calibration_k, calibration_min_confidence, calibration (JSON details);
                            identity_threshold_<rank>, identity_threshold_bin (identity score),
                            identity_cluster_distance_threshold (identity distance), identity_calibration_precision,
                            identity_calibration_min_confidence, identity_calibration_candidates (JSON [embedding,
                            k-mer]), identity_calibration_embed_below (embedding candidates only for queries
                            whose best k-mer candidate scores below it; absent = inf), identity_calibration
                            (JSON details)

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
from ..io.hdf5 import open_hdf5
from ..io.json_values import json_values
from ..search import KmerIndex, SequenceStore, knn_search, normalize
from ..taxonomy import LABELS, RANKS
from .calibrate import thresholds_for
from .confidence import ConfidenceModel
from .candidates import IdentityHits, identity_hits, nearest_bins
from .decide import (DEFAULT_K, DEFAULT_MIN_CONFIDENCE, IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER,
                     IdentityThresholds, KnnThresholds, Thresholds)

log = logging.getLogger("barcodetool")

REFERENCE_FORMAT = "barcodetool-reference"
REFERENCE_FORMAT_VERSION = 2     # 2: identity layer (k-mer index, identity calibration); older ones are refused

Progress = Callable[[int], None]
MAX_CONFIDENCE_MODEL_BYTES = 64 << 20


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
    embeddings: np.ndarray                       # [n, dim] unit rows, float32 or float16
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
    # held in memory while an index is built, else read from `path` on first use
    _sequences: list[str] | None = field(default=None, init=False, repr=False)
    _identity: IdentityLayer | None = field(default=None, init=False, repr=False)
    _group_embeddings: np.ndarray | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def hold_sequences(self, sequences: list[str]) -> None:
        """Keep the reference sequences in memory (an index being built, before it has a file)."""
        self._sequences = sequences

    def release_sequences(self) -> None:
        """Forget the sequences held in memory: they are read from the index file again when needed."""
        if self.path is None:
            raise UsageError("an index without a file cannot release its sequences (save it first)")
        self._sequences = None

    @property
    def sequences(self) -> list[str]:
        """The cleaned reference sequences (read from the file on first use)."""
        if self._sequences is None:
            if self.path is None:
                raise InputError("this index holds no sequences")
            import h5py

            with h5py.File(self.path, "r") as handle:
                if "sequences" not in handle:
                    raise InputError("this index holds no sequences", path=str(self.path),
                                     fix="rebuild it with `barcodetool reference build`")
                self._sequences = _Checker(self.path).strings(handle, "sequences", len(self.ids))
        return self._sequences

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
        sequences = self.sequences
        store = SequenceStore.from_sequences([sequences[i] for i in first.tolist()])
        codes = {name: values[representative].astype(np.int32) for name, values in self.codes.items()}
        return store, first, representative, codes

    def build_identity(self) -> IdentityLayer:
        """Build the identity layer from the reference sequences (the k-mer index of the distinct ones)."""
        store, first, representative, codes = self._identity_base()
        log.info(f"indexing the k-mers of {len(store):,} distinct reference sequences")
        return IdentityLayer(store=store, kmer=KmerIndex(store), group_first=first, group_record=representative,
                             codes=codes)

    def _read_identity(self) -> IdentityLayer | None:
        import h5py

        check = _Checker(self.path)
        with h5py.File(self.path, "r") as handle:
            if "kmer" not in check.members(handle, "identity"):
                return None
            try:
                k, size = check.kmer_layout(handle, None)
                kmers = check.integers(handle, "identity/kmer/kmers", (None,), 0, 4 ** k)
                df = check.integers(handle, "identity/kmer/df", kmers.shape, 1, 1 << 31)
                refs = check.integers(handle, "identity/kmer/refs", (None,), 0, max(size, 1))
            except KeyError as error:
                raise check.error(f"the stored k-mer index is incomplete ({error})") from None
        store, first, representative, codes = self._identity_base()
        if size != len(store):
            raise check.error(f"the stored k-mer index covers {size:,} sequences, the index {len(store):,}")
        try:
            kmer = KmerIndex.from_arrays(k, size, kmers, df, refs)
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
            f"{model.name}` or pass --model {self.model_name})")

    # ------------------------------------------------------------------------------------ calibration
    # ------------------------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike, *, source: str | None = None) -> Path:
        """Write the index to one HDF5 file, atomically."""
        import h5py

        path = Path(path)
        strings = h5py.string_dtype("utf-8")
        sequences = self._sequences if self._sequences is not None else (
            self.sequences if self.path is not None else None)
        dtype = "float16" if self.embeddings.dtype == np.float16 else "float32"

        def create(group, name, **options):
            # flushed at once: a write that fails (a full disk) raises here, not in the close of a dataset that is
            # dropped, where HDF5 cannot report it and is left unable to close the file
            group.create_dataset(name, **options).flush()

        with atomic_hdf5(path) as handle:
            n = len(self.ids)
            chunk = (min(max(n, 1), 65536),)
            create(handle, "ids", data=np.array(self.ids, dtype=object), dtype=strings, chunks=chunk if n else None)
            if sequences is not None:
                create(handle, "sequences", data=np.array(sequences, dtype=object), dtype=strings,
                       chunks=chunk if n else None, compression="gzip", compression_opts=4)
            create(handle, "sequence_group", data=self.groups.astype(np.int32))
            rows = max(1, min(n, max(1, (1 << 20) // max(1, 4 * self.embedding_dim))))
            create(handle, "embeddings", data=self.embeddings, chunks=(rows, self.embedding_dim) if n else None)
            for name, codes in self.codes.items():
                create(handle, f"labels/{name}", data=codes.astype(np.int32))
                create(handle, f"label_names/{name}", data=np.array(self.label_names[name], dtype=object),
                       dtype=strings)
            for level, stored in (self.calibration or {}).items():
                create(handle, f"calibration/{level}/queries", data=stored["queries"].astype(np.int32))
                create(handle, f"calibration/{level}/neighbours", data=stored["neighbours"].astype(np.int32))
                create(handle, f"calibration/{level}/similarities",
                       data=stored["similarities"].astype(np.float32))
            if sequences is not None:  # the identity layer needs the sequences
                layer = self.identity
                kmer = handle.create_group("identity/kmer")
                kmer.attrs.update({"k": int(layer.kmer.k), "size": int(layer.kmer.size)})
                for name in ("kmers", "df", "refs"):
                    values = getattr(layer.kmer, name).astype(np.int32)
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
            handle.attrs.update(attrs)
        if not is_stdout(path) and path.is_file():  # not standard output, a device or a FIFO: it can be read back
            self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceIndex:
        """Read an index written by `save` (sequences are read lazily), every dataset and attribute checked before
        use: a damaged or crafted file raises InputError naming the file and what is wrong."""
        path = Path(path)
        check = _Checker(path)
        with open_hdf5(path, format_name=REFERENCE_FORMAT, version=REFERENCE_FORMAT_VERSION, what="reference index",
                       fix="build one with `barcodetool reference build`", rebuild=REBUILD) as handle:
            attrs = dict(handle.attrs)
            check.integer(attrs, "format_version", minimum=0)
            try:
                ids = check.strings(handle, "ids")
                n = len(ids)
                embeddings = check.floats(handle, "embeddings", (n, None), dtypes=("float16", "float32"))
                groups = check.groups(handle, n)
                if "sequences" in handle:
                    check.dataset(handle, "sequences", "str", (n,))
                codes, names = check.labels(handle, n)
                calibration = check.calibration(handle, n)
                identity_calibration = check.identity_calibration(handle, int(groups.max(initial=-1)) + 1)
                if "kmer" in check.members(handle, "identity"):
                    check.kmer_layout(handle, int(groups.max(initial=-1)) + 1)
                confidence = check.confidence_model(handle)
            except KeyError as error:
                raise check.error(f"the reference index is incomplete ({error})") from None
        check.embeddings(embeddings)
        _check_attrs(check, attrs, n, embeddings.shape[1])
        thresholds = _thresholds_from_attrs(check, attrs, "", KnnThresholds,
                                            k=check.integer(attrs, "calibration_k", DEFAULT_K, minimum=1))
        identity_thresholds = _thresholds_from_attrs(
            check, attrs, "identity_", IdentityThresholds,
            candidates=check.candidates(attrs, "identity_calibration_candidates"),
            # indexes written before the attribute existed embedded every query
            embed_below=check.number(attrs, "identity_calibration_embed_below", math.inf, nan=False),
            confidence=confidence)
        return cls(ids=ids, embeddings=embeddings, codes=codes, label_names=names, groups=groups,
                   model_name=check.string(attrs, "model_name"), model_sha256=check.string(attrs, "model_sha256"),
                   thresholds=thresholds, attrs=attrs, path=path, calibration=calibration,
                   identity_thresholds=identity_thresholds, identity_calibration=identity_calibration or None)


def _thresholds_attrs(thresholds: Thresholds, prefix: str) -> dict:
    """HDF5 root attributes of one set of thresholds (prefix "" for the k-NN vote, "identity_" for identity)."""
    attrs = {f"{prefix}threshold_{rank}": float(thresholds.ranks.get(rank, math.nan)) for rank in RANKS}
    attrs.update({f"{prefix}threshold_bin": float(thresholds.bin),
                  f"{prefix}cluster_distance_threshold": float(thresholds.cluster_distance),
                  f"{prefix}calibration_precision": float(thresholds.precision),
                  f"{prefix}calibration_min_confidence": float(thresholds.min_confidence),
                  f"{prefix}calibration": json.dumps(json_values(thresholds.details, nan="nan"))})
    return attrs


def _thresholds_from_attrs(check: _Checker, attrs, prefix: str, kind: type[Thresholds], **fixed) -> Thresholds | None:
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


# ---------------------------------------------------------------------------------------------- checking a file
REBUILD = "rebuild it with `barcodetool reference build`"
_KIND_LETTERS = {"int": "iu", "float": "f"}
_KIND_WORDS = {"str": "strings", "int": "integers", "float": "floating-point numbers"}
_IDENTITY_CANDIDATE_SOURCES = ("embedding", "kmer")
_ROWS_CHECKED = 65536   # embedding rows checked at a time (bounded memory for very large references)


def _show(value) -> str:
    """A short one-line repr of an untrusted value for a message."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    """The checks of one index file's datasets and attributes before use: each failure is an InputError naming
    the file, what is wrong, and the fix (rebuild the index)."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, message: str) -> InputError:
        return InputError(message, path=str(self.path), fix=REBUILD)

    # ----------------------------------------------------------------- datasets
    def members(self, handle, name: str) -> list[str]:
        """Names in the group `name` (none where it is absent)."""
        import h5py

        item = handle.get(name)
        if item is None:
            return []
        if not isinstance(item, h5py.Group):
            raise self.error(f"/{name} is not a group")
        return list(item)

    def dataset(self, handle, name: str, kind: str, shape: tuple, dtypes: tuple[str, ...] | None = None):
        """The dataset `name` (KeyError where missing) checked to hold `kind` ("str", "int" or "float"; `dtypes`
        narrows the float types) in `shape` (None: any length)."""
        import h5py

        item = handle[name]
        if not isinstance(item, h5py.Dataset):
            raise self.error(f"/{name} is not a dataset")
        if kind == "str":
            right = h5py.check_string_dtype(item.dtype) is not None
        else:
            right = item.dtype.kind in _KIND_LETTERS[kind] and (dtypes is None or item.dtype.name in dtypes)
        if not right:
            wanted = " or ".join(dtypes) if dtypes else _KIND_WORDS[kind]
            raise self.error(f"/{name} holds {item.dtype} values, not {wanted}")
        if len(item.shape) != len(shape) or any(want is not None and size != want
                                                for size, want in zip(item.shape, shape)):
            expected = "[" + ", ".join("any" if want is None else str(want) for want in shape) + "]"
            raise self.error(f"/{name} has shape {list(item.shape)}, expected {expected}")
        return item

    def strings(self, handle, name: str, length: int | None = None) -> list[str]:
        item = self.dataset(handle, name, "str", (length,))
        try:
            return item.asstr()[()].tolist()
        except UnicodeDecodeError:
            raise self.error(f"/{name} is not UTF-8 text") from None

    def floats(self, handle, name: str, shape: tuple, dtypes: tuple[str, ...] | None = None) -> np.ndarray:
        values = self.dataset(handle, name, "float", shape, dtypes)[()]
        if dtypes is None and np.isnan(values).any():
            raise self.error(f"/{name} holds NaN")
        return values

    def integers(self, handle, name: str, shape: tuple, low: int, high: int) -> np.ndarray:
        """An integer dataset whose values lie in low..high-1, as int64."""
        values = self.dataset(handle, name, "int", shape)[()]
        if values.size:
            smallest, largest = int(values.min()), int(values.max())
            if smallest < low or largest >= high:
                bad = smallest if smallest < low else largest
                raise self.error(f"/{name} holds {bad}, outside {low}..{high - 1}")
        return values.astype(np.int64)

    def groups(self, handle, n: int) -> np.ndarray:
        """/sequence_group: numbered 0, 1, ... by first record, as the identity layer assumes."""
        groups = self.integers(handle, "sequence_group", (n,), 0, max(n, 1))
        if n and (groups[0] != 0 or (groups[1:] > np.maximum.accumulate(groups)[:-1] + 1).any()):
            raise self.error("/sequence_group is not numbered 0, 1, 2, ... in order of first record")
        return groups.astype(np.int32)

    def labels(self, handle, n: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        codes, names = {}, {}
        for name in self.members(handle, "labels"):
            names[name] = self.strings(handle, f"label_names/{name}")
            codes[name] = self.integers(handle, f"labels/{name}", (n,), -1, len(names[name])).astype(np.int32)
        return codes, names

    def calibration(self, handle, n: int) -> dict:
        """/calibration/<level>: leave-out queries (records) and their neighbours (records, -1 = none)."""
        calibration = {}
        for level in self.members(handle, "calibration"):
            where = f"calibration/{level}"
            queries = self.integers(handle, f"{where}/queries", (None,), 0, n)
            neighbours = self.integers(handle, f"{where}/neighbours", (len(queries), None), -1, n)
            similarities = self.floats(handle, f"{where}/similarities", neighbours.shape)
            calibration[level] = {"queries": queries, "neighbours": neighbours,
                                  "similarities": similarities.astype(np.float32)}
        return calibration

    def identity_calibration(self, handle, groups: int) -> dict:
        """/identity/calibration/<level>: leave-out queries and candidates in distinct-sequence space."""
        calibration = {}
        for level in self.members(handle, "identity/calibration"):
            where = f"identity/calibration/{level}"
            queries = self.integers(handle, f"{where}/queries", (None,), 0, groups)
            stored = {"queries": queries}
            for source in _IDENTITY_CANDIDATE_SOURCES:
                table = self.integers(handle, f"{where}/{source}", (len(queries), None), -1, groups)
                stored[source] = table
                stored[f"{source}_score"] = self.floats(handle, f"{where}/{source}_score",
                                                        table.shape).astype(np.float32)
                stored[f"{source}_overlap"] = self.integers(handle, f"{where}/{source}_overlap", table.shape,
                                                            0, 1 << 31)
            calibration[level] = stored
        return calibration

    def kmer_layout(self, handle, groups: int | None) -> tuple[int, int]:
        """(k, size) of /identity/kmer, checked with its datasets' types and shapes (not their values)."""
        import h5py

        group = handle["identity/kmer"]
        if not isinstance(group, h5py.Group):
            raise self.error("/identity/kmer is not a group")
        k = self.integer(dict(group.attrs), "k", where="/identity/kmer attribute", minimum=4)
        size = self.integer(dict(group.attrs), "size", where="/identity/kmer attribute", minimum=0)
        if k > 15:
            raise self.error(f"/identity/kmer attribute k is {k}, outside 4..15")
        if groups is not None and size != groups:
            raise self.error(f"the stored k-mer index covers {size:,} sequences, the index {groups:,}")
        kmers = self.dataset(handle, "identity/kmer/kmers", "int", (None,))
        self.dataset(handle, "identity/kmer/df", "int", kmers.shape)
        self.dataset(handle, "identity/kmer/refs", "int", (None,))
        return k, size

    def embeddings(self, embeddings: np.ndarray) -> None:
        """Every value finite and every row of unit length (or zero), as build_reference stores them."""
        if embeddings.shape[1] < 1:
            raise self.error("/embeddings has no columns")
        for start in range(0, len(embeddings), _ROWS_CHECKED):
            block = np.asarray(embeddings[start:start + _ROWS_CHECKED], dtype=np.float32)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise self.error(f"/embeddings row {row} holds NaN or infinity")
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            wrong = (np.abs(norms - 1.0) > 1e-2) & (norms > 0)
            if wrong.any():
                row = start + int(np.argmax(wrong))
                raise self.error(f"/embeddings row {row} has length {norms[row - start]:.4g}, not 1")

    # ----------------------------------------------------------------- attributes
    def value(self, attrs, key: str, default):
        value = attrs.get(key, default)
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value[()]
        return value

    def integer(self, attrs, key: str, default=None, *, minimum: int | None = None,
                where: str = "attribute") -> int:
        value = self.value(attrs, key, default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise self.error(f"{where} {key} is {_show(value)}, not an integer")
        if minimum is not None and value < minimum:
            raise self.error(f"{where} {key} is {int(value)}, less than {minimum}")
        return int(value)

    def number(self, attrs, key: str, default, *, nan: bool = True,
               within: tuple[float, float] | None = None) -> float:
        """A number attribute (NaN refused unless `nan`; `within`: inclusive bounds)."""
        value = self.value(attrs, key, default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise self.error(f"attribute {key} is {_show(value)}, not a number")
        value = float(value)
        if not nan and math.isnan(value):
            raise self.error(f"attribute {key} is NaN")
        if within is not None and not within[0] <= value <= within[1]:
            raise self.error(f"attribute {key} is {value}, outside {within[0]}..{within[1]}")
        return value

    def string(self, attrs, key: str, default: str = "") -> str:
        value = self.value(attrs, key, default)
        if not isinstance(value, str):
            raise self.error(f"attribute {key} is {_show(value)}, not text")
        return value

    def json(self, attrs, key: str, kind: type, default: str):
        """A JSON attribute (an empty one reads as `default`) that must decode to a `kind`."""
        text = self.string(attrs, key, default) or default
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise self.error(f"attribute {key} is not JSON") from None
        if not isinstance(value, kind):
            raise self.error(f"attribute {key} is {_show(value)}, not a JSON {kind.__name__}")
        return value

    def confidence_model(self, handle) -> ConfidenceModel | None:
        """The identity rule's confidence model (None in indexes of older versions), checked."""
        if "confidence_model" not in self.members(handle, "identity"):
            return None
        data = self.dataset(handle, "identity/confidence_model", "int", (None,), ("uint8",))
        if data.shape[0] > MAX_CONFIDENCE_MODEL_BYTES:
            raise self.error(f"the stored confidence model is {data.shape[0]:,} bytes, more than a model can be")
        try:
            value = json.loads(bytes(data[()]).decode("utf-8"))
            if not ConfidenceModel.readable(value):
                log.info(f"{self.path}: the confidence model was fitted by another version of barcodetool: it is "
                         f"fitted again from the stored leave-out searches (rebuild the index to store it)")
                return None
            return ConfidenceModel.from_json(value)
        except (ValueError, RecursionError) as error:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise self.error(f"the stored confidence model is unusable ({error})") from None

    def candidates(self, attrs, key: str) -> tuple[int, ...]:
        """(embedding, k-mer) numbers of identity candidates: two integers >= 0, not both 0."""
        value = self.json(attrs, key, list, "[10, 10]")
        if len(value) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value) \
                or sum(value) == 0:
            raise self.error(f"attribute {key} is {_show(value)}, not two numbers of candidates")
        return tuple(value)


def _check_attrs(check: _Checker, attrs: dict, n: int, dim: int) -> None:
    """The root attributes that load() does not otherwise read, checked against the datasets."""
    if "count" in attrs and check.integer(attrs, "count") != n:
        raise check.error(f"attribute count is {int(attrs['count'])}, but /ids holds {n} records")
    if "embedding_dim" in attrs and check.integer(attrs, "embedding_dim") != dim:
        raise check.error(f"attribute embedding_dim is {int(attrs['embedding_dim'])}, but /embeddings has {dim} "
                          "columns")
    check.json(attrs, "tokenizer", dict, "{}")
    for key in ("pooling", "dtype", "source", "created", "barcodetool_version"):
        check.string(attrs, key)
