"""Checks of a reference index file's datasets and attributes before use: each failure is an InputError naming
the file, what is wrong, and the fix (rebuild the index). A damaged or crafted file never reaches the code that
uses its values."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..taxonomy import RANKS
from .confidence import ConfidenceModel

log = logging.getLogger("barcodetool")

MAX_CONFIDENCE_MODEL_BYTES = 64 << 20

REBUILD = "rebuild it with `barcodetool reference build`"
_KIND_LETTERS = {"int": "iu", "float": "f"}
_KIND_WORDS = {"str": "strings", "int": "integers", "float": "floating-point numbers"}
_IDENTITY_CANDIDATE_SOURCES = ("embedding", "kmer")
_ROWS_CHECKED = 65536   # embedding rows checked at a time (bounded memory for very large references)


def _show(value) -> str:
    """A short one-line repr of an untrusted value for a message."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


class Checker:
    """The checks of one index file's datasets and attributes before use: each failure is an InputError naming
    the file, what is wrong, and the fix (rebuild the index)."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, message: str) -> InputError:
        return InputError(message, path=str(self.path), fix=REBUILD)

    # ----------------------------------------------------------------- datasets
    def members(self, handle, name: str) -> list[str]:
        """Names in the group `name` (none where it is absent)."""
        import h5py

        item = handle.get(name)
        if item is None:
            return []
        if not isinstance(item, h5py.Group):
            raise self.error(f"/{name} is not a group")
        return list(item)

    def dataset(self, handle, name: str, kind: str, shape: tuple, dtypes: tuple[str, ...] | None = None):
        """The dataset `name` (KeyError where missing) checked to hold `kind` ("str", "int" or "float"; `dtypes`
        narrows the float types) in `shape` (None: any length)."""
        import h5py

        item = handle[name]
        if not isinstance(item, h5py.Dataset):
            raise self.error(f"/{name} is not a dataset")
        if kind == "str":
            right = h5py.check_string_dtype(item.dtype) is not None
        else:
            right = item.dtype.kind in _KIND_LETTERS[kind] and (dtypes is None or item.dtype.name in dtypes)
        if not right:
            wanted = " or ".join(dtypes) if dtypes else _KIND_WORDS[kind]
            raise self.error(f"/{name} holds {item.dtype} values, not {wanted}")
        if len(item.shape) != len(shape) or any(want is not None and size != want
                                                for size, want in zip(item.shape, shape)):
            expected = "[" + ", ".join("any" if want is None else str(want) for want in shape) + "]"
            raise self.error(f"/{name} has shape {list(item.shape)}, expected {expected}")
        return item

    def strings(self, handle, name: str, length: int | None = None) -> list[str]:
        item = self.dataset(handle, name, "str", (length,))
        try:
            return item.asstr()[()].tolist()
        except UnicodeDecodeError:
            raise self.error(f"/{name} is not UTF-8 text") from None

    def floats(self, handle, name: str, shape: tuple, dtypes: tuple[str, ...] | None = None) -> np.ndarray:
        values = self.dataset(handle, name, "float", shape, dtypes)[()]
        if dtypes is None and np.isnan(values).any():
            raise self.error(f"/{name} holds NaN")
        return values

    def integers(self, handle, name: str, shape: tuple, low: int, high: int, dtype=np.int64) -> np.ndarray:
        """An integer dataset whose values lie in low..high-1, as `dtype` (int64 unless said)."""
        values = self.dataset(handle, name, "int", shape)[()]
        if values.size:
            smallest, largest = int(values.min()), int(values.max())
            if smallest < low or largest >= high:
                bad = smallest if smallest < low else largest
                raise self.error(f"/{name} holds {bad}, outside {low}..{high - 1}")
        return values.astype(dtype, copy=False)

    def groups(self, handle, n: int) -> np.ndarray:
        """/sequence_group: numbered 0, 1, ... by first record, as the identity layer assumes."""
        groups = self.integers(handle, "sequence_group", (n,), 0, max(n, 1))
        if n and (groups[0] != 0 or (groups[1:] > np.maximum.accumulate(groups)[:-1] + 1).any()):
            raise self.error("/sequence_group is not numbered 0, 1, 2, ... in order of first record")
        return groups.astype(np.int32)

    def labels(self, handle, n: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        codes, names = {}, {}
        for name in self.members(handle, "labels"):
            names[name] = self.strings(handle, f"label_names/{name}")
            codes[name] = self.integers(handle, f"labels/{name}", (n,), -1, len(names[name])).astype(np.int32)
        return codes, names

    def calibration(self, handle, n: int) -> dict:
        """/calibration/<level>: leave-out queries (records) and their neighbours (records, -1 = none)."""
        calibration = {}
        for level in self.members(handle, "calibration"):
            where = f"calibration/{level}"
            queries = self.integers(handle, f"{where}/queries", (None,), 0, n)
            neighbours = self.integers(handle, f"{where}/neighbours", (len(queries), None), -1, n)
            similarities = self.floats(handle, f"{where}/similarities", neighbours.shape)
            calibration[level] = {"queries": queries, "neighbours": neighbours,
                                  "similarities": similarities.astype(np.float32)}
        return calibration

    def identity_calibration(self, handle, groups: int) -> dict:
        """/identity/calibration/<level>: leave-out queries and candidates in distinct-sequence space."""
        calibration = {}
        for level in self.members(handle, "identity/calibration"):
            where = f"identity/calibration/{level}"
            queries = self.integers(handle, f"{where}/queries", (None,), 0, groups)
            stored = {"queries": queries}
            # kmer_wide: only calibrations with a widening (of this version) have it
            wide = ("kmer_wide",) if "kmer_wide" in self.members(handle, where) else ()
            for source in _IDENTITY_CANDIDATE_SOURCES + wide:
                table = self.integers(handle, f"{where}/{source}", (len(queries), None), -1, groups)
                stored[source] = table
                stored[f"{source}_score"] = self.floats(handle, f"{where}/{source}_score",
                                                        table.shape).astype(np.float32)
                stored[f"{source}_overlap"] = self.integers(handle, f"{where}/{source}_overlap", table.shape,
                                                            0, 1 << 31)
            if wide:
                stored["kmer_wide_setting"] = self.integers(handle, f"{where}/kmer_wide_setting", (3,), 0, 1 << 31)
            calibration[level] = stored
        return calibration

    def isolation(self, handle, groups: int) -> dict | None:
        """/identity/isolation/<rank>/rows, scores: each distinct sequence's nearest references of another label
        (None: an index written before they existed)."""
        if "isolation" not in self.members(handle, "identity"):
            return None
        tables = {}
        for rank in self.members(handle, "identity/isolation"):
            if rank not in RANKS:
                raise self.error(f"/identity/isolation holds an unknown rank {rank!r}")
            rows = self.integers(handle, f"identity/isolation/{rank}/rows", (groups, None), -1, groups)
            scores = self.floats(handle, f"identity/isolation/{rank}/scores", rows.shape)
            tables[rank] = (rows.astype(np.int32), scores.astype(np.float32))
        return tables

    def kmer_layout(self, handle, groups: int | None) -> tuple[int, int, int | None]:
        """(k, size, max_stored_df) of /identity/kmer (max_stored_df None: every k-mer's postings are stored, as in
        indexes written before it existed), checked with its datasets' types and shapes (not their values)."""
        import h5py

        group = handle["identity/kmer"]
        if not isinstance(group, h5py.Group):
            raise self.error("/identity/kmer is not a group")
        k = self.integer(dict(group.attrs), "k", where="/identity/kmer attribute", minimum=4)
        size = self.integer(dict(group.attrs), "size", where="/identity/kmer attribute", minimum=0)
        max_stored_df = None
        if "max_stored_df" in group.attrs:
            max_stored_df = self.integer(dict(group.attrs), "max_stored_df", where="/identity/kmer attribute",
                                         minimum=1)
        if k > 15:
            raise self.error(f"/identity/kmer attribute k is {k}, outside 4..15")
        if groups is not None and size != groups:
            raise self.error(f"the stored k-mer index covers {size:,} sequences, the index {groups:,}")
        kmers = self.dataset(handle, "identity/kmer/kmers", "int", (None,))
        self.dataset(handle, "identity/kmer/df", "int", kmers.shape)
        self.dataset(handle, "identity/kmer/refs", "int", (None,))
        return k, size, max_stored_df

    def embeddings(self, embeddings: np.ndarray) -> None:
        """Every value finite and every row of unit length (or zero), as build_reference stores them."""
        if embeddings.shape[1] < 1:
            raise self.error("/embeddings has no columns")
        for start in range(0, len(embeddings), _ROWS_CHECKED):
            block = np.asarray(embeddings[start:start + _ROWS_CHECKED], dtype=np.float32)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise self.error(f"/embeddings row {row} holds NaN or infinity")
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            wrong = (np.abs(norms - 1.0) > 1e-2) & (norms > 0)
            if wrong.any():
                row = start + int(np.argmax(wrong))
                raise self.error(f"/embeddings row {row} has length {norms[row - start]:.4g}, not 1")

    # ----------------------------------------------------------------- attributes
    def value(self, attrs, key: str, default):
        value = attrs.get(key, default)
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value[()]
        return value

    def integer(self, attrs, key: str, default=None, *, minimum: int | None = None,
                where: str = "attribute") -> int:
        value = self.value(attrs, key, default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise self.error(f"{where} {key} is {_show(value)}, not an integer")
        if minimum is not None and value < minimum:
            raise self.error(f"{where} {key} is {int(value)}, less than {minimum}")
        return int(value)

    def number(self, attrs, key: str, default, *, nan: bool = True,
               within: tuple[float, float] | None = None) -> float:
        """A number attribute (NaN refused unless `nan`; `within`: inclusive bounds)."""
        value = self.value(attrs, key, default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise self.error(f"attribute {key} is {_show(value)}, not a number")
        value = float(value)
        if not nan and math.isnan(value):
            raise self.error(f"attribute {key} is NaN")
        if within is not None and not within[0] <= value <= within[1]:
            raise self.error(f"attribute {key} is {value}, outside {within[0]}..{within[1]}")
        return value

    def string(self, attrs, key: str, default: str = "") -> str:
        value = self.value(attrs, key, default)
        if not isinstance(value, str):
            raise self.error(f"attribute {key} is {_show(value)}, not text")
        return value

    def json(self, attrs, key: str, kind: type, default: str):
        """A JSON attribute (an empty one reads as `default`) that must decode to a `kind`."""
        text = self.string(attrs, key, default) or default
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise self.error(f"attribute {key} is not JSON") from None
        if not isinstance(value, kind):
            raise self.error(f"attribute {key} is {_show(value)}, not a JSON {kind.__name__}")
        return value

    def confidence_model(self, handle) -> ConfidenceModel | None:
        """The identity rule's confidence model (None in indexes of older versions), checked."""
        if "confidence_model" not in self.members(handle, "identity"):
            return None
        data = self.dataset(handle, "identity/confidence_model", "int", (None,), ("uint8",))
        if data.shape[0] > MAX_CONFIDENCE_MODEL_BYTES:
            raise self.error(f"the stored confidence model is {data.shape[0]:,} bytes, more than a model can be")
        try:
            value = json.loads(bytes(data[()]).decode("utf-8"))
            if not ConfidenceModel.readable(value):
                log.info(f"{self.path}: the confidence model was fitted by another version of barcodetool: it is "
                         f"fitted again from the stored leave-out searches (rebuild the index to store it)")
                return None
            return ConfidenceModel.from_json(value)
        except (ValueError, RecursionError) as error:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise self.error(f"the stored confidence model is unusable ({error})") from None

    def candidates(self, attrs, key: str) -> tuple[int, ...]:
        """(embedding, k-mer) numbers of identity candidates: two integers >= 0, not both 0."""
        value = self.json(attrs, key, list, "[10, 10]")
        if len(value) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value) \
                or sum(value) == 0:
            raise self.error(f"attribute {key} is {_show(value)}, not two numbers of candidates")
        return tuple(value)


def check_attrs(check: Checker, attrs: dict, n: int, dim: int) -> None:
    """The root attributes that load() does not otherwise read, checked against the datasets."""
    if "count" in attrs and check.integer(attrs, "count") != n:
        raise check.error(f"attribute count is {int(attrs['count'])}, but /ids holds {n} records")
    if "embedding_dim" in attrs and check.integer(attrs, "embedding_dim") != dim:
        raise check.error(f"attribute embedding_dim is {int(attrs['embedding_dim'])}, but /embeddings has {dim} "
                          "columns")
    check.json(attrs, "tokenizer", dict, "{}")
    for key in ("pooling", "dtype", "source", "created", "barcodetool_version"):
        check.string(attrs, key)
