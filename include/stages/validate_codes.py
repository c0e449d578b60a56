"""Stage `validate_codes`: check the semantic IDs against the input before anyone can consume them.

The output is joined with the input ids (an outer join), so one frame answers both "is every input item
covered exactly once" and "is there an ID for an item we never had". Per-row rules (coverage, code ranges,
uniqueness of codes + dedup) run on that frame's suspect rows, quality rules (unique-ID ratio, per-level
codebook usage) on frames with the same aggregates (see :func:`include.gx_suites.split_batches`);
model-level numbers (reconstruction MSE) run on a one-row frame. The join is numpy work, not a pandas
merge. The report is saved next to the artifacts and copied into the published version.

The IDs are read batch by batch, one question per pass (coverage and duplicate ids, tuple counts, codes +
dedup uniqueness), so at most a few 8-byte arrays of N exist at once; only the suspect rows become a frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from include.files import jsonable, write_json_atomic
from include.gx_rules import codes_expectations, quality_expectations
from include.gx_suites import ID_COLUMN, Batch, preload, run_suite, split_batches
from include.results import CodesChecked
from rqvae.errors import ConfigError, InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from rqvae.config import CodeChecks

log = logging.getLogger(__name__)


def joined_frame(input_ids: np.ndarray, ids: np.ndarray, codes: np.ndarray, dedup: np.ndarray) -> pd.DataFrame:
    """Outer join of input ids and output rows: item_id, coverage (ok/missing/extra), code_*, dedup, prefix.

    `prefix` is one integer per distinct code tuple (before dedup), the column the unique-ratio rule counts.
    """
    import pandas as pd

    levels = codes.shape[1]
    output = pd.DataFrame({ID_COLUMN: ids.astype("int64")})
    for level in range(levels):
        output[f"code_{level}"] = codes[:, level].astype("int64")
    output["dedup"] = dedup.astype("int64")
    output["prefix"] = _tuple_keys(codes)
    source = pd.DataFrame({ID_COLUMN: pd.unique(input_ids.astype("int64")), "_input": True})
    frame = source.merge(output, on=ID_COLUMN, how="outer", indicator=True)
    frame["coverage"] = frame["_merge"].map({"both": "ok", "left_only": "missing", "right_only": "extra"})
    frame = frame.drop(columns=["_input", "_merge"])
    frame["coverage"] = frame["coverage"].astype(str)
    for column in [*(f"code_{level}" for level in range(levels)), "dedup", "prefix"]:
        frame[column] = frame[column].astype("Int64")
    return frame


def coverage_frame(
    input_ids: np.ndarray, ids: np.ndarray, codes: np.ndarray, dedup: np.ndarray, prefix: np.ndarray | None = None
) -> pd.DataFrame:
    """The rows of :func:`joined_frame` (same columns and values) built with numpy instead of a pandas join.

    Output rows come first, in output order, then the input ids without an ID; :func:`joined_frame`'s order
    (by item_id, output order among equal ids) is a stable sort by item_id of this one.
    """
    import numpy as np
    import pandas as pd

    known = np.sort(np.asarray(input_ids, dtype=np.int64))
    known = known[np.r_[True, known[1:] != known[:-1]]] if len(known) else known
    ids = np.asarray(ids, dtype=np.int64)
    pos = np.minimum(np.searchsorted(known, ids), max(len(known) - 1, 0))
    in_input = known[pos] == ids if len(known) else np.zeros(len(ids), dtype=bool)
    out_sorted = np.sort(ids)
    hit = np.minimum(np.searchsorted(out_sorted, known), max(len(ids) - 1, 0))
    missing = known[out_sorted[hit] != known] if len(ids) else known
    n_out, n = len(ids), len(ids) + len(missing)
    null = np.zeros(n, dtype=bool)
    null[n_out:] = True

    def column(values: np.ndarray) -> pd.arrays.IntegerArray:
        full = np.zeros(n, dtype=np.int64)
        full[:n_out] = values
        return pd.arrays.IntegerArray(full, null.copy())

    states = np.full(n, 2, dtype=np.int8)  # 0 ok, 1 missing, 2 extra
    states[:n_out][in_input] = 0
    states[n_out:] = 1
    data = {ID_COLUMN: np.concatenate([ids, missing])}
    data.update({f"code_{level}": column(codes[:, level]) for level in range(codes.shape[1])})
    data["dedup"] = column(dedup)
    data["prefix"] = column(_tuple_keys(codes) if prefix is None else prefix)
    data["coverage"] = pd.Categorical.from_codes(states, categories=["ok", "missing", "extra"])
    return pd.DataFrame(data, copy=False)  # the columns are fresh: no copies of millions of rows


def _distinct_codes(codes: np.ndarray) -> pd.DataFrame:
    """Each level's distinct codes, one column per level padded with nulls: the same distinct-value counts as
    the code columns of the full frame, in a few hundred rows."""
    import numpy as np
    import pandas as pd

    columns = {}
    for level in range(codes.shape[1]):
        values = np.asarray(codes[:, level], dtype=np.int64)
        low = int(values.min()) if len(values) else 0
        span = int(values.max()) - low + 1 if len(values) else 0
        if 0 < span <= 1 << 24:
            distinct = np.flatnonzero(np.bincount(values - low, minlength=span)) + low
        else:
            distinct = np.unique(values)
        columns[f"code_{level}"] = pd.Series(distinct, dtype="Int64")
    return pd.DataFrame(columns)


def _radix_keys(codes: np.ndarray, low: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """One int64 per row: the codes minus each level's lowest, read as digits of radix ``spans``."""
    import numpy as np

    key = np.zeros(len(codes), np.int64)
    for level in range(codes.shape[1]):
        key = key * int(spans[level]) + (codes[:, level].astype(np.int64) - low[level])
    return key


