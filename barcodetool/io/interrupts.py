"""Interruption state of the running command: the signals its handler recorded, and blocks that hold them.

The CLI's SIGINT/SIGTERM handler records each signal here (`note_signal`); `barcodetool.io.atomic` then refuses to
publish any output, and `signals_held` defers the interruption while a thread is started or a temporary file is
created and listed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

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
