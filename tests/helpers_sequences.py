"""Synthetic COI-like barcodes with a known taxonomy, for the identity classifier and clusterer tests.

A random 658-bp root is mutated down a tree (substitutions only, like COI-5P): family, genus, species and finally
haplotypes (the barcodes). Each species is its own BIN. Distances are chosen like real insect barcodes: about
0.5 % within a species, 4-6 % between species of a genus, 15 % or more between genera.
"""

from __future__ import annotations

import numpy as np

from barcodetool.io.readers import BarcodeRecord

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def mutate(sequence: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    out = sequence.copy()
    where = np.flatnonzero(rng.random(len(out)) < rate)
    out[where] = BASES[(np.searchsorted(BASES, out[where]) + rng.integers(1, 4, len(where))) % 4]
    return out


def synthetic_tree(*, seed: int = 0, families: int = 2, genera: int = 3, species: int = 3, haplotypes: int = 6,
                   length: int = 658, family_rate: float = 0.12, genus_rate: float = 0.08,
                   species_rate: float = 0.025, haplotype_rate: float = 0.002, trim: int = 20):
    """{(family, genus, species): [species sequence, rng]} plus a function drawing barcodes of a taxon."""
    rng = np.random.default_rng(seed)
    root = BASES[rng.integers(0, 4, length)]
    taxa = {}
    for f in range(families):
        family = mutate(root, family_rate, rng)
        for g in range(genera):
            genus = mutate(family, genus_rate, rng)
            for s in range(species):
                taxa[(f, g, s)] = mutate(genus, species_rate, rng)

    def barcode(key, rate=haplotype_rate):
        sequence = mutate(taxa[key], rate, rng)
        start, end = rng.integers(0, trim + 1), length - rng.integers(0, trim + 1)
        return sequence[start:end].tobytes().decode()

    def new_species(f, g):
        """A barcode of a species absent from the tree, in genus (f, g)."""
        genus_centre = np.array([taxa[(f, g, s)] for s in range(species)])
        # consensus of the genus's species ~ the genus ancestor, then a fresh species branch
        consensus = np.array([np.bincount(np.searchsorted(BASES, column), minlength=4).argmax()
                              for column in genus_centre.T])
        fresh = mutate(BASES[consensus], species_rate, rng)
        return mutate(fresh, haplotype_rate, rng).tobytes().decode()

    return taxa, barcode, new_species


def lineage(key) -> dict:
    f, g, s = key
    return {"phylum": "Arthropoda", "class": "Insecta", "order": "Lepidoptera", "family": f"Family{f}",
            "genus": f"Genus{f}x{g}", "species": f"Genus{f}x{g} species{s}"}


def synthetic_records(*, seed: int = 0, per_species: int = 6, **options):
    """(reference records, taxa, barcode, new_species): `per_species` haplotypes of every species, BIN = species."""
    taxa, barcode, new_species = synthetic_tree(seed=seed, **options)
    records = []
    for key in taxa:
        f, g, s = key
        for h in range(per_species):
            records.append(BarcodeRecord(f"R{f}{g}{s}h{h}", barcode(key), lineage(key), bin=f"BOLD:A{f}{g}{s}"))
    return records, taxa, barcode, new_species
