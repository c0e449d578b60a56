"""Read item embeddings in every layout users actually have, and write the pipeline's Parquet outputs.

Inputs reach millions of rows, so every reader streams Arrow batches and converts them with Arrow/numpy
kernels instead of per-row Python loops. Two views exist on purpose: :func:`iter_tables` is lenient (it
keeps ragged rows and null ids so the pipeline's validation tasks can *report* them), while
:func:`iter_embeddings` / :func:`read_embeddings` are strict (training needs a dense ``[N, D]`` matrix).
Anything unusable raises :class:`~rqvae.errors.InputError` naming the problem, sample ids and the file.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from rqvae.errors import InputError
from rqvae.threads import size_arrow

log = logging.getLogger(__name__)
size_arrow()  # readers decode with Arrow's pool: no more threads than this process may use

Format = Literal["parquet", "npy", "jsonl", "pickle"]
SUPPORTED_FORMATS: tuple[Format, ...] = ("parquet", "npy", "jsonl", "pickle")
FORMAT_HELP = (
    "parquet (a .parquet file or a directory of parts with columns item_id+embedding or anonymous_cid+emb), "
    "npy (a .npy matrix [N, D] with <stem>_ids.npy or ids.npy beside it), "
    'jsonl (part-* / .json / .jsonl files, one {"anonymous_cid": id, "emb": [...]} object a line), '
    "pickle (a .pkl dict item_id -> vector, only with allow_pickle=True)"
)
DEFAULT_BATCH_ROWS = 262_144
ROW_GROUP_ROWS = 131_072
JSON_BLOCK_BYTES = 1 << 20  # Arrow JSON parsing peaks at ~40x the block size: keep blocks small
# Column / key pairs with the same meaning: the pipeline's names first, then the competition's.
COLUMN_PAIRS: tuple[tuple[str, str], ...] = (("item_id", "embedding"), ("anonymous_cid", "emb"))
TABLE_SCHEMA = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])

_SUFFIX_FORMATS: dict[str, Format] = {
    ".parquet": "parquet",
    ".npy": "npy",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".json": "jsonl",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_IGNORED_SUFFIXES = {".tmp", ".crc"}
_MAX_SNAPSHOT_DEPTH = 2


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


@dataclass(frozen=True)
class _Source:
    """A resolved input: its format and the data files to read in order."""

    format: Format
    files: tuple[Path, ...]
    ids_file: Path | None = None


@dataclass(frozen=True)
class _RawBatch:
    """Arrow columns as read, before type normalisation; ``first_row`` locates them in ``file``."""

    ids: pa.Array
    vectors: pa.Array
    file: Path
    first_row: int


# --------------------------------------------------------------------------------------------- detection


def detect_format(path: str | Path) -> Format:
    """Name the layout of ``path`` so callers can log or branch on it before reading."""
    return _resolve(Path(path)).format


def _resolve(path: Path, ids_path: str | Path | None = None) -> _Source:
    if not path.exists():
        raise InputError("input not found", path=path)
    if path.is_dir():
        return _resolve_dir(path, ids_path, depth=0)
    fmt = _file_format(path)
    if fmt is None:
        raise InputError(f"unsupported input format; supported: {FORMAT_HELP}", path=path)
    if fmt == "npy":
        return _Source("npy", (path,), _npy_ids_file(path, ids_path))
    return _Source(fmt, (path,))


def _file_format(path: Path) -> Format | None:
    """Format from the suffix, else from magic bytes (competition parts have no extension)."""
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is not None:
        return fmt
    if path.suffix.lower() in _IGNORED_SUFFIXES:
        return None
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    if head.startswith(b"\x80"):
        return "pickle"
    return None


def _visible(entries: list[Path]) -> list[Path]:
    """Drop markers (``_SUCCESS``), hidden files and temp/checksum files that writers leave behind."""
    return sorted(
        e for e in entries if not e.name.startswith((".", "_")) and e.suffix.lower() not in _IGNORED_SUFFIXES
    )


def _resolve_dir(directory: Path, ids_path: str | Path | None, depth: int) -> _Source:
    entries = _visible(list(directory.iterdir()))
    typed: list[tuple[Path, Format]] = []
    for entry in entries:
        fmt = _file_format(entry) if entry.is_file() else None
        if fmt is not None:
            typed.append((entry, fmt))
    subdirs = [e for e in entries if e.is_dir()]
    if not typed:
        if len(subdirs) == 1 and depth < _MAX_SNAPSHOT_DEPTH:
            return _resolve_dir(subdirs[0], ids_path, depth + 1)
        found = sorted(e.name for e in directory.iterdir())[:10]
        raise InputError(
            f"no data files found (found entries: {found}; markers and hidden files are ignored); "
            f"supported: {FORMAT_HELP}",
            path=directory,
        )
    formats = sorted({fmt for _, fmt in typed})
    if len(formats) > 1:
        raise InputError(f"directory mixes formats {formats}; keep one layout per directory", path=directory)
    fmt = typed[0][1]
    files = tuple(f for f, _ in typed)
    if fmt == "npy":
        return _resolve_npy_dir(directory, files, ids_path)
    if fmt == "pickle" and len(files) > 1:
        raise InputError(f"expected one pickle file, found {[f.name for f in files]}", path=directory)
    return _Source(fmt, files)


def _resolve_npy_dir(directory: Path, files: tuple[Path, ...], ids_path: str | Path | None) -> _Source:
    matrices = [f for f in files if f.name != "ids.npy" and not f.name.endswith("_ids.npy")]
    if len(matrices) != 1:
        raise InputError(
            f"expected one embedding .npy beside its ids .npy, found {[f.name for f in files]}",
            path=directory,
        )
    return _Source("npy", (matrices[0],), _npy_ids_file(matrices[0], ids_path))


def _npy_ids_file(matrix: Path, ids_path: str | Path | None) -> Path:
    candidates = (
        [Path(ids_path)]
        if ids_path is not None
        else [
            matrix.with_name(f"{matrix.stem}_ids.npy"),
            matrix.with_name("ids.npy"),
        ]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(
        f"ids file for the .npy matrix not found; looked for {[str(c) for c in candidates]}", path=matrix
    )


# --------------------------------------------------------------------------------------------- raw readers


def _iter_raw(
    source: _Source, batch_rows: int, allow_pickle: bool, rows: tuple[int, int] | None = None
) -> Iterator[_RawBatch]:
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    log.info("reading %s input: %d file(s) from %s", source.format, len(source.files), source.files[0])
    if rows is not None:
        yield from _iter_window(source, batch_rows, rows)
        return
    for file in source.files:
        if source.format == "parquet":
            yield from _rebatch(_parquet_batches(file, batch_rows), file, batch_rows)
        elif source.format == "jsonl":
            yield from _rebatch(_jsonl_batches(file), file, batch_rows)
        elif source.format == "npy":
            assert source.ids_file is not None
            yield from _npy_batches(file, source.ids_file, batch_rows)
        else:
            yield from _pickle_batches(file, batch_rows, allow_pickle)


def _iter_window(source: _Source, batch_rows: int, rows: tuple[int, int]) -> Iterator[_RawBatch]:
    """Rows ``[start, stop)`` of a Parquet input (in file order), reading only the row groups they touch.

    What lets several workers each encode one shard of a large artifact without reading the others' rows.
    """
    start, stop = rows
    if source.format != "parquet":
        raise InputError(f"reading a row range needs a Parquet input, got {source.format}", path=source.files[0])
    if not 0 <= start <= stop:
        raise ValueError(f"bad row range [{start}, {stop})")
    offset = 0
    for file in source.files:
        if offset >= stop:
            break
        pf = _open_parquet(file)
        if offset + pf.metadata.num_rows > start:
            yield from _rebatch(_parquet_window(pf, file, batch_rows, start - offset, stop - offset), file, batch_rows)
        offset += pf.metadata.num_rows
    if offset < stop:
        raise InputError(f"row range [{start}, {stop}) is past the end of the input ({offset} rows)",
                         path=source.files[0])


def _parquet_window(
    pf: pq.ParquetFile, file: Path, batch_rows: int, start: int, stop: int
) -> Iterator[tuple[pa.Array, pa.Array]]:
    """Rows ``[start, stop)`` of one file (clipped to it), row group by row group."""
    columns = list(_pick_columns(pf.schema_arrow.names, file))
    first = 0
    for group in range(pf.metadata.num_row_groups):
        size = pf.metadata.row_group(group).num_rows
        lo, hi = max(start - first, 0), min(stop - first, size)
        first += size
        if lo >= hi:
            continue
        try:
            table = pf.read_row_group(group, columns=columns).slice(lo, hi - lo)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"corrupt Parquet data ({exc})", path=file) from exc
        for batch in table.combine_chunks().to_batches(max_chunksize=batch_rows):
            yield batch.column(0), batch.column(1)


def _rebatch(parts: Iterator[tuple[pa.Array, pa.Array]], file: Path, batch_rows: int) -> Iterator[_RawBatch]:
    """Regroup reader-sized pieces into ``batch_rows`` batches so consumers see predictable sizes."""
    pending: list[tuple[pa.Array, pa.Array]] = []
    pending_rows = 0
    row = 0
    for ids, vectors in parts:
        if len(ids) == 0:
            continue
        pending.append((ids, vectors))
        pending_rows += len(ids)
        while pending_rows >= batch_rows:
            ids_all, vec_all = _concat(pending)
            yield _RawBatch(ids_all.slice(0, batch_rows), vec_all.slice(0, batch_rows), file, row)
            row += batch_rows
            pending = [(ids_all.slice(batch_rows), vec_all.slice(batch_rows))]
            pending_rows -= batch_rows
    if pending_rows:
        ids_all, vec_all = _concat(pending)
        yield _RawBatch(ids_all, vec_all, file, row)


def _concat(pieces: list[tuple[pa.Array, pa.Array]]) -> tuple[pa.Array, pa.Array]:
    if len(pieces) == 1:
        return pieces[0]
    return pa.concat_arrays([p[0] for p in pieces]), pa.concat_arrays([p[1] for p in pieces])


def _open_parquet(file: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"corrupt or truncated Parquet file ({exc})", path=file) from exc


def _pick_columns(found: list[str], file: Path, kind: str = "columns") -> tuple[str, str]:
    for id_col, vec_col in COLUMN_PAIRS:
        if id_col in found and vec_col in found:
            return id_col, vec_col
    expected = " or ".join(f"{a}+{b}" for a, b in COLUMN_PAIRS)
    raise InputError(f"missing {kind}: expected {expected}, found {sorted(found)}", path=file)


def _parquet_batches(file: Path, batch_rows: int) -> Iterator[tuple[pa.Array, pa.Array]]:
    pf = _open_parquet(file)
    for batch in _row_group_batches(pf, list(_pick_columns(pf.schema_arrow.names, file)), batch_rows, file):
        yield batch.column(0), batch.column(1)


def _row_group_batches(
    pf: pq.ParquetFile, columns: list[str], batch_rows: int, file: Path
) -> Iterator[pa.RecordBatch]:
    """Read one row group at a time: a whole-file iter_batches pre-buffers every row group (~1.2x data)."""
    try:
        for group in range(pf.metadata.num_row_groups):
            yield from pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"corrupt Parquet data ({exc})", path=file) from exc


def _jsonl_batches(file: Path) -> Iterator[tuple[pa.Array, pa.Array]]:
    """Parse with Arrow's streaming JSON reader; only on failure scan lines to name the bad one."""
    id_key, vec_key = _json_keys(file)
    schema = pa.schema([(id_key, pa.int64()), (vec_key, pa.list_(pa.float32()))])
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    rows_ok = 0
    try:
        reader = pj.open_json(
            file, read_options=pj.ReadOptions(block_size=JSON_BLOCK_BYTES), parse_options=parse
        )
        for batch in reader:
            yield batch.column(0), batch.column(1)
            rows_ok += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise _locate_json_error(file, id_key, vec_key, rows_ok, exc) from exc


