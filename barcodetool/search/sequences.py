"""Sequences encoded once for vectorised identity and k-mer work: bit-mask codes, the SequenceStore, k-mer codes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError, UsageError

_BITS = {"A": 1, "C": 2, "G": 4, "T": 8, "U": 8, "R": 5, "Y": 10, "S": 6, "W": 9, "K": 12, "M": 3, "B": 14,
         "D": 13, "H": 11, "V": 7, "N": 15}
_CODE = np.zeros(256, dtype=np.uint8)          # ASCII -> bit mask, 0 = not a nucleotide code
for _letter, _bits in _BITS.items():
    _CODE[ord(_letter)] = _bits
    _CODE[ord(_letter.lower())] = _bits
IS_BASE = np.zeros(16, dtype=bool)            # bit mask is one of A, C, G, T
IS_BASE[[1, 2, 4, 8]] = True
LETTERS = np.frombuffer(b"-ACMGRSVTWYHKDBN", dtype=np.uint8)  # bit mask -> letter (0 -> "-")


# ============================================================================================ encoding
def encode(sequence: str) -> np.ndarray:
    """uint8 bit-mask codes of a nucleotide sequence (A=1 C=2 G=4 T/U=8, IUPAC codes the union, N=15).

    Raises InputError for a character that is not a nucleotide code (gaps included: give cleaned sequences).
    """
    raw = np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)
    codes = _CODE[raw]
    if codes.size and not codes.all():
        bad = sequence[int(np.flatnonzero(codes == 0)[0])]
        raise InputError(f"{bad!r} is not a nucleotide code", fix="give cleaned sequences (ACGT and IUPAC codes)")
    return codes


def decode(codes: np.ndarray) -> str:
    """Inverse of `encode` (T for T/U; 0 = padding becomes '-')."""
    return LETTERS[np.asarray(codes, dtype=np.uint8)].tobytes().decode("ascii")


class SequenceStore:
    """Sequences encoded once for identity computations: 4-bit bit-mask codes, two a byte, with start offsets.

    Memory is half a byte a nucleotide (0.33 GB for a million barcodes): each sequence starts at an even
    nucleotide offset, so a sequence's bytes are its own (`key`) and stores concatenate byte by byte; an odd
    length is padded with a 0 nibble. `rows(idx)` gathers rows into a zero-padded uint8 matrix of codes.
    """

    def __init__(self, packed: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.packed = packed      # uint8 [bytes]: nucleotide 2j in the low nibble of byte j, 2j + 1 in the high
        self.starts = starts      # int64 [n] even nucleotide offset of each sequence
        self.lengths = lengths    # int32 [n]

    @classmethod
    def from_sequences(cls, sequences: Sequence[str]) -> SequenceStore:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int32, count=len(sequences))
        padded = lengths.astype(np.int64) + (lengths & 1)
        starts = np.zeros(len(sequences), dtype=np.int64)
        if len(sequences) > 1:
            np.cumsum(padded[:-1], out=starts[1:])
        text = "".join(s + "\0" if len(s) & 1 else s for s in sequences)
        raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
        codes = _CODE[raw]
        bad = np.flatnonzero(codes == 0)
        if len(bad):
            odd = lengths & 1 == 1
            padding = starts[odd] + lengths[odd]
            if len(bad) != len(padding) or not np.array_equal(bad, padding):
                position = int(bad[np.flatnonzero(np.isin(bad, padding, invert=True))[0]])
                row = int(np.searchsorted(starts, position, side="right") - 1)
                raise InputError(f"{text[position]!r} is not a nucleotide code", record=str(row),
                                 fix="give cleaned sequences (ACGT and IUPAC codes)")
        return cls(codes[0::2] | (codes[1::2] << 4), starts, lengths)

    @classmethod
    def concatenate(cls, stores: Sequence[SequenceStore]) -> SequenceStore:
        """One store holding the rows of `stores`, in order."""
        if not stores:
            return cls(np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32))
        if len(stores) == 1:
            return stores[0]
        shift = np.cumsum([0] + [2 * len(store.packed) for store in stores[:-1]])
        starts = np.concatenate([store.starts + offset for store, offset in zip(stores, shift)]).astype(np.int64)
        lengths = np.concatenate([store.lengths for store in stores]).astype(np.int32)
        return cls(np.concatenate([store.packed for store in stores]), starts, lengths)

    def subset(self, rows: np.ndarray) -> SequenceStore:
        """A store of `rows` of this one, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows].astype(np.int32)
        nbytes = (lengths.astype(np.int64) + 1) // 2
        starts = np.zeros(len(rows), dtype=np.int64)
        if len(rows) > 1:
            np.cumsum(2 * nbytes[:-1], out=starts[1:])
        parts = [self.packed[a:a + b] for a, b in zip((self.starts[rows] // 2).tolist(), nbytes.tolist())]
        return SequenceStore(np.concatenate(parts) if parts else self.packed[:0], starts, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def key(self, i: int) -> bytes:
        """The packed bytes of sequence i: equal for equal sequences, and only for them."""
        start = int(self.starts[i]) // 2
        return self.packed[start:start + (int(self.lengths[i]) + 1) // 2].tobytes()

    def codes(self, i: int) -> np.ndarray:
        """uint8 bit-mask codes of sequence i."""
        start, length = int(self.starts[i]), int(self.lengths[i])
        packed = self.packed[start // 2:start // 2 + (length + 1) // 2]
        out = np.empty(2 * len(packed), dtype=np.uint8)
        out[0::2] = packed & 15
        out[1::2] = packed >> 4
        return out[:length]

    def sequence(self, i: int) -> str:
        return decode(self.codes(i))

    def rows(self, idx: np.ndarray, width: int | None = None) -> np.ndarray:
        """uint8 [len(idx), width] codes of rows `idx`, zero-padded (width: their longest length by default)."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        if width is None:
            width = int(lengths.max()) if len(idx) else 0
        half = (width + 1) // 2
        pairs = np.zeros((len(idx), half), dtype=np.uint8)         # each row's bytes; a padding nibble is 0
        copied = (np.minimum(lengths, width) + 1) // 2
        packed = self.packed
        for r, (start, count) in enumerate(zip((self.starts[idx] // 2).tolist(), copied.tolist())):
            pairs[r, :count] = packed[start:start + count]
        out = np.empty((len(idx), 2 * half), dtype=np.uint8)
        np.bitwise_and(pairs, 15, out=out[:, 0::2])
        np.right_shift(pairs, 4, out=out[:, 1::2])
        return out if 2 * half == width else np.ascontiguousarray(out[:, :width])


def as_store(sequences) -> SequenceStore:
    """A SequenceStore as is, or one built from a sequence of strings."""
    if isinstance(sequences, SequenceStore):
        return sequences
    if isinstance(sequences, str):
        raise UsageError("give a list of sequences, not one string")
    return SequenceStore.from_sequences(list(sequences))


def kmer_codes(codes: np.ndarray, k: int, stride: int = 1) -> np.ndarray:
    """int32 [rows, P] 2-bit k-mer codes starting at columns 0, stride, 2 stride, ... (P = those with a full
    window inside the matrix); -1 where the window holds anything but A/C/G/T (padding included)."""
    n, width = codes.shape
    count = len(range(0, max(0, width - k + 1), stride))
    if count == 0:
        return np.full((n, 0), -1, dtype=np.int32)
    base = IS_BASE[codes]                                  # bool  [n, width]
    two = ((codes >> 1) - (codes >> 3)).astype(np.int32)    # A1 C2 G4 T8 -> 0 1 2 3 (others masked by `base`)
    value = np.zeros((n, count), dtype=np.int32)
    valid = np.ones((n, count), dtype=bool)
    for t in range(k):                                      # strided views: no gathers
        window = slice(t, t + (count - 1) * stride + 1, stride)
        value <<= 2
        value |= two[:, window]
        valid &= base[:, window]
    value[~valid] = -1
    return value


_COMPLEMENT = str.maketrans("ACGTURYKMSWBDHVNacgturykmswbdhvn", "TGCAAYRMKSWVHDBNtgcaayrmkswvhdbn")


def reverse_complement(sequence: str) -> str:
    """The other strand of a (cleaned) sequence, IUPAC codes complemented (U read as T)."""
    return sequence.translate(_COMPLEMENT)[::-1]
