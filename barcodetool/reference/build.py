"""Building and opening reference indexes: records embedded and calibrated into an index, tables and FASTA
indexed once and cached, and the model a built index asks for."""

from __future__ import annotations

import hashlib
import json
from array import array
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..embedding import embed_sequences
from ..errors import IndexMismatchError, InputError, UsageError
from ..io.readers import ReadOptions, ReadStats, read_barcodes
from ..model.weights import asks_for_default, available_models, sha256_file
from ..options import Options
from ..search import SequenceStore, normalize
from ..search.identity import MAX_ALIGNED_LENGTH
from ..taxonomy import LABELS
from .calibrate import calibrate_thresholds
from .decide import (DEFAULT_K, DEFAULT_MIN_CONFIDENCE, DEFAULT_PRECISION, IDENTITY_CANDIDATES_WIDE,
                     IDENTITY_WIDEN_SCORED, widen_setting)
from .index import REFERENCE_FORMAT, REFERENCE_FORMAT_VERSION, ReferenceIndex, is_reference_file

log = logging.getLogger("barcodetool")

# Part of the cache key of indexes built from tables: raised when the same inputs would now give another index
# (2: calibration with embedding only below --embed-below, coverage over the barcode region; 3: the identity rule's
# confidence model; 4: postings stored up to a cap, calibration realigned by the banded aligner), so that a cached
# index made by older code is rebuilt instead of recalibrated on every run.
CACHE_GENERATION = 4

# Called with the number of sequences of each embedded batch. A progress callable may also carry a `set_total(n)`
# attribute: build_reference calls it with the number of distinct sequences to embed once it knows it.
Progress = Callable[[int], None]

# A temporary cache file (`.NAME.h5.XXXX.part`) this old is left over from a run killed while writing it (kill -9:
# nothing could remove it): removed the next time the cache is used. A live writer touches its file far more often.
STALE_PART_S = 3600


