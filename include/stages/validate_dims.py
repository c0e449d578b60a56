"""Stage `validate_dims`: check the loaded embeddings before a GPU hour is spent training on them.

Per-row statistics (vector length, NaN/Inf count, L2 norm, largest |value|, the id) are computed with
pyarrow + numpy one row group at a time. Each group keeps in full only its rows that could break a rule decided
row by row (a null id, NaN/Inf, a norm or value out of bounds); every row keeps just its id and length (13
bytes), since duplicate ids and the inferred dimension are known only once all rows are seen. The Great
Expectations suite then checks those suspect rows, reported against the full row count, and the row count
itself (see :func:`include.gx_suites.split_batches`): seconds at 5.7M items, and bounded memory at 50M.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from include.files import write_json_atomic
from include.gx_rules import input_expectations
from include.gx_suites import ID_COLUMN, ROW_COLUMN, duplicated_rows, preload, run_suite, split_batches
from include.results import DimsChecked

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rqvae.config import InputChecks

log = logging.getLogger(__name__)


def row_stats(artifact: str | Path) -> pd.DataFrame:
    """One row per item: item_id (nullable), row, dim, nonfinite, norm, max_abs, streamed by row group."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from rqvae.threads import size_arrow

    size_arrow()  # Arrow decodes on its own pool: no more threads than the task may use
    parquet = pq.ParquetFile(artifact)
    parts: list[dict[str, np.ndarray]] = []
    offset = 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=[ID_COLUMN, "embedding"])
        stats = _group_stats(table)
        stats[ROW_COLUMN] = np.arange(offset, offset + table.num_rows, dtype=np.int64)
        offset += table.num_rows
        parts.append(stats)
    columns = [ID_COLUMN, ROW_COLUMN, "dim", "nonfinite", "norm", "max_abs"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="Int64" if c == ID_COLUMN else "float64") for c in columns})
    ids = np.concatenate([p[ID_COLUMN] for p in parts])
    id_null = np.concatenate([p["id_null"] for p in parts])
    merged = {c: np.concatenate([p[c] for p in parts]) for c in columns[1:]}
    return pd.DataFrame({ID_COLUMN: pd.arrays.IntegerArray(ids, id_null), **merged}, copy=False)  # fresh arrays


def _group_stats(table: pa.Table) -> dict[str, np.ndarray]:
    """Statistics of one row group; a zero-copy reshape when every row has the same length and no nulls."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = table.column(ID_COLUMN).combine_chunks()
    id_null = ids.is_null().to_numpy(zero_copy_only=False)
    id_values = (ids.fill_null(0) if ids.null_count else ids).to_numpy(zero_copy_only=False).astype(np.int64)

    vectors = table.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_list(vectors.type) and vectors.null_count:
        vectors = vectors.cast(pa.list_(vectors.type.value_type))  # null vectors: length 0, as in list columns
    if pa.types.is_fixed_size_list(vectors.type):
        lengths = np.full(len(vectors), vectors.type.list_size, dtype=np.int64)
    else:
        lengths = pc.list_value_length(vectors).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values_arr = vectors.flatten()  # null vectors contribute nothing; null elements become NaN
    if values_arr.null_count:
        values_arr = values_arr.fill_null(float("nan"))
    values = values_arr.to_numpy(zero_copy_only=False)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    n = len(lengths)

    nonfinite = np.zeros(n, dtype=np.int64)
    sumsq = np.zeros(n, dtype=np.float64)
    max_abs = np.zeros(n, dtype=np.float64)
    width = int(lengths[0]) if n else 0
    if n and width > 0 and bool((lengths == width).all()):
        matrix = values.reshape(n, width)  # float32 stays float32; only the sum of squares needs float64
        nonfinite = np.count_nonzero(~np.isfinite(matrix), axis=1)
        sumsq = np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)
        max_abs = np.abs(matrix).max(axis=1).astype(np.float64)
    elif values.size:
        # Ragged group: reduce over each row's slice. Empty rows keep zeros; consecutive non-empty starts
        # delimit exactly each row's values, which is what reduceat needs.
        values = values.astype(np.float64, copy=False)
        filled = lengths > 0
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[filled]
        nonfinite[filled] = np.add.reduceat((~np.isfinite(values)).astype(np.int64), starts)
        sumsq[filled] = np.add.reduceat(values * values, starts)
        max_abs[filled] = np.maximum.reduceat(np.abs(values), starts)
    return {
        ID_COLUMN: id_values,
        "id_null": id_null,
        "dim": lengths.astype(np.int32),
        "nonfinite": nonfinite.astype(np.int32),
        "norm": np.sqrt(sumsq),
        "max_abs": max_abs,
    }


def suspect_stats(artifact: str | Path, rules: list, expected_dim: int) -> tuple[pd.DataFrame, int, int]:
    """(row statistics of every row that could break a row rule, the row count, the dimension checked).

    The frame has :func:`row_stats`'s columns and holds a superset of the rows GX would fail on the full frame
    (the same predicates, :func:`include.gx_suites.suspect_rows`), in row order; rows suspect only through a
    duplicate id or a wrong length are read again at the end (a second look at their row groups: bad input only).
    ``expected_dim`` 0: the most common non-zero length.
    """
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from include.gx_suites import is_row_rule, suspect_rows
    from rqvae.threads import size_arrow

    size_arrow()
    local = [r for r in rules if is_row_rule(r) and r.expectation_type != "expect_column_values_to_be_unique"
             and getattr(r, "column", None) != "dim"]
    parquet = pq.ParquetFile(artifact)
    n = parquet.metadata.num_rows
    ids, null, dims = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, np.int32)
    kept: list[pd.DataFrame] = []
    offset = 0
    for group in range(parquet.num_row_groups):
        frame = _group_frame(parquet, group, offset)
        rows = slice(offset, offset + len(frame))
        ids[rows] = frame[ID_COLUMN].to_numpy(dtype="int64", na_value=0)
        null[rows] = frame[ID_COLUMN].isna().to_numpy()
        dims[rows] = frame["dim"].to_numpy()
        kept.append(frame[suspect_rows(frame, local)])
        offset += len(frame)
    counts = np.bincount(dims, minlength=1)
    counts[0] = 0  # empty vectors never set the dimension
    dim = int(expected_dim) if expected_dim else (int(counts.argmax()) if counts.any() else 0)
    late = dims != dim
    late[~null] |= duplicated_rows(ids[~null])
    del ids, dims
    have = np.concatenate([f[ROW_COLUMN].to_numpy() for f in kept]) if kept else np.zeros(0, np.int64)
    late[have] = False
    extra = _rows_again(parquet, np.flatnonzero(late)) if late.any() else []
    columns = [ID_COLUMN, ROW_COLUMN, "dim", "nonfinite", "norm", "max_abs"]
    if not kept and not extra:
        empty = pd.DataFrame({c: pd.Series(dtype="Int64" if c == ID_COLUMN else "float64") for c in columns})
        return empty, n, dim
    frame = pd.concat([*kept, *extra], ignore_index=True)
    return frame.sort_values(ROW_COLUMN, kind="stable").reset_index(drop=True), n, dim


def _group_frame(parquet: pq.ParquetFile, group: int, offset: int) -> pd.DataFrame:
    """:func:`row_stats`'s frame for one row group, whose first row is row ``offset`` of the file."""
    import numpy as np
    import pandas as pd

    table = parquet.read_row_group(group, columns=[ID_COLUMN, "embedding"])
    stats = _group_stats(table)
    ids, id_null = stats.pop(ID_COLUMN), stats.pop("id_null")
    stats[ROW_COLUMN] = np.arange(offset, offset + table.num_rows, dtype=np.int64)
    return pd.DataFrame({ID_COLUMN: pd.arrays.IntegerArray(ids, id_null), ROW_COLUMN: stats.pop(ROW_COLUMN),
                         **stats}, copy=False)


