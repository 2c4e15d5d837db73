"""Regenerate the small input fixtures in tests/data/ from the shared data set (see docs/input-formats.md).

    .venv/bin/python tests/data/make_fixtures.py [--data /work/shared/data]

The tests never run this script: they use the files it wrote, which are committed. Every choice below is
deterministic (file order, fixed seeds), so running it again gives the same bytes.

Files written:
    bioscan_sample.csv        rows of bold_insects.csv.gz, all columns: six genera across four orders, each with
                              seen species (train/val/test) and at least one unseen species (key_unseen +
                              test_unseen only), a few pretrain rows, and rows with gaps, IUPAC codes and no BIN
    bold_v3_sample.tsv        header + first 10 records of formats/bold_v3_combined_sample.tsv, raw bytes (its
                              stray CR after the `nucleotides` field of every line is kept)
    bold_bcdm_sample.tsv      header + 30 records of formats/bold_bcdm_sample.tsv, raw bytes (`None` values)
    example.fasta             100 records of the sample (test and test_unseen first), cleaned, 60 nt a line
    sintax_reference.fasta    100 train records of the sample with SINTAX headers (>id;tax=p:..,s:Genus_species;bin=..;)
    tandem_pair.fasta         two Aedes aegypti train records: one with a ~125-base tandem duplication at its start,
                              whose alignment to the other PairwiseAligner finds just outside the anchored band
    bad/                      the bad-input corpus (one file per case; see docs/input-formats.md)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from barcodetool.io import BarcodeRecord, clean_sequence, write_fasta  # noqa: E402

TANDEM_PAIR = ("GBMNA23272-19", "GBMNB24678-20")
GENERA = ("Poecilus", "Cryptocephalus", "Simulium", "Megachile", "Eilema", "Crambus")
PER_SPLIT = {"train": 7, "val": 2, "test": 4, "key_unseen": 3, "test_unseen": 4, "pretrain": 2}
RANKS = ("phylum", "class", "order", "family", "subfamily", "genus", "species")


def bioscan_sample(data: Path) -> list[dict]:
    with gzip.open(data / "bold_insects.csv.gz", "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames
        rows = list(reader)
    taken: dict[tuple[str, str], int] = defaultdict(int)
    chosen = []
    for row in rows:
        if row["genus"] not in GENERA:
            continue
        key = (row["species"], row["split"])
        if taken[key] < PER_SPLIT[row["split"]]:
            taken[key] += 1
            chosen.append(row)
    ids = {row["processid"] for row in chosen}
    # A few rows showing what real exports hold: IUPAC codes, gaps, no BIN.
    wants = [lambda r: any(c in r["dna_barcode"] for c in "RYKMSW"),
             lambda r: r["dna_barcode"].startswith("-"),
             lambda r: not r["dna_bin"]]
    for want in wants:
        for row in rows:
            if row["genus"] in GENERA and row["processid"] not in ids and want(row):
                chosen.append(row)
                ids.add(row["processid"])
                break
    order = {row["processid"]: i for i, row in enumerate(rows)}
    chosen.sort(key=lambda r: order[r["processid"]])
    return columns, chosen


def write_bioscan(columns, rows, path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def to_record(row: dict) -> BarcodeRecord:
    return BarcodeRecord(id=row["processid"], sequence=clean_sequence(row["dna_barcode"]),
                         taxonomy={r: row[r] for r in RANKS if row[r]}, bin=row["dna_bin"] or None,
                         split=row["split"])


def raw_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def write_bad(out: Path, rows: list[dict]) -> None:
    out.mkdir(exist_ok=True)
    rng = random.Random(20240601)
    seqs = [clean_sequence(r["dna_barcode"]) for r in rows if "-" not in r["dna_barcode"]][:6]
    ids = [r["processid"] for r in rows if "-" not in r["dna_barcode"]][:6]

    def fasta(pairs, width=0, newline="\n"):
        buffer = io.StringIO()
        write_fasta(pairs, buffer, width=width)
        return buffer.getvalue().replace("\n", newline).encode("utf-8")

    files: dict[str, bytes] = {}
    files["empty.fasta"] = b""
    files["blank_lines.fasta"] = b"\n\n   \n\t\n\r\n"
    files["header_only.fasta"] = b">lonely_header a FASTA header without a sequence\n"
    files["empty_sequence.fasta"] = (f">{ids[0]}\n{seqs[0]}\n>EMPTY-01 nothing below\n\n>{ids[1]}\n{seqs[1]}\n"
                                     .encode())
    protein = ("MSRQWLFSTNHKDIGTLYFIFGAWAGMVGTSLSILIRAELGHPGALIGDDQIYNVIVTAHAFIMIFFMVMPIMIGGFGNWLVPLMLGAPDMAF"
               "PRMNNMSFWLLPPALSLLLVSSMVENGAGTGWTVYPPLSAGIAHGGASVDLAIFSLHLAGISSILGAVNFITTVINMRSNGITFDRMPLF")
    files["protein.fasta"] = f">COX1_PROT Aedes aegypti cytochrome oxidase I (protein)\n{protein}\n".encode()
    numbered = "\n".join(f"{i * 60 + 1:>9} " + " ".join(seqs[0][i * 60 + j:i * 60 + j + 10].lower()
                                                        for j in range(0, 60, 10))
                         for i in range(len(seqs[0]) // 60))
    files["digits.fasta"] = f">{ids[0]} GenBank-style numbered sequence lines\n{numbered}\n".encode()
    files["stop_codon.fasta"] = f">{ids[0]}\n{seqs[0][:90]}*{seqs[0][90:]}\n".encode()
    garbage = bytes(rng.randrange(256) for _ in range(4096))
    files["binary_garbage.fasta"] = b"\x7fELF\x02\x01\x01\x00" + garbage
    whole = gzip.compress(fasta(zip(ids, seqs)), mtime=0)
    files["truncated.fasta.gz"] = whole[: len(whole) // 2]
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(rng.randrange(256) for _ in range(2048))
    files["binary_in_gzip.fasta.gz"] = gzip.compress(png, mtime=0)
    prose = ("This archive should have held barcodes\nbut it holds a short note instead\n"
             "There is no FASTA header and no table here\n")
    files["text_in_gzip.fasta.gz"] = gzip.compress(prose.encode(), mtime=0)
    files["crlf.fasta"] = fasta(zip(ids[:3], seqs[:3]), width=60, newline="\r\n")
    mixed = [seqs[0].lower(), "".join(c.lower() if i % 3 else c for i, c in enumerate(seqs[1]))]
    files["mixed_case.fasta"] = fasta(zip(ids[:2], mixed), width=70)
    gapped = ["---" + seqs[0][:100] + "--" + seqs[0][100:] + "---", ".." + seqs[1][:50] + "..." + seqs[1][50:]]
    files["gaps.fasta"] = fasta(list(zip(ids[:2], gapped)) + [(ids[2], seqs[2])])
    iupac = ["NNNN" + seqs[0][:40] + "RYSWKMBDHV" + seqs[0][40:] + "NNN", seqs[1][:30] + "NNNNN" + seqs[1][30:],
             seqs[2].replace("T", "U")]
    files["iupac.fasta"] = fasta([(ids[0], iupac[0]), (ids[1], iupac[1]), (ids[2] + "_RNA", iupac[2])])
    long = "".join(rng.choice("ACGT") for _ in range(50_000))
    files["long_50kb.fasta"] = fasta([("LONG-50KB", long), (ids[0], seqs[0])], width=80)
    files["short.fasta"] = fasta([(ids[0], seqs[0]), ("SHORT-4NT", "ACGT")])
    files["duplicate_ids.fasta"] = fasta([(ids[0], seqs[0]), (ids[1], seqs[1]), (ids[0], seqs[2])])
    files["header_only.csv"] = (b"processid,phylum,class,order,family,subfamily,genus,species,dna_bin,dna_barcode,"
                                b"split,country,institution\n")
    table = ["processid\tbin_uri\tspecies"] + [f"{r['processid']}\t{r['dna_bin']}\t{r['species']}"
                                                for r in rows[:3]]
    files["no_sequence_column.tsv"] = ("\n".join(table) + "\n").encode()
    semi = ["processid;species;dna_barcode"] + [f"{r['processid']};{r['species']};{clean_sequence(r['dna_barcode'])}"
                                               for r in rows[:3]]
    files["semicolon.csv"] = ("\n".join(semi) + "\n").encode()
    files["non_utf8_header.fasta"] = (f">{ids[0]} det. Ren\xe9 M\xfcller, Z\xfcrich\n{seqs[0]}\n".encode("latin-1")
                                      + f">caf\xe9-02 latin-1 byte in the id\n{seqs[1]}\n".encode("latin-1"))
    files["reads.fastq"] = f"@read1\n{seqs[0][:50]}\n+\n{'I' * 50}\n".encode()
    files["ragged.tsv"] = ("processid\tspecies\tsequence\n"
                           f"{ids[0]}\tAbax parallelus\t{seqs[0]}\n"
                           f"{ids[1]}\tAbax parallelus\n").encode()
    for name, content in files.items():
        (out / name).write_bytes(content)


def write_bcdm_none(source: Path, out: Path) -> None:
    lines = raw_lines(source)
    header = lines[0].decode().split("\t")
    rows = [line for line in lines[1:] if line]
    species = header.index("species")
    bin_uri = header.index("bin_uri")
    nucraw = header.index("nucraw")
    picked = [r for r in rows if r.split(b"\t")[species] == b"None" and r.split(b"\t")[bin_uri] == b"None"][:3]
    picked += [r for r in rows if r.split(b"\t")[species] != b"None"][:2]
    no_sequence = picked[-1].split(b"\t")
    no_sequence[nucraw] = b"None"
    no_sequence[0] = b"NOSEQ001-24"
    picked.append(b"\t".join(no_sequence))
    out.write_bytes(b"\n".join([lines[0]] + picked) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    data = parser.parse_args().data

    columns, rows = bioscan_sample(data)
    write_bioscan(columns, rows, HERE / "bioscan_sample.csv")

    v3 = raw_lines(data / "formats" / "bold_v3_combined_sample.tsv")
    (HERE / "bold_v3_sample.tsv").write_bytes(b"\n".join(v3[:11]) + b"\n")

    bcdm_path = data / "formats" / "bold_bcdm_sample.tsv"
    bcdm = raw_lines(bcdm_path)
    header = bcdm[0].decode().split("\t")
    species, bin_uri, nucraw = header.index("species"), header.index("bin_uri"), header.index("nucraw")
    body = [line for line in bcdm[1:] if line]
    keep: list[int] = []
    for want, count in ((lambda f: f[species] != b"None", 12), (lambda f: f[species] == b"None", 10),
                        (lambda f: f[bin_uri] == b"None", 4), (lambda f: b"N" in f[nucraw], 4)):
        keep += [i for i, line in enumerate(body) if want(line.split(b"\t")) and i not in keep][:count]
    (HERE / "bold_bcdm_sample.tsv").write_bytes(b"\n".join([bcdm[0]] + [body[i] for i in sorted(keep)]) + b"\n")

    records = [to_record(r) for r in rows if r["split"] in ("test", "test_unseen")]
    records += [to_record(r) for r in rows if r["split"] == "train"]
    with open(HERE / "example.fasta", "w", encoding="utf-8", newline="\n") as handle:
        write_fasta(records[:100], handle, width=60)
    reference = [to_record(r) for r in rows if r["split"] == "train"][:100]
    with open(HERE / "sintax_reference.fasta", "w", encoding="utf-8", newline="\n") as handle:
        write_fasta(reference, handle, sintax=True)

    with gzip.open(data / "bold_insects.csv.gz", "rt", encoding="utf-8", newline="") as handle:
        tandem = {r["processid"]: to_record(r) for r in csv.DictReader(handle) if r["processid"] in TANDEM_PAIR}
    with open(HERE / "tandem_pair.fasta", "w", encoding="utf-8", newline="\n") as handle:
        write_fasta([tandem[i] for i in TANDEM_PAIR], handle, width=60)

    write_bad(HERE / "bad", rows)
    write_bcdm_none(bcdm_path, HERE / "bad" / "bcdm_none.tsv")


if __name__ == "__main__":
    main()