def _json_keys(file: Path) -> tuple[str, str]:
    """Pick the key pair from the first object; a broken first line is reported like any other."""
    with open(file, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise InputError(f"broken JSON at line {lineno}: {exc}", path=file) from exc
            if not isinstance(obj, dict):
                raise InputError(f"line {lineno} is not a JSON object", path=file)
            return _pick_columns(list(obj), file, kind=f"keys at line {lineno}")
    raise InputError("empty input: JSON lines file has no rows", count=0, path=file)


def _locate_json_error(file: Path, id_key: str, vec_key: str, rows_ok: int, cause: Exception) -> InputError:
    """Find the first unusable line after the ``rows_ok`` rows Arrow already parsed."""
    seen = 0
    with open(file, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            seen += 1
            if seen <= rows_ok:
                continue
            reason, item_id = _json_line_problem(line, id_key, vec_key)
            if reason is not None:
                samples = [item_id] if item_id is not None else []
                return InputError(f"{reason} at line {lineno}", sample_ids=samples, path=file)
    return InputError(f"cannot parse JSON lines ({cause})", path=file)


def _json_line_problem(line: bytes, id_key: str, vec_key: str) -> tuple[str | None, object]:
    text = line.rstrip(b"\r\n")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        # A cut-off line usually still starts with its id: recover it so the message names the item.
        found = re.search(rb'"' + re.escape(id_key.encode()) + rb'"\s*:\s*(-?\d+)', text)
        where = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return f"broken JSON line ({where})", int(found.group(1)) if found else None
    if not isinstance(obj, dict):
        return "JSON line is not an object", None
    item_id = obj.get(id_key)
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, int)):
        return f"non-integer item id {item_id!r}", item_id
    if item_id is not None and not -(2**63) <= item_id < 2**63:
        return f"item id {item_id} out of int64 range", item_id
    vector = obj.get(vec_key)
    if vector is not None and not isinstance(vector, list):
        return f"embedding is not a list (got {type(vector).__name__})", item_id
    if vector is not None and any(isinstance(v, bool) or not isinstance(v, int | float) for v in vector):
        return "non-numeric embedding values", item_id
    return None, item_id


