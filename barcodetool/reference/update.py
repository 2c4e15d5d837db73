"""Growing a reference index without rebuilding it: records added to an index (`add_records`), two indexes merged
(`merge_indexes`).

The result equals, array for array, the index `build_reference` makes of the old records followed by the new ones:
the same ids, sequence groups (numbered 0.. by first record: a new record whose sequence is already indexed joins
its group and takes its embedding), embeddings (only the new distinct sequences are embedded, with the function
and normalisation of a build), labels and k-mer index (extended, not rebuilt: `KmerIndex.extended`). One
difference: label codes of an index are never renumbered, so the names a build would sort in among the old ones
are appended to `/label_names/<name>` (sorted among themselves); every record still decodes to the same label.
Embeddings are equal to float rounding in float32 arithmetic; under bfloat16 (`--compute auto` on GPUs and on CPUs
with AVX-512 BF16 or AMX) an embedding depends on the batch it is computed in by up to ~4e-3, as between two builds
of the same records in another order.

The calibration. Rows and distinct sequences are only appended, so every row and sequence-group number that the
stored calibration holds (the leave-out queries and their neighbours or candidates, in `index.calibration` and
`index.identity_calibration`; the conflicting records named in the details) still points at the same record.
What they no longer are is the search a rebuild would make: the new records are missing from the stored
neighbour and candidate lists, and a rebuild would draw its calibration queries from the grown reference.

* Small additions (new distinct sequences at most RECALIBRATE_SHARE of those indexed; `recalibrate=None`): the
  thresholds of both rules, the identity rule's confidence model and the cluster thresholds are kept, and so are
  the stored leave-out searches they were made from: they describe the indexed part of the reference, and
  recalibrating other settings later (`thresholds_for`: another --precision, --min-confidence or --neighbours)
  reuses them as for the index before the addition. A sequence group whose representative record changes (new
  records of an indexed sequence with other labels) is read with its new labels.
* Larger additions, or `recalibrate=True`: the thresholds, the confidence model and all stored leave-out searches
  are dropped, and both rules are calibrated again as `build_reference` calibrates them, with the settings the
  index was calibrated with (precision, neighbours, min_confidence; the defaults for an index without them).
  `recalibrate=False` keeps the calibration whatever the share. An index without calibration stays without it
  unless `recalibrate=True`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from ..embedding import embed_sequences
from ..errors import IndexMismatchError, InputError, UsageError
from ..search import SequenceStore, normalize
from ..taxonomy import LABELS, RANKS, encode_labels
from .calibrate import calibrate_thresholds
from .isolation import compute_isolation
from .decide import DEFAULT_K, DEFAULT_MIN_CONFIDENCE, DEFAULT_PRECISION
from .index import IdentityLayer, ReferenceIndex, representative_records

log = logging.getLogger("barcodetool")

# New distinct sequences, as a share of those already indexed, up to which an addition keeps the stored
# calibration. Recalibrating costs most of a build's time after embedding (minutes for 100,000 barcodes), so it is
# paid only where the calibration may have moved: a reference grown by at most a tenth is more than nine tenths the
# reference that was calibrated. Measured (benchmarks/reference_add.py, docs/benchmarks.md): 10,000 real barcodes
# added to 113,564 (8.8%) with the stored calibration name the genus of 56.7% of 2,774 new-species queries at 99.55%
# precision; the rebuilt index with its own fresh calibration, 53.9% at 99.33%.
RECALIBRATE_SHARE = 0.10

Progress = Callable[[int], None]


def add_records(index: ReferenceIndex, records: Iterable, model, *, recalibrate: bool | None = None,
                allow_duplicates: bool = False, batch_size: int = 256, chunk_records: int = 16384,
                progress: Progress | None = None, source: str = "", display: str | None = None) -> ReferenceIndex:
    """`index` with `records` (objects with .id, .sequence, .taxonomy, .bin, as build_reference takes) appended:
    a new index, equal to build_reference of the old records followed by these (see the module's notes; `index`
    is left as it is).

    Only sequences not already in the index are embedded, with `model`, which must be the index's
    (IndexMismatchError otherwise), `batch_size` sequences a batch and `chunk_records` at a time (as a build).
    `recalibrate`: None recalibrates both rules when the new distinct sequences are more than RECALIBRATE_SHARE of
    those indexed, True always, False never. A record id already in the index (or given twice) is refused unless
    `allow_duplicates`. `source` names the added records in the index's `source`; errors name `display`.
    """
    index.check_model(model)
    if batch_size < 1 or chunk_records < 1:
        raise UsageError("batch_size and chunk_records must be at least 1")
    ids: list[str] = []
    labels: dict[str, list[str]] = {name: [] for name in LABELS}
    distinct: dict[str, int] = {}     # the added records' distinct sequences, by first record
    rows: list[int] = []
    for record in records:
        ids.append(record.id)
        rows.append(distinct.setdefault(record.sequence, len(distinct)))
        for rank in RANKS:
            labels[rank].append(record.taxonomy.get(rank) or "")
        labels["bin"].append(record.bin or "")
    unique = list(distinct)
    del distinct

    def embed(fresh: np.ndarray) -> np.ndarray:
        if progress is not None and callable(getattr(progress, "set_total", None)):
            progress.set_total(len(fresh))
        vectors = np.empty((len(fresh), model.embedding_dim), dtype=np.float32)
        for start in range(0, len(fresh), chunk_records):
            part = [unique[i] for i in fresh[start:start + chunk_records].tolist()]
            vectors[start:start + len(part)] = embed_sequences(model, part, batch_size=batch_size, progress=progress)
        return normalize(vectors)

    added = _Added(ids=ids, distinct=SequenceStore.from_sequences(unique), rows=np.asarray(rows, dtype=np.int64),
                   labels={name: encode_labels(values) for name, values in labels.items() if any(values)},
                   source=source, display=display)
    return _append(index, added, embed, recalibrate=recalibrate, allow_duplicates=allow_duplicates)


def merge_indexes(a: ReferenceIndex, b: ReferenceIndex, *, recalibrate: bool | None = None,
                  allow_duplicates: bool = False) -> ReferenceIndex:
    """A new index of `a`'s records followed by `b`'s, as `add_records(a, records of b)` makes it, with `b`'s
    embeddings reused (no model needed). Both must come from one model (IndexMismatchError otherwise). `b`'s
    calibration is not used: `a`'s is kept or both rules are recalibrated, as `add_records` decides."""
    if a.model_sha256 != b.model_sha256:
        where_a = str(a.path) if a.path is not None else "the first index"
        where_b = str(b.path) if b.path is not None else "the second index"
        raise IndexMismatchError(
            f"{where_b} was built with model {b.model_name!r} (sha256 {b.model_sha256[:12]}), {where_a} with "
            f"model {a.model_name!r} (sha256 {a.model_sha256[:12]}); embeddings of different models cannot be "
            f"merged (add the records of one to the other with `barcodetool reference add ... --model "
            f"{a.model_name}`)")
    if a.embedding_dim != b.embedding_dim:   # the same model: only a crafted file gets here
        raise IndexMismatchError(f"the indexes' embeddings have {a.embedding_dim} and {b.embedding_dim} columns")
    _, first = np.unique(b.groups, return_index=True)   # b's first record of each of its distinct sequences

    def reuse(fresh: np.ndarray) -> np.ndarray:
        vectors = np.asarray(b.embeddings[first[fresh]], dtype=np.float32)
        # float16 rows are unit vectors only to ~1e-3: made unit again, as a build normalises its vectors
        return normalize(vectors) if b.embeddings.dtype == np.float16 else vectors

    added = _Added(ids=list(b.ids), distinct=b.distinct_store, rows=b.groups.astype(np.int64),
                   labels={name: (b.codes[name], b.label_names[name]) for name in b.codes},
                   source=str(b.attrs.get("source", "")), display=str(b.path) if b.path is not None else None)
    return _append(a, added, reuse, recalibrate=recalibrate, allow_duplicates=allow_duplicates)


