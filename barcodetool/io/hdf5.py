"""Opening barcodetool's own HDF5 files (embeddings, reference indexes) for reading, checked once, and reading a
large dataset's rows on demand (`DatasetRows`).

Each of these files says what it is in two root attributes: `format` (e.g. "barcodetool-embeddings") and an
integer `format_version` (see docs/file-formats.md, "Versioning policy"). h5py is imported when a file is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    import h5py


def open_hdf5(path: str | os.PathLike, *, format_name: str, version: int, what: str, fix: str,
              rebuild: str | None = None) -> h5py.File:
    """The open h5py.File (read-only) of a barcodetool HDF5 file, checked to be a `format_name` file of a version
    this barcodetool reads; use it as a context manager.

    `what` names the kind of file in messages ("embeddings file", "reference index") and `fix` says where a right
    one comes from ("give the HDF5 file written by `barcodetool embed`"). Versions up to `version` are read and
    newer ones refused with "upgrade barcodetool"; with `rebuild` (a fix such as "rebuild the index with
    `barcodetool reference build`"), only `version` itself is read, and older and newer ones are refused with
    that fix. A missing file, a file that is not HDF5, another format or version raise InputError naming the file.
    """
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError("file not found", path=str(path), fix="check the path") from None
    except (OSError, ValueError) as error:
        raise InputError(f"cannot open as HDF5 ({error})", path=str(path), fix=fix) from None
    try:
        found = handle.attrs.get("format")
        if found != format_name:
            raise InputError(f"not a barcodetool {what} (format {found!r})", path=str(path), fix=fix)
        try:
            found_version = int(handle.attrs.get("format_version", 0))
        except (TypeError, ValueError):
            raise InputError(f"the {what}'s format_version is not an integer", path=str(path),
                             fix=rebuild or fix) from None
        newer = found_version > version
        if newer or (rebuild is not None and found_version != version):
            if rebuild is None:
                version_fix = "upgrade barcodetool"
            else:
                version_fix = rebuild + (" (or upgrade barcodetool)" if newer else "")
            raise InputError(f"{what} format version {found_version} is {'newer' if newer else 'older'} than the "
                             f"version this barcodetool reads ({version})", path=str(path), fix=version_fix)
    except BaseException:
        handle.close()
        raise
    return handle


ROWS_READ_AT_ONCE = 65_536   # rows of a DatasetRows read per block when a selection spans many of them
SCATTERED_READ = 4_096       # at most this many selected rows are read one by one rather than by blocks


class DatasetRows:
    """A 2-D HDF5 dataset read a block of rows at a time, on demand: what a large reference index holds instead of
    its embeddings, so that a search (which reads them a block at a time anyway) never holds them all.

    Indexing gives numpy arrays, as an array of the dataset would: `rows[i]`, `rows[a:b]` and `rows[int_array]`
    (any order, repeats allowed); `np.asarray(rows)` reads everything. `rows` (int64 [m], increasing) makes it a
    view of those dataset rows, in that order (a reference's distinct sequences). The file is opened on first
    read and stays open; the object pickles without it.
    """

    def __init__(self, path: str | os.PathLike, name: str, rows: np.ndarray | None = None) -> None:
        import h5py

        self.path, self.name = Path(path), name
        with h5py.File(self.path, "r") as handle:
            dataset = handle[name]
            if dataset.ndim != 2:
                raise InputError(f"/{name} is not a 2-D dataset", path=str(self.path))
            stored_rows, self._columns, self.dtype = dataset.shape[0], dataset.shape[1], dataset.dtype
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self._rows is not None and len(self._rows) and (
                (np.diff(self._rows) <= 0).any() or self._rows[0] < 0 or self._rows[-1] >= stored_rows):
            raise ValueError("rows must be increasing dataset rows")
        self.shape = (stored_rows if self._rows is None else len(self._rows), self._columns)
        self.ndim = 2
        self._handle = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def rows(self, positions: np.ndarray) -> DatasetRows:
        """A view of rows `positions` (increasing) of this one."""
        positions = np.asarray(positions, dtype=np.int64)
        return DatasetRows(self.path, self.name, positions if self._rows is None else self._rows[positions])

    def _dataset(self):
        if self._handle is None:
            import h5py

            self._handle = h5py.File(self.path, "r")
        return self._handle[self.name]

    def __array__(self, dtype=None, copy=None):
        values = self[0:len(self)]
        return values if dtype is None else values.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):   # rows[a:b, :] and the like: rows first, then the rest on the array read
            return self[key[0]][(slice(None),) + key[1:]]
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self._read(np.array([index]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and self._rows is None:
                return self._dataset()[start:max(start, stop)]
            return self._read(np.arange(start, stop, step))
        positions = np.asarray(key)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        positions = positions.astype(np.int64, copy=False)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        return self._read(np.where(positions < 0, positions + len(self), positions).reshape(-1)).reshape(
            positions.shape + (self._columns,))

    def _read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at `positions` [m] (any order, repeats), as float/int array [m, columns]."""
        wanted = positions if self._rows is None else self._rows[positions]
        unique, inverse = np.unique(wanted, return_inverse=True)
        out = np.empty((len(unique), self._columns), dtype=self.dtype)
        dataset = self._dataset()
        if len(unique) <= SCATTERED_READ:   # h5py reads a list of increasing rows
            if len(unique):
                out[:] = dataset[unique]
        else:   # consecutive blocks of the dataset, each read once if it holds a wanted row
            start = int(unique[0])
            while start <= unique[-1]:
                stop = min(start + ROWS_READ_AT_ONCE, int(unique[-1]) + 1)
                lo, hi = np.searchsorted(unique, [start, stop])
                if hi > lo:
                    out[lo:hi] = dataset[start:stop][unique[lo:hi] - start]
                start = stop if hi >= len(unique) else max(stop, int(unique[hi]))
        return out[inverse.reshape(-1)]
