"""FASTA and FASTQ: title lines (ids, SINTAX taxonomy, BINs), the record readers, and writing FASTA."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import IO

from ..errors import InputError, OutputError
from ..taxonomy import RANKS, SINTAX_LETTERS, SINTAX_RANKS
from .atomic import atomic_text
from .records import MISSING_VALUES, BarcodeRecord

# `tax=`/`bin=` attributes: a SINTAX attribute runs to the next `;`; in a description of words (`id tax=... bin=...`)
# a value ends where the next key=value word starts. Labels may hold spaces (`s:Crambus agitatellus`, `s:Foo sp.
# BOLD:AAA0003`): cut at the first space, they were read as the genus alone.
_KEY = re.compile(r"(?:^|[;\s])(tax|bin)=")
_VALUE_END = re.compile(r";|\s+[A-Za-z_]\w*=")
# What a SINTAX title cannot hold inside a label: white space and control characters, the ',' between ranks and
# the ';' that ends an attribute; each becomes '_' (which parse_sintax_taxonomy reads back as a space)
_SINTAX_UNSAFE = re.compile(r"[\s,;\x00-\x1f\x7f-\x9f]")
# What a field of a tab-separated line cannot hold: tabs, line breaks and the other control characters
_FIELD_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
    `tax=` and `bin=` keys are read from `;`-separated SINTAX attributes (to the next `;`: labels may hold
    spaces) or from words of the description (to the next `key=` word).
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
        for found in _KEY.finditer(rest):
            key = found[1]
            end = _VALUE_END.search(rest, found.end())
            value = rest[found.end():end.start() if end else len(rest)].strip()
            if key == "bin":
                value = value.split(None, 1)[0] if value else value
            if key == "tax" and not taxonomy:
                taxonomy = parse_sintax_taxonomy(value)
            elif key == "bin" and bin_uri is None and value and value not in MISSING_VALUES:
                bin_uri = value
    return record_id, taxonomy, bin_uri


def sintax_header(record: BarcodeRecord) -> str:
    """The SINTAX title `id;tax=p:...,s:Genus_species;` (plus `bin=...;`) for a record."""
    items = [f"{SINTAX_LETTERS[rank]}:{sintax_label(record.taxonomy[rank])}"
             for rank in RANKS if record.taxonomy.get(rank)]
    title = record.id + ";"
    if items:
        title += "tax=" + ",".join(items) + ";"
    if record.bin:
        title += f"bin={sintax_label(record.bin)};"
    return title


def sintax_label(label: str) -> str:
    """A label as SINTAX writes it: white space, ',', ';' and control characters become '_'."""
    return _SINTAX_UNSAFE.sub("_", label)


def tab_separated(cells: list[str]) -> str:
    """One line of tab-separated cells (with its newline); a tab, line break or control character inside a cell
    becomes a space, so that the line always has as many fields as cells."""
    if _FIELD_UNSAFE.search("".join(cells)):
        cells = [_FIELD_UNSAFE.sub(" ", cell) for cell in cells]
    return "\t".join(cells) + "\n"


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


def fastq_records(text: IO[str], display: str) -> Iterator[tuple[str, str, dict, str | None, None, dict]]:
    """(id, raw sequence, taxonomy, bin, split, fields) of each record of a FASTQ text stream, uncleaned.

    Reads the common four-line records and wrapped (multi-line) ones: an `@` title (read as a FASTA title: the
    id is its first word, SINTAX `;tax=` attributes are read), sequence lines up to a line starting with `+`,
    then quality lines until they are as long as the sequence. Qualities are checked for length and otherwise
    ignored. A malformed record raises InputError naming the record and the line. `display` names the input.
    """
    lines = iter(text)
    line_number = 0
    number = 0
    line = next(lines, None)
    while True:
        while line is not None and not line.strip():  # blank lines between records (and at the end)
            line_number += 1
            line = next(lines, None)
        if line is None:
            return
        line_number += 1
        number += 1
        if not line.startswith("@"):
            raise InputError(f"line {line_number}: FASTQ record #{number} does not start with '@' (found "
                             f"{line.strip()[:20]!r})", path=display,
                             fix="check the file: each FASTQ record is an '@' title, the sequence, a '+' line "
                                 "and the qualities")
        record_id, taxonomy, bin_uri = parse_fasta_header(line[1:])
        if not record_id:
            raise InputError(f"line {line_number}: FASTQ record #{number} has no id after '@'", path=display,
                             fix="give every record an id on its '@' line")
        parts = []
        line = next(lines, None)
        while line is not None and not line.startswith("+"):
            line_number += 1
            parts.append(line.strip())
            line = next(lines, None)
        if line is None:
            raise InputError(f"line {line_number}: the FASTQ record ends without its '+' line", path=display,
                             record=record_id, fix="the file may be truncated, or it is not FASTQ")
        line_number += 1
        sequence = "".join(parts)
        quality = 0
        line = next(lines, None)
        while line is not None and quality < len(sequence):
            line_number += 1
            quality += len(line.strip())
            line = next(lines, None)
            if len(parts) <= 1:
                break  # a sequence on one line has its qualities on one line
        if quality != len(sequence):
            raise InputError(f"line {line_number}: the quality line holds {quality} characters but the "
                             f"sequence {len(sequence)}", path=display, record=record_id,
                             fix="the file may be truncated or corrupt: each quality must match the sequence "
                                 "in length")
        yield record_id, sequence, taxonomy, bin_uri, None, {}