# ============================================================================================ shared
@dataclass
class _Added:
    """The records to append: their ids, their distinct sequences (in order of first record), each record's row
    there, their labels (name -> (int codes, names)), and what names them."""

    ids: list[str]
    distinct: SequenceStore
    rows: np.ndarray
    labels: dict[str, tuple[np.ndarray, list[str]]]
    source: str
    display: str | None


def _append(index: ReferenceIndex, added: _Added, vectors_of: Callable[[np.ndarray], np.ndarray], *,
            recalibrate: bool | None, allow_duplicates: bool) -> ReferenceIndex:
    """The index with `added` appended; `vectors_of(rows of added.distinct)` gives those sequences' unit
    embeddings."""
    if not added.ids:
        raise InputError("there are no records to add", path=added.display)
    if not allow_duplicates:
        _check_new_ids(index.ids, added.ids, added.display)
    old_store = index.distinct_store
    old_groups = len(old_store)
    # the group of each added distinct sequence: an indexed one's, or the next new number (in order of first record)
    lookup = {old_store.key(group): group for group in range(len(old_store))}
    store = added.distinct
    found = np.fromiter((lookup.get(store.key(row), -1) for row in range(len(store))), dtype=np.int64,
                        count=len(store))
    del lookup
    fresh = np.flatnonzero(found < 0)
    found[fresh] = old_groups + np.arange(len(fresh))
    groups = found[added.rows]
    joined = groups < old_groups
    log.info(f"adding {len(added.ids):,} records ({len(fresh):,} new distinct sequences; {int(joined.sum()):,} "
             f"records of sequences already indexed) to {len(index):,} records ({old_groups:,} distinct sequences)")
    layer = index.identity    # the indexed sequences' k-mer index (read from the index file)
    new_store = store.subset(fresh)
    vectors = vectors_of(fresh)
    _, first = np.unique(index.groups, return_index=True)
    rows = np.empty((len(added.ids), index.embedding_dim), dtype=index.embeddings.dtype)
    rows[joined] = index.embeddings[first[groups[joined]]]     # the group's embedding, as a build gives it
    rows[~joined] = vectors[groups[~joined] - old_groups]
    codes, names = _extend_labels(index, added.labels, len(added.ids))
    all_groups = np.concatenate([index.groups.astype(np.int32), groups.astype(np.int32)])
    old_source = str(index.attrs.get("source", ""))
    merged = ReferenceIndex(
        ids=list(index.ids) + added.ids, embeddings=np.concatenate([index.embeddings, rows]), codes=codes,
        label_names=names, groups=all_groups, model_name=index.model_name, model_sha256=index.model_sha256,
        attrs={"pooling": index.attrs.get("pooling", "mean"), "tokenizer": index.attrs.get("tokenizer", ""),
               "source": " + ".join(part for part in (old_source, added.source) if part)})
    merged.hold_distinct(SequenceStore.concatenate([old_store, new_store]))
    group_first, group_record = representative_records(all_groups, codes)
    merged.hold_identity(IdentityLayer(   # the layer a build would make, with the k-mer index extended
        store=merged.distinct_store, kmer=layer.kmer.extended(new_store), group_first=group_first,
        group_record=group_record,
        codes={name: values[group_record].astype(np.int32) for name, values in codes.items()}))
    _calibrate(index, merged, len(fresh), old_groups, recalibrate)
    # a kept calibration's odd records, as reading the index applies them (a recalibration has applied its own)
    merged.unlabel_odd_records(merged.identity.codes, group_record)
    if merged.identity_thresholds is not None and merged.identity_isolation is None:
        # every sequence's nearest references of another label, the added ones among them (isolation.py)
        merged.identity_isolation = compute_isolation(merged)
    return merged