def _tuple_keys(codes: np.ndarray) -> np.ndarray:
    """Exact integer key per code tuple: mixed radix over each level's observed range, else np.unique rows."""
    import numpy as np

    matrix = np.asarray(codes, dtype=np.int64)
    if matrix.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    low = matrix.min(axis=0)
    spans = matrix.max(axis=0) - low + 1
    if float(np.prod(spans.astype(np.float64))) < 2.0**62:
        return _radix_keys(matrix, low, spans)
    _, inverse = np.unique(matrix, axis=0, return_inverse=True)
    return inverse.ravel().astype(np.int64)


class _Scan:
    """What one pass over the IDs gathers: every item id, each level's distinct codes and range, bad-range rows."""

    def __init__(self, semantic_ids: str | Path, sizes: Sequence[int]) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        from rqvae.io.idfile import iter_semantic_ids, semantic_id_parts

        self.path = semantic_ids
        total = sum(pq.read_metadata(part).num_rows for part in semantic_id_parts(semantic_ids))
        self.ids = np.empty(total, np.int64)
        self.levels = len(sizes)
        self.low = np.full(self.levels, np.iinfo(np.int64).max)
        self.high = np.full(self.levels, np.iinfo(np.int64).min)
        self.hists: list[np.ndarray] = [np.zeros(int(k), np.int64) for k in sizes]
        self.extra_codes: list[set[int]] = [set() for _ in sizes]  # codes outside [0, K): bad input only
        self.bad_range = np.zeros(total, bool)
        row = 0
        for ids, codes, _ in iter_semantic_ids(semantic_ids):
            if codes.shape[1] != self.levels:
                raise InputError(f"{semantic_ids} has {codes.shape[1]} code levels but the model has {self.levels}")
            stop = row + len(ids)
            self.ids[row:stop] = ids
            outside = (codes < 0) | (codes >= np.asarray(sizes))
            self.bad_range[row:stop] = outside.any(1)
            self.low = np.minimum(self.low, codes.min(0))
            self.high = np.maximum(self.high, codes.max(0))
            for level, hist in enumerate(self.hists):
                column = codes[:, level]
                inside = ~outside[:, level]
                hist += np.bincount(column[inside], minlength=len(hist))
                if not inside.all():
                    self.extra_codes[level].update(np.unique(column[~inside]).tolist())
            row = stop
        self.n = row
        if row != total:
            raise InputError(f"{semantic_ids}: the footers say {total} rows, {row} were read")
        self.in_range = row > 0 and not self.bad_range.any()

    def release(self) -> None:
        """Drop the per-item arrays once every pass that needs them is done."""
        import numpy as np

        self.ids = self.bad_range = np.zeros(0)

    def distinct_codes(self) -> pd.DataFrame:
        """:func:`_distinct_codes` of all codes, from the histograms (a few hundred rows)."""
        import numpy as np
        import pandas as pd

        columns = {}
        for level, hist in enumerate(self.hists):
            values = np.union1d(np.flatnonzero(hist), np.asarray(sorted(self.extra_codes[level]), np.int64))
            columns[f"code_{level}"] = pd.Series(values.astype(np.int64), dtype="Int64")
        return pd.DataFrame(columns)

    def key_radix(self) -> np.ndarray | None:
        """Each level's span of observed codes when one int64 key per tuple fits (as :func:`_tuple_keys`)."""
        import numpy as np

        spans = self.high - self.low + 1
        return spans if float(np.prod(spans.astype(np.float64))) < 2.0**62 else None

    def keys(self, codes: np.ndarray, spans: np.ndarray) -> np.ndarray:
        return _radix_keys(codes, self.low, spans)


