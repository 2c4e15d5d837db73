"""Chunked streaming: plain chunks and chunks read ahead by a thread (order, errors, early stop)."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barcodetool.errors import InputError
from barcodetool.io.streaming import chunks, read_ahead


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.integers(), max_size=60), size=st.integers(1, 9), depth=st.integers(1, 3))
def test_read_ahead_gives_the_same_chunks_in_order(items, size, depth):
    expected = list(chunks(items, size))
    assert [x for chunk in expected for x in chunk] == items
    assert all(len(c) == size for c in expected[:-1]) and all(1 <= len(c) <= size for c in expected)
    assert list(read_ahead(iter(items), size, depth=depth)) == expected


def test_an_error_is_raised_after_the_chunks_before_it():
    def records():
        yield from range(7)
        raise InputError("bad record 'x7'", path="in.fasta")

    stream = read_ahead(records(), 3)
    assert next(stream) == [0, 1, 2] and next(stream) == [3, 4, 5]
    with pytest.raises(InputError, match="bad record 'x7'"):
        next(stream)  # 6 was read, but its chunk never completes


def test_reads_ahead_while_the_consumer_works():
    consumed = []

    def records():
        for i in range(10):
            consumed.append(i)
            yield i

    stream = read_ahead(records(), 2, depth=1)
    assert next(stream) == [0, 1]
    deadline = time.monotonic() + 5
    while len(consumed) < 6 and time.monotonic() < deadline:  # one chunk queued, the next one being built
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(consumed) == 6  # bounded: no further than depth + 1 chunks ahead
    stream.close()


def test_closing_early_stops_and_joins_the_reader():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    stream = read_ahead(endless(), 100)
    assert next(stream) == list(range(100))
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "barcodetool-read-ahead"]


def test_bad_arguments():
    with pytest.raises(ValueError):
        list(chunks([1], 0))
    with pytest.raises(ValueError):
        list(read_ahead([1], 1, depth=0))