def _check_new_ids(old_ids: list[str], ids: list[str], display: str | None) -> None:
    """Refuse an added record id that the index holds, or that is given twice."""
    old, seen = set(old_ids), set()
    for name in ids:
        if name in old or name in seen:
            where = "is already in the index" if name in old else "is given twice"
            raise InputError(f"record id {name!r} {where}", path=display,
                             fix="give records with new ids, or accept repeated ids (--allow-duplicates)")
        seen.add(name)


def _extend_labels(index: ReferenceIndex, labels: dict[str, tuple[np.ndarray, list[str]]], n_new: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Codes and names of every label of the grown index: the old codes unchanged, the names new to the index
    appended (sorted among themselves), -1 for the records of either part that lack the label."""
    codes, names = {}, {}
    n_old = len(index)
    for name in LABELS:
        part_codes, part_names = labels.get(name, (np.full(n_new, -1, dtype=np.int32), []))
        part_codes = np.asarray(part_codes, dtype=np.int64)
        used = np.unique(part_codes[part_codes >= 0])
        if name not in index.codes and not len(used):
            continue
        known = list(index.label_names.get(name, []))
        lookup = {label: code for code, label in enumerate(known)}
        for label in sorted(part_names[code] for code in used.tolist() if part_names[code] not in lookup):
            lookup[label] = len(known)
            known.append(label)
        to_merged = np.array([lookup.get(label, -1) for label in part_names] + [-1], dtype=np.int32)
        old = index.codes[name].astype(np.int32) if name in index.codes else np.full(n_old, -1, dtype=np.int32)
        codes[name], names[name] = np.concatenate([old, to_merged[part_codes]]), known
    return codes, names


def _calibrate(old: ReferenceIndex, merged: ReferenceIndex, new_groups: int, old_groups: int,
               recalibrate: bool | None) -> None:
    """Keep `old`'s calibration in `merged` or calibrate both rules again (module notes)."""
    share = new_groups / max(old_groups, 1)
    said = f"{new_groups:,} new distinct sequences, {100 * share:.1f}% of the {old_groups:,} indexed"
    calibrated = old.thresholds is not None or old.identity_thresholds is not None
    if recalibrate is None:
        if not calibrated:
            log.info(f"{said}; the index holds no calibration, and none is made (recalibrate to make one)")
            return
        recalibrate = share > RECALIBRATE_SHARE
        if recalibrate:
            log.info(f"{said}, more than {100 * RECALIBRATE_SHARE:g}%: both rules are calibrated again")
        else:
            log.info(f"{said}, at most {100 * RECALIBRATE_SHARE:g}%: the stored calibration is kept")
    elif recalibrate:
        log.info(f"{said}: both rules are calibrated again, as asked")
    else:
        log.info(f"{said}: the stored calibration is kept, as asked")
    if not recalibrate:
        merged.thresholds = replace(old.thresholds) if old.thresholds is not None else None
        merged.identity_thresholds = replace(old.identity_thresholds) if old.identity_thresholds is not None else None
        merged.calibration = {level: dict(stored) for level, stored in old.calibration.items()} \
            if old.calibration else None
        merged.identity_calibration = {level: dict(stored) for level, stored in old.identity_calibration.items()} \
            if old.identity_calibration else None
        return
    knn, identity = old.thresholds, old.identity_thresholds
    calibrate_thresholds(merged, "knn", precision=knn.precision if knn else DEFAULT_PRECISION,
                         k=knn.k if knn else DEFAULT_K,
                         min_confidence=knn.min_confidence if knn else DEFAULT_MIN_CONFIDENCE)
    # the index's own candidate settings (a widening included), or this version's defaults
    kept = {"candidates": identity.candidates, "embed_below": identity.embed_below,
            "widen": identity.widen} if identity is not None else {}
    calibrate_thresholds(merged, "identity", precision=identity.precision if identity else DEFAULT_PRECISION,
                         min_confidence=identity.min_confidence if identity else DEFAULT_MIN_CONFIDENCE, **kept)
