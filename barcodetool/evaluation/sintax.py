"""VSEARCH's SINTAX classifier side by side with the benchmark (`barcodetool benchmark --compare`): the reference
written as a SINTAX FASTA, `vsearch --sintax` run once per task with a fixed `--randseed`, its tabbed output read
back with the per-rank bootstrap support, and the labels named at each cutoff of SINTAX_CUTOFFS scored.

One run serves every cutoff: the 2nd column of `--tabbedout` holds each rank's best name and its bootstrap support
(`p:Arthropoda(1.00),...,s:Aedes_aegypti(0.62)`), and a rank is named at cutoff c where its support is >= c (what
vsearch writes in the 4th column for `--sintax_cutoff c`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io.fasta import sintax_label
from ..taxonomy import SINTAX_LETTERS, SINTAX_RANKS
from .scoring import named_scores, named_share

SINTAX_CUTOFFS = (0.8, 0.5)      # the usual cutoff (Edgar 2016) and a permissive one
SINTAX_RANDSEED = 1              # vsearch --randseed: reproducible output (0 would be a random seed)
# The ranks vsearch reads from `tax=` (letters d, k, p, c, o, f, g, s); barcodetool's `t:` (subfamily) is left out
VSEARCH_SINTAX_RANKS = ("phylum", "class", "order", "family", "genus", "species")

_SUPPORTED = re.compile(r"([A-Za-z]):(.*)\(([0-9]*\.?[0-9]+)\)")


# ============================================================================================ the reference
def sintax_title(name: str, taxonomy: dict[str, str]) -> str:
    """`name;tax=p:Arthropoda,...,g:Aedes,s:Aedes_aegypti;` (the ranks vsearch reads; labels as sintax_label
    writes them); `name;` alone where no rank is known."""
    items = [f"{SINTAX_LETTERS[rank]}:{sintax_label(taxonomy[rank])}"
             for rank in VSEARCH_SINTAX_RANKS if taxonomy.get(rank)]
    return f"{name};tax={','.join(items)};" if items else f"{name};"


def write_sintax_reference(path: str | Path, named: Iterable[tuple[str, str, dict[str, str]]]) -> int:
    """Write (name, sequence, taxonomy) triples as the SINTAX FASTA `vsearch --sintax --db` reads; the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for name, sequence, taxonomy in named:
            handle.write(f">{sintax_title(name, taxonomy)}\n{sequence}\n")
            count += 1
    return count


def label_lookup(taxonomies: Iterable[dict[str, str]]) -> dict[str, dict[str, str]]:
    """rank -> {label as written in the SINTAX reference: the reference's own label}, to read predictions back
    into the labels the queries' truth uses (`Aedes_aegypti` -> `Aedes aegypti`)."""
    lookup: dict[str, dict[str, str]] = {rank: {} for rank in VSEARCH_SINTAX_RANKS}
    for taxonomy in taxonomies:
        for rank in VSEARCH_SINTAX_RANKS:
            label = taxonomy.get(rank)
            if label:
                lookup[rank].setdefault(sintax_label(label), label)
    return lookup


# ============================================================================================ the output
@dataclass
class SintaxPrediction:
    """One query's SINTAX prediction: each rank's best label and its bootstrap support (0 to 1)."""

    labels: dict[str, str] = field(default_factory=dict)
    support: dict[str, float] = field(default_factory=dict)

    def named(self, rank: str, cutoff: float) -> str:
        """The label at `rank` where its support reaches `cutoff`, else ""."""
        return self.labels.get(rank, "") if self.support.get(rank, 0.0) >= cutoff else ""

    def at_cutoff(self, cutoff: float) -> dict[str, str]:
        """The ranks named at `cutoff`: what `--sintax_cutoff cutoff` writes in the 4th column."""
        return {rank: label for rank, label in self.labels.items() if self.support[rank] >= cutoff}


def parse_sintax_line(line: str, lookup: dict[str, dict[str, str]] | None = None) -> tuple[str, SintaxPrediction]:
    """(query label, prediction) of one `vsearch --sintax --tabbedout` line: `label<TAB>p:X(1.00),...<TAB>+...`.

    Ranks other than barcodetool's (`d:`, `k:`) are dropped; a label is read back through `lookup`
    (label_lookup) where it is there, else with `_` as a space. A query without a prediction gets an empty one."""
    fields = line.rstrip("\r\n").split("\t")
    prediction = SintaxPrediction()
    if len(fields) < 2 or not fields[1].strip():
        return fields[0], prediction
    for item in fields[1].split(","):
        match = _SUPPORTED.fullmatch(item.strip())
        if match is None:
            continue
        letter, written, support = match.groups()
        rank = SINTAX_RANKS.get(letter.lower())
        if rank is None or not written:
            continue
        label = (lookup or {}).get(rank, {}).get(written) or written.replace("_", " ").strip()
        prediction.labels[rank] = label
        prediction.support[rank] = float(support)
    return fields[0], prediction


def read_sintax_output(path: str | Path, lookup: dict[str, dict[str, str]] | None = None
                       ) -> dict[str, SintaxPrediction]:
    """Query label -> prediction of a `--tabbedout` file (parse_sintax_line)."""
    predictions: dict[str, SintaxPrediction] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                name, prediction = parse_sintax_line(line, lookup)
                predictions[name] = prediction
    return predictions


def sintax_command(queries: Path, reference: Path, out: Path, *, cutoff: float = SINTAX_CUTOFFS[0],
                   randseed: int = SINTAX_RANDSEED) -> list[str]:
    """The vsearch command line. One thread: vsearch's `--randseed` makes `--sintax` reproducible only then."""
    return ["vsearch", "--sintax", str(queries), "--db", str(reference), "--tabbedout", str(out),
            "--sintax_cutoff", str(cutoff), "--randseed", str(randseed), "--threads", "1", "--quiet"]


# ============================================================================================ the scores
def sintax_scores(truth: Sequence[str], predictions: Sequence[SintaxPrediction], rank: str,
                  cutoffs: Sequence[float] = SINTAX_CUTOFFS, species_named: bool = False) -> dict[str, dict]:
    """named_scores at `rank` for each cutoff (keyed by the cutoff as text: "0.8"), with `species_named` (the
    share given a species) where asked for (the genus task's queries, of species the reference lacks)."""
    out = {}
    for cutoff in cutoffs:
        scores = named_scores(truth, [p.named(rank, cutoff) for p in predictions])
        if species_named:
            scores["species_named"] = named_share([p.named("species", cutoff) for p in predictions])
        out[f"{cutoff:g}"] = scores
    return out