def _npy_batches(matrix_file: Path, ids_file: Path, batch_rows: int) -> Iterator[_RawBatch]:
    matrix = _load_npy(matrix_file)
    ids = _load_npy(ids_file)
    if matrix.ndim != 2 or matrix.dtype.kind not in "iuf":
        raise InputError(
            f"expected a numeric 2-D matrix [N, D], found {matrix.dtype} {matrix.shape}", path=matrix_file
        )
    if ids.ndim != 1 or len(ids) != len(matrix):
        raise InputError(f"ids shape {ids.shape} does not match the {len(matrix)} matrix rows", path=ids_file)
    dim = matrix.shape[1]
    for start in range(0, len(matrix), batch_rows):
        block = np.ascontiguousarray(matrix[start : start + batch_rows], dtype=np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)
        yield _RawBatch(pa.array(np.asarray(ids[start : start + batch_rows])), vectors, matrix_file, start)


def _load_npy(file: Path) -> np.ndarray:
    """Memory-map so huge matrices are read batch by batch; object arrays are refused (they unpickle)."""
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read .npy file ({exc})", path=file) from exc


def _pickle_batches(file: Path, batch_rows: int, allow_pickle: bool) -> Iterator[_RawBatch]:
    data = _load_pickle(file, allow_pickle)
    items = iter(data.items())
    row = 0
    while chunk := list(islice(items, batch_rows)):
        keys = [k for k, _ in chunk]
        yield _RawBatch(
            _pickle_ids(keys, file), _pickle_vectors(keys, [v for _, v in chunk], file), file, row
        )
        row += len(chunk)


