"""Non-overlapping k-mer tokenizer for DNA barcodes (BarcodeMAE / BarcodeBERT style).

Vocabulary (k = 6 by default, 4104 ids):

    0 [PAD]  1 [MASK]  2 [UNK]  3 [CLS]  4 [SEP]  5-7 reserved
    8 + index of the k-mer in lexicographic A<C<G<T order, e.g. AAAAAA = 8, AAAAAC = 9, TTTTTT = 4103

A sequence of n nucleotides (after truncation to `max_length`) gives floor((n - k) / stride) + 1 tokens;
the last bases that do not fill a whole k-mer are dropped, and a sequence shorter than k has no token.
A k-mer holding any letter other than A, C, G, T (an IUPAC ambiguity code such as N or R) becomes [UNK].
Padding always uses [PAD] (id 0), never a nucleotide k-mer.

Reading phase (TokenizerConfig.phase): "none" (the default, and the meaning of a card without the setting) reads
from the first base; "coi5p" first drops the leading bases that put the first token on a COI-5P region coordinate
that is a multiple of `stride` (model.phase), so that barcodes whose starts differ by a few bases share tokens.
A sequence outside the region (no anchor) is read from its first base either way.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import TokenizerError
from .phase import PHASES, phase_shifts

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[UNK]", "[CLS]", "[SEP]", "[RESERVED5]", "[RESERVED6]", "[RESERVED7]")
PAD_ID = 0
MASK_ID = 1
UNK_ID = 2
NUM_SPECIAL = len(SPECIAL_TOKENS)
NUCLEOTIDES = "ACGT"
MAX_LENGTH = 1 << 20   # nucleotides a model reads at most (far above any barcode; bounds the position tables)

# Byte -> 0..3 for A, C, G, T and 4 for anything else (ambiguity codes).
_BASE_CODE = np.full(256, 4, dtype=np.uint8)
for _code, _base in enumerate(NUCLEOTIDES):
    _BASE_CODE[ord(_base)] = _code


@dataclass(frozen=True)
class TokenizerConfig:
    k: int = 6
    stride: int = 6
    max_length: int = 660  # nucleotides; longer sequences are truncated
    phase: str = "none"    # "coi5p": read every barcode of the COI-5P region in one phase (model.phase)

    def __post_init__(self):
        for name in ("k", "stride", "max_length"):   # the settings may come from an untrusted model card
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                text = repr(value)
                raise TokenizerError(f"{name} must be an integer, got {text if len(text) <= 40 else text[:37] + '...'}")
        if not 1 <= self.k <= 8:
            raise TokenizerError(f"k must be between 1 and 8, got {self.k}")
        if not 1 <= self.stride <= self.k:
            raise TokenizerError(f"stride must be between 1 and k={self.k}, got {self.stride}")
        if self.max_length < self.k:
            raise TokenizerError(f"max_length ({self.max_length}) must be at least k ({self.k})")
        if not isinstance(self.phase, str) or self.phase not in PHASES:
            text = repr(self.phase)
            raise TokenizerError(f"phase must be one of {', '.join(PHASES)}, got "
                                 f"{text if len(text) <= 40 else text[:37] + '...'}")
        if self.max_length > MAX_LENGTH:
            raise TokenizerError(f"max_length must be at most {MAX_LENGTH:,} nucleotides, got {self.max_length:,}")

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + 4 ** self.k

    @property
    def max_tokens(self) -> int:
        return (self.max_length - self.k) // self.stride + 1

    @property
    def in_phase(self) -> bool:
        return self.phase != "none"

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.in_phase:   # cards of models that read from the first base stay as older versions wrote them
            del data["phase"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerConfig:
        if not isinstance(data, dict):
            raise TokenizerError("tokenizer settings must be a JSON object")
        unknown = set(data) - {"k", "stride", "max_length", "phase"}
        if unknown:
            raise TokenizerError(f"unknown tokenizer settings: {', '.join(sorted(unknown))}")
        return cls(**data)


class KmerTokenizer:
    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        k = self.config.k
        self._place_values = (4 ** np.arange(k - 1, -1, -1)).astype(np.int64)  # [k]

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_tokens(self) -> int:
        return self.config.max_tokens

    def num_tokens(self, length: int) -> int:
        """Token count for a sequence of `length` nucleotides (after truncation)."""
        length = min(length, self.config.max_length)
        if length < self.config.k:
            return 0
        return (length - self.config.k) // self.config.stride + 1

    def phase_shifts(self, sequences: Sequence[str]) -> np.ndarray:
        """int64 [n]: the leading bases each sequence drops to be read in phase (0 everywhere without the
        setting, and for sequences outside the barcode region)."""
        if not self.config.in_phase:
            return np.zeros(len(sequences), dtype=np.int64)
        return phase_shifts(sequences, self.config.stride, span=self.config.max_length + self.config.stride)

    def encode(self, sequence: str, offset: int = 0) -> np.ndarray:
        """Token ids (int64, no padding) of a cleaned sequence, after dropping `offset` leading bases (and, for
        a tokenizer that reads in phase, first the bases that put it in phase)."""
        cfg = self.config
        offset += int(self.phase_shifts([sequence])[0])
        raw = sequence[offset:offset + cfg.max_length].encode("ascii", "replace")
        codes = _BASE_CODE[np.frombuffer(raw, dtype=np.uint8)]  # [n]
        if len(codes) < cfg.k:
            return np.zeros(0, dtype=np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(codes, cfg.k)[::cfg.stride]  # [t, k]
        ids = windows.astype(np.int64) @ self._place_values + NUM_SPECIAL
        ids[(windows == 4).any(axis=1)] = UNK_ID
        return ids

    def encode_batch(self, sequences: Sequence[str], offset: int | Sequence[int] = 0,
                     pad_to: int | None = None, shifts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pad-encode many sequences: ids [n, width] (int64, PAD = 0) and token counts [n].

        `width` is `pad_to`, or the longest row's token count (at most max_tokens). Each sequence drops `offset`
        leading bases after its phase shift (`phase_shifts`, computed here unless given as `shifts`). Vectorized:
        one copy per sequence into a byte matrix, then table look-ups and one matrix product for all k-mers.
        """
        cfg = self.config
        n = len(sequences)
        offsets = np.broadcast_to(np.asarray(offset, dtype=np.int64), (n,))
        if cfg.in_phase:
            offsets = offsets + (self.phase_shifts(sequences) if shifts is None else np.asarray(shifts, np.int64))
        pieces = [s[int(o):int(o) + cfg.max_length].encode("ascii", "replace")
                  for s, o in zip(sequences, offsets)]
        nucleotides = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=n)
        lengths = np.where(nucleotides >= cfg.k, (nucleotides - cfg.k) // cfg.stride + 1, 0)
        width = pad_to if pad_to is not None else int(lengths.max(initial=0))
        width = min(width, cfg.max_tokens)
        lengths = np.minimum(lengths, width)
        span = (width - 1) * cfg.stride + cfg.k if width > 0 else 0  # nucleotides covered by `width` tokens
        raw = np.zeros((n, max(span, 1)), dtype=np.uint8)
        for row, piece in enumerate(pieces):
            raw[row, :min(len(piece), span)] = np.frombuffer(piece[:span], dtype=np.uint8)
        ids = np.zeros((n, width), dtype=np.int64)
        if width == 0 or n == 0:
            return ids, lengths
        codes = _BASE_CODE[raw[:, :span]]  # [n, span]
        if cfg.stride == cfg.k:
            windows = codes.reshape(n, width, cfg.k)
        else:
            windows = np.lib.stride_tricks.sliding_window_view(codes, cfg.k, axis=1)[:, ::cfg.stride][:, :width]
        kmer = windows.astype(np.int64) @ self._place_values + NUM_SPECIAL  # [n, width]
        kmer[(windows == 4).any(axis=2)] = UNK_ID
        real = np.arange(width)[None, :] < lengths[:, None]
        ids[real] = kmer[real]
        return ids, lengths

    def token_to_id(self, token: str) -> int:
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(token)
        if len(token) != self.config.k or any(base not in NUCLEOTIDES for base in token):
            return UNK_ID
        return NUM_SPECIAL + sum(NUCLEOTIDES.index(base) * 4 ** (self.config.k - 1 - i)
                                 for i, base in enumerate(token))

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        if token_id < NUM_SPECIAL:
            return SPECIAL_TOKENS[token_id]
        index = token_id - NUM_SPECIAL
        return "".join(NUCLEOTIDES[(index >> (2 * (self.config.k - 1 - i))) & 3] for i in range(self.config.k))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.id_to_token(int(i)) for i in ids if int(i) != PAD_ID]
