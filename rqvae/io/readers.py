"""Read item embeddings in every layout users actually have, and write the pipeline's embedding Parquet.

Inputs reach millions of rows, so every reader streams Arrow batches and converts them with Arrow/numpy
kernels instead of per-row Python loops. Two views exist on purpose: :func:`iter_tables` is lenient (it
keeps ragged rows and null ids so the pipeline's validation tasks can *report* them), while
:func:`iter_embeddings` / :func:`read_embeddings` are strict (training needs a dense ``[N, D]`` matrix).
Anything unusable raises :class:`~rqvae.errors.InputError` naming the problem, sample ids and the file.
Finding and parsing each format lives in :mod:`rqvae.io.formats`; this module decides what a valid row is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import DEFAULT_BATCH_ROWS  # noqa: F401  (re-exported: the readers' default)
from ..errors import InputError
from .formats import (
    FORMAT_HELP,
    SUPPORTED_FORMATS,
    Format,
    RawBatch,
    Source,
    common_length,
    iter_raw,
    load_npy,
    open_parquet,
    resolve,
)
from .fsutil import atomic_path

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "FORMAT_HELP",
    "ROW_GROUP_ROWS",
    "SUPPORTED_FORMATS",
    "TABLE_SCHEMA",
    "Embeddings",
    "Format",
    "detect_format",
    "embeddings_schema",
    "embeddings_table",
    "iter_embeddings",
    "iter_tables",
    "read_embeddings",
    "row_count",
    "write_embeddings",
]

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 131_072  # rows per Parquet row group the pipeline writes: the unit a row-range read skips by
TABLE_SCHEMA = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])


@dataclass(frozen=True)
class Embeddings:
    """A dense embedding matrix with its item ids (row i of ``vectors`` belongs to ``ids[i]``)."""

    ids: np.ndarray
    vectors: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def detect_format(path: str | Path) -> Format:
    """Name the layout of ``path`` so callers can log or branch on it before reading."""
    return resolve(Path(path)).format


# --------------------------------------------------------------------------------------------- normalising


def _normalise_ids(raw: RawBatch) -> pa.Array:
    """Cast ids to int64 without losing information; fractional, textual or overflowing ids are refused."""
    ids = raw.ids
    kind = ids.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
        raise InputError(
            f"non-integer item ids (type {kind})", sample_ids=ids.drop_null()[:5].to_pylist(), path=raw.file
        )
    try:
        return ids.cast(pa.int64())
    except pa.ArrowInvalid:
        values = ids.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            bad = (
                values[~np.isnan(values) & ((values != np.floor(values)) | (np.abs(values) >= 2.0**63))]
                if values.dtype.kind == "f"
                else values[values > np.iinfo(np.int64).max]
            )
        raise InputError(
            "non-integer item ids (fractional or out of int64 range)",
            sample_ids=bad.tolist(),
            count=len(bad),
            path=raw.file,
        ) from None


def _check_vector_type(raw: RawBatch, ids: pa.Array) -> None:
    kind = raw.vectors.type
    if pa.types.is_null(kind):
        return
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise InputError(
            f"embedding column must be a list of numbers, found type {kind}",
            sample_ids=ids.drop_null()[:5].to_pylist(),
            count=len(ids),
            path=raw.file,
        )
    value_type = kind.value_type
    numeric = (
        pa.types.is_integer(value_type) or pa.types.is_floating(value_type) or pa.types.is_null(value_type)
    )
    if not (numeric or pa.types.is_decimal(value_type)):
        has_values = pc.fill_null(pc.greater(pc.list_value_length(raw.vectors), 0), False)
        samples = ids.filter(has_values).drop_null()[:5].to_pylist()
        raise InputError(
            f"non-numeric embedding values (element type {value_type})",
            sample_ids=samples,
            count=int(pc.sum(has_values).as_py() or 0),
            path=raw.file,
        )


def _to_table(raw: RawBatch) -> pa.Table:
    ids = _normalise_ids(raw)
    _check_vector_type(raw, ids)
    vectors = raw.vectors.cast(pa.list_(pa.float32()))
    return pa.Table.from_arrays([ids, vectors], schema=TABLE_SCHEMA)


def _to_numpy(raw: RawBatch) -> tuple[np.ndarray, np.ndarray]:
    """Strict conversion: no null ids, no null vectors or values, one length for every row."""
    ids_arr = _normalise_ids(raw)
    _check_vector_type(raw, ids_arr)
    if ids_arr.null_count:
        rows = np.flatnonzero(ids_arr.is_null().to_numpy(zero_copy_only=False)) + raw.first_row
        raise InputError(
            f"null item ids at rows {rows[:5].tolist()}", count=ids_arr.null_count, path=raw.file
        )
    ids = ids_arr.to_numpy()
    vectors = raw.vectors
    if pa.types.is_null(vectors.type) or vectors.null_count:
        mask = vectors.is_null().to_numpy(zero_copy_only=False)
        raise InputError("null embeddings", sample_ids=ids[mask], count=int(mask.sum()), path=raw.file)
    if pa.types.is_fixed_size_list(vectors.type):  # one length by type: nothing to count (no null rows here)
        dim = vectors.type.list_size
    else:
        lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False).astype(np.int64)
        dim = common_length(lengths, ids, raw.file)
    values = vectors.flatten()
    if values.null_count:
        row_has_null = values.is_null().to_numpy(zero_copy_only=False).reshape(len(ids), dim).any(axis=1)
        raise InputError(
            "null values inside embeddings",
            sample_ids=ids[row_has_null],
            count=int(row_has_null.sum()),
            path=raw.file,
        )
    return _owned(ids, np.int64), _owned(values.to_numpy(zero_copy_only=False), np.float32).reshape(
        len(ids), dim
    )


def _owned(array: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """Compact writable copy: zero-copy Arrow views are read-only and would pin whole Arrow buffers."""
    return array.astype(dtype, copy=not array.flags.writeable or array.base is not None)

# --------------------------------------------------------------------------------------------- public readers


def iter_tables(
    path: str | Path,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False,
    *,
    ids_path: str | Path | None = None,
) -> Iterator[pa.Table]:
    """Yield ``item_id: int64, embedding: list<float32>`` tables; ragged rows and nulls stay for reporting."""
    total = 0
    for raw in iter_raw(resolve(Path(path), ids_path), batch_rows, allow_pickle):
        table = _to_table(raw)
        total += table.num_rows
        yield table
    if total == 0:
        raise InputError("empty input: no rows found", count=0, path=path)


def iter_embeddings(
    path: str | Path,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False,
    *,
    ids_path: str | Path | None = None,
    rows: tuple[int, int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(ids int64 [n], vectors float32 [n, D])`` batches; any row that breaks density raises.

    ``rows=(start, stop)`` reads only that row range (Parquet inputs; the rows of all parts in file order).
    """
    return _iter_strict(resolve(Path(path), ids_path), batch_rows, allow_pickle, path, rows)