def _load_pickle(file: Path, allow_pickle: bool) -> dict:
    if not allow_pickle:
        raise InputError(
            "refusing to read a pickle: loading a pickle can execute arbitrary code. Convert it to Parquet, "
            "or pass allow_pickle=True (CLI: --allow-pickle) only for files you trust",
            path=file,
        )
    try:
        with open(file, "rb") as fh:
            data = pickle.load(fh)  # noqa: S301 - explicitly allowed by the caller
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise InputError(f"corrupt or unreadable pickle ({exc!r})", path=file) from exc
    if not isinstance(data, dict):
        raise InputError(f"pickle must hold a dict item_id -> vector, found {type(data).__name__}", path=file)
    return data


def _pickle_ids(keys: list[object], file: Path) -> pa.Array:
    bad = [k for k in keys if isinstance(k, bool) or not isinstance(k, int | np.integer)]
    if bad:
        raise InputError("non-integer item ids (pickle keys)", sample_ids=bad, count=len(bad), path=file)
    try:
        return pa.array(np.asarray(keys, dtype=np.int64))
    except OverflowError as exc:
        raise InputError("item ids do not fit int64", sample_ids=keys[:5], path=file) from exc


def _pickle_vectors(keys: list[object], values: list[object], file: Path) -> pa.Array:
    """Pickled values are Python objects already, so one pass per row is unavoidable; it stays cheap."""
    rows: list[np.ndarray] = []
    nulls = np.zeros(len(values), dtype=bool)
    bad: list[object] = []
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        if value is None:
            nulls[i] = True
            continue
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):  # ragged nested sequences
            arr = np.asarray(None)
        if arr.ndim != 1 or arr.dtype.kind not in "iuf":
            bad.append(key)
            continue
        rows.append(arr.astype(np.float32, copy=False))
    if bad:
        raise InputError(
            "non-numeric embedding values (pickle values must be 1-D numeric vectors)",
            sample_ids=bad,
            count=len(bad),
            path=file,
        )
    lengths = np.zeros(len(values), dtype=np.int64)
    lengths[~nulls] = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=pa.array(nulls))