# ============================================================================================ building
@dataclass(frozen=True)
class BuildOptions(Options):
    """How a reference index is built: the calibration targets, the stored embeddings' type, the batches.

    `precision`: the BIN threshold and the k-NN rule's rank thresholds are set so that calls are right this often
    on the reference's own leave-out queries; `neighbours`: the neighbours that vote in the k-NN rule;
    `min_confidence`: the confidence a rank's label needs (identity: the calibrated probability that it is right;
    k-NN: the vote share); `candidates_wide`: k-mer candidates searched for distant queries (0: none;
    decide.IDENTITY_CANDIDATES_WIDE), of which `candidates_wide_scored` beyond the first stage are scored (0: all;
    decide.IDENTITY_WIDEN_SCORED); `dtype`: float32, or float16 to halve a very large reference;
    `calibrate`: False leaves the index without thresholds; `chunk_records`: distinct sequences embedded at once.
    """

    precision: float = DEFAULT_PRECISION
    neighbours: int = DEFAULT_K
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    candidates_wide: int = IDENTITY_CANDIDATES_WIDE
    candidates_wide_scored: int = IDENTITY_WIDEN_SCORED
    dtype: str = "float32"
    batch_size: int = 256
    calibrate: bool = True
    chunk_records: int = 16384

    kind = "build"

    def __post_init__(self):
        if self.dtype not in {"float32", "float16"}:
            raise UsageError(f"index dtype must be float32 or float16, got {self.dtype!r}")
        if not 0.0 < self.precision <= 1.0:
            raise UsageError(f"precision must be in (0, 1], got {self.precision}")
        if self.neighbours < 1:
            raise UsageError(f"neighbours must be at least 1, got {self.neighbours}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError(f"min_confidence must be between 0 and 1, got {self.min_confidence}")
        if self.batch_size < 1 or self.chunk_records < 1:
            raise UsageError("batch_size and chunk_records must be at least 1")
        if self.candidates_wide < 0 or self.candidates_wide_scored < 0:
            raise UsageError(f"candidates_wide and candidates_wide_scored must be >= 0, got {self.candidates_wide} "
                             f"and {self.candidates_wide_scored}")


def build_reference(records: Iterable, model, options: BuildOptions | None = None, *, source: str = "",
                    display: str | None = None, progress: Progress | None = None, **changes) -> ReferenceIndex:
    """Embed reference records (objects with .id, .sequence, .taxonomy, .bin) with `model` into a calibrated index.

    How is said by `options` (BuildOptions) or by its fields as keywords (`precision=0.99`), which also override
    `options`. Identical sequences are embedded once. Embeddings are stored L2-normalised. `source` is recorded in
    the index; errors name `display` (the path as given), or `source` without it.

    Records are streamed: each distinct sequence is held once, encoded (half a byte a base), and embedded as soon as
    `chunk_records` of them are waiting; labels are kept as codes. Memory grows with the distinct sequences
    (half a byte a base, the embeddings, a 16-byte digest each), not with Python strings of every record.
    """
    options = (options or BuildOptions()).replace(**changes)
    display = display or source or None
    streamed = _StreamedRecords(model, options, progress)
    for record in records:
        streamed.add(record)
    if not streamed.ids:
        raise InputError("the reference holds no records", path=display)
    codes, names = streamed.labels()
    if not codes:
        raise InputError("the reference records carry no taxonomy and no BIN", path=display,
                         fix="give a table with taxonomy or BIN columns, or a FASTA with SINTAX headers "
                             "(>id;tax=p:...,g:...,s:...;)")
    vectors, store = streamed.finish()
    group_array = np.frombuffer(streamed.groups, dtype=np.int32).copy()
    embeddings = vectors[group_array] if len(vectors) != len(group_array) else vectors
    del vectors
    if options.dtype == "float16":
        embeddings = embeddings.astype(np.float16)
    index = ReferenceIndex(ids=streamed.ids, embeddings=embeddings, codes=codes, label_names=names,
                           groups=group_array, model_name=model.name, model_sha256=model.sha256,
                           attrs={"pooling": model.pooling, "source": source,
                                  "tokenizer": json.dumps(model.tokenizer.config.to_dict())})
    index.hold_distinct(store)
    if options.calibrate:
        calibrate_thresholds(index, "knn", precision=options.precision, k=options.neighbours,
                             min_confidence=options.min_confidence)
        calibrate_thresholds(index, "identity", precision=options.precision, min_confidence=options.min_confidence,
                             widen=widen_setting(options.candidates_wide, options.candidates_wide_scored))
    return index


class _StreamedRecords:
    """What build_reference keeps of the records as they stream by: ids, label codes (in order of first
    appearance, sorted at the end as encode_labels sorts them), each record's sequence group, and the distinct
    sequences, encoded and embedded `chunk_records` at a time (the chunks build_reference always embedded)."""

    def __init__(self, model, options: BuildOptions, progress: Progress | None):
        self.model, self.options, self.progress = model, options, progress
        self.ids: list[str] = []
        self.groups = array("i")
        self.group_of: dict[bytes, int] = {}            # digest of a distinct sequence -> its group
        self.label_codes = {name: array("i") for name in LABELS}
        self.label_lookup: dict[str, dict[str, int]] = {name: {} for name in LABELS}
        self.pending: list[str] = []                    # distinct sequences not yet embedded
        self.vectors: list[np.ndarray] = []
        self.encoded: list[SequenceStore] = []
        self.distinct = 0

    def add(self, record) -> None:
        self.ids.append(record.id)
        for name in LABELS:
            value = (record.bin if name == "bin" else record.taxonomy.get(name)) or ""
            if value:
                lookup = self.label_lookup[name]
                code = lookup.get(value)
                if code is None:
                    code = lookup[value] = len(lookup)
                self.label_codes[name].append(code)
            else:
                self.label_codes[name].append(-1)
        key = hashlib.blake2b(record.sequence.encode(), digest_size=16).digest()
        group = self.group_of.get(key)
        if group is None:
            group = self.group_of[key] = self.distinct
            self.distinct += 1
            self.pending.append(record.sequence)
            if len(self.pending) >= self.options.chunk_records:
                self._embed_pending()
        self.groups.append(group)

    def _embed_pending(self) -> None:
        if self.pending:
            self.vectors.append(normalize(embed_sequences(self.model, self.pending,
                                                          batch_size=self.options.batch_size,
                                                          progress=self.progress)))
            self.encoded.append(SequenceStore.from_sequences(self.pending))
            self.pending = []

    def labels(self) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        """(codes, names) of the labels present, codes numbered as encode_labels numbers them (sorted names)."""
        codes, names = {}, {}
        for name in LABELS:
            lookup = self.label_lookup[name]
            if not lookup:
                continue
            sorted_names = sorted(lookup)
            rank = {label: i for i, label in enumerate(sorted_names)}
            # provisional code (order of first appearance) -> sorted code; the last slot maps -1 to -1
            remap = np.array([rank[label] for label in lookup] + [-1], dtype=np.int32)
            codes[name] = remap[np.frombuffer(self.label_codes[name], dtype=np.int32)]
            names[name] = sorted_names
        return codes, names

    def finish(self) -> tuple[np.ndarray, SequenceStore]:
        """(unit embeddings float32 [distinct, dim], SequenceStore of the distinct sequences), in group order."""
        if self.progress is not None and callable(getattr(self.progress, "set_total", None)):
            self.progress.set_total(self.distinct)
        self._embed_pending()
        self.group_of.clear()
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, self.model.embedding_dim),
                                                                            dtype=np.float32)
        self.vectors = []
        store = SequenceStore.concatenate(self.encoded)
        self.encoded = []
        return vectors, store


