"""Interruption state of the running command: the signals its handler recorded, the outputs it published, blocks
that hold signals, and the handlers themselves.

`SignalGuard` (installed by the CLI around each command) records each SIGINT/SIGTERM here (`note_signal`);
`barcodetool.io.atomic` then refuses to publish any output, and `signals_held` defers the interruption while a
thread is started or a temporary file is created and listed. `barcodetool.io.atomic` reports each output it renames
into place (`note_published`), so that an interruption after that says so (`interruption_message`).

Outside a command, in the `barcodetool` program, a signal ends the program at once with the same one-line message
and exit status (130 / 143) instead of a traceback or a silent death: `barcodetool._startup` (standard library only,
the first import of the package) covers the imports, then barcodetool.cli replaces its handler with the one given
to `install_early_handlers`, which also names what was published.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from ..errors import Interrupted

_signals: list[int] = []  # signals recorded by the CLI's handler during the current command
_published: list[str] = []  # outputs renamed into place during the current command
_reported = threading.Event()  # the command's error handler has reported an interruption: the program is ending


def note_signal(signal_number: int) -> None:
    """Record that SIGINT/SIGTERM arrived (called from the CLI's signal handler)."""
    _signals.append(signal_number)


def interrupted() -> int | None:
    """The first signal recorded since `clear_signals`, or None."""
    return _signals[0] if _signals else None


def clear_signals() -> None:
    _signals.clear()


def note_published(path: str | os.PathLike) -> None:
    """Record that an output is complete and in place (called by barcodetool.io.atomic after its rename); an
    output published again (a checkpoint saved at every N steps) is named once."""
    if str(path) not in _published:
        _published.append(str(path))


def note_folder_published(staging: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Record that the staging folder whose files were published one by one is now in place as `folder`: the
    folder is named, not the files under a path that no longer exists."""
    inside = os.path.join(str(staging), "")
    _published[:] = [p for p in _published if p != str(staging) and not p.startswith(inside)]
    note_published(folder)


def published() -> list[str]:
    """The outputs published since the current command started (`SignalGuard.install`)."""
    return list(_published)


def note_reported() -> None:
    """The interruption has been reported and the program is exiting: a later signal changes nothing."""
    _reported.set()


def interruption_message(signal_number: int) -> str:
    """The one line (without the program's name) that reports an interruption by `signal_number`: what was
    left, including the outputs that were complete and published before the signal came."""
    name = "(SIGINT)" if signal_number == signal.SIGINT else f"by signal {signal_number}"
    if not _published:
        return f"interrupted {name}; no partial output was left"
    written = ", ".join(_published)
    verb = "was" if len(_published) == 1 else "were"
    return (f"interrupted {name} after {written} {verb} written (complete); no partial output of anything else "
            "was left")


# ============================================================================================ before a command
def launched_as_program() -> bool:
    """True when this process is the `barcodetool` program (its console script, or `python -m barcodetool` with
    any interpreter options, as torchrun starts it), not a Python program that imports barcodetool: only the
    program installs process-wide signal handlers. (`python -m` has set sys.argv[0] to the path of
    barcodetool/__main__.py by the time that module imports barcodetool.cli.)"""
    program = sys.argv[0] if sys.argv else ""
    name = os.path.basename(program)
    if name == "__main__.py":
        return os.path.basename(os.path.dirname(os.path.abspath(program))) == "barcodetool"
    return name.removesuffix(".exe").removesuffix("-script.py") == "barcodetool"


_early: list = []  # the handler install_early_handlers installed


def is_early_handler(handler) -> bool:
    """True for the handler of install_early_handlers, or another that ends the program before a command runs
    (marked `barcodetool_early = True`): a command's SignalGuard replaces it, and puts it back after."""
    return handler is not None and (any(handler is early for early in _early)
                                    or getattr(handler, "barcodetool_early", False) is True)


def reported() -> bool:
    """True once an interruption has been reported (`note_reported`) by the running command."""
    return _reported.is_set()


def install_early_handlers(handler) -> None:
    """Install `handler` (the CLI's: one line, then exit 130/143) for SIGINT/SIGTERM from now on, until a
    command's SignalGuard takes over (and again after it). A SIGINT ignored by whoever started us (a background
    job of a shell) stays ignored, as does an ignored SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    replace_sigint = sigint is signal.default_int_handler or is_early_handler(sigint)
    replace_sigterm = sigterm == signal.SIG_DFL or is_early_handler(sigterm)
    _early[:] = [handler]
    if replace_sigint:
        signal.signal(signal.SIGINT, handler)
    if replace_sigterm:
        signal.signal(signal.SIGTERM, handler)


_holding = threading.local()


def holding_signals() -> bool:
    """True inside `signals_held()` in this thread: the CLI's signal handler then records the signal and
    returns instead of raising; the hold raises it when it ends."""
    return getattr(_holding, "depth", 0) > 0


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Start threads, or create and list a temporary file, here: an interruption that arrives meanwhile is raised
    when the block ends.

    An exception raised by a signal handler inside `Thread.start()` leaves the threading module's bookkeeping
    half done (a KeyError instead of the interruption, and a traceback instead of exit status 130/143).
    """
    before = interrupted()
    _holding.depth = getattr(_holding, "depth", 0) + 1
    try:
        yield
    finally:
        _holding.depth -= 1
    signal_number = interrupted()
    if signal_number is not None and before is None and not holding_signals():
        if signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signal_number)


class SignalGuard:
    """SIGINT/SIGTERM handlers for one command.

    The handler records the signal (barcodetool.io.atomic then refuses to publish any output) and raises
    KeyboardInterrupt (SIGINT) or Interrupted (SIGTERM). Python drops an exception raised while it runs a
    `__del__` method or a weakref callback, so until the command's error handler has caught the interruption
    (`caught`), a watchdog thread sends the signal again every REDELIVER_S seconds.
    """

    REDELIVER_S = 0.5
    SETTLE_S = 0.05  # how long restore() lets a re-sent signal arrive before the previous handlers return

    def __init__(self):
        self.caught = False  # the error handler has the interruption in hand (or the command is over)
        self.previous: dict[int, object] = {}
        self.watchdog = None
        self.resent = 0  # signals the watchdog sent
        self.lock = threading.Lock()  # no signal is sent again once the handlers are restored
        self.over = threading.Event()
        self.unraisablehook = None

    def install(self) -> None:
        clear_signals()
        _published.clear()
        _reported.clear()
        if threading.current_thread() is not threading.main_thread():
            return
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self.handle)
        # SIGINT ignored by whoever started us (a background job of a shell) stays ignored.
        current = signal.getsignal(signal.SIGINT)
        if current is signal.default_int_handler or is_early_handler(current):
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self.handle)
        self.unraisablehook = sys.unraisablehook
        sys.unraisablehook = self.unraisable

    def restore(self) -> None:
        with self.lock:  # from here on the watchdog sends nothing
            self.caught = True
            self.over.set()
        if self.watchdog is not None:
            self.watchdog.join()
            if self.resent:
                # A signal the watchdog sent may still be on its way to this (the main) thread: let it land on
                # self.handle, which ignores it now, rather than on the handler restored below (a second
                # message, or a KeyboardInterrupt after the command had already reported its interruption).
                # The sleep is interrupted by its arrival; signal.signal() then runs any pending handler first.
                time.sleep(self.SETTLE_S)
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()
        if self.unraisablehook is not None:
            sys.unraisablehook = self.unraisablehook
            self.unraisablehook = None
        clear_signals()  # the command is over (library calls in the same process write again)

    def handle(self, signal_number, frame):
        note_signal(signal_number)
        if self.caught:
            return
        if self.watchdog is None and self.previous:
            self.watchdog = threading.Thread(target=self._redeliver, args=(signal_number,), daemon=True,
                                             name="barcodetool-signal-watchdog")
            self.watchdog.start()
        if holding_signals():  # a thread is being started: raised when that is done (signals_held)
            return
        if signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signal_number)

    def unraisable(self, info) -> None:
        """Python's report of an exception it had to drop: silent for our own interruption (it is recorded
        and delivered again), as usual for anything else."""
        if isinstance(info.exc_value, (KeyboardInterrupt, Interrupted)) and not self.caught:
            return
        (self.unraisablehook or sys.__unraisablehook__)(info)

    def _redeliver(self, signal_number: int) -> None:
        while not self.over.wait(self.REDELIVER_S):
            with self.lock:
                if self.caught:
                    return
                self.resent += 1
                os.kill(os.getpid(), signal_number)