# --------------------------------------------------------------------------------------------- normalising


def _normalise_ids(raw: _RawBatch) -> pa.Array:
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


def _check_vector_type(raw: _RawBatch, ids: pa.Array) -> None:
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


def _to_table(raw: _RawBatch) -> pa.Table:
    ids = _normalise_ids(raw)
    _check_vector_type(raw, ids)
    vectors = raw.vectors.cast(pa.list_(pa.float32()))
    return pa.Table.from_arrays([ids, vectors], schema=TABLE_SCHEMA)


def _to_numpy(raw: _RawBatch) -> tuple[np.ndarray, np.ndarray]:
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
    lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False).astype(np.int64)
    dim = _common_length(lengths, ids, raw.file)
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


def _common_length(lengths: np.ndarray, ids: np.ndarray, file: Path) -> int:
    dim = int(lengths[0])
    if lengths.min() != lengths.max():
        values, counts = np.unique(lengths, return_counts=True)
        dim = int(values[np.argmax(counts)])
        odd = lengths != dim
        others = sorted(set(values.tolist()) - {dim})
        raise InputError(
            f"ragged embeddings: most rows have {dim} values but some have {others}",
            sample_ids=ids[odd],
            count=int(odd.sum()),
            path=file,
        )
    if dim == 0:
        raise InputError("empty embedding vectors (0 values)", sample_ids=ids, count=len(ids), path=file)
    return dim


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
    for raw in _iter_raw(_resolve(Path(path), ids_path), batch_rows, allow_pickle):
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
    return _iter_strict(_resolve(Path(path), ids_path), batch_rows, allow_pickle, path, rows)


