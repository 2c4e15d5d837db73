"""Barcodes -> embeddings, in memory or streamed into a self-describing HDF5 file, and such files read back.

HDF5 layout (format `barcodetool-embeddings`, version 1; see docs/file-formats.md):

    /ids                 UTF-8 strings [n], input order
    /embeddings          float32 (or float16) [n, dim], chunked
    /lengths             int32 [n], cleaned sequence length in nucleotides
    /taxonomy/<rank>     UTF-8 strings [n] for each rank any input record carries ("" = unknown)
    /bin                 UTF-8 strings [n] when any record carries a BIN
    root attributes      format, format_version, barcodetool_version, model_name, model_sha256, pooling,
                         embedding_dim, dtype, count, source, created, tokenizer (JSON)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._version import __version__
from .errors import InputError, UsageError
from .io.atomic import atomic_hdf5, check_outputs_distinct
from .io.hdf5 import open_hdf5
from .io.readers import ReadOptions, read_barcodes
from .io.streaming import read_ahead
from .model.onnx import OnnxModel
from .model.runtime import autocast
from .model.weights import PretrainedModel, check_model_outputs

if TYPE_CHECKING:  # PyTorch is imported when a model is used, not with the package (`barcodetool --help` is fast)
    import torch

EMBEDDINGS_FORMAT = "barcodetool-embeddings"
EMBEDDINGS_FORMAT_VERSION = 1
Progress = Callable[[int], None]


def model_device(model: PretrainedModel) -> torch.device:
    return next(model.model.parameters()).device


def embed_sequences(model: PretrainedModel, sequences: Sequence[str], *, batch_size: int = 256,
                    progress: Progress | None = None) -> np.ndarray:
    """Embeddings [n, dim] float32 of cleaned sequences, in input order.

    Batches are formed over sequences sorted by length and padded only to their own longest member, so little
    work is spent on padding; padding never changes a barcode's embedding, and in float32 the batch a barcode
    shares moves it by rounding only (~1e-6), in bfloat16 by bf16 rounding (up to ~0.01 in a coordinate; cosine
    to itself above 0.9999). `model` may also be an exported encoder in ONNX Runtime (model.onnx.OnnxModel):
    then PyTorch is not imported.
    """
    if isinstance(model, OnnxModel):
        return _embed_sequences(model, sequences, model.embed_batch, batch_size=batch_size,
                                progress=progress)
    import torch

    network = model.model
    device = model_device(model)
    network.eval()

    def forward(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
        lengths_t = torch.from_numpy(lengths).to(device, non_blocking=True)
        with autocast(device, model.compute):
            return network.embed(ids_t, lengths_t).float().cpu().numpy()

    with torch.inference_mode():
        return _embed_sequences(model, sequences, forward, batch_size=batch_size, progress=progress)


def _embed_sequences(model, sequences: Sequence[str], forward: Callable[[np.ndarray, np.ndarray], np.ndarray],
                     *, batch_size: int, progress: Progress | None) -> np.ndarray:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    tokenizer = model.tokenizer
    n = len(sequences)
    out = np.empty((n, model.embedding_dim), dtype=np.float32)
    if n == 0:
        return out
    k = tokenizer.config.k
    for i, sequence in enumerate(sequences):
        if len(sequence) < k:
            raise InputError(f"sequence {i} has {len(sequence)} nucleotides, fewer than k={k}; it has no k-mer "
                             "to embed", fix="remove it, or use --skip-empty")
    order = np.argsort([-len(s) for s in sequences], kind="stable")
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        ids, lengths = tokenizer.encode_batch([sequences[i] for i in index])
        out[index] = forward(ids, lengths)
        if progress is not None:
            progress(len(index))
    return out


@dataclass
class EmbeddingSet:
    """An embeddings file read back into memory."""

    ids: list[str]
    embeddings: np.ndarray
    lengths: np.ndarray
    taxonomy: dict[str, list[str]] = field(default_factory=dict)
    bins: list[str] | None = None
    attrs: dict = field(default_factory=dict)


class EmbeddingWriter:
    """Appends batches of embeddings to an HDF5 file in input order (resizable, chunked datasets)."""

    def __init__(self, handle, *, dim: int, dtype: str, chunk_rows: int = 4096):
        import h5py

        self.h5 = handle
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self.count = 0
        strings = h5py.string_dtype("utf-8")
        self._strings = strings
        self.ids = handle.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=strings, chunks=(chunk_rows,))
        self.embeddings = handle.create_dataset("embeddings", shape=(0, dim), maxshape=(None, dim),
                                                dtype=self.dtype, chunks=(min(chunk_rows, 1024), dim))
        self.lengths = handle.create_dataset("lengths", shape=(0,), maxshape=(None,), dtype=np.int32,
                                             chunks=(chunk_rows,))
        self.labels: dict[str, object] = {}
        self.chunk_rows = chunk_rows

    def _label_dataset(self, name: str):
        if name not in self.labels:
            dataset = self.h5.create_dataset(name, shape=(self.count,), maxshape=(None,), dtype=self._strings,
                                             chunks=(self.chunk_rows,))
            if self.count:
                dataset[:] = [""] * self.count
            self.labels[name] = dataset
        return self.labels[name]

    def append(self, records: Sequence, vectors: np.ndarray) -> None:
        n = len(records)
        start, end = self.count, self.count + n
        for dataset in (self.ids, self.embeddings, self.lengths, *self.labels.values()):
            dataset.resize(end, axis=0)
        self.ids[start:end] = [r.id for r in records]
        self.embeddings[start:end] = vectors.astype(self.dtype, copy=False)
        self.lengths[start:end] = [len(r.sequence) for r in records]
        names = {f"taxonomy/{rank}" for r in records for rank in r.taxonomy}
        if any(r.bin for r in records):
            names.add("bin")
        for name in sorted(names):
            self._label_dataset(name).resize(end, axis=0)
        for name, dataset in self.labels.items():
            if name == "bin":
                dataset[start:end] = [r.bin or "" for r in records]
            else:
                rank = name.split("/", 1)[1]
                dataset[start:end] = [r.taxonomy.get(rank, "") for r in records]
        self.count = end


def compute_used(model: PretrainedModel) -> str:
    """The arithmetic the embeddings were computed in: "float32", "bfloat16" (values move by bf16 rounding, up
    to ~0.01 with the batch a barcode shares) or "float32, ONNX Runtime"."""
    if isinstance(model, OnnxModel):
        return model.compute
    if model.compute is not None:
        return model.compute
    return "bfloat16" if model_device(model).type == "cuda" else "float32"


def write_attributes(handle, model: PretrainedModel, *, source: str, dtype: str, count: int) -> None:
    handle.attrs.update({
        "format": EMBEDDINGS_FORMAT,
        "format_version": EMBEDDINGS_FORMAT_VERSION,
        "barcodetool_version": __version__,
        "model_name": model.name,
        "model_sha256": model.sha256,
        "pooling": model.pooling,
        "embedding_dim": model.embedding_dim,
        "dtype": dtype,
        "compute": compute_used(model),
        "count": count,
        "source": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": json.dumps(model.tokenizer.config.to_dict()),
    })


@dataclass
class EmbedSummary:
    count: int
    dim: int
    output: str
    model_name: str
    truncated: int = 0


def embed_records_to_h5(records: Iterable, output: str | os.PathLike, model: PretrainedModel, *,
                        source: str = "", batch_size: int = 256, dtype: str = "float32",
                        chunk_records: int = 16384, progress: Progress | None = None) -> EmbedSummary:
    """Stream records (objects with .id, .sequence, .taxonomy, .bin) into an HDF5 file, atomically."""
    if dtype not in {"float32", "float16"}:
        raise UsageError(f"--dtype must be float32 or float16, got {dtype!r}")
    max_length = model.tokenizer.config.max_length
    truncated = 0
    with atomic_hdf5(output) as handle:
        writer = EmbeddingWriter(handle, dim=model.embedding_dim, dtype=dtype)
        for chunk in read_ahead(records, chunk_records):  # the next chunk is read while this one is embedded
            truncated += sum(len(r.sequence) > max_length for r in chunk)
            vectors = embed_sequences(model, [r.sequence for r in chunk], batch_size=batch_size,
                                      progress=progress)
            writer.append(chunk, vectors)
        if writer.count == 0:
            raise InputError("no records to embed", path=source or None)
        write_attributes(handle, model, source=source, dtype=dtype, count=writer.count)
        handle.attrs["truncated"] = truncated
    return EmbedSummary(count=writer.count, dim=model.embedding_dim, output=str(output),
                        model_name=model.name, truncated=truncated)


def embed_file(input_path: str | os.PathLike, output: str | os.PathLike, model: PretrainedModel, *,
               batch_size: int = 256, dtype: str = "float32", read_options: ReadOptions | None = None,
               stats=None, progress: Progress | None = None) -> EmbedSummary:
    """Read barcodes from FASTA or a table and write their embeddings to HDF5."""

    check_outputs_distinct([output], [input_path])
    check_model_outputs(model, output)
    records = read_barcodes(input_path, read_options, stats=stats)
    return embed_records_to_h5(records, output, model, source=os.path.basename(str(input_path)),
                               batch_size=batch_size, dtype=dtype, progress=progress)


def read_embeddings(path: str | os.PathLike) -> EmbeddingSet:
    """An embeddings file written by `barcodetool embed`, read back into memory whole."""
    return read_embedding_rows(path)[0]


def read_embedding_rows(path: str | os.PathLike, max_points: int | None = None,
                        seed: int = 0) -> tuple[EmbeddingSet, int]:
    """(EmbeddingSet of at most `max_points` random rows in file order (all rows when None or fewer), total rows).

    Only the chosen rows are read, block by block, so that a sample of a file larger than memory can be drawn.
    The rows are the same for the same `seed`.
    """
    path = Path(path)
    with open_hdf5(path, format_name=EMBEDDINGS_FORMAT, version=EMBEDDINGS_FORMAT_VERSION, what="embeddings file",
                   fix="give the HDF5 file written by `barcodetool embed`") as handle:
        attrs = dict(handle.attrs)
        try:
            total = len(handle["ids"])
            rows = None
            if max_points is not None and total > max_points:
                rows = np.sort(np.random.default_rng(seed).choice(total, size=max_points, replace=False))
            ids = _read_rows(handle["ids"], rows, strings=True).tolist()
            embeddings = _read_rows(handle["embeddings"], rows).astype(np.float32)
            lengths = _read_rows(handle["lengths"], rows) if "lengths" in handle else np.zeros(len(ids), np.int32)
            taxonomy = {rank: _read_rows(handle["taxonomy"][rank], rows, strings=True).tolist()
                        for rank in handle.get("taxonomy", {})}
            bins = _read_rows(handle["bin"], rows, strings=True).tolist() if "bin" in handle else None
        except KeyError as error:
            raise InputError(f"the embeddings file is incomplete ({error})", path=str(path)) from None
    return EmbeddingSet(ids=ids, embeddings=embeddings, lengths=lengths, taxonomy=taxonomy, bins=bins,
                        attrs=attrs), total


def _read_rows(dataset, rows: np.ndarray | None, *, strings: bool = False, block: int = 65536) -> np.ndarray:
    """Rows (sorted indices, or None = all) of an HDF5 dataset, read block by block: memory holds one block
    and the selected rows, whatever the file's size."""
    source = dataset.asstr() if strings else dataset
    if rows is None:
        return np.asarray(source[:])
    parts = []
    for start in range(0, len(dataset), block):
        lo, hi = np.searchsorted(rows, [start, start + block])
        if hi > lo:
            parts.append(np.asarray(source[start:start + block])[rows[lo:hi] - start])
    return np.concatenate(parts) if parts else np.asarray(source[0:0])
