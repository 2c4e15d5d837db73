"""Taxonomic ranks, their SINTAX letters, and integer label codes: the one copy the whole package reads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RANKS = ("phylum", "class", "order", "family", "subfamily", "genus", "species")
LABELS = RANKS + ("bin",)   # what a reference labels a barcode with: each rank and its BIN
# Ranks that never block the ranks below them when left unassigned (many references leave subfamily empty).
OPTIONAL_RANKS = frozenset({"subfamily"})

# SINTAX rank letters (`;tax=k:...,p:...,s:Genus_species;`). `k`/`d` (kingdom/domain) are read and dropped;
# `t` is a local extension for subfamily.
SINTAX_RANKS = {"p": "phylum", "c": "class", "o": "order", "f": "family", "t": "subfamily", "g": "genus",
                "s": "species"}
SINTAX_LETTERS = {rank: letter for letter, rank in SINTAX_RANKS.items()}


def encode_labels(values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Strings (""/None = unknown) -> (int32 codes, -1 = unknown; sorted names)."""
    names = sorted({v for v in values if v})
    lookup = {name: i for i, name in enumerate(names)}
    codes = np.fromiter((lookup.get(v, -1) if v else -1 for v in values), dtype=np.int32, count=len(values))
    return codes, names
