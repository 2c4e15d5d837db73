"""Outputs that appear whole or not at all.

Every file barcodetool writes goes to a temporary file beside its destination and is renamed into place only
when complete. Temporary files still open when SIGINT/SIGTERM arrives are removed by the CLI's handler
(`remove_pending`), so an interrupted run leaves no partial output.

A temporary file is never renamed into place once a signal has been recorded (barcodetool.io.interrupts): Python
drops an exception raised by a signal handler while it runs a `__del__` method or a weakref callback ("Exception
ignored in ..."), and without this check a SIGTERM that landed there would let the run finish and publish its
output.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import Interrupted, OutputError
from .interrupts import interrupted, signals_held

_pending: set[str] = set()
_pending_lock = threading.Lock()


def _read_umask() -> int:
    mask = os.umask(0o022)   # the only portable way to read it is to set it; done once, when this is imported
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def remove_pending() -> None:
    """Delete every temporary output still being written (called on interruption)."""
    with _pending_lock:
        paths = list(_pending)
        _pending.clear()
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it to `destination` on success."""
    destination = Path(destination)
    folder = destination.parent if str(destination.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{destination}: folder {folder} does not exist (create it first)")
    with signals_held():  # an interruption between creating and listing the file would leave it behind
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=folder)
        os.close(handle)
        with _pending_lock:
            _pending.add(temporary)
    try:
        yield Path(temporary)
        if interrupted() is not None:  # even if the handler's exception was swallowed: never publish
            raise Interrupted(interrupted())
        # mkstemp made the file private (0600); give it the mode a plain open() would: the umask's, or that of
        # the file it replaces, so that results stay readable by whoever could read the folder's other files
        try:
            mode = stat.S_IMODE(os.stat(destination).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
        os.chmod(temporary, mode)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        _forget(temporary)
        raise
    _forget(temporary)


def _forget(temporary: str) -> None:
    # Called only once the file is gone or renamed: if a second signal cuts the clean-up short, the file is
    # still listed and remove_pending() deletes it.
    with _pending_lock:
        _pending.discard(temporary)


@contextlib.contextmanager
def atomic_text(destination: str | os.PathLike, newline: str | None = None):
    """A text file handle whose content replaces `destination` only once the block ends without error."""
    with atomic_path(destination) as temporary, open(temporary, "w", encoding="utf-8", newline=newline) as handle:
        yield handle


def check_outputs_distinct(outputs: Iterable[str | os.PathLike | None],
                           inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output path that names one of the inputs (never overwrite an input file)."""
    input_paths = {}
    for item in inputs:
        if item is None or str(item) == "-":
            continue
        with contextlib.suppress(OSError):
            input_paths[os.path.realpath(item)] = item
    for output in outputs:
        if output is None or str(output) == "-":
            continue
        real = os.path.realpath(output)
        if real in input_paths:
            raise OutputError(f"{output}: output would overwrite the input file {input_paths[real]} "
                              "(choose another output path)")
