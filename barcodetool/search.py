"""Exact nearest-neighbour search over embeddings, and grouping of identical sequences.

The primitives under reference indexes, classification and clustering: blocked exact cosine k-NN (matrix products
in bounded memory, on CPU or GPU) and the numbering of identical sequences, so that each is searched once.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .errors import UsageError

SEARCH_BLOCK_ELEMENTS = 1 << 25   # query block x reference block similarities held at once (128 MiB float32)
Progress = Callable[[int], None]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero (or non-finite) rows become zero."""
    vectors = np.nan_to_num(np.asarray(vectors, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


def knn_search(queries: np.ndarray, reference: np.ndarray, k: int, *,
               exclude: Sequence[tuple[np.ndarray, np.ndarray]] = (), query_block: int = 2048,
               reference_block: int | None = None, device=None,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of unit-vector `queries` among unit-vector `reference` rows.

    Returns (similarities float32 [nq, k], indices int64 [nq, k]), each row sorted by decreasing similarity
    (equal similarities by increasing index); slots beyond the number of eligible references hold -inf and -1.
    `exclude` holds (query_groups [nq], reference_groups [nr]) int pairs: a reference row is skipped for a query
    when, in any pair, its group equals the query's (leave-one-out calibration). The reference may be float16;
    on CPU blocks are computed in float32.
    """
    import torch

    nq, nr = len(queries), len(reference)
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    sims_out = np.full((nq, k), -np.inf, dtype=np.float32)
    idx_out = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or nr == 0:
        return sims_out, idx_out
    device = torch.device(device or "cpu")
    compute = torch.float16 if (device.type == "cuda" and reference.dtype == np.float16) else torch.float32
    if reference_block is None:
        reference_block = max(1024, SEARCH_BLOCK_ELEMENTS // max(1, query_block))
    reference_block = min(reference_block, nr)
    exclude = [(np.asarray(qg), np.asarray(rg)) for qg, rg in exclude]
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
        s_np = best_s.float().cpu().numpy()
        i_np = best_i.cpu().numpy().astype(np.int64)
        order = np.lexsort((i_np, -s_np), axis=1) if s_np.shape[1] > 1 else np.zeros_like(i_np)
        s_np = np.take_along_axis(s_np, order, axis=1)
        i_np = np.take_along_axis(i_np, order, axis=1)
        i_np[~np.isfinite(s_np)] = -1
        s_np[i_np < 0] = -np.inf
        sims_out[q0:q1, :s_np.shape[1]] = s_np
        idx_out[q0:q1, :i_np.shape[1]] = i_np
        if progress is not None:
            progress(q1 - q0)
    return sims_out, idx_out


def sequence_groups(sequences: Sequence[str]) -> np.ndarray:
    """int32 [n]: equal numbers for identical sequences, numbered by first occurrence."""
    seen: dict[str, int] = {}
    return np.fromiter((seen.setdefault(s, len(seen)) for s in sequences), dtype=np.int32, count=len(sequences))