def _iter_strict(
    source: _Source, batch_rows: int, allow_pickle: bool, path: str | Path, rows: tuple[int, int] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    dim: int | None = None
    total = 0
    for raw in _iter_raw(source, batch_rows, allow_pickle, rows):
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
    source = _resolve(Path(path), ids_path)
    bound = _row_bound(source)
    batches = _iter_strict(source, DEFAULT_BATCH_ROWS, allow_pickle, path)
    if bound is None:
        return _concatenate(batches)
    return _fill(batches, *bound, path)


def row_count(path: str | Path) -> int | None:
    """Exact number of rows when the file metadata tells it (Parquet footers, .npy headers); None otherwise.

    Lets progress reporting show a percentage and ETA without a pass over the data.
    """
    source = _resolve(Path(path), None)
    bound = _row_bound(source) if source.format in ("parquet", "npy") else None
    return bound[0] if bound else None


def _row_bound(source: _Source) -> tuple[int, bool] | None:
    """Rows to allocate and whether that is exact (metadata) or an upper bound (JSON line count)."""
    if source.format == "parquet":
        return sum(_open_parquet(f).metadata.num_rows for f in source.files), True
    if source.format == "npy":
        return int(_load_npy(source.files[0]).shape[0]), True
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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield ``<path>.tmp`` and move it over ``path`` only on success, so readers never see half a file."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def replace_dir(staging: Path, final: Path, aside: Path) -> None:
    """Put the complete folder ``staging`` at ``final``; an existing ``final`` is renamed to ``aside``, then deleted.

    Two renames because a directory cannot replace a non-empty one: a crash between them leaves ``aside``
    complete, for the caller's clean-up to restore or delete.
    """
    if final.exists():
        os.rename(final, aside)
        os.rename(staging, final)
        shutil.rmtree(aside)
    else:
        os.rename(staging, final)


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


def semantic_id_schema(num_levels: int) -> pa.Schema:
    return pa.schema(
        [
            ("item_id", pa.int64()),
            ("codes", pa.list_(pa.int32(), num_levels)),
            ("dedup", pa.int32()),
        ]
    )


class SemanticIdWriter:
    """Stream semantic ids to Parquet row group by row group; the file appears only on a clean close."""

    def __init__(self, path: str | Path, num_levels: int) -> None:
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.num_levels = num_levels
        self.rows_written = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> SemanticIdWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.tmp_path, semantic_id_schema(self.num_levels))
        return self

    def write(self, ids: np.ndarray, codes: np.ndarray, dedup: np.ndarray) -> None:
        if self._writer is None:
            raise RuntimeError("SemanticIdWriter.write() must be called inside its `with` block")
        ids, codes, dedup = np.asarray(ids), np.asarray(codes), np.asarray(dedup)
        n = len(ids)
        if ids.ndim != 1 or codes.shape != (n, self.num_levels) or dedup.shape != (n,):
            raise ValueError(
                f"expected ids [n], codes [n, {self.num_levels}], dedup [n]; got "
                f"{ids.shape}, {codes.shape}, {dedup.shape}"
            )
        if any(a.dtype.kind not in "iu" for a in (ids, codes, dedup)):
            raise ValueError("ids, codes and dedup must be integer arrays")
        flat = pa.array(np.ascontiguousarray(codes, dtype=np.int32).reshape(-1))
        table = pa.Table.from_arrays(
            [
                pa.array(ids.astype(np.int64, copy=False)),
                pa.FixedSizeListArray.from_arrays(flat, self.num_levels),
                pa.array(dedup.astype(np.int32, copy=False)),
            ],
            schema=semantic_id_schema(self.num_levels),
        )
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows_written += n

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        except BaseException:
            self.tmp_path.unlink(missing_ok=True)
            raise
        if exc_type is not None:
            self.tmp_path.unlink(missing_ok=True)
            return
        os.replace(self.tmp_path, self.path)
        log.info("wrote %d semantic ids to %s", self.rows_written, self.path)


def semantic_id_parts(path: str | Path) -> list[Path]:
    """The Parquet files of a semantic-id dataset: the file itself, or a directory's ``part-*.parquet`` in order.

    Sharded encoding writes one part per shard; every reader takes the parts, in name order, as one table.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    parts = sorted(path.glob("part-*.parquet"))
    if not parts:
        raise InputError("no part-*.parquet files in the semantic-id directory", path=path)
    return parts


def read_semantic_ids(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load ``(ids int64 [N], codes int32 [N, L], dedup int32 [N])`` from a semantic-id file or part directory."""
    parts = [_read_semantic_id_file(part) for part in semantic_id_parts(path)]
    if len(parts) == 1:
        return parts[0]
    widths = {p[1].shape[1] for p in parts if len(p[0])}
    if len(widths) > 1:
        raise InputError(f"parts disagree on the number of code levels: {sorted(widths)}", path=path)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def merge_semantic_ids(parts_dir: str | Path, out_path: str | Path) -> int:
    """Copy a part directory into one semantic-id file (row groups streamed, order kept); returns rows written."""
    files = semantic_id_parts(parts_dir)
    schema = _semantic_id_file(files[0], ["item_id", "codes", "dedup"]).schema_arrow
    written = 0
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for file in files:
            pf = _semantic_id_file(file, ["item_id", "codes", "dedup"])
            if not pf.schema_arrow.equals(schema):
                raise InputError(f"schema {pf.schema_arrow} differs from the first part's {schema}", path=file)
            for group in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(group)
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                written += table.num_rows
    log.info("merged %d semantic-id part(s), %d rows, into %s", len(files), written, out_path)
    return written


