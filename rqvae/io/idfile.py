"""The semantic-ID file format: its Parquet schema, a streaming writer, the reader, shard parts and JSON export.

A semantic-ID file holds ``item_id int64, codes fixed_size_list<int32>[L], dedup int32``; sharded encoding
writes a folder of ``part-*.parquet`` files that every reader takes, in name order, as one table. This is
the pipeline's output contract (publish, serving, evaluation and users read it), kept apart from the
embedding readers so that a change to either side is visible as a change to one module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from .formats import common_length, open_parquet, row_group_batches
from .fsutil import atomic_path
from .readers import DEFAULT_BATCH_ROWS, ROW_GROUP_ROWS

log = logging.getLogger(__name__)


def semantic_id_schema(num_levels: int) -> pa.Schema:
    return pa.schema(
        [
            ("item_id", pa.int64()),
            ("codes", pa.list_(pa.int32(), num_levels)),
            ("dedup", pa.int32()),
        ]
    )


class SemanticIdWriter:
    """Stream semantic ids to Parquet row group by row group; the file appears only on a clean close.

    The file is written through :func:`rqvae.io.fsutil.atomic_path`, held open across ``write`` calls:
    ``tmp_path`` is the temporary file while the ``with`` block runs.
    """

    def __init__(self, path: str | Path, num_levels: int) -> None:
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.path = Path(path)
        self.num_levels = num_levels
        self.rows_written = 0
        self.tmp_path: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._target: AbstractContextManager[Path] | None = None

    def __enter__(self) -> SemanticIdWriter:
        self._target = atomic_path(self.path)
        self.tmp_path = self._target.__enter__()
        try:
            self._writer = pq.ParquetWriter(self.tmp_path, semantic_id_schema(self.num_levels))
        except BaseException as error:
            self._finish(error)
            raise
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
        except BaseException as error:
            self._finish(error)
            raise
        self._finish(exc)
        if exc is None:
            log.info("wrote %d semantic ids to %s", self.rows_written, self.path)

    def _finish(self, error: BaseException | None) -> None:
        """Leave the atomic write: rename the file into place, or delete it when ``error`` is set."""
        target, self._target = self._target, None
        if target is not None:
            target.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)


def semantic_id_parts(path: str | Path) -> list[Path]:
    """The Parquet files of a semantic-id dataset: the file itself, or a directory's ``part-*.parquet`` in order.

    Sharded encoding writes one part per shard (or per level-1 group); every reader takes the parts, in name
    order, as one table.
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
    ids = np.empty(n, dtype=np.int64)
    dedup = np.empty(n, dtype=np.int32)
    codes = np.empty((n, code_type.list_size), np.int32) if pa.types.is_fixed_size_list(code_type) else None
    row = 0
    for batch_ids, batch_codes, batch_dedup in _iter_file(file):
        if codes is None:
            codes = np.empty((n, batch_codes.shape[1]), dtype=np.int32)
        stop = row + len(batch_ids)
        ids[row:stop], codes[row:stop], dedup[row:stop] = batch_ids, batch_codes, batch_dedup
        row = stop
    return ids, codes if codes is not None else np.empty((0, 0), dtype=np.int32), dedup


def iter_semantic_ids(path: str | Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(ids, codes [n, L] int32, dedup)`` batch by batch over a semantic-id file or part directory, in order:
    what a check over tens of millions of IDs reads without holding them."""
    levels = None
    for part in semantic_id_parts(path):
        for batch in _iter_file(part):
            if levels is not None and batch[1].shape[1] != levels:
                raise InputError(f"parts disagree on the number of code levels: {levels} and {batch[1].shape[1]}",
                                 path=part)
            levels = batch[1].shape[1]
            yield batch


def _iter_file(file: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    pf = _semantic_id_file(file, ["item_id", "codes", "dedup"])
    levels = None
    for batch in row_group_batches(pf, ["item_id", "codes", "dedup"], DEFAULT_BATCH_ROWS, file):
        if batch.num_rows == 0:
            continue
        if any(column.null_count for column in batch.columns):
            raise InputError("null values in a semantic-id file", path=file)
        batch_ids = batch.column(0).to_numpy()
        batch_codes = batch.column(1)
        width = common_length(pc.list_value_length(batch_codes).to_numpy(), batch_ids, file)
        if levels is not None and width != levels:
            raise InputError(f"code length changes from {levels} to {width}", sample_ids=batch_ids, path=file)
        levels = width
        yield (np.asarray(batch_ids, np.int64), batch_codes.flatten().to_numpy().reshape(-1, width).astype(np.int32),
               batch.column(2).to_numpy().astype(np.int32))


def _semantic_id_file(file: Path, expected: list[str]) -> pq.ParquetFile:
    pf = open_parquet(file)
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
        for batch in row_group_batches(pf, ["item_id", "codes"], DEFAULT_BATCH_ROWS, source):
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
