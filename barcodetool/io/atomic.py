"""Outputs that appear whole or not at all, and never destroy what the output path names.

Every regular file barcodetool writes goes to a temporary file beside its destination and is renamed into place
only when complete. Temporary files still open when SIGINT/SIGTERM arrives are removed by the CLI's handler
(`remove_pending`), so an interrupted run leaves no partial output.

An output path that is not a regular file is never replaced: `-` (and `/dev/stdout`) is standard output; a
device (/dev/null, /dev/full), a FIFO or a socket is written through (text as it is made; files that must be
complete before they are read, HDF5 and figures, are made in a temporary file in the temporary folder, $TMPDIR,
and then copied through); a symlink stays a symlink, and the file it points to is replaced atomically. A
directory is refused.

Writes that fail because the device is full (or read-only, or over quota) become one OutputError naming the
output and the fix; the old file is kept and no temporary file is left. An HDF5 library that saw a write fail
cannot close the file and crashes the interpreter at exit (a segmentation fault): `atomic_hdf5` flushes the file
before closing it, where a failure can still be handled, and points an abandoned file's descriptor at a scratch
file before HDF5 closes it.

A temporary file is never renamed into place once a signal has been recorded (barcodetool.io.interrupts): Python
drops an exception raised by a signal handler while it runs a `__del__` method or a weakref callback ("Exception
ignored in ..."), and without this check a SIGTERM that landed there would let the run finish and publish its
output.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import Interrupted, OutputError
from .interrupts import interrupted, note_published, signals_held

_pending: set[str] = set()
_pending_lock = threading.Lock()
STDOUT_NAMES = ("-", "/dev/stdout")
# text outputs named so are written compressed (gzip at level 6, as the gzip program; no name or time stamp in the
# header: the same content gives the same bytes)
COMPRESSED_SUFFIXES = {
    ".gz": lambda raw: gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0),
    ".bz2": lambda raw: bz2.BZ2File(raw, mode="wb"),
    ".xz": lambda raw: lzma.LZMAFile(raw, mode="wb"),
}
# errors of a write that say where the output cannot go, rather than what went wrong in the program
DEVICE_ERRORS = {errno.ENOSPC: "no space left on the device holding {}",
                  errno.EDQUOT: "disk quota exceeded on the device holding {}",
                  errno.EFBIG: "{} would exceed the largest file its file system holds",
                  errno.EROFS: "{} is on a read-only file system"}


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


def is_stdout(destination: str | os.PathLike | None) -> bool:
    """True for the output names that mean standard output: `-` and /dev/stdout."""
    return destination is not None and str(destination) in STDOUT_NAMES


def _target(destination: str | os.PathLike) -> tuple[str, Path | None]:
    """What writing to `destination` means: ("stdout", None), ("through", path) for an existing output that is
    not a regular file (a device, FIFO or socket), or ("file", path of the regular file to replace: a symlink's
    target, so that the symlink stays one)."""
    if is_stdout(destination):
        return "stdout", None
    path = Path(destination)
    try:
        mode = os.stat(path).st_mode   # follows symlinks
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{destination}: is a directory (give a file name for the output)")
    if mode is not None and not stat.S_ISREG(mode):
        return "through", path
    return "file", Path(os.path.realpath(path)) if path.is_symlink() else path


def device_error(destination: str | os.PathLike, error: OSError, *, where: str | None = None) -> OutputError | None:
    """The one-line OutputError for a write to `destination` that failed because of the device it is on (full,
    read-only, over quota), or None for any other error. `where` names what was being written when that was a
    temporary copy elsewhere."""
    template = DEVICE_ERRORS.get(error.errno)
    if template is None:
        return None
    if where is not None:
        return OutputError(f"{destination}: " + template.format(f"the temporary copy {where}")
                           + " (free space there or set TMPDIR to another folder)")
    return OutputError(template.format(destination) + " (free space or choose another output path)")


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; once the block ends without error, its content replaces `destination` (a
    regular file, renamed into place), or is copied to standard output (`-`) or through the device or FIFO
    `destination` names."""
    kind, target = _target(destination)
    if kind == "file":
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError(f"{destination}: folder {folder} does not exist (create it first)")
        prefix = f".{target.name}."
    else:  # made whole in the temporary folder, then copied through: the device's folder is no place for it
        folder, prefix = Path(tempfile.gettempdir()), "barcodetool-output."
    with signals_held():  # an interruption between creating and listing the file would leave it behind
        try:
            handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=folder)
        except OSError as error:
            raise device_error(destination, error) or OutputError(
                f"{destination}: cannot create a file in {folder} ({error.strerror or error}; choose another "
                "output path)") from None
        os.close(handle)
        with _pending_lock:
            _pending.add(temporary)
    copying = False
    try:
        yield Path(temporary)
        if interrupted() is not None:  # even if the handler's exception was swallowed: never publish
            raise Interrupted(interrupted())
        if kind == "file":
            # mkstemp made the file private (0600); give it the mode a plain open() would: the umask's, or that
            # of the file it replaces, so that results stay readable by whoever could read the folder's files
            try:
                mode = stat.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~_UMASK
            os.chmod(temporary, mode)
            with signals_held():  # renamed and noted together: an interruption after this names the output
                os.replace(temporary, target)
                note_published(destination)
        else:
            copying = True
            _copy_out(temporary, destination if kind == "through" else None)
    except OSError as error:
        _remove(temporary)
        where = temporary if kind != "file" and not copying else None
        raise device_error(destination, error, where=where) or error from None
    except BaseException:
        _remove(temporary)
        raise
    if kind != "file":
        _remove(temporary)
    _forget(temporary)


