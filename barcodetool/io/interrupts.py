"""Interruption state of the running command: the signals its handler recorded, blocks that hold them, and the
handler itself.

`SignalGuard` (installed by the CLI around each command) records each SIGINT/SIGTERM here (`note_signal`);
`barcodetool.io.atomic` then refuses to publish any output, and `signals_held` defers the interruption while a
thread is started or a temporary file is created and listed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from ..errors import Interrupted

_signals: list[int] = []  # signals recorded by the CLI's handler during the current command


def note_signal(signal_number: int) -> None:
    """Record that SIGINT/SIGTERM arrived (called from the CLI's signal handler)."""
    _signals.append(signal_number)


def interrupted() -> int | None:
    """The first signal recorded since `clear_signals`, or None."""
    return _signals[0] if _signals else None


def clear_signals() -> None:
    _signals.clear()


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

    def __init__(self):
        self.caught = False  # the error handler has the interruption in hand (or the command is over)
        self.previous: dict[int, object] = {}
        self.watchdog = None
        self.lock = threading.Lock()  # no signal is sent again once the handlers are restored
        self.over = threading.Event()
        self.unraisablehook = None

    def install(self) -> None:
        clear_signals()
        if threading.current_thread() is not threading.main_thread():
            return
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self.handle)
        # SIGINT ignored by whoever started us (a background job of a shell) stays ignored.
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self.handle)
        self.unraisablehook = sys.unraisablehook
        sys.unraisablehook = self.unraisable

    def restore(self) -> None:
        with self.lock:
            self.caught = True
            self.over.set()
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
                os.kill(os.getpid(), signal_number)
