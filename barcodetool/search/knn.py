"""Exact nearest-neighbour search over embeddings, and grouping of identical sequences.

The primitives under reference indexes, classification and clustering: blocked exact cosine k-NN (matrix products
in bounded memory, on CPU or GPU) and the numbering of identical sequences, so that each is searched once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import UsageError

SEARCH_BLOCK_ELEMENTS = 1 << 25   # query block x reference block similarities held at once (128 MiB float32)
Progress = Callable[[int], None]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero (or non-finite) rows become zero."""
    vectors = np.nan_to_num(np.asarray(vectors, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


TOP_BLOCK = 64   # largest_columns: columns per block whose maximum is taken first


def largest_columns(key: np.ndarray, n: int, block: int = TOP_BLOCK) -> np.ndarray:
    """int64 [rows, n]: the columns of the n largest entries of each row of `key` [rows, columns], unordered.

    Two levels: the n blocks of `block` columns with the largest maxima hold the n largest entries (a block left
    out has n blocks above its maximum, so n larger entries), and only those blocks are partitioned: 7x faster
    than partitioning whole rows of a reference's 24 k columns. Where entries tie at the n-th place, which of
    them is kept is not specified (the argument holds with >= for >).
    """
    rows, size = key.shape
    blocks = size // block
    if blocks < 4 * n:
        return np.argpartition(key, size - n, axis=1)[:, size - n:]
    whole = blocks * block
    maxima = key[:, :whole].reshape(rows, blocks, block).max(axis=2)               # [rows, blocks]
    best = np.argpartition(maxima, blocks - n, axis=1)[:, blocks - n:]            # [rows, n] blocks
    columns = (best[:, :, None] * block + np.arange(block)).reshape(rows, n * block)
    if whole < size:   # the last, partial block is always a candidate
        columns = np.concatenate([columns, np.broadcast_to(np.arange(whole, size), (rows, size - whole))], axis=1)
    values = np.take_along_axis(key, columns, axis=1)
    chosen = np.argpartition(values, values.shape[1] - n, axis=1)[:, values.shape[1] - n:]
    return np.take_along_axis(columns, chosen, axis=1)


def knn_search(queries: np.ndarray, reference: np.ndarray, k: int, *,
               exclude: Sequence[tuple[np.ndarray, np.ndarray]] = (), query_block: int = 2048,
               reference_block: int | None = None, device=None,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of unit-vector `queries` among unit-vector `reference` rows.

    Returns (similarities float32 [nq, k], indices int64 [nq, k]), each row sorted by decreasing similarity
    (equal similarities by increasing index); slots beyond the number of eligible references hold -inf and -1.
    `exclude` holds (query_groups [nq], reference_groups [nr]) int pairs: a reference row is skipped for a query
    when, in any pair, its group equals the query's (leave-one-out calibration). The reference may be float16;
    on CPU blocks are computed in float32. `device`: a PyTorch device (CPU or GPU), or None for numpy on the CPU
    (what `classify` uses with an ONNX encoder: PyTorch is then never imported). Which of several equal
    similarities at the k-th place is kept is not specified.
    """
    nq, nr = len(queries), len(reference)
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    sims_out = np.full((nq, k), -np.inf, dtype=np.float32)
    idx_out = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or nr == 0:
        return sims_out, idx_out
    if reference_block is None:
        reference_block = max(1024, SEARCH_BLOCK_ELEMENTS // max(1, query_block))
    reference_block = min(reference_block, nr)
    exclude = [(np.asarray(qg), np.asarray(rg)) for qg, rg in exclude]
    if device is None:
        _knn_numpy(queries, reference, k, exclude, query_block, reference_block, progress, sims_out, idx_out)
        return sims_out, idx_out
    import torch

    device = torch.device(device)
    compute = torch.float16 if (device.type == "cuda" and reference.dtype == np.float16) else torch.float32
    # On a GPU the whole reference goes over once; on CPU float32 rows are used in place.
    on_device = None
    if device.type != "cpu":
        on_device = torch.from_numpy(np.ascontiguousarray(reference)).to(device, compute)
        ref_groups_t = [torch.from_numpy(rg).to(device) for _, rg in exclude]
    kk = min(k, nr)
    for q0 in range(0, nq, query_block):
        q1 = min(nq, q0 + query_block)
        q = torch.from_numpy(np.ascontiguousarray(queries[q0:q1], dtype=np.float32)).to(device, compute)
        qgs = [torch.from_numpy(qg[q0:q1]).to(device) for qg, _ in exclude]
        best_s = None
        best_i = None
        for r0 in range(0, nr, reference_block):
            r1 = min(nr, r0 + reference_block)
            if on_device is not None:
                block = on_device[r0:r1]
                rgs = [rg[r0:r1] for rg in ref_groups_t]
            else:
                block = torch.from_numpy(np.ascontiguousarray(reference[r0:r1])).to(torch.float32)
                rgs = [torch.from_numpy(rg[r0:r1]) for _, rg in exclude]
            s = q @ block.T
            for qg, rg in zip(qgs, rgs):
                s.masked_fill_(qg[:, None] == rg[None, :], -math.inf)
            top = min(kk, r1 - r0)
            bs, bi = torch.topk(s, top, dim=1, largest=True, sorted=False)
            bi = bi + r0
            if best_s is None:
                best_s, best_i = bs, bi
            else:
                cs = torch.cat([best_s, bs], dim=1)
                ci = torch.cat([best_i, bi], dim=1)
                if cs.shape[1] > kk:
                    cs, pos = torch.topk(cs, kk, dim=1, largest=True, sorted=False)
                    ci = torch.gather(ci, 1, pos)
                best_s, best_i = cs, ci
        _store_sorted(best_s.float().cpu().numpy(), best_i.cpu().numpy().astype(np.int64), sims_out[q0:q1],
                      idx_out[q0:q1])
        if progress is not None:
            progress(q1 - q0)
    return sims_out, idx_out


def _store_sorted(sims: np.ndarray, idx: np.ndarray, sims_out: np.ndarray, idx_out: np.ndarray) -> None:
    """A query block's best (sims, idx), sorted by decreasing similarity then index, into the output rows."""
    order = np.lexsort((idx, -sims), axis=1) if sims.shape[1] > 1 else np.zeros_like(idx)
    sims = np.take_along_axis(sims, order, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    idx[~np.isfinite(sims)] = -1
    sims[idx < 0] = -np.inf
    sims_out[:, :sims.shape[1]] = sims
    idx_out[:, :idx.shape[1]] = idx


def _knn_numpy(queries, reference, k, exclude, query_block, reference_block, progress, sims_out, idx_out) -> None:
    """knn_search's blocks in numpy (float32), for a process that has not imported PyTorch."""
    nq, nr = len(queries), len(reference)
    kk = min(k, nr)
    for q0 in range(0, nq, query_block):
        q1 = min(nq, q0 + query_block)
        q = np.ascontiguousarray(queries[q0:q1], dtype=np.float32)
        best_s = best_i = None
        for r0 in range(0, nr, reference_block):
            r1 = min(nr, r0 + reference_block)
            s = q @ np.asarray(reference[r0:r1], dtype=np.float32).T                     # [q rows, r rows]
            for qg, rg in exclude:
                s[qg[q0:q1][:, None] == rg[r0:r1][None, :]] = -np.inf
            top = largest_columns(s, min(kk, r1 - r0))
            bs, bi = np.take_along_axis(s, top, axis=1), top + r0
            if best_s is not None:
                bs, bi = np.concatenate([best_s, bs], axis=1), np.concatenate([best_i, bi], axis=1)
                if bs.shape[1] > kk:
                    keep = largest_columns(bs, kk)
                    bs, bi = np.take_along_axis(bs, keep, axis=1), np.take_along_axis(bi, keep, axis=1)
            best_s, best_i = bs, bi
        _store_sorted(best_s, best_i.astype(np.int64), sims_out[q0:q1], idx_out[q0:q1])
        if progress is not None:
            progress(q1 - q0)


def sequence_groups(sequences: Sequence[str]) -> np.ndarray:
    """int32 [n]: equal numbers for identical sequences, numbered by first occurrence."""
    seen: dict[str, int] = {}
    return np.fromiter((seen.setdefault(s, len(seen)) for s in sequences), dtype=np.int32, count=len(sequences))