def _read_semantic_id_file(file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pf = _semantic_id_file(file, ["item_id", "codes", "dedup"])
    n = pf.metadata.num_rows
    code_type = pf.schema_arrow.field("codes").type
    levels = code_type.list_size if pa.types.is_fixed_size_list(code_type) else None
    ids = np.empty(n, dtype=np.int64)
    dedup = np.empty(n, dtype=np.int32)
    codes: np.ndarray | None = np.empty((n, levels), dtype=np.int32) if levels is not None else None
    row = 0
    for batch in _row_group_batches(pf, ["item_id", "codes", "dedup"], DEFAULT_BATCH_ROWS, file):
        if batch.num_rows == 0:
            continue
        if any(column.null_count for column in batch.columns):
            raise InputError("null values in a semantic-id file", path=file)
        batch_ids = batch.column(0).to_numpy()
        batch_codes = batch.column(1)
        width = _common_length(pc.list_value_length(batch_codes).to_numpy(), batch_ids, file)
        if codes is None:
            levels = width
            codes = np.empty((n, width), dtype=np.int32)
        if width != levels:
            raise InputError(f"code length changes from {levels} to {width}", sample_ids=batch_ids, path=file)
        stop = row + batch.num_rows
        ids[row:stop] = batch_ids
        codes[row:stop] = batch_codes.flatten().to_numpy().reshape(-1, width)
        dedup[row:stop] = batch.column(2).to_numpy()
        row = stop
    return ids, codes if codes is not None else np.empty((0, 0), dtype=np.int32), dedup


def _semantic_id_file(file: Path, expected: list[str]) -> pq.ParquetFile:
    pf = _open_parquet(file)
    missing = [c for c in expected if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(
            f"missing columns {missing}: expected {expected}, found {pf.schema_arrow.names}", path=file
        )
    return pf


def write_json_dict(ids_parquet: str | Path, json_path: str | Path) -> int:
    """Export ``{"<item_id>": [c0, ..., cL-1], ...}`` (the file inference reads), streamed and atomic.

    Rows are rendered to text by Arrow string kernels and written straight from the Arrow buffer, so
    millions of items never become Python objects.
    """
    source = Path(ids_parquet)
    pf = _semantic_id_file(source, ["item_id", "codes"])
    written = 0
    with atomic_path(json_path) as tmp, open(tmp, "wb") as out:
        out.write(b"{")
        for batch in _row_group_batches(pf, ["item_id", "codes"], DEFAULT_BATCH_ROWS, source):
            if batch.num_rows == 0:
                continue
            text = _json_rows(batch.column(0), batch.column(1), source)
            out.write(text[1:] if written == 0 else text)  # the first row has no leading comma
            written += batch.num_rows
        out.write(b"\n}\n" if written else b"}\n")
    log.info("wrote %d semantic ids as JSON to %s", written, json_path)
    return written


def _json_rows(ids: pa.Array, codes: pa.Array, source: Path) -> memoryview:
    """Render ``,\\n"<id>": [c0, c1]`` per row and return the concatenated bytes of the whole batch."""
    if ids.null_count or codes.null_count:
        raise InputError("null item ids or codes in a semantic-id file", path=source)
    code_text = pc.binary_join(codes.cast(pa.list_(pa.string())), ", ")
    rows = pc.binary_join_element_wise(',\n"', ids.cast(pa.string()), '": [', code_text, "]", "")
    offset_type = np.int64 if pa.types.is_large_string(rows.type) else np.int32
    offsets = np.frombuffer(rows.buffers()[1], dtype=offset_type)[rows.offset : rows.offset + len(rows) + 1]
    return memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]
