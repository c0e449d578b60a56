"""Find out which layout an input has and read its rows as raw Arrow columns, one reader per format.

Private to :mod:`rqvae.io.readers` and :mod:`rqvae.io.idfile`: what is here knows files and formats (suffixes, magic
bytes, snapshot folders, column names, JSON line errors, pickles) but not what a valid embedding is, which
:mod:`rqvae.io.readers` decides. Kept apart so each of the two stays small enough to read in one go.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)

Format = Literal["parquet", "npy", "jsonl", "pickle"]
SUPPORTED_FORMATS: tuple[Format, ...] = ("parquet", "npy", "jsonl", "pickle")
FORMAT_HELP = (
    "parquet (a .parquet file or a directory of parts with columns item_id+embedding or anonymous_cid+emb), "
    "npy (a .npy matrix [N, D] with <stem>_ids.npy or ids.npy beside it), "
    'jsonl (part-* / .json / .jsonl files, one {"anonymous_cid": id, "emb": [...]} object a line), '
    "pickle (a .pkl dict item_id -> vector, only with allow_pickle=True)"
)
JSON_BLOCK_BYTES = 1 << 20  # Arrow JSON parsing peaks at ~40x the block size: keep blocks small
# Column / key pairs with the same meaning: the pipeline's names first, then the competition's.
COLUMN_PAIRS: tuple[tuple[str, str], ...] = (("item_id", "embedding"), ("anonymous_cid", "emb"))

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
class Source:
    """A resolved input: its format and the data files to read in order."""

    format: Format
    files: tuple[Path, ...]
    ids_file: Path | None = None


@dataclass(frozen=True)
class RawBatch:
    """Arrow columns as read, before type normalisation; ``first_row`` locates them in ``file``."""

    ids: pa.Array
    vectors: pa.Array
    file: Path
    first_row: int


# --------------------------------------------------------------------------------------------- detection


def resolve(path: Path, ids_path: str | Path | None = None) -> Source:
    """The format and data files of ``path`` (a file or a snapshot folder); unusable inputs raise InputError."""
    if not path.exists():
        raise InputError("input not found", path=path)
    if path.is_dir():
        return _resolve_dir(path, ids_path, depth=0)
    fmt = _file_format(path)
    if fmt is None:
        raise InputError(f"unsupported input format; supported: {FORMAT_HELP}", path=path)
    if fmt == "npy":
        return Source("npy", (path,), _npy_ids_file(path, ids_path))
    return Source(fmt, (path,))


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


def _resolve_dir(directory: Path, ids_path: str | Path | None, depth: int) -> Source:
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
    return Source(fmt, files)


def _resolve_npy_dir(directory: Path, files: tuple[Path, ...], ids_path: str | Path | None) -> Source:
    matrices = [f for f in files if f.name != "ids.npy" and not f.name.endswith("_ids.npy")]
    if len(matrices) != 1:
        raise InputError(
            f"expected one embedding .npy beside its ids .npy, found {[f.name for f in files]}",
            path=directory,
        )
    return Source("npy", (matrices[0],), _npy_ids_file(matrices[0], ids_path))


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


def iter_raw(
    source: Source, batch_rows: int, allow_pickle: bool, rows: tuple[int, int] | None = None
) -> Iterator[RawBatch]:
    """Columns of every file in ``batch_rows`` batches, as read (``rows``: only that range of a Parquet input)."""
    if batch_rows <= 0:
        raise ConfigError(f"batch_rows must be positive, got {batch_rows}")
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


def _iter_window(source: Source, batch_rows: int, rows: tuple[int, int]) -> Iterator[RawBatch]:
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
        pf = open_parquet(file)
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


def _rebatch(parts: Iterator[tuple[pa.Array, pa.Array]], file: Path, batch_rows: int) -> Iterator[RawBatch]:
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
            yield RawBatch(ids_all.slice(0, batch_rows), vec_all.slice(0, batch_rows), file, row)
            row += batch_rows
            pending = [(ids_all.slice(batch_rows), vec_all.slice(batch_rows))]
            pending_rows -= batch_rows
    if pending_rows:
        ids_all, vec_all = _concat(pending)
        yield RawBatch(ids_all, vec_all, file, row)


def _concat(pieces: list[tuple[pa.Array, pa.Array]]) -> tuple[pa.Array, pa.Array]:
    if len(pieces) == 1:
        return pieces[0]
    return pa.concat_arrays([p[0] for p in pieces]), pa.concat_arrays([p[1] for p in pieces])


def open_parquet(file: Path) -> pq.ParquetFile:
    """Open a Parquet file; an unreadable footer becomes an InputError naming the file."""
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
    pf = open_parquet(file)
    for batch in row_group_batches(pf, list(_pick_columns(pf.schema_arrow.names, file)), batch_rows, file):
        yield batch.column(0), batch.column(1)


def row_group_batches(
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


def _npy_batches(matrix_file: Path, ids_file: Path, batch_rows: int) -> Iterator[RawBatch]:
    matrix = load_npy(matrix_file)
    ids = load_npy(ids_file)
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
        yield RawBatch(pa.array(np.asarray(ids[start : start + batch_rows])), vectors, matrix_file, start)


def load_npy(file: Path) -> np.ndarray:
    """Memory-map so huge matrices are read batch by batch; object arrays are refused (they unpickle)."""
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read .npy file ({exc})", path=file) from exc


def _pickle_batches(file: Path, batch_rows: int, allow_pickle: bool) -> Iterator[RawBatch]:
    data = _load_pickle(file, allow_pickle)
    items = iter(data.items())
    row = 0
    while chunk := list(islice(items, batch_rows)):
        keys = [k for k, _ in chunk]
        yield RawBatch(
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


def common_length(lengths: np.ndarray, ids: np.ndarray, file: Path) -> int:
    """The one list length of a batch (embedding dim, code levels); ragged or empty rows raise with samples."""
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
