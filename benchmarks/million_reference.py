"""A reference the size of BOLD on a laptop (issue 17): build, index size and classification speed at 1,000,000
reference barcodes, side by side with VSEARCH, with the top hit's accuracy so that speed is not bought with it.

    .venv/bin/python benchmarks/million_reference.py ../shared/data/bold_insects.csv.gz \\
        ../shared/data/coi_extra.csv.gz --size 1000000 --queries 10000,100000 --threads 2 \\
        --workdir /tmp/million --keep --out million.json

1. The reference (`ref_<size>_s<seed>.fasta`, SINTAX headers, written as it is generated: only the real barcodes
   and one 64-bit hash per written sequence are held in memory):
   * the real barcodes: every record of the tables whose `split` is not test, test_unseen or key_unseen, each
     cleaned sequence once (123,564 for bold_insects + coi_extra); `--size` below that takes a random subset;
   * synthetic copies up to `--size`, each derived from one real barcode of the reference and carrying its own
     labels; `--within-share` (0.5) of them are **within-species copies** and the rest are **members of new
     synthetic species**:
     - a within-species copy keeps its source's taxonomy and BIN, at a divergence d ~ U(0, `--within-max` = 2%)
       from its source (id `synw<n>`);
     - a new synthetic species n: a real barcode with a genus is drawn, and its centre made from it at d ~
       U(`--species-min` = 3%, `--species-max` = 12%), substitutions and 3-bp indels only (the centre itself is not
       written); its members (cluster size 1 + Geometric(1/`--cluster-mean`), at most `--cluster-max`) each at d ~
       U(0, `--within-max` / 2) from the centre, so that two members differ by 0-2% (ids `syns<n>m<i>`). Its labels:
       the source's ranks above genus, the source's genus, species "<genus> synthetic-<n>", BIN "SYN:<n>"; when d
       >= `--new-genus-above` (10%) it is also a new genus "<genus>-syn<n>" (species "<genus>-syn<n>
       synthetic-<n>"). Each species has its own random stream (seed, n), so its centre can be made again for
       queries without holding it.
   A copy is made from its source by (`mutate`), in this order:
     - substitutions: exactly max(1, round(d x L)) of the L A/C/G/T positions (other IUPAC codes are never
       touched, and only A/C/G/T are written), drawn without replacement with weight 5 (`--codon-bias`) on third
       codon positions and 1 on first and second positions (expected share of third positions 5/7). The reading
       frame is the one of the three with the fewest TAA/TAG codons (stops in every mitochondrial code; one frame
       has none in 99.8% of these barcodes), the first on ties. A substitution is a transition (A<->G, C<->T) with
       probability 2/3, else one of the two transversions: transitions : transversions = 2 : 1;
     - 3-bp indels: Poisson(`indel_rate` = 0.02) per copy, each a deletion of one codon or an insertion of 3 random
       bases at a codon boundary, half and half (the reading frame is kept);
     - trimmed ends (records only, not species centres): each end with probability 0.2 loses 1-60 bases (uniform),
       never leaving the copy shorter than min(300 bp, its length): real records' lengths vary the same way.
   A copy whose sequence is already in the reference is drawn again, so every sequence is written once.

2. The queries (`queries_<N>_s<seed>.fasta` and a `.truth.tsv` of their known labels), for each N of `--queries`:
   * real held-out barcodes: the unique barcodes of the `test` and `test_unseen` splits (8,854 + 2,774 in
     bold_insects), never in the reference and never a source of a copy; min(pool, round(N x `--real-share`))
     of them (`--real-share` 0.5), a seeded random subset (the same order for every N, so the sets nest);
   * synthetic held-out copies for the rest, made the same way but written only to the queries (and checked not to
     be in the reference): with probability `--within-share` a within-species copy of a random real reference
     barcode (labels of the source), else a new member of a random synthetic species of the reference (its
     labels); synthetic query j has its own random stream, so the sets nest.
   Known labels: `test` (species and genus; its species is in the reference), `test_unseen` (genus: its species is
   absent from the reference), `synthetic-copy` and `synthetic-species` (species and genus, present).

3. The measurements, each command whole-process under `/usr/bin/time -v` (wall time, and peak RSS from "Maximum
   resident set size"), with `--threads T` and OMP/MKL threads = T:
   * `barcodetool reference build REF.fasta -o REF.h5 --threads T` (skipped with `--skip-build`, which reuses the
     index of an earlier `--keep` run in `--workdir`), and the index's size on disk;
   * `barcodetool classify Q.fasta -r REF.h5 -o out.tsv --threads T` for each query set (on a random subset of
     `--classify-max-queries` queries when the set is larger; 0 = all);
   * VSEARCH with the options of the top-hit comparison of benchmarks/cpu_classify.py: `vsearch --usearch_global
     Q.fasta --db REF.fasta --id 0.5 --maxaccepts 1 --maxrejects 32 --top_hits_only --blast6out OUT --threads T
     --quiet` (the same comparison, hence `--id 0.5`), on a random subset of `--vsearch-max-queries` (10,000)
     queries when the set is larger (the first queries of the same seeded order as barcodetool's subset, so the
     two subsets nest).
   When a subset is timed, the tool's start-up (loading the database or index) is timed once on 10 queries, and
   the full set's time is **extrapolated** as start-up + N x (subset time - start-up) / subset: the table labels
   such figures "extrapolated"; the measured rate is the subset's, start-up included and excluded.
   Accuracy is that of the top hit (barcodetool's `nearest_id`, VSEARCH's hit; no hit counts as wrong) against the
   query's known species (test, synthetic) and genus (test_unseen), for both tools on the queries VSEARCH ran, and
   for barcodetool also its named labels (named and right) on every query it ran.

Without `--keep` the generated files are deleted at the end. `--make-only` writes the reference and the queries and
stops.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from barcodetool.io import BarcodeRecord, read_barcodes, write_fasta
from barcodetool.io.fasta import parse_fasta_header

HELD_OUT = ("test", "test_unseen", "key_unseen")   # never in the reference, never a source of a copy
QUERY_SPLITS = ("test", "test_unseen")
ABOVE_GENUS = ("phylum", "class", "order", "family", "subfamily")
KINDS = ("test", "test_unseen", "synthetic-copy", "synthetic-species")
# the random streams: default_rng([seed, STREAM, ...])
REAL_SUBSET, WITHIN, SPECIES, QUERY, REAL_QUERIES, SUBSET = range(6)

_ACGT = np.zeros(256, dtype=bool)
_ACGT[list(b"ACGT")] = True
_TRANSITION = np.zeros(256, dtype=np.uint8)
_TRANSVERSION = np.zeros((256, 2), dtype=np.uint8)
for _base, _ts, _tv in ((b"A", b"G", b"CT"), (b"G", b"A", b"CT"), (b"C", b"T", b"AG"), (b"T", b"C", b"AG")):
    _TRANSITION[_base[0]] = _ts[0]
    _TRANSVERSION[_base[0]] = list(_tv)
_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_STOP = re.compile(b"(?=(TAA|TAG))")


# ============================================================================================ making copies
@dataclass(frozen=True)
class CopyParams:
    """How a copy differs from its source (see the module's docstring)."""

    codon_bias: float = 5.0          # weight of a third codon position against a first or second one
    transition_share: float = 2 / 3  # transitions : transversions = 2 : 1
    indel_rate: float = 0.02         # expected 3-bp indels per copy (Poisson)
    trim_probability: float = 0.2    # each end of a record, independently
    trim_max: int = 60               # bases a trimmed end loses, uniform in 1..trim_max
    min_length: int = 300            # trimming never leaves a record shorter than min(min_length, its length)


@dataclass(frozen=True)
class MakerParams:
    """What the reference and the synthetic queries are made of (see the module's docstring)."""

    within_share: float = 0.5
    within_max: float = 0.02
    species_min: float = 0.03
    species_max: float = 0.12
    new_genus_above: float = 0.10
    cluster_mean: float = 6.0
    cluster_max: int = 40
    copy: CopyParams = field(default_factory=CopyParams)


def reading_frame(sequence: bytes) -> int:
    """The frame (0, 1, 2: offset of the first codon) with the fewest TAA/TAG codons; the first on ties."""
    counts = [0, 0, 0]
    for match in _STOP.finditer(sequence):
        counts[match.start() % 3] += 1
    return counts.index(min(counts))


def mutate(sequence: bytes, divergence: float, rng: np.random.Generator, params: CopyParams, frame: int, *,
           trim: bool = True, indels: bool = True) -> bytes:
    """A copy of `sequence` (upper-case bytes) at `divergence` substitutions per A/C/G/T position (at least one),
    biased to third codon positions of `frame`, with transitions 2:1 over transversions; then Poisson 3-bp indels
    at codon boundaries (`indels`) and randomly trimmed ends (`trim`)."""
    out = np.frombuffer(sequence, dtype=np.uint8).copy()
    positions = np.flatnonzero(_ACGT[out])
    if len(positions):
        count = min(len(positions), max(1, int(round(divergence * len(positions)))))
        weights = np.where((positions - frame) % 3 == 2, params.codon_bias, 1.0)
        keys = rng.exponential(size=len(positions)) / weights   # weighted sampling without replacement
        chosen = positions[np.argpartition(keys, count - 1)[:count]] if count < len(positions) else positions
        bases = out[chosen]
        transition = rng.random(len(chosen)) < params.transition_share
        out[chosen] = np.where(transition, _TRANSITION[bases], _TRANSVERSION[bases, rng.integers(0, 2, len(chosen))])
    if indels:
        for _ in range(rng.poisson(params.indel_rate)):
            codons = (len(out) - frame) // 3
            if codons < 2:
                break
            at = frame + 3 * int(rng.integers(0, codons))
            if rng.random() < 0.5:
                out = np.concatenate([out[:at], out[at + 3:]])
            else:
                out = np.concatenate([out[:at], _BASES[rng.integers(0, 4, 3)], out[at:]])
    if trim:
        floor = min(params.min_length, len(out))
        cuts = [int(rng.integers(1, params.trim_max + 1)) if rng.random() < params.trim_probability else 0
                for _ in range(2)]
        spare = len(out) - floor
        if sum(cuts) > spare:   # scale both cuts down to what the floor allows
            cuts = [cut * spare // sum(cuts) for cut in cuts]
        out = out[cuts[0]:len(out) - cuts[1]]
    return out.tobytes()


def sequence_key(sequence: bytes | str) -> int:
    """A 64-bit hash of a sequence (the same in every process), to keep each sequence once."""
    data = sequence.encode() if isinstance(sequence, str) else sequence
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def label(text: str | None) -> str:
    """A label as compared: SINTAX's '_' read back as a space."""
    return (text or "").replace("_", " ").strip()


@dataclass
class Species:
    number: int
    source: int          # index of the real barcode it was made from
    taxonomy: dict[str, str]
    bin: str
    centre: bytes
    frame: int
    rng: np.random.Generator
    size: int


class Maker:
    """The synthetic reference and queries made from real reference barcodes `real` (BarcodeRecords)."""

    def __init__(self, real: list[BarcodeRecord], seed: int = 0, params: MakerParams | None = None):
        self.real, self.seed, self.params = real, seed, params or MakerParams()
        self.sources = [r.sequence.encode() for r in real]
        self.frames = [reading_frame(s) for s in self.sources]
        self.with_genus = np.array([i for i, r in enumerate(real) if r.taxonomy.get("genus")], dtype=np.int64)
        if not len(self.with_genus):
            raise ValueError("no reference barcode has a genus: new synthetic species need one")
        self.species_count = 0   # set by reference()

    def species(self, number: int) -> Species:
        """Synthetic species `number`: its labels, centre and cluster size, from its own random stream."""
        p = self.params
        rng = np.random.default_rng([self.seed, SPECIES, number])
        source = int(self.with_genus[rng.integers(0, len(self.with_genus))])
        divergence = rng.uniform(p.species_min, p.species_max)
        size = int(min(p.cluster_max, rng.geometric(1 / p.cluster_mean)))
        frame = self.frames[source]
        centre = mutate(self.sources[source], divergence, rng, p.copy, frame, trim=False)
        parent = self.real[source].taxonomy
        taxonomy = {rank: parent[rank] for rank in ABOVE_GENUS if parent.get(rank)}
        genus = parent["genus"] if divergence < p.new_genus_above else f"{parent['genus']}-syn{number}"
        taxonomy.update(genus=genus, species=f"{genus} synthetic-{number}")
        return Species(number, source, taxonomy, f"SYN:{number}", centre, frame, rng, size)

    def within_copy(self, rng: np.random.Generator) -> tuple[int, bytes]:
        source = int(rng.integers(0, len(self.real)))
        divergence = rng.uniform(0, self.params.within_max)
        return source, mutate(self.sources[source], divergence, rng, self.params.copy, self.frames[source])

    def member(self, species: Species, rng: np.random.Generator) -> bytes:
        return mutate(species.centre, rng.uniform(0, self.params.within_max / 2), rng, self.params.copy,
                      species.frame)

    def reference(self, size: int, keys: set[int]) -> Iterator[BarcodeRecord]:
        """The `size` reference records, real first, then within-species copies, then synthetic species; the
        hash of each written sequence is added to `keys` (which may hold sequences to avoid)."""
        p = self.params
        for record in self.real[:size]:
            keys.add(sequence_key(record.sequence))
            yield record
        synthetic = max(0, size - len(self.real))
        within = int(round(synthetic * p.within_share))
        chunk = 4096
        for start in range(0, within, chunk):
            rng = np.random.default_rng([self.seed, WITHIN, start // chunk])
            for n in range(start, min(within, start + chunk)):
                while True:
                    source, copy = self.within_copy(rng)
                    key = sequence_key(copy)
                    if key not in keys:
                        break
                keys.add(key)
                parent = self.real[source]
                yield BarcodeRecord(f"synw{n:07d}", copy.decode(), dict(parent.taxonomy), parent.bin)
        left, number = synthetic - within, 0
        while left > 0:
            species = self.species(number)
            for m in range(min(species.size, left)):
                while True:
                    copy = self.member(species, species.rng)
                    key = sequence_key(copy)
                    if key not in keys:
                        break
                keys.add(key)
                left -= 1
                yield BarcodeRecord(f"syns{number:06d}m{m:02d}", copy.decode(), dict(species.taxonomy), species.bin)
            number += 1
        self.species_count = number

    def synthetic_queries(self, count: int, avoid: set[int]) -> Iterator[tuple[BarcodeRecord, str]]:
        """`count` synthetic held-out queries (record, kind): copies whose sequences are not in `avoid` (the
        reference's hashes; each query's is added). Query j depends only on (seed, j) and on `avoid`."""
        if self.species_count == 0 and self.params.within_share < 1:
            raise ValueError("make the reference first: synthetic-species queries need its species")
        for j in range(count):
            rng = np.random.default_rng([self.seed, QUERY, j])
            while True:
                if self.species_count == 0 or rng.random() < self.params.within_share:
                    source, copy = self.within_copy(rng)
                    parent = self.real[source]
                    taxonomy, bin_uri, kind = dict(parent.taxonomy), parent.bin, "synthetic-copy"
                else:
                    species = self.species(int(rng.integers(0, self.species_count)))
                    copy = self.member(species, rng)
                    taxonomy, bin_uri, kind = dict(species.taxonomy), species.bin, "synthetic-species"
                key = sequence_key(copy)
                if key not in avoid:
                    break
            avoid.add(key)
            yield BarcodeRecord(f"synq{j:07d}", copy.decode(), taxonomy, bin_uri), kind


def read_real(tables: Iterable[str]) -> tuple[list[BarcodeRecord], list[tuple[BarcodeRecord, str]]]:
    """(reference barcodes: unique sequences outside the held-out splits; held-out queries: (record, split) of the
    unique barcodes of test and test_unseen, each sequence once per split, none in the reference)."""
    seen: set[str] = set()
    reference: list[BarcodeRecord] = []
    held: dict[str, dict[str, BarcodeRecord]] = {split: {} for split in QUERY_SPLITS}
    for path in tables:
        for record in read_barcodes(path, skip_empty=True):
            record.id = record.id.replace(" ", "_")
            record.fields = {}
            if record.split in HELD_OUT:
                if record.split in held:
                    held[record.split].setdefault(record.sequence, record)
            elif record.sequence not in seen:
                seen.add(record.sequence)
                reference.append(record)
    queries = [(record, split) for split in QUERY_SPLITS for sequence, record in held[split].items()
               if sequence not in seen]
    return reference, queries


def reference_subset(real: list[BarcodeRecord], size: int, seed: int) -> list[BarcodeRecord]:
    """All real barcodes when `size` holds them, else a seeded random subset (in file order)."""
    if size >= len(real):
        return real
    rng = np.random.default_rng([seed, REAL_SUBSET])
    return [real[i] for i in np.sort(rng.choice(len(real), size=size, replace=False))]


def query_records(maker: Maker, held_out: list[tuple[BarcodeRecord, str]], count: int, real_share: float,
                  avoid: set[int]) -> list[tuple[BarcodeRecord, str]]:
    """`count` queries: a seeded subset of the real held-out barcodes (the same order for every count), then
    synthetic held-out copies. `avoid` is not changed."""
    order = np.random.default_rng([maker.seed, REAL_QUERIES]).permutation(len(held_out))
    real = [held_out[i] for i in order[:min(len(held_out), int(round(count * real_share)), count)]]
    taken = set(avoid)
    taken.update(sequence_key(record.sequence) for record, _ in real)
    return real + list(maker.synthetic_queries(count - len(real), taken))


# ============================================================================================ files
def fasta_keys(path: Path) -> set[int]:
    """The hashes of a FASTA file's sequences (unwrapped, one line each, as write_fasta writes them)."""
    keys = set()
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith(">"):
                keys.add(sequence_key(line.rstrip("\n")))
    return keys


def reference_labels(path: Path, wanted: set[str]) -> dict[str, tuple[str, str]]:
    """{id: (genus, species)} of the records of a SINTAX FASTA whose ids are `wanted`."""
    found = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(">"):
                record_id = line[1:].split(";", 1)[0]
                if record_id in wanted:
                    _, taxonomy, _ = parse_fasta_header(line[1:])
                    found[record_id] = (label(taxonomy.get("genus")), label(taxonomy.get("species")))
    return found


def write_queries(queries: list[tuple[BarcodeRecord, str]], fasta: Path, truth: Path) -> None:
    write_fasta([(r.id, r.sequence) for r, _ in queries], fasta)
    with open(truth, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "kind", "genus", "species"])
        for record, kind in queries:
            writer.writerow([record.id, kind, label(record.taxonomy.get("genus")),
                             label(record.taxonomy.get("species"))])


def read_truth(path: Path) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle, delimiter="\t")}


def subset_fasta(source: Path, ids: list[str], target: Path) -> None:
    wanted = set(ids)
    records = [(r.id, r.sequence) for r in read_barcodes(source) if r.id in wanted]
    write_fasta(records, target)


# ============================================================================================ measuring
def parse_time_v(text: str) -> dict:
    """Wall seconds and peak RSS (MiB) from `/usr/bin/time -v`'s report."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size"):
            out["peak_rss_mib"] = round(int(line.rsplit(":", 1)[1]) / 1024, 1)
        elif line.startswith("Elapsed (wall clock) time"):
            value = line.split("):", 1)[1].strip() if "):" in line else line.rsplit(" ", 1)[1]
            seconds = 0.0
            for part in value.split(":"):
                seconds = seconds * 60 + float(part)
            out["time_v_wall_s"] = round(seconds, 2)
    return out


def run_timed(argv: list[str], env: dict, work: Path) -> dict:
    """Run one command under /usr/bin/time -v (when there is one); wall seconds, peak RSS MiB, load average."""
    report = work / "time_v.txt"
    timer = ["/usr/bin/time", "-v", "-o", str(report)] if os.access("/usr/bin/time", os.X_OK) else []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    process = subprocess.Popen(timer + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({code}): {stderr[-2000:]}")
    result = {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
              "load_average": round(load, 2)}
    if timer:
        result.update(parse_time_v(report.read_text(encoding="utf-8", errors="replace")))
        report.unlink()
    return result


def top_hits_vsearch(path: Path) -> dict[str, tuple[str, str]]:
    hits = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            query, target = line.split("\t", 2)[:2]
            if query not in hits:
                _, taxonomy, _ = parse_fasta_header(target)
                hits[query] = (label(taxonomy.get("genus")), label(taxonomy.get("species")))
    return hits


def barcodetool_output(path: Path, reference: Path) -> tuple[dict, dict]:
    """({query: (genus, species) named}, {query: (genus, species) of its nearest reference})."""
    named, nearest = {}, {}
    with open(path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            named[row["id"]] = (label(row["genus"]), label(row["species"]))
            nearest[row["id"]] = row["nearest_id"]
    labels = reference_labels(reference, {n for n in nearest.values() if n})
    return named, {q: labels.get(n, ("", "")) for q, n in nearest.items()}


def accuracy(answers: dict[str, tuple[str, str]], truth: dict[str, dict[str, str]], ids: Iterable[str], *,
             named: bool = False) -> dict:
    """Per query kind: queries, and the share right at species (where the species is in the reference: every kind
    but test_unseen) and at genus; for `named` labels also the share of test_unseen given a species (always
    wrong)."""
    out = {}
    for kind in KINDS:
        rows = [(answers.get(i, ("", "")), truth[i]) for i in ids if truth[i]["kind"] == kind]
        if not rows:
            continue
        score: dict = {"queries": len(rows)}
        with_genus = [(a, t) for a, t in rows if t["genus"]]
        score["genus"] = (sum(a[0] == t["genus"] for a, t in with_genus) / len(with_genus)) if with_genus else None
        if kind == "test_unseen":
            if named:
                score["species_named"] = sum(bool(a[1]) for a, _ in rows) / len(rows)
        else:
            with_species = [(a, t) for a, t in rows if t["species"]]
            score["species"] = (sum(a[1] == t["species"] for a, t in with_species) / len(with_species)
                                if with_species else None)
        out[kind] = score
    return out


# ============================================================================================ the benchmark
def make_inputs(args, work: Path) -> tuple[Path, dict, dict[int, Path]]:
    """Write (or reuse, when its parameters match) the reference FASTA and the query sets."""
    params = MakerParams(within_share=args.within_share, within_max=args.within_max, species_min=args.species_min,
                         species_max=args.species_max, new_genus_above=args.new_genus_above,
                         cluster_mean=args.cluster_mean, cluster_max=args.cluster_max,
                         copy=CopyParams(codon_bias=args.codon_bias))
    start = time.perf_counter()
    real, held_out = read_real(args.tables)
    real = reference_subset(real, args.size, args.seed)
    maker = Maker(real, args.seed, params)
    read_seconds = time.perf_counter() - start
    reference = work / f"ref_{args.size}_s{args.seed}.fasta"
    meta_path = reference.with_suffix(".json")
    settings = {"tables": [str(Path(t).resolve()) for t in args.tables], "size": args.size, "seed": args.seed,
                "params": asdict(params)}
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() and reference.is_file() else {}
    if meta.get("settings") == settings:
        print(f"reusing {reference}", file=sys.stderr, flush=True)
        keys = fasta_keys(reference)
        maker.species_count = meta["synthetic_species"]
    else:
        print(f"writing {reference} ({args.size:,} barcodes)", file=sys.stderr, flush=True)
        start = time.perf_counter()
        keys: set[int] = set()
        written = write_fasta(maker.reference(args.size, keys), reference, sintax=True)
        meta = {"settings": settings, "barcodes": written, "real": min(len(real), args.size),
                "synthetic_within": int(round(max(0, args.size - len(real)) * params.within_share)),
                "synthetic_species": maker.species_count, "seconds": round(time.perf_counter() - start, 1),
                "fasta_mib": round(reference.stat().st_size / 2 ** 20, 1)}
        meta["synthetic_species_members"] = written - meta["real"] - meta["synthetic_within"]
        meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    meta["read_seconds"] = round(read_seconds, 1)
    query_sets = {}
    for count in args.query_counts:
        fasta = work / f"queries_{count}_s{args.seed}.fasta"
        queries = query_records(maker, held_out, count, args.real_share, keys)
        write_queries(queries, fasta, fasta.with_suffix(".truth.tsv"))
        query_sets[count] = fasta
    return reference, meta, query_sets


def timed_subset(fasta: Path, count: int, limit: int, seed: int, work: Path, tool: str) -> tuple[Path, list[str]]:
    """The query file to time (a seeded random subset of `limit` when there are more) and its ids."""
    ids = [r.id for r in read_barcodes(fasta)]
    if not limit or limit >= len(ids):
        return fasta, ids
    order = np.random.default_rng([seed, SUBSET, count]).permutation(len(ids))
    chosen = [ids[i] for i in order[:limit]]
    target = work / f"{fasta.stem}.{tool}{limit}.fasta"
    subset_fasta(fasta, chosen, target)
    return target, chosen


def extrapolate(run: dict, startup: dict | None, full: int) -> None:
    """Add the measured rates and, for a subset, the full set's extrapolated time."""
    n, seconds = run["queries_timed"], run["seconds"]
    run["queries_per_s"] = round(n / seconds, 1)
    if startup is not None:
        work = max(seconds - startup["seconds"], 1e-6)
        run["startup_seconds"] = startup["seconds"]
        run["queries_per_s_without_startup"] = round(n / work, 1)
        if n < full:
            run["extrapolated_seconds"] = round(startup["seconds"] + full * work / n, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", help="barcode tables (bold_insects.csv.gz, coi_extra.csv.gz)")
    parser.add_argument("--size", type=int, default=1_000_000, help="reference barcodes")
    parser.add_argument("--queries", default="10000,100000", help="comma-separated query set sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the files go (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--skip-build", action="store_true", help="reuse the index in --workdir (of a --keep run)")
    parser.add_argument("--make-only", action="store_true", help="write the reference and queries, then stop")
    parser.add_argument("--vsearch-max-queries", type=int, default=10_000,
                        help="time VSEARCH on a random subset of this many queries of a larger set (0 = all)")
    parser.add_argument("--classify-max-queries", type=int, default=0,
                        help="the same for barcodetool classify (0 = all)")
    parser.add_argument("--model", default="auto")
    parser.add_argument("--real-share", type=float, default=0.5, help="share of real held-out queries (at most all)")
    parser.add_argument("--within-share", type=float, default=0.5)
    parser.add_argument("--within-max", type=float, default=0.02)
    parser.add_argument("--species-min", type=float, default=0.03)
    parser.add_argument("--species-max", type=float, default=0.12)
    parser.add_argument("--new-genus-above", type=float, default=0.10)
    parser.add_argument("--cluster-mean", type=float, default=6.0)
    parser.add_argument("--cluster-max", type=int, default=40)
    parser.add_argument("--codon-bias", type=float, default=5.0)
    parser.add_argument("--out", "--json", dest="out", help="write every figure here as JSON")
    args = parser.parse_args()
    args.query_counts = [int(n) for n in args.queries.split(",") if n.strip()]
    if args.skip_build and not args.workdir:
        parser.error("--skip-build reuses the index in --workdir: give --workdir")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="million_reference_"))
    work.mkdir(parents=True, exist_ok=True)
    before = set(work.iterdir())
    try:
        return run(args, work)
    finally:
        if not args.keep:   # what this run wrote (files of an earlier run that it reused stay)
            for path in set(work.iterdir()) - before:
                path.unlink(missing_ok=True)
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    reference, meta, query_sets = make_inputs(args, work)
    result: dict = {"threads": args.threads, "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "reference": meta, "query_sets": {}, "runs": []}
    for count, fasta in query_sets.items():
        kinds: dict[str, int] = {}
        for row in read_truth(fasta.with_suffix(".truth.tsv")).values():
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
        result["query_sets"][count] = kinds
    print(json.dumps({"reference": meta, "query_sets": result["query_sets"]}), file=sys.stderr, flush=True)
    if args.make_only:
        print(json.dumps(result, indent=1))
        return 0

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    cli = [sys.executable, "-m", "barcodetool", "-q"]
    index = reference.with_suffix(".h5")
    build = ["reference", "build", str(reference), "-o", str(index), "--threads", str(args.threads),
             "--model", args.model]
    if args.skip_build:
        if not index.is_file():
            raise SystemExit(f"--skip-build: no index {index}")
    else:
        print(f"building: barcodetool {' '.join(build)}", file=sys.stderr, flush=True)
        result["build"] = {"command": "barcodetool " + " ".join(build), **run_timed(cli + build, env, work)}
        print(f"  {json.dumps(result['build'])}", file=sys.stderr, flush=True)
    result["index_mib"] = round(index.stat().st_size / 2 ** 20, 1)

    vsearch = shutil.which("vsearch")
    startup: dict[str, dict] = {}

    def startup_of(tool: str, fasta: Path, argv) -> dict:
        """The tool's whole-process time on 10 queries (start-up: loading the database or the index)."""
        if tool not in startup:
            tiny, _ = timed_subset(fasta, 0, 10, args.seed, work, f"{tool}-startup")
            out = work / f"startup.{tool}.out"
            startup[tool] = run_timed(argv(tiny, out), env, work)
            print(f"  {tool} start-up (10 queries): {json.dumps(startup[tool])}", file=sys.stderr, flush=True)
        return startup[tool]

    def classify_argv(queries: Path, out: Path) -> list[str]:
        return cli + ["classify", str(queries), "-r", str(index), "-o", str(out), "--threads", str(args.threads),
                      "--model", args.model]

    def vsearch_argv(queries: Path, out: Path) -> list[str]:
        return [vsearch, "--usearch_global", str(queries), "--db", str(reference), "--id", "0.5", "--maxaccepts",
                "1", "--maxrejects", "32", "--top_hits_only", "--blast6out", str(out), "--threads",
                str(args.threads), "--quiet"]

    for count, fasta in query_sets.items():
        truth = read_truth(fasta.with_suffix(".truth.tsv"))
        tools = [("barcodetool", classify_argv, args.classify_max_queries)]
        if vsearch:
            tools.append(("vsearch", vsearch_argv, args.vsearch_max_queries))
        answers, runs = {}, {}
        for tool, argv, limit in tools:
            queries, ids = timed_subset(fasta, count, limit, args.seed, work, tool)
            out = work / f"{fasta.stem}.{tool}.{'tsv' if tool == 'barcodetool' else 'b6'}"
            print(f"  {tool}: {len(ids):,} of {count:,} queries", file=sys.stderr, flush=True)
            timing = run_timed(argv(queries, out), env, work)
            command = " ".join(argv(queries, out)).replace(" ".join(cli), "barcodetool").replace(str(work) + "/", "")
            command = command.replace(vsearch or "vsearch", "vsearch", 1) if tool == "vsearch" else command
            run_ = {"tool": tool, "queries": count, "queries_timed": len(ids), "command": command, **timing}
            extrapolate(run_, startup_of(tool, fasta, argv) if len(ids) < count else None, count)
            if tool == "barcodetool":
                named, top = barcodetool_output(out, reference)
                assert len(named) == len(ids), "one row per query"
                run_["named"] = accuracy(named, truth, ids, named=True)
            else:
                top = top_hits_vsearch(out)
            answers[tool] = (top, ids)
            run_["top_hit"] = accuracy(top, truth, ids)
            result["runs"].append(run_)
            runs[tool] = run_
            print(f"  {json.dumps(run_)}", file=sys.stderr, flush=True)
        if "vsearch" in answers and len(answers["vsearch"][1]) < len(answers["barcodetool"][1]):
            # barcodetool's top hit on the very queries VSEARCH ran (its subset is within barcodetool's)
            ran = set(answers["barcodetool"][1])
            shared = [i for i in answers["vsearch"][1] if i in ran]
            runs["barcodetool"]["top_hit_on_vsearch_queries"] = accuracy(answers["barcodetool"][0], truth, shared)
        if "vsearch" in runs:   # speed against VSEARCH on the whole set (measured or extrapolated)
            full = {tool: r.get("extrapolated_seconds", r["seconds"]) for tool, r in runs.items()}
            runs["barcodetool"]["speed_vs_vsearch"] = round(full["vsearch"] / full["barcodetool"], 2)
    print_table(result, args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


def percent(score: dict, kind: str, key: str) -> str:
    value = score.get(kind, {}).get(key)
    return "" if value is None else f"{100 * value:.2f}"


def print_table(result: dict, args) -> None:
    meta = result["reference"]
    print(f"reference: {meta['barcodes']:,} barcodes ({meta['real']:,} real, {meta['synthetic_within']:,} "
          f"within-species copies, {meta['synthetic_species_members']:,} in {meta['synthetic_species']:,} synthetic "
          f"species), {meta['fasta_mib']} MiB FASTA; threads {args.threads}, seed {args.seed}\n")
    if "build" in result:
        b = result["build"]
        print(f"`{b['command']}`: {b['seconds']:.0f} s, peak RSS {b.get('peak_rss_mib')} MiB, index "
              f"{result['index_mib']} MiB on disk (load average {b['load_average']})\n")
    else:
        print(f"index (reused): {result['index_mib']} MiB on disk\n")
    print("| tool | query set | timed | wall s | queries/s | queries/s without start-up | full set s | "
          "vs VSEARCH | peak RSS MiB | top hit: species `test` | genus `test_unseen` | species synthetic copy | "
          "species synthetic species | named: species `test` | genus `test_unseen` | species on `test_unseen` |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["runs"]:
        top = r.get("top_hit_on_vsearch_queries", r["top_hit"])
        full = (f"{r['extrapolated_seconds']:,.0f} (extrapolated)" if "extrapolated_seconds" in r
                else f"{r['seconds']:,.0f}")
        named = r.get("named", {})
        print(f"| {r['tool']} | {r['queries']:,} | {r['queries_timed']:,} | {r['seconds']:,.1f} | "
              f"{r['queries_per_s']:,.1f} | {r.get('queries_per_s_without_startup', '')} | {full} | "
              f"{str(r['speed_vs_vsearch']) + 'x' if 'speed_vs_vsearch' in r else ''} | "
              f"{r.get('peak_rss_mib', '')} | {percent(top, 'test', 'species')} | "
              f"{percent(top, 'test_unseen', 'genus')} | {percent(top, 'synthetic-copy', 'species')} | "
              f"{percent(top, 'synthetic-species', 'species')} | {percent(named, 'test', 'species')} | "
              f"{percent(named, 'test_unseen', 'genus')} | {percent(named, 'test_unseen', 'species_named')} |")
    print("\nTop-hit accuracy (%) of barcodetool is on the queries VSEARCH ran where VSEARCH ran a subset; its "
          "named labels on every query it ran. Query kinds per set: "
          + "; ".join(f"{n:,}: " + ", ".join(f"{k} {v:,}" for k, v in kinds.items())
                      for n, kinds in result["query_sets"].items()))
    print("\ncommands:")
    for r in result["runs"]:
        print(f"    {r['command']}")


if __name__ == "__main__":
    sys.exit(main())
