"""Write the unique barcodes of chosen splits of a BIOSCAN-5M-style table as FASTA (benchmark inputs).

    python benchmarks/split_fasta.py ../shared/data/bold_insects.csv.gz test -o /tmp/test_unique.fasta
    python benchmarks/split_fasta.py ../shared/data/bold_insects.csv.gz train --sintax -o /tmp/train.fasta
"""

from __future__ import annotations

import argparse

from barcodetool.io import read_barcodes, write_fasta


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table")
    parser.add_argument("splits", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--sintax", action="store_true",
                        help="SINTAX headers (taxonomy and BIN): what `reference build` and `vsearch --sintax` read")
    args = parser.parse_args()
    seen, chosen = set(), []
    for record in read_barcodes(args.table):
        if record.split in args.splits and record.sequence not in seen:
            seen.add(record.sequence)
            chosen.append(record)
    with open(args.output, "w", encoding="utf-8") as handle:
        write_fasta(chosen, handle, sintax=args.sintax)
    print(f"{len(chosen)} unique barcodes of {', '.join(args.splits)} -> {args.output}")


if __name__ == "__main__":
    main()
