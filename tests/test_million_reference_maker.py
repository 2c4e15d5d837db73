"""The maker of benchmarks/million_reference.py (the synthetic copies of a 1,000,000-barcode reference, issue 17),
on the 111 reference and 67 held-out barcodes of tests/data/bioscan_sample.csv: determinism with a seed, the
divergence of each kind of copy from its source, the codon-position and transition biases, new labels distinct
from the real ones, plausible lengths, no character a source did not have other than A/C/G/T, and queries kept
out of the reference. The timing half of the script (subprocesses of the CLI and VSEARCH) is not run here."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "bioscan_sample.csv"


def load_script():
    """benchmarks/million_reference.py under a private name (registered: its dataclasses need their module)."""
    name = "_million_reference_maker"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "million_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


mr = load_script()
NO_ENDS = mr.CopyParams(indel_rate=0.0, trim_probability=0.0)   # substitutions only: identity is position-wise


@pytest.fixture(scope="module")
def sample():
    reference, held_out = mr.read_real([SAMPLE])
    assert len(reference) > 100 and len(held_out) > 50
    return reference, held_out


def mismatches(a: bytes | str, b: bytes | str) -> int:
    assert len(a) == len(b)
    return sum(x != y for x, y in zip(a, b))


def acgt_count(sequence: bytes | str) -> int:
    return sum(sequence.count(base) for base in ("ACGT" if isinstance(sequence, str) else (b"A", b"C", b"G", b"T")))


def test_read_real_keeps_held_out_splits_out(sample):
    reference, held_out = sample
    assert not {r.split for r in reference} & set(mr.HELD_OUT)
    assert {split for _, split in held_out} == {"test", "test_unseen"}
    assert len({r.sequence for r in reference}) == len(reference)
    assert not {r.sequence for r in reference} & {r.sequence for r, _ in held_out}


def test_reading_frame_is_the_stop_free_one(sample):
    reference, _ = sample
    for record in reference:
        sequence = record.sequence.encode()
        frame = mr.reading_frame(sequence)
        stops = [sum(sequence[i:i + 3] in (b"TAA", b"TAG") for i in range(f, len(sequence) - 2, 3)) for f in range(3)]
        assert stops[frame] == min(stops)
    codons = b"CTAGCCCCTAAC" * 10   # no stop in frame 0; TAG in frame 1, TAA in frame 2
    assert [mr.reading_frame(b"G" * shift + codons) for shift in range(3)] == [0, 1, 2]
    assert mr.reading_frame(b"ACG" * 20) == 0   # no stop anywhere: the first frame


def test_substitutions_hit_the_requested_divergence_with_codon_and_transition_bias(sample):
    reference, _ = sample
    rng = np.random.default_rng(5)
    third = total = transitions = 0
    for record in reference:
        source = record.sequence.encode()
        frame = mr.reading_frame(source)
        divergence = rng.uniform(0, 0.12)
        copy = mr.mutate(source, divergence, rng, NO_ENDS, frame)
        changed = [i for i in range(len(source)) if copy[i] != source[i]]
        acgt = acgt_count(source)
        assert len(changed) == max(1, round(divergence * acgt))          # the exact divergence, at least one
        assert all(chr(source[i]) in "ACGT" and chr(copy[i]) in "ACGT" for i in changed)   # IUPAC codes stay
        third += sum((i - frame) % 3 == 2 for i in changed)
        transitions += sum({source[i], copy[i]} in ({65, 71}, {67, 84}) for i in changed)
        total += len(changed)
    assert total > 2000
    assert 0.66 < third / total < 0.77          # weight 5 against 1 + 1: 5/7 = 0.714
    assert 0.62 < transitions / total < 0.71    # transitions : transversions = 2 : 1


def test_copies_within_bounds_and_labels(sample):
    reference, _ = sample
    params = mr.MakerParams(copy=NO_ENDS)
    maker = mr.Maker(reference, seed=3, params=params)
    rng = np.random.default_rng([3, 99])
    for _ in range(200):
        source, copy = maker.within_copy(rng)
        original = maker.sources[source]
        assert 1 <= mismatches(copy, original) <= round(0.02 * acgt_count(original)) + 1
    real_species = {r.taxonomy.get("species") for r in reference}
    real_genera = {r.taxonomy.get("genus") for r in reference}
    new_genera = 0
    for number in range(60):
        species = maker.species(number)
        source = maker.sources[species.source]
        divergence = mismatches(species.centre, source) / acgt_count(source)
        assert 0.03 - 1 / len(source) <= divergence <= 0.12 + 1 / len(source)
        assert species.taxonomy["species"] not in real_species and species.bin == f"SYN:{number}"
        assert species.taxonomy["species"] == f"{species.taxonomy['genus']} synthetic-{number}"
        parent = reference[species.source].taxonomy
        assert all(species.taxonomy.get(rank) == parent.get(rank) for rank in mr.ABOVE_GENUS)
        if divergence >= 0.10 + 1 / len(source):
            assert species.taxonomy["genus"] == f"{parent['genus']}-syn{number}"
        if species.taxonomy["genus"] not in real_genera:
            new_genera += 1
            assert divergence >= 0.10 - 1 / len(source)
        else:
            assert species.taxonomy["genus"] == parent["genus"]
        for _ in range(3):
            member = maker.member(species, species.rng)
            assert 1 <= mismatches(member, species.centre) <= round(0.01 * acgt_count(species.centre)) + 1
    assert 0 < new_genera < 60
    # the same species again from its own stream: the queries rely on it
    assert maker.species(7).centre == maker.species(7).centre


def test_reference_is_deterministic_unique_and_plausible(sample):
    reference, _ = sample
    size = len(reference) + 600

    def make(seed):
        maker = mr.Maker(reference, seed=seed)
        keys: set[int] = set()
        records = list(maker.reference(size, keys))
        return maker, keys, records

    maker, keys, records = make(11)
    _, _, again = make(11)
    _, _, other = make(12)
    as_tuples = lambda rs: [(r.id, r.sequence, r.taxonomy, r.bin) for r in rs]
    assert as_tuples(records) == as_tuples(again)
    assert [r.sequence for r in records[len(reference):]] != [r.sequence for r in other[len(reference):]]
    assert len(records) == size and len({r.id for r in records}) == size
    assert len({r.sequence for r in records}) == size == len(keys)
    synthetic = records[len(reference):]
    within = [r for r in synthetic if r.id.startswith("synw")]
    members = [r for r in synthetic if r.id.startswith("syns")]
    assert len(within) == 300 and len(members) == 300 and maker.species_count > 10
    real_labels = {(r.taxonomy.get("species"), r.bin) for r in reference}
    assert all((r.taxonomy.get("species"), r.bin) in real_labels for r in within)
    real_species, real_bins = {r.taxonomy.get("species") for r in reference}, {r.bin for r in reference}
    assert all(r.taxonomy["species"] not in real_species and r.bin not in real_bins for r in members)
    assert all(r.bin.startswith("SYN:") and " synthetic-" in r.taxonomy["species"] for r in members)
    sizes = np.unique([r.bin for r in members], return_counts=True)[1]
    assert sizes.max() > 1 and sizes.mean() > 2            # species come as clusters
    # lengths like the real records'; no character that no source had, other than A/C/G/T
    real_lengths = [len(r.sequence) for r in reference]
    lengths = [len(r.sequence) for r in synthetic]
    assert min(lengths) >= min(min(real_lengths), 300) - 6 and max(lengths) <= max(real_lengths) + 6
    assert 0.05 < np.mean([n < 650 for n in lengths]) < 0.9
    alphabet = set("ACGT").union(*(set(r.sequence) for r in reference))
    assert all(set(r.sequence) <= alphabet for r in synthetic)


def test_copies_with_ends_and_indels(sample):
    reference, _ = sample
    params = mr.CopyParams(indel_rate=1.0, trim_probability=0.5)   # many, to see them
    rng = np.random.default_rng(8)
    shorter = longer = 0
    for record in reference:
        source = record.sequence.encode()
        for _ in range(3):
            copy = mr.mutate(source, 0.01, rng, params, mr.reading_frame(source))
            assert len(copy) >= min(300, len(source)) - 3 * 8 and len(copy) <= len(source) + 3 * 8
            assert set(copy) <= set(source) | set(b"ACGT")
            assert len(re.sub(b"[ACGT]", b"", copy)) <= len(re.sub(b"[ACGT]", b"", source))
            shorter += len(copy) < len(source)
            longer += len(copy) > len(source)
    assert shorter > len(reference) and longer > 10


def test_queries_are_held_out_nested_and_labelled(sample):
    reference, held_out = sample
    maker = mr.Maker(reference, seed=2)
    keys: set[int] = set()
    records = list(maker.reference(len(reference) + 400, keys))
    before = set(keys)
    queries = mr.query_records(maker, held_out, 300, 0.1, keys)
    assert keys == before                                  # the reference's hashes are not changed
    assert len(queries) == 300 and len({r.id for r, _ in queries}) == 300
    assert not {mr.sequence_key(r.sequence) for r, _ in queries} & keys
    assert len({r.sequence for r, _ in queries}) == 300
    kinds = [kind for _, kind in queries]
    assert kinds.count("test") + kinds.count("test_unseen") == 30
    assert kinds.count("synthetic-copy") > 50 and kinds.count("synthetic-species") > 50
    present = {r.taxonomy.get("species") for r in records}
    assert all(r.taxonomy.get("species") in present for r, kind in queries if kind.startswith("synthetic"))
    real = [(r, kind) for r, kind in queries if kind in ("test", "test_unseen")]
    assert all(r.split == kind and (r, kind) in held_out for r, kind in real)
    smaller = mr.query_records(maker, held_out, 200, 0.1, keys)
    assert {r.id for r, _ in smaller} <= {r.id for r, _ in queries}
    assert [r.sequence for r, _ in smaller] == [r.sequence for r, _ in queries[:20]] + [
        r.sequence for r, _ in queries[30:210]]


def test_parse_time_v():
    report = ("\tCommand being timed: \"vsearch\"\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.50\n"
              "\tMaximum resident set size (kbytes): 2097152\n")
    assert mr.parse_time_v(report) == {"time_v_wall_s": 3723.5, "peak_rss_mib": 2048.0}