def _rows_again(parquet: pq.ParquetFile, rows: np.ndarray) -> list[pd.DataFrame]:
    """The statistics of the given rows (sorted), from their row groups only."""
    import numpy as np

    bounds = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
    out = []
    for group in np.unique(np.searchsorted(bounds, rows, side="right") - 1):
        frame = _group_frame(parquet, int(group), int(bounds[group]))
        out.append(frame[np.isin(frame[ROW_COLUMN].to_numpy(), rows)])
    return out


def validate_dims(artifact: str | Path, report_path: str | Path, checks: InputChecks) -> DimsChecked:
    """Run the input suite on the artifact's row statistics; save the report; raise when a rule fails.

    `checks` are the thresholds (rqvae.config.InputChecks, the form's "Input validation" fields);
    `expected_dim=0` infers the dimension as the most common vector length and then requires every row to
    have it. Returns `{ok, n_items, dim, report, evaluated, seconds}`.
    """
    import pandas as pd

    expected_dim, min_norm, max_norm = checks.expected_dim, checks.min_norm, checks.max_norm
    preload()  # GX's import overlaps the streamed statistics

    def rules(dim: int) -> list:  # a GX expectation belongs to one suite: the dimension is known after the pass
        return input_expectations(dim, checks.min_items, min_norm, max_norm, checks.max_abs)

    suspects, n_items, dim = suspect_stats(artifact, rules(max(1, expected_dim)), expected_dim)
    log.info(
        "validate_dims: %d rows from %s (%d suspect), dim %d (%s), norms within [%s, %s]",
        n_items, artifact, len(suspects), dim, "param" if expected_dim else "inferred", min_norm, max_norm,
    )
    table = pd.DataFrame(index=pd.RangeIndex(n_items))  # the row count is all the table rule reads
    result = run_suite("input", split_batches("rows", suspects, rules(dim), [ID_COLUMN, ROW_COLUMN], [table],
                                              element_count=n_items))
    report = {
        **result.to_dict(),
        "artifact": str(artifact),
        "n_items": n_items,
        "dim": dim,
        "dim_source": "param" if expected_dim else "inferred",
        "params": checks.to_dict(),
    }
    write_json_atomic(report_path, report)
    result.raise_for_failures(str(report_path))
    return {
        "ok": True,
        "n_items": n_items,
        "dim": dim,
        "report": str(report_path),
        "evaluated": len(result.checks),
        "seconds": result.seconds,
    }
