"""Chunked streaming of records: plain chunks, and chunks read ahead by a background thread.

`embed` and `classify` read their input in chunks so that memory does not grow with the number of records.
Reading, parsing and cleaning records is pure Python; embedding is PyTorch, which releases the GIL while it
computes. `read_ahead` lets the two overlap: a thread reads the next chunk while the caller embeds this one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

from .interrupts import signals_held

Item = TypeVar("Item")

_POLL_S = 0.1  # how often a blocked reader thread checks whether the consumer has gone


def chunks(iterable: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Lists of `size` consecutive items (the last one shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def read_ahead(iterable: Iterable[Item], size: int, *, depth: int = 1) -> Iterator[list[Item]]:
    """The chunks of `chunks(iterable, size)`, in order, read by a background thread up to `depth` chunks ahead
    of the consumer.

    `iterable` is only ever advanced by that thread. An exception it raises (a bad record, a truncated file) is
    raised here at the position where it happened, after the chunks before it. When the consumer stops early
    (an error, an interruption, `close()`), the thread stops after the chunk it is reading and is joined, so no
    file stays open behind the caller's back.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks(iterable, size):
                if not offer(chunk):
                    return
            offer(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            offer(_Failure(error))

    reader = threading.Thread(target=produce, name="barcodetool-read-ahead", daemon=True)
    with signals_held():
        reader.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        reader.join()
