"""Opening barcodetool's own HDF5 files (embeddings, reference indexes) for reading, checked once.

Each of these files says what it is in two root attributes: `format` (e.g. "barcodetool-embeddings") and an
integer `format_version` (see docs/file-formats.md, "Versioning policy"). h5py is imported when a file is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

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
