"""DatasetRows: rows of an HDF5 dataset read on demand give what the same indexing of the whole array gives."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import barcodetool.io.hdf5 as hdf5_module
from barcodetool.io.hdf5 import DatasetRows


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    values = np.random.default_rng(0).standard_normal((97, 5)).astype(np.float32)
    path = tmp_path_factory.mktemp("rows") / "rows.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("values", data=values, chunks=(8, 5))
    return path, values


@st.composite
def selections(draw, n: int):
    kind = draw(st.sampled_from(["int", "slice", "array", "bool"]))
    if kind == "int":
        return draw(st.integers(-n, n - 1))
    if kind == "slice":
        return slice(draw(st.none() | st.integers(-n - 3, n + 3)), draw(st.none() | st.integers(-n - 3, n + 3)),
                     draw(st.none() | st.integers(1, 7)))
    if kind == "array":   # any order, repeats and negative positions
        return np.array(draw(st.lists(st.integers(-n, n - 1), max_size=40)), dtype=np.int64)
    return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), block=st.integers(1, 20), scattered=st.integers(0, 6))
def test_rows_index_like_the_array(stored, monkeypatch, data, block, scattered):
    # small block and scattered-read sizes, so that both ways of reading a selection are taken
    monkeypatch.setattr(hdf5_module, "ROWS_READ_AT_ONCE", block)
    monkeypatch.setattr(hdf5_module, "SCATTERED_READ", scattered)
    path, values = stored
    rows = DatasetRows(path, "values")
    view_rows = np.array(sorted(data.draw(st.sets(st.integers(0, len(values) - 1), min_size=1))), dtype=np.int64)
    for lazy, array in ((rows, values), (rows.rows(view_rows), values[view_rows])):
        assert lazy.shape == array.shape and len(lazy) == len(array) and lazy.dtype == array.dtype
        key = data.draw(selections(len(array)))
        np.testing.assert_array_equal(lazy[key], array[key])
    np.testing.assert_array_equal(np.asarray(rows.rows(view_rows)), values[view_rows])
    rows.close()


def test_rows_views_pickling_and_errors(stored):
    path, values = stored
    rows = DatasetRows(path, "values")
    np.testing.assert_array_equal(rows[3:9, 1:3], values[3:9, 1:3])
    nested = rows.rows(np.arange(10, 60, 2)).rows(np.array([0, 5, 7]))
    np.testing.assert_array_equal(nested[:], values[[10, 20, 24]])
    _ = rows[0]   # opens the file: a pickle carries the path, not the handle
    copy = pickle.loads(pickle.dumps(rows))
    np.testing.assert_array_equal(np.asarray(copy, dtype=np.float64), values.astype(np.float64))
    with pytest.raises(IndexError):
        rows[len(values)]
    with pytest.raises(IndexError):
        rows[np.array([0, -len(values) - 1])]
    with pytest.raises(ValueError):
        rows.rows(np.array([3, 3]))
    rows.close()
    copy.close()