# ============================================================================================ loading/caching
def reference_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("barcodetool", appauthor=False)) / "references"


def remove_stale_parts(folder: Path, max_age_s: float = STALE_PART_S) -> list[Path]:
    """Remove the temporary files (`.*.part`) in `folder` not written to for `max_age_s` seconds: left by a run
    killed while writing its cached index. Returns those removed."""
    removed = []
    now = time.time()
    try:
        candidates = list(folder.glob(".*.part"))
    except OSError:
        return removed
    for part in candidates:
        try:
            if now - part.stat().st_mtime > max_age_s and part.is_file():
                part.unlink()
                removed.append(part)
        except OSError:  # gone meanwhile, or not ours to remove: harmless either way
            continue
    if removed:
        log.info(f"removed {len(removed)} unfinished cache file(s) left by an interrupted run in {folder}")
    return removed


def cache_key(path: str | os.PathLike, model, read_options: ReadOptions | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(sha256_file(path).encode())
    digest.update(model.sha256.encode())
    digest.update(json.dumps((read_options or ReadOptions()).as_dict(), sort_keys=True, default=str).encode())
    digest.update(f"{REFERENCE_FORMAT}-{REFERENCE_FORMAT_VERSION}-{CACHE_GENERATION}".encode())
    return digest.hexdigest()[:32]


def read_reference_records(path: str | os.PathLike, read_options: ReadOptions | None = None, stats=None):
    """Records of a reference table/FASTA; empty or too-short sequences (under `min_length`) are skipped, longer
    ones than MAX_ALIGNED_LENGTH are refused."""
    return read_barcodes(path, (read_options or ReadOptions()).replace(skip_empty=True,
                                                                        max_length=MAX_ALIGNED_LENGTH), stats=stats)


def open_reference(path: str | os.PathLike, model, *, read_options: ReadOptions | None = None,
                   use_cache: bool = True, batch_size: int = 256, progress: Progress | None = None,
                   ) -> ReferenceIndex:
    """A prebuilt index (checked against `model`), or a table/FASTA built once and cached.

    Cached indexes live in the user cache folder (platformdirs), keyed by the file's content hash, the model's
    sha256 and the read options; a second call with the same file and model reuses the cached index.
    """
    if is_reference_file(path):
        index = ReferenceIndex.load(path)
        index.check_model(model, source=str(path))
        return index
    if str(path) == "-":
        raise UsageError("the reference cannot be standard input (give a file)")
    if not os.path.exists(path):
        raise InputError("file not found", path=str(path), fix="check the path")
    read_options = (read_options or ReadOptions()).replace(min_length=model.tokenizer.config.k)
    cached = None
    if use_cache:
        remove_stale_parts(reference_cache_dir())
        cached = reference_cache_dir() / f"{cache_key(path, model, read_options)}.h5"
        if cached.is_file():
            try:
                index = ReferenceIndex.load(cached)
                index.check_model(model)
                log.info(f"using the cached reference index {cached}")
                return index
            except (InputError, IndexMismatchError):
                log.info(f"rebuilding the unreadable cached index {cached}")
    stats = ReadStats(path=str(path))
    log.info(f"building a reference index from {path} (cached for next time)")
    index = build_reference(read_reference_records(path, read_options, stats), model, batch_size=batch_size,
                            source=os.path.basename(str(path)), progress=progress, display=str(path))
    log.info(stats.summary())
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            index.save(cached, source=os.path.basename(str(path)))
            index.release_sequences()  # re-read lazily from the cache when needed
        except OSError as error:  # a read-only cache must not stop classification
            log.warning(f"could not cache the reference index in {cached} ({error})")
    return index


def index_model_name(path: str | os.PathLike) -> str | None:
    """The model name recorded in a prebuilt index (None for tables/FASTA or unreadable files)."""
    if not is_reference_file(path):
        return None
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != REFERENCE_FORMAT:
                return None
            return str(handle.attrs.get("model_name", "")) or None
    except (OSError, ValueError):
        return None


def resolve_model_for_reference(model_name: str | None, reference: str | os.PathLike | None) -> str | None:
    """With `--model auto` and a prebuilt index made with a known named model, use that model."""
    if not asks_for_default(model_name) or reference is None:
        return model_name
    name = index_model_name(reference)
    if name and name in available_models():
        return name
    return model_name
