"""FASTA: title lines (ids, SINTAX taxonomy, BINs), the record reader, and writing FASTA."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import IO

from ..errors import InputError, OutputError
from ..taxonomy import RANKS, SINTAX_LETTERS, SINTAX_RANKS
from .atomic import atomic_text
from .records import MISSING_VALUES, BarcodeRecord

_KEY_VALUE = re.compile(r"(?:^|[;\s])(tax|bin)=([^;\s]*)")


def parse_sintax_taxonomy(value: str) -> dict[str, str]:
    """`k:Animalia,p:Arthropoda,...,s:Aedes_aegypti` -> {"phylum": "Arthropoda", ..., "species": "Aedes aegypti"}."""
    taxonomy: dict[str, str] = {}
    for item in value.split(","):
        letter, sep, label = item.partition(":")
        rank = SINTAX_RANKS.get(letter.strip().lower())
        label = label.replace("_", " ").strip()
        if sep and rank and label and label not in MISSING_VALUES:
            taxonomy[rank] = label
    return taxonomy


def parse_fasta_header(title: str) -> tuple[str, dict[str, str], str | None]:
    """Split a FASTA title line (without '>') into (id, taxonomy, bin).

    The id is the first word; in a SINTAX header (`id;tax=p:...,s:...;`) it is the part before the first `;`.
    `tax=` and `bin=` keys are read from `;`-separated SINTAX attributes or from words of the description.
    """
    title = title.strip()
    words = title.split(None, 1)
    if not words:
        return "", {}, None
    first = words[0]
    record_id = first.split(";", 1)[0]
    taxonomy: dict[str, str] = {}
    bin_uri = None
    if "=" in title:
        rest = title[len(record_id):]
        for key, value in _KEY_VALUE.findall(rest):
            if key == "tax" and not taxonomy:
                taxonomy = parse_sintax_taxonomy(value)
            elif key == "bin" and bin_uri is None and value and value not in MISSING_VALUES:
                bin_uri = value
    return record_id, taxonomy, bin_uri


def sintax_header(record: BarcodeRecord) -> str:
    """The SINTAX title `id;tax=p:...,s:Genus_species;` (plus `bin=...;`) for a record."""
    items = [f"{SINTAX_LETTERS[rank]}:{record.taxonomy[rank].replace(' ', '_')}"
             for rank in RANKS if record.taxonomy.get(rank)]
    title = record.id + ";"
    if items:
        title += "tax=" + ",".join(items) + ";"
    if record.bin:
        title += f"bin={record.bin};"
    return title


def write_fasta(records_or_pairs: Iterable, handle: IO[str] | str | os.PathLike, *, width: int = 0,
                sintax: bool = False) -> int:
    """Write records (BarcodeRecord or (id, sequence) pairs) as FASTA; returns the count written.

    `handle` is a text handle or a path (written atomically). `width` > 0 wraps sequence lines; `sintax=True`
    writes each BarcodeRecord's taxonomy and BIN into a SINTAX header.
    """
    if isinstance(handle, (str, os.PathLike)):
        with atomic_text(handle) as out:
            return write_fasta(records_or_pairs, out, width=width, sintax=sintax)
    count = 0
    for item in records_or_pairs:
        if isinstance(item, BarcodeRecord):
            record_id, sequence = item.id, item.sequence
            title = sintax_header(item) if sintax else item.id
        else:
            record_id, sequence = item
            title = record_id
        if not record_id or record_id.split(None, 1)[0] != record_id:
            raise OutputError(f"cannot write FASTA: record id {record_id!r} is empty or holds white space")
        if width > 0:
            body = "\n".join(sequence[i:i + width] for i in range(0, len(sequence), width))
        else:
            body = sequence
        handle.write(f">{title}\n{body}\n")
        count += 1
    return count


def fasta_records(text: IO[str], display: str) -> Iterator[tuple[str, str, dict, str | None, None, dict]]:
    """(id, raw sequence, taxonomy, bin, split, fields) of each record of a FASTA text stream, uncleaned.

    `display` names the input in errors. A record without an id raises InputError.
    """
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    for number, (title, sequence) in enumerate(SimpleFastaParser(text), start=1):
        record_id, taxonomy, bin_uri = parse_fasta_header(title)
        if not record_id:
            raise InputError(f"FASTA record #{number} has no id after '>'", path=display,
                             fix="give every record an id on its '>' line")
        yield record_id, sequence, taxonomy, bin_uri, None, {}
