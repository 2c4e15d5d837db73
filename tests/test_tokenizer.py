"""k-mer tokenizer: golden ids, specials, ambiguity codes, truncation, padding, stride, batch == single."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barcodetool.errors import TokenizerError
from barcodetool.model.tokenizer import MASK_ID, PAD_ID, UNK_ID, KmerTokenizer, TokenizerConfig

# Base-4 digits A=0, C=1, G=2, T=3; nucleotide ids start after the 8 special/reserved ids.
GOLDEN = {
    "AAAAAA": 8,
    "AAAAAC": 9,
    "AAAAAG": 10,
    "AAAAAT": 11,
    "AAAACA": 12,
    "CAAAAA": 8 + 1 * 1024,  # 1032
    "GAAAAA": 8 + 2 * 1024,  # 2056
    "ACGTAC": 8 + 0 * 1024 + 1 * 256 + 2 * 64 + 3 * 16 + 0 * 4 + 1,  # 441
    "TGCATG": 8 + 3 * 1024 + 2 * 256 + 1 * 64 + 0 * 16 + 3 * 4 + 2,  # 3670
    "TTTTTT": 4103,
}


@pytest.fixture(scope="module")
def tok() -> KmerTokenizer:
    return KmerTokenizer()


# ============================================================================================ golden ids
@pytest.mark.parametrize("kmer,expected", GOLDEN.items())
def test_golden_kmer_ids(tok, kmer, expected):
    assert tok.encode(kmer).tolist() == [expected]
    assert tok.token_to_id(kmer) == expected
    assert tok.id_to_token(expected) == kmer


def test_golden_literal_values():
    # The arithmetic above, written out, so a wrong formula in this file cannot agree with a wrong tokenizer.
    assert GOLDEN["ACGTAC"] == 441
    assert GOLDEN["TGCATG"] == 3670
    assert GOLDEN["CAAAAA"] == 1032


def test_golden_sequence(tok):
    assert tok.encode("AAAAAAAAAAACTTTTTTACGTAC").tolist() == [8, 9, 4103, 441]


def test_vocabulary_and_specials(tok):
    assert (PAD_ID, MASK_ID, UNK_ID) == (0, 1, 2)
    assert tok.vocab_size == 4104 == 8 + 4 ** 6
    assert tok.id_to_token(0) == "[PAD]"
    assert tok.id_to_token(1) == "[MASK]"
    assert tok.id_to_token(2) == "[UNK]"
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[MASK]") == 1 and tok.token_to_id("[UNK]") == 2
    with pytest.raises(TokenizerError):
        tok.id_to_token(4104)
    with pytest.raises(TokenizerError):
        tok.id_to_token(-1)


@pytest.mark.parametrize("kmer", ["AAAAAN", "NAAAAA", "ACGRAC", "YYYYYY", "ACG-AC"])
def test_ambiguous_kmer_is_unk(tok, kmer):
    assert tok.encode(kmer).tolist() == [UNK_ID]
    assert tok.token_to_id(kmer) == UNK_ID


def test_ambiguity_only_affects_its_own_kmer(tok):
    assert tok.encode("AAAAAAACGNACTTTTTT").tolist() == [8, UNK_ID, 4103]


# ============================================================================================ lengths
def test_last_partial_kmer_dropped(tok):
    assert tok.encode("AAAAAACCC").tolist() == [8]
    assert tok.encode("AAAAAAACGTA").tolist() == [8]
    assert tok.num_tokens(11) == 1 and tok.num_tokens(12) == 2


@pytest.mark.parametrize("sequence", ["", "A", "ACGTA"])
def test_shorter_than_k_gives_no_token(tok, sequence):
    assert tok.encode(sequence).shape == (0,)
    assert tok.num_tokens(len(sequence)) == 0
    ids, lengths = tok.encode_batch([sequence, "ACGTAC"])
    assert lengths.tolist() == [0, 1]
    assert ids[0].tolist() == [PAD_ID]


def test_all_short_batch_has_zero_width(tok):
    ids, lengths = tok.encode_batch(["ACG", ""])
    assert ids.shape == (2, 0) and lengths.tolist() == [0, 0]


def test_truncation_at_max_length(tok):
    rng = np.random.default_rng(1)
    seq660 = "".join(rng.choice(list("ACGT"), 660))
    seq700 = seq660 + "".join(rng.choice(list("ACGT"), 40))
    assert tok.max_tokens == 110
    assert len(tok.encode(seq660)) == 110
    assert len(tok.encode(seq700)) == 110
    assert tok.encode(seq700).tolist() == tok.encode(seq660).tolist()
    ids, lengths = tok.encode_batch([seq700, seq660, "ACGTAC"])
    assert ids.shape == (3, 110) and lengths.tolist() == [110, 110, 1]
    assert tok.num_tokens(700) == 110


def test_truncation_applies_after_offset(tok):
    sequence = "C" * 3 + "A" * 660 + "T" * 30
    assert tok.encode(sequence, offset=3).tolist() == [8] * 110


def test_padding_is_never_a_nucleotide(tok):
    ids, lengths = tok.encode_batch(["AAAAAA", "AAAAAA" * 5, "TTTTTTT"], pad_to=20)
    assert ids.shape == (3, 20)
    assert lengths.tolist() == [1, 5, 1]
    for row, n in zip(ids, lengths):
        assert (row[n:] == PAD_ID).all()
        assert (row[:n] >= 8).all()
    # AAAAAA is id 8; padding must not look like it (nor like any k-mer)
    assert ids[0].tolist() == [8] + [0] * 19


def test_pad_to_wider_than_max_tokens_is_capped(tok):
    ids, lengths = tok.encode_batch(["ACGTAC"], pad_to=500)
    assert ids.shape == (1, 110)


# ============================================================================================ k and stride
def test_k4_stride2():
    tok = KmerTokenizer(TokenizerConfig(k=4, stride=2, max_length=12))
    # windows at 0, 2, 4, 6, 8 -> ACGT, GTAC, ACGT, GTTT, TTTT  (12 nt: (12 - 4) // 2 + 1 = 5 tokens)
    sequence = "ACGTACGTTTTTGGGG"
    expected = [8 + 0 * 64 + 1 * 16 + 2 * 4 + 3,  # ACGT = 35
                8 + 2 * 64 + 3 * 16 + 0 * 4 + 1,  # GTAC = 185
                8 + 0 * 64 + 1 * 16 + 2 * 4 + 3,  # ACGT
                8 + 2 * 64 + 3 * 16 + 3 * 4 + 3,  # GTTT = 199
                8 + 255]                           # TTTT = 263
    assert expected == [35, 185, 35, 199, 263]
    assert tok.encode(sequence).tolist() == expected
    assert tok.vocab_size == 8 + 256
    assert tok.max_tokens == 5
    ids, lengths = tok.encode_batch([sequence, "ACGTA"])
    assert ids.tolist() == [expected, [35, 0, 0, 0, 0]]
    assert lengths.tolist() == [5, 1]


def test_k3_stride1_overlapping():
    tok = KmerTokenizer(TokenizerConfig(k=3, stride=1, max_length=100))
    assert tok.encode("AAAC").tolist() == [8, 9]
    assert tok.encode("ACGTN").tolist() == [8 + 6, 8 + 27, UNK_ID]  # ACG, CGT, GTN


def test_k1():
    tok = KmerTokenizer(TokenizerConfig(k=1, stride=1, max_length=10))
    assert tok.encode("ACGTN").tolist() == [8, 9, 10, 11, UNK_ID]


@settings(max_examples=60, deadline=None)
@given(
    sequences=st.lists(st.text(alphabet="ACGTN", max_size=80), min_size=1, max_size=8),
    k=st.integers(1, 6),
    stride_frac=st.floats(0, 1),
    max_length=st.integers(6, 70),
    offsets=st.lists(st.integers(0, 7), min_size=8, max_size=8),
    pad_extra=st.one_of(st.none(), st.integers(0, 5)),
)
def test_encode_batch_matches_encode(sequences, k, stride_frac, max_length, offsets, pad_extra):
    stride = max(1, min(k, 1 + int(stride_frac * k)))
    tok = KmerTokenizer(TokenizerConfig(k=k, stride=stride, max_length=max(max_length, k)))
    offsets = offsets[:len(sequences)]
    singles = [tok.encode(s, offset=o) for s, o in zip(sequences, offsets)]
    longest = max(len(s) for s in singles)
    pad_to = None if pad_extra is None else min(longest + pad_extra, tok.max_tokens)
    ids, lengths = tok.encode_batch(sequences, offset=offsets, pad_to=pad_to)
    assert ids.dtype == np.int64
    assert ids.shape == (len(sequences), longest if pad_to is None else pad_to)
    for row, n, single, sequence, offset in zip(ids, lengths, singles, sequences, offsets):
        assert n == len(single) == tok.num_tokens(len(sequence[offset:]))
        assert row[:n].tolist() == single.tolist()
        assert (row[n:] == PAD_ID).all()
        assert MASK_ID not in single.tolist()


def test_encode_batch_scalar_offset(tok):
    sequences = ["CCAAAAAAT", "GAAAAAACCCCCC"]
    ids, lengths = tok.encode_batch(sequences, offset=1)
    assert ids[0].tolist() == tok.encode(sequences[0], offset=1).tolist() + [0]
    assert ids[1].tolist() == [tok.token_to_id("AAAAAA"), tok.token_to_id("CCCCCC")]


def test_id_token_round_trip_k3():
    tok = KmerTokenizer(TokenizerConfig(k=3, stride=3, max_length=30))
    assert tok.vocab_size == 72
    seen = set()
    for token_id in range(tok.vocab_size):
        token = tok.id_to_token(token_id)
        assert tok.token_to_id(token) == token_id
        seen.add(token)
    assert len(seen) == 72
    assert tok.decode([8, 71, 0, 0]) == ["AAA", "TTT"]


# ============================================================================================ config
@pytest.mark.parametrize("kwargs", [
    {"k": 0}, {"k": 9}, {"k": 6, "stride": 0}, {"k": 6, "stride": 7}, {"k": 6, "max_length": 5},
    {"k": 4, "stride": 5},
])
def test_invalid_configs_raise(kwargs):
    with pytest.raises(TokenizerError):
        TokenizerConfig(**kwargs)


def test_config_round_trip_and_unknown_keys():
    config = TokenizerConfig(k=4, stride=2, max_length=100)
    data = config.to_dict()
    assert data == {"k": 4, "stride": 2, "max_length": 100}
    assert TokenizerConfig.from_dict(data) == config
    assert TokenizerConfig.from_dict(TokenizerConfig().to_dict()) == TokenizerConfig()
    with pytest.raises(TokenizerError, match="bogus"):
        TokenizerConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(TokenizerError):
        TokenizerConfig.from_dict({"k": 6, "stride": 9})


# ============================================================================================ reading phase
# A real 658-bp barcode (tests/data/bioscan_sample.csv, Crambus agitatellus) that starts at the COI-5P region's
# first base; the same barcode with 1..5 extra leading bases, or 1..5 bases trimmed, must give the tokens of the
# region read from a coordinate that is a multiple of 6.
def _region_barcode() -> str:
    import csv
    from pathlib import Path

    with open(Path(__file__).resolve().parent / "data" / "bioscan_sample.csv", encoding="utf-8") as handle:
        return next(row["dna_barcode"] for row in csv.DictReader(handle) if row["processid"] == "AGAKK403-17")


def test_phase_reading_drops_the_right_bases_for_shifted_barcodes():
    from barcodetool.model.phase import region_offsets

    barcode = _region_barcode().replace("-", "")
    offsets, anchored = region_offsets([barcode])
    assert anchored[0] and offsets[0] == 0
    phased = KmerTokenizer(TokenizerConfig(phase="coi5p"))
    plain = KmerTokenizer()
    start = plain.encode(barcode)                      # read from region coordinate 0
    for shift in range(1, 6):
        longer = "ACGTA"[:shift] + barcode             # starts `shift` bases before the region
        trimmed = barcode[shift:]                      # starts `shift` bases into the region
        assert phased.phase_shifts([longer, trimmed]).tolist() == [shift, 6 - shift]
        np.testing.assert_array_equal(phased.encode(longer)[:80], start[:80])
        np.testing.assert_array_equal(phased.encode(trimmed)[:80], start[1:81])   # from coordinate 6
        ids, lengths = phased.encode_batch([longer, trimmed, barcode])
        np.testing.assert_array_equal(ids[0, :80], start[:80])
        np.testing.assert_array_equal(ids[1, :80], start[1:81])
        np.testing.assert_array_equal(ids[2, :lengths[2]], start)
        assert not np.array_equal(plain.encode(longer)[:80], start[:80])   # without the setting: unrelated


def test_phase_leaves_sequences_outside_the_region_as_they_were():
    phased = KmerTokenizer(TokenizerConfig(phase="coi5p"))
    other = ["ACGT" * 40, "GATTACA" * 30, "ACGTAC", ""]
    assert phased.phase_shifts(other).tolist() == [0, 0, 0, 0]
    ids_a, len_a = phased.encode_batch(other[:3])
    ids_b, len_b = KmerTokenizer().encode_batch(other[:3])
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(len_a, len_b)


def test_a_card_without_the_phase_setting_reads_as_before():
    old = TokenizerConfig.from_dict({"k": 6, "stride": 6, "max_length": 660})
    assert old.phase == "none" and not old.in_phase
    assert old.to_dict() == {"k": 6, "stride": 6, "max_length": 660}      # written back as older versions did
    barcode = "ACG" + _region_barcode().replace("-", "")
    tok = KmerTokenizer(old)
    assert tok.phase_shifts([barcode]).tolist() == [0]
    np.testing.assert_array_equal(tok.encode(barcode), KmerTokenizer().encode(barcode))
    np.testing.assert_array_equal(tok.encode(barcode)[:3], [tok.token_to_id(barcode[i:i + 6]) for i in (0, 6, 12)])
    phased = TokenizerConfig.from_dict({"k": 6, "stride": 6, "max_length": 660, "phase": "coi5p"})
    assert phased.to_dict()["phase"] == "coi5p"
    with pytest.raises(TokenizerError, match="phase"):
        TokenizerConfig(phase="frame1")
    with pytest.raises(TokenizerError, match="phase"):
        TokenizerConfig.from_dict({"k": 6, "stride": 6, "max_length": 660, "phase": 3})


def test_phase_references_share_the_region_coordinates():
    from barcodetool.model.phase import REFERENCES, region_offsets

    offsets, anchored = region_offsets([sequence for *_, sequence in REFERENCES])
    assert anchored.all() and (offsets == 0).all()
    assert all(len(sequence) == 658 for *_, sequence in REFERENCES)