def _coverage_suspects(scan: _Scan, artifact: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(output rows not in the input [N] bool, rows whose id repeats [N] bool, input ids without an ID (sorted),
    input row count)."""
    import numpy as np
    import pyarrow.parquet as pq

    known = np.sort(pq.read_table(artifact, columns=[ID_COLUMN]).column(ID_COLUMN).to_numpy()).astype(np.int64,
                                                                                                     copy=False)
    n_input = len(known)
    known = known[np.r_[True, known[1:] != known[:-1]]] if len(known) else known
    extra = np.ones(scan.n, bool)
    step = 1 << 20
    for start in range(0, scan.n, step):  # in slices: no [N] int64 temporaries
        ids = scan.ids[start : start + step]
        pos = np.minimum(np.searchsorted(known, ids), max(len(known) - 1, 0))
        if len(known):
            extra[start : start + step] = known[pos] != ids
    out_sorted = np.sort(scan.ids)
    twice = out_sorted[1:][out_sorted[1:] == out_sorted[:-1]]  # ids in the output more than once
    repeated = np.isin(scan.ids, twice) if len(twice) else np.zeros(scan.n, bool)
    missing = np.zeros(len(known), bool)
    for start in range(0, len(known), step):
        part = known[start : start + step]
        hit = np.minimum(np.searchsorted(out_sorted, part), max(scan.n - 1, 0))
        missing[start : start + step] = out_sorted[hit] != part if scan.n else True
    return extra, repeated, known[missing], n_input


def _tuple_counts(scan: _Scan, spans: np.ndarray | None) -> tuple[int, int, int]:
    """(distinct code tuples, items on a shared tuple, largest bucket) over all output rows."""
    import numpy as np

    from rqvae.io.idfile import iter_semantic_ids, read_semantic_ids

    if spans is None:  # codes too wide for one key (bad input): the exact count over the whole table
        keys = _tuple_keys(read_semantic_ids(scan.path)[1])
    else:
        keys = np.empty(scan.n, np.int64)
        row = 0
        for _, codes, _ in iter_semantic_ids(scan.path):
            keys[row : row + len(codes)] = scan.keys(codes, spans)
            row += len(codes)
    if not len(keys):
        return 0, 0, 0
    keys.sort()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    del keys
    counts = np.diff(np.r_[starts, scan.n])
    return len(counts), int(counts[counts > 1].sum()), int(counts.max())


def _compound_suspects(scan: _Scan) -> np.ndarray:
    """[N] bool: output rows whose codes + dedup hash equals another row's (hash collisions only add rows)."""
    import numpy as np

    from include.gx_suites import duplicated_rows
    from rqvae.io.hashing import int_rows_hash
    from rqvae.io.idfile import iter_semantic_ids

    hashes = np.empty(scan.n, np.uint64)
    row = 0
    for _, codes, dedup in iter_semantic_ids(scan.path):
        no_nulls = np.zeros(len(codes), bool)
        columns = [(codes[:, level].astype(np.int64), no_nulls) for level in range(scan.levels)]
        hashes[row : row + len(codes)] = int_rows_hash([*columns, (dedup.astype(np.int64), no_nulls)])
        row += len(codes)
    return duplicated_rows(hashes)


def _suspect_frame(
    scan: _Scan, suspect: np.ndarray, extra: np.ndarray, missing: np.ndarray, spans: np.ndarray | None
) -> pd.DataFrame:
    """:func:`coverage_frame` restricted to the suspect output rows (in output order) and the missing ids."""
    import numpy as np

    from rqvae.io.idfile import iter_semantic_ids

    parts: list[tuple[np.ndarray, ...]] = []
    row = 0
    for ids, codes, dedup in iter_semantic_ids(scan.path):
        take = suspect[row : row + len(ids)]
        if take.any():
            parts.append((ids[take], codes[take], dedup[take], extra[row : row + len(ids)][take]))
        row += len(ids)
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    codes = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, scan.levels), np.int32)
    dedup = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int32)
    outside = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, bool)
    known = np.union1d(missing, ids[~outside])
    prefix = scan.keys(codes, spans) if spans is not None else _tuple_keys(codes)
    return coverage_frame(known, ids, codes, dedup, prefix)