def _remove(temporary: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(temporary)
    _forget(temporary)


def _copy_out(temporary: str, destination: str | os.PathLike | None) -> None:
    """The finished temporary file's bytes to `destination` (a device or FIFO), or to standard output (None)."""
    with open(temporary, "rb") as source:
        if destination is not None:
            with open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            return
        sys.stdout.flush()   # whatever text went before stays before
        sink = sys.stdout.buffer
        shutil.copyfileobj(source, sink, 1 << 20)
        sink.flush()


def _forget(temporary: str) -> None:
    # Called only once the file is gone or renamed: if a second signal cuts the clean-up short, the file is
    # still listed and remove_pending() deletes it.
    with _pending_lock:
        _pending.discard(temporary)


@contextlib.contextmanager
def atomic_text(destination: str | os.PathLike, newline: str | None = None):
    """A text file handle whose content replaces `destination` only once the block ends without error; a file
    named `.gz`, `.bz2` or `.xz` is written compressed (as inputs so named are read).

    Standard output (`-`), a device or a FIFO is written as the text is made (a reader of a FIFO gets its rows
    as they come); a symlink's target is replaced, the symlink kept."""
    kind, _ = _target(destination)
    if kind == "file":
        compressor = COMPRESSED_SUFFIXES.get(Path(destination).suffix.lower())
        with atomic_path(destination) as temporary:
            if compressor is None:
                with open(temporary, "w", encoding="utf-8", newline=newline) as handle:
                    yield handle
            else:
                with open(temporary, "wb") as raw, compressor(raw) as packed, \
                        io.TextIOWrapper(packed, encoding="utf-8", newline=newline) as handle:
                    yield handle
        return
    try:
        if kind == "stdout":
            yield sys.stdout
            sys.stdout.flush()
        else:
            with open(destination, "w", encoding="utf-8", newline=newline) as handle:
                yield handle
    except OSError as error:
        raise device_error(destination, error) or error from None


@contextlib.contextmanager
def atomic_hdf5(destination: str | os.PathLike) -> Iterator:
    """A new h5py.File that replaces `destination` once the block ends without error (see atomic_path for `-`,
    devices, FIFOs and symlinks). A write that fails (a full disk) raises an OSError with its errno, which
    atomic_path turns into one line; no file is left and the process stays sound.

    HDF5 that saw a write fail cannot close the file (it tries to write again) and crashes the interpreter at
    exit. So the file is flushed before it is closed, where a failure can still be handled, and a file that is
    abandoned (a failed write, any other error, an interruption) has its descriptor pointed at a scratch file
    first: HDF5 then closes it without error, and the temporary file is deleted."""
    import h5py

    with atomic_path(destination) as temporary:
        handle = h5py.File(temporary, "w")
        descriptor = handle.id.get_vfd_handle()
        try:
            yield handle
            handle.flush()   # a full disk fails here, where HDF5 can still be closed cleanly, not in close()
        except BaseException as error:
            _abandon(handle, descriptor)
            failed = _failed_write(error)
            if failed is not None:
                raise failed from None
            raise
        handle.close()


def _abandon(handle, descriptor: int) -> None:
    """Close an HDF5 file whose content is not wanted without HDF5 writing to the file again: its later writes
    (flushing its caches on close) land in a scratch file, in memory where the system allows, because the disk
    holding the temporary folder may be the full one."""
    sink = None
    with contextlib.suppress(AttributeError, OSError):
        sink = os.memfd_create("barcodetool-discarded")
    if sink is None:
        with contextlib.suppress(OSError), tempfile.TemporaryFile() as scratch:
            sink = os.dup(scratch.fileno())
    if sink is not None:
        with contextlib.suppress(OSError):
            os.dup2(sink, descriptor)
        os.close(sink)
    with contextlib.suppress(Exception):
        handle.close()


_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def _failed_write(error: BaseException) -> OSError | None:
    """The OSError (errno and its text, one line) of an HDF5 write that failed, or None for other errors."""
    if not isinstance(error, (OSError, RuntimeError)):
        return None
    match = _HDF5_ERRNO.search(str(error)) if "write failed" in str(error) else None
    number = getattr(error, "errno", None) if match is None else int(match.group(1))
    if match is None and number not in DEVICE_ERRORS:
        return None
    return OSError(number, os.strerror(number))


def check_outputs_distinct(outputs: Iterable[str | os.PathLike | None],
                           inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output path that names one of the inputs (never overwrite an input file)."""
    input_paths = {}
    for item in inputs:
        if item is None or is_stdout(item):
            continue
        with contextlib.suppress(OSError):
            input_paths[os.path.realpath(item)] = item
    for output in outputs:
        if output is None or is_stdout(output):
            continue
        real = os.path.realpath(output)
        if real in input_paths:
            raise OutputError(f"{output}: output would overwrite the input file {input_paths[real]} "
                              "(choose another output path)")


def check_outputs_spare_model(outputs: Iterable[str | os.PathLike | None], model_folder: str | os.PathLike | None,
                              model_files: Iterable[str] = ()) -> None:
    """Refuse an output that would overwrite a file of the model in use: a file in `model_folder` that exists or
    is one of `model_files` (the model's own file names)."""
    if model_folder is None:
        return
    folder = os.path.realpath(model_folder)
    names = set(model_files)
    for output in outputs:
        if output is None or is_stdout(output):
            continue
        real = os.path.realpath(output)
        if os.path.dirname(real) == folder and (os.path.lexists(real) or os.path.basename(real) in names):
            raise OutputError(f"{output}: output would overwrite a file of the model in use ({model_folder}) "
                              "(choose another output path)")


def check_output_path(path: str | os.PathLike | None, option: str = "-o") -> None:
    """Refuse, before any work, an output that cannot be written: a directory, a file in a folder that does not
    exist or cannot be written (permissions, a read-only file system). `-` and existing devices and FIFOs that
    can be written are fine."""
    if path is None or is_stdout(path):
        return
    kind, target = _target(path)   # refuses a directory
    if kind == "through":
        if not os.access(target, os.W_OK):
            raise OutputError(f"{path}: cannot be written (permission denied; choose another {option})")
        return
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist (create it first, or choose another {option})")
    try:
        device = os.statvfs(folder)
    except (OSError, AttributeError):   # no statvfs (Windows): the write says what is wrong
        device = None
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if device is not None and device.f_flag & os.ST_RDONLY else \
            "permission denied"
        raise OutputError(f"{path}: cannot write in folder {folder} ({reason}; choose another {option})")
    if device is not None and device.f_blocks > 0 and device.f_bfree == 0:   # (/proc, /sys: no blocks at all)
        raise OutputError(f"no space left on the device holding {path} (free space or choose another {option})")
