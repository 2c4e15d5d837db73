"""The training data: barcodes read with `barcodetool.io`, cleaned, deduplicated (identical sequences once) and
tokenized up front for every start offset 0..k-1 (the paper's random-offset augmentation drops 0..k-1 leading
bases), so that the training loop only gathers rows of a uint16 array that can sit on the GPU. A tokenizer that
reads in phase (TokenizerConfig.phase) keeps the phase: its offsets drop 0..k-1 whole tokens (0, k, .., (k-1) k
bases) after the phase shift, so that the augmentation varies the start as real barcodes do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..io import ReadOptions, ReadStats, read_barcodes
from ..model.tokenizer import KmerTokenizer


@dataclass
class Corpus:
    """Unique cleaned barcodes, tokenized at every offset, with optional integer labels per rank."""

    sequences: list[str]
    tokens: np.ndarray  # uint16 [offsets, N, L]
    lengths: np.ndarray  # int16 [offsets, N]
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # rank -> int64 [N], -1 = unknown
    label_names: dict[str, list[str]] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def fingerprint(self) -> str:
        """sha256 of the sequences in order: a checkpoint resumes only on the data it was trained on."""
        digest = hashlib.sha256()
        for sequence in self.sequences:
            digest.update(sequence.encode("ascii", "replace"))
            digest.update(b"\n")
        return digest.hexdigest()

    def subset(self, index: np.ndarray) -> Corpus:
        return Corpus(sequences=[self.sequences[i] for i in index], tokens=self.tokens[:, index],
                      lengths=self.lengths[:, index], labels={r: v[index] for r, v in self.labels.items()},
                      label_names=self.label_names, summary=self.summary)


def tokenize_corpus(sequences: Sequence[str], tokenizer: KmerTokenizer, offsets: bool = True,
                    chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Token ids uint16 [offsets, N, L] and lengths int16 [offsets, N] of every sequence at each start offset
    0..k-1 (offset 0 only when `offsets` is false), encoded `chunk` sequences at a time. Read in phase, offset
    o drops o whole tokens (o x stride bases) after each sequence's phase shift."""
    k = tokenizer.config.k if offsets else 1
    step = tokenizer.config.stride if tokenizer.config.in_phase else 1
    n, L = len(sequences), tokenizer.max_tokens
    tokens = np.zeros((k, n, L), dtype=np.uint16)
    lengths = np.zeros((k, n), dtype=np.int16)
    shifts = tokenizer.phase_shifts(sequences)
    for offset in range(k):
        for start in range(0, n, chunk):
            ids, lens = tokenizer.encode_batch(sequences[start:start + chunk], offset=offset * step, pad_to=L,
                                               shifts=shifts[start:start + chunk])
            tokens[offset, start:start + chunk] = ids
            lengths[offset, start:start + chunk] = lens
    return tokens, lengths


def build_corpus(records: Iterable, tokenizer: KmerTokenizer, *, label_ranks: Sequence[str] = (),
                 offsets: bool = True, sources: Sequence[str] = ()) -> Corpus:
    """Deduplicate identical barcodes (first record's labels win; a rank whose labels conflict becomes
    unknown), drop sequences shorter than k, and tokenize."""
    index_of: dict[str, int] = {}
    sequences: list[str] = []
    labels: dict[str, list[str | None]] = {rank: [] for rank in label_ranks}
    records_seen = too_short = truncated = 0
    k, max_length = tokenizer.config.k, tokenizer.config.max_length
    for record in records:
        records_seen += 1
        sequence = record.sequence
        if len(sequence) < k:
            too_short += 1
            continue
        truncated += len(sequence) > max_length
        values = {rank: (record.bin if rank == "bin" else record.taxonomy.get(rank)) or None
                  for rank in label_ranks}
        row = index_of.get(sequence)
        if row is None:
            index_of[sequence] = len(sequences)
            sequences.append(sequence)
            for rank in label_ranks:
                labels[rank].append(values[rank])
        else:
            for rank in label_ranks:
                if labels[rank][row] != values[rank]:
                    labels[rank][row] = None
    if not sequences:
        where = f" in {', '.join(os.path.basename(str(s)) for s in sources)}" if sources else ""
        raise UsageError(f"no usable barcodes to train on{where}: {records_seen:,} records"
                         + (f", {too_short:,} of them shorter than k ({k})" if records_seen else ""))
    tokens, lengths = tokenize_corpus(sequences, tokenizer, offsets=offsets)
    label_arrays, label_names = {}, {}
    for rank in label_ranks:
        names = sorted({v for v in labels[rank] if v})
        lookup = {name: i for i, name in enumerate(names)}
        label_arrays[rank] = np.array([lookup[v] if v else -1 for v in labels[rank]], dtype=np.int64)
        label_names[rank] = names
    summary = {"files": [os.path.basename(str(s)) for s in sources], "records": records_seen,
               "unique_barcodes": len(sequences), "duplicates_removed": records_seen - too_short - len(sequences),
               "shorter_than_k": too_short, "truncated": int(truncated)}
    for rank in label_ranks:
        summary[f"{rank}_labels"] = len(label_names[rank])
    return Corpus(sequences, tokens, lengths, label_arrays, label_names, summary)


def read_corpus(paths: Sequence[str], tokenizer: KmerTokenizer, *, include_splits: Sequence[str] | None = None,
                read_options: ReadOptions | None = None, label_ranks: Sequence[str] = (), stats_out: list | None = None
                ) -> Corpus:
    """Read training files (FASTA or tables). `include_splits` keeps table rows whose `split` is listed
    (rows without a split value are kept)."""

    other_splits = [0]

    def records():
        for path in paths:
            stats = ReadStats(path=str(path))
            for record in read_barcodes(path, read_options, stats=stats):
                if include_splits is not None and record.split and record.split not in include_splits:
                    other_splits[0] += 1
                    continue
                yield record
            if stats_out is not None:
                stats_out.append(stats)

    try:
        corpus = build_corpus(records(), tokenizer, label_ranks=label_ranks, sources=paths)
    except UsageError as error:
        if not other_splits[0]:
            raise
        raise UsageError(f"{error}; {other_splits[0]:,} rows left out whose split is not "
                         f"{', '.join(include_splits)} (--include-splits)") from None
    if include_splits is not None:
        corpus.summary["splits"] = list(include_splits)
    return corpus


def split_validation(corpus: Corpus, fraction: float, seed: int) -> tuple[Corpus, Corpus | None]:
    """(training part, validation part): `fraction` of the unique barcodes (at least one) held out at random
    by `seed`; no validation part for a fraction of 0 or a corpus of fewer than 10 barcodes."""
    if fraction <= 0 or len(corpus) < 10:
        return corpus, None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(corpus))
    n_val = max(1, int(round(fraction * len(corpus))))
    return corpus.subset(np.sort(order[n_val:])), corpus.subset(np.sort(order[:n_val]))
