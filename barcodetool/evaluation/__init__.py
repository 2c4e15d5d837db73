"""The benchmark protocol of the BarcodeMAE/BarcodeBERT papers, side by side with VSEARCH and BLAST.

    protocol.py     run_benchmark: the tasks (species, genus, BIN reconstruction) on a split file, step by step
    scoring.py      accuracy, assignment rate and precision, named right, throughput, harmonic mean
    external.py     VSEARCH and BLAST: versions, runs on the benchmark's own queries, their scores
    sintax.py       vsearch --sintax: the SINTAX reference FASTA, its tabbed output, scores at each cutoff
    profiles.py     the baselines: k-mer count profiles (k = 4, 5) scored as the embedding is
    report.py       format_table: the result as the plain-text table `barcodetool benchmark` prints
"""

from .protocol import run_benchmark
from .report import format_table

__all__ = ["run_benchmark", "format_table"]