def _iter_strict(
    source: Source, batch_rows: int, allow_pickle: bool, path: str | Path, rows: tuple[int, int] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    dim: int | None = None
    total = 0
    for raw in iter_raw(source, batch_rows, allow_pickle, rows):
        ids, vectors = _to_numpy(raw)
        if dim is not None and vectors.shape[1] != dim:
            raise InputError(
                f"embedding dimension changes from {dim} to {vectors.shape[1]}",
                sample_ids=ids,
                count=len(ids),
                path=raw.file,
            )
        dim = vectors.shape[1]
        total += len(ids)
        yield ids, vectors
    if total == 0:
        raise InputError("empty input: no rows found", count=0, path=path)


def read_embeddings(
    path: str | Path, allow_pickle: bool = False, *, ids_path: str | Path | None = None
) -> Embeddings:
    """Read everything into one matrix, allocated once whenever the row count can be bounded up front."""
    source = resolve(Path(path), ids_path)
    bound = _row_bound(source)
    batches = _iter_strict(source, DEFAULT_BATCH_ROWS, allow_pickle, path)
    if bound is None:
        return _concatenate(batches)
    return _fill(batches, *bound, path)


class EmbeddingRows:
    """The vectors of a Parquet file or folder, read only where asked: ``take(rows)`` streams the input once and
    keeps those rows. Training samples ``max_train_items`` of N, so it never holds the other rows (at 50M x 32
    that is 6.4 GB it would otherwise read whole)."""

    def __init__(self, path: str | Path, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.path = Path(path)
        self.batch_rows = batch_rows
        source = resolve(self.path, None)
        if source.format != "parquet":
            raise InputError("reading only some rows needs a Parquet input", path=path)
        self.shape = (sum(open_parquet(f).metadata.num_rows for f in source.files), _parquet_dim(source))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Vectors [len(rows), D] float32 of the given row numbers (sorted ascending), or of every row (None)."""
        rows = np.arange(self.shape[0]) if rows is None else np.asarray(rows, np.int64)
        if rows.size and (np.any(np.diff(rows) < 0) or rows[0] < 0 or rows[-1] >= self.shape[0]):
            raise ValueError(f"rows must be sorted and within [0, {self.shape[0]})")
        out = np.empty((len(rows), self.shape[1]), np.float32)
        start = 0
        for _, x in iter_embeddings(self.path, self.batch_rows):
            stop = start + len(x)
            lo, hi = np.searchsorted(rows, (start, stop))
            out[lo:hi] = x[rows[lo:hi] - start]
            start = stop
            if hi == len(rows):
                break
        return out


def item_ids_of(path: str | Path) -> np.ndarray:
    """The item ids of a Parquet input, in row order, without reading its vectors."""
    source = resolve(Path(path), None)
    if source.format != "parquet":
        raise InputError("reading only the item ids needs a Parquet input", path=path)
    parts = [open_parquet(f).read(columns=["item_id"]).column(0).to_numpy() for f in source.files]
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)


def _parquet_dim(source: Source) -> int:
    """The vector width of a Parquet input, from its first non-empty batch."""
    for _, x in _iter_strict(source, DEFAULT_BATCH_ROWS, False, source.files[0]):
        return int(x.shape[1])
    raise InputError("no rows to read", path=source.files[0] if source.files else None)


def row_count(path: str | Path) -> int | None:
    """Exact number of rows when the file metadata tells it (Parquet footers, .npy headers); None otherwise.

    Lets progress reporting show a percentage and ETA without a pass over the data.
    """
    source = resolve(Path(path), None)
    bound = _row_bound(source) if source.format in ("parquet", "npy") else None
    return bound[0] if bound else None


def _row_bound(source: Source) -> tuple[int, bool] | None:
    """Rows to allocate and whether that is exact (metadata) or an upper bound (JSON line count)."""
    if source.format == "parquet":
        return sum(open_parquet(f).metadata.num_rows for f in source.files), True
    if source.format == "npy":
        return int(load_npy(source.files[0]).shape[0]), True
    if source.format == "jsonl":
        return sum(_count_lines(f) for f in source.files), False
    return None


def _count_lines(file: Path) -> int:
    """Newline count (+1 for a last line without one): a cheap C-speed pass compared to JSON parsing."""
    count = 0
    last = b"\n"
    with open(file, "rb") as fh:
        while chunk := fh.read(16 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _concatenate(batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> Embeddings:
    ids_parts: list[np.ndarray] = []
    vec_parts: list[np.ndarray] = []
    for ids, vectors in batches:
        ids_parts.append(ids)
        vec_parts.append(vectors)
    return Embeddings(np.concatenate(ids_parts), np.concatenate(vec_parts))


def _fill(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], n: int, exact: bool, path: str | Path
) -> Embeddings:
    """Copy batches into one allocation; with an upper bound the untouched tail pages are never resident."""
    ids_out: np.ndarray | None = None
    vec_out: np.ndarray | None = None
    row = 0
    for ids, vectors in batches:
        if vec_out is None or ids_out is None:
            ids_out = np.empty(n, dtype=np.int64)
            vec_out = np.empty((n, vectors.shape[1]), dtype=np.float32)
        if row + len(ids) > n:
            raise InputError(f"more rows than the {n} announced by the file metadata", path=path)
        ids_out[row : row + len(ids)] = ids
        vec_out[row : row + len(ids)] = vectors
        row += len(ids)
    if ids_out is None or vec_out is None or (exact and row != n):
        raise InputError(f"read {row} rows but the file metadata announced {n}", path=path)
    if row == n:
        return Embeddings(ids_out, vec_out)
    return Embeddings(ids_out[:row], vec_out[:row])


# --------------------------------------------------------------------------------------------- writers


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])


def embeddings_table(ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    """Zero-copy Arrow view of ``ids``/``vectors`` in the pipeline's canonical embedding schema."""
    ids = np.asarray(ids)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or ids.shape != (vectors.shape[0],) or ids.dtype.kind not in "iu":
        raise ValueError(
            f"need integer ids [N] and vectors [N, D]; got ids {ids.dtype} {ids.shape}, "
            f"vectors {vectors.shape}"
        )
    dim = vectors.shape[1]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    return pa.Table.from_arrays(
        [pa.array(ids.astype(np.int64, copy=False)), embedding], schema=embeddings_schema(dim)
    )


def write_embeddings(path: str | Path, ids: np.ndarray, vectors: np.ndarray) -> Path:
    """Write the canonical embedding Parquet (fixed-size lists, ~128k-row groups) atomically."""
    table = embeddings_table(ids, vectors)
    final = Path(path)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    log.info(
        "wrote %d embeddings (dim %d) to %s", table.num_rows, table.schema.field(1).type.list_size, final
    )
    return final