def validate_codes(
    semantic_ids: str | Path,
    artifact: str | Path,
    report_path: str | Path,
    checks: CodeChecks,
    *,
    codebook_sizes: Sequence[int],
    recon_mse: float | None,
) -> CodesChecked:
    """Run the codes suite; save the report; raise ValidationFailed listing each failed rule.

    `checks` are the thresholds (rqvae.config.CodeChecks, the form's "Output validation" fields);
    `codebook_sizes` is the K of each level (from the trained model's config) and `recon_mse` the encoder's
    reconstruction error over all items. Returns `{ok, n_items, metrics, report, evaluated, seconds}`.
    """
    import numpy as np
    import pandas as pd

    from rqvae.quantize.metrics import CodeCounts

    if recon_mse is None:
        raise ConfigError("validate_codes needs the encoder's recon_mse (encode_items reports it)")
    preload()  # GX's import overlaps the passes over the IDs
    sizes = [int(k) for k in codebook_sizes]
    scan = _Scan(semantic_ids, sizes)
    extra, repeated, missing, n_input = _coverage_suspects(scan, artifact)
    suspect = extra | repeated | scan.bad_range
    del repeated
    spans = scan.key_radix() if scan.n else None
    unique, collided, max_bucket = _tuple_counts(scan, spans)
    suspect |= _compound_suspects(scan)
    frame = _suspect_frame(scan, suspect, extra, missing, spans)
    del suspect, extra
    scan.release()  # GX's distinct count over the N stand-in keys below is this stage's peak (~40 bytes a row)
    if scan.in_range:
        metrics = CodeCounts(scan.n, unique, collided, max_bucket, tuple(scan.hists)).metrics()
    else:
        metrics = {"n_items": scan.n}
    metrics["recon_mse"] = float(recon_mse)
    log.info("validate_codes: %d output rows, %d input ids, %d suspect rows, metrics %s", scan.n, n_input,
             len(frame), metrics)
    # the unique-ratio rule reads the distinct count and the row count of the non-null prefixes: a column with
    # the same two numbers stands for the N keys
    dtype = np.int32 if unique < 2**31 else np.int64
    stand_in = np.zeros(scan.n, dtype)
    stand_in[:unique] = np.arange(unique, dtype=dtype)
    prefixes = pd.DataFrame({"prefix": stand_in}, copy=False)
    rules = codes_expectations(sizes, checks.min_unique_ratio, checks.min_usage)
    n_rows = scan.n + len(missing)  # rows of the joined frame: every output row, then each input id without one
    result = run_suite(
        "codes",
        [
            *split_batches("rows", frame, rules, [ID_COLUMN], [prefixes, scan.distinct_codes()], order=ID_COLUMN,
                           element_count=n_rows),
            Batch("quality", pd.DataFrame({"recon_mse": [float(recon_mse)]}),
                  quality_expectations(checks.max_recon_mse)),
        ],
    )
    report = {
        **result.to_dict(),
        "semantic_ids": str(semantic_ids),
        "artifact": str(artifact),
        "n_items": scan.n,
        "n_input_items": n_input,
        "metrics": metrics,
        "params": {"codebook_sizes": sizes, **checks.to_dict()},
    }
    write_json_atomic(report_path, jsonable(report))
    result.raise_for_failures(str(report_path))
    return jsonable(
        {
            "ok": True,
            "n_items": scan.n,
            "metrics": metrics,
            "report": str(report_path),
            "evaluated": len(result.checks),
            "seconds": result.seconds,
        }
    )
