"""Stage `validate_codes`: check the semantic IDs against the input before anyone can consume them.

The output is joined with the input ids (an outer join), so one frame answers both "is every input item
covered exactly once" and "is there an ID for an item we never had". Per-row rules (coverage, code ranges,
uniqueness of codes + dedup) run on that frame's suspect rows, quality rules (unique-ID ratio, per-level
codebook usage) on frames with the same aggregates (see :func:`include.gx_suites.split_batches`);
model-level numbers (reconstruction MSE) run on a one-row frame. The join is numpy work, not a pandas
merge. The report is saved next to the artifacts and copied into the published version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from include.files import jsonable, write_json_atomic
from include.gx_suites import (
    ID_COLUMN,
    Batch,
    codes_expectations,
    preload,
    quality_expectations,
    run_suite,
    split_batches,
)
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


def _tuple_keys(codes: np.ndarray) -> np.ndarray:
    """Exact integer key per code tuple: mixed radix over each level's observed range, else np.unique rows."""
    import numpy as np

    matrix = np.asarray(codes, dtype=np.int64)
    if matrix.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    low = matrix.min(axis=0)
    spans = matrix.max(axis=0) - low + 1
    if float(np.prod(spans.astype(np.float64))) < 2.0**62:
        key = np.zeros(matrix.shape[0], dtype=np.int64)
        for level in range(matrix.shape[1]):
            key = key * int(spans[level]) + (matrix[:, level] - low[level])
        return key
    _, inverse = np.unique(matrix, axis=0, return_inverse=True)
    return inverse.ravel().astype(np.int64)


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
    import pyarrow.parquet as pq

    from rqvae.idfile import read_semantic_ids
    from rqvae.metrics import code_metrics
    if recon_mse is None:
        raise ConfigError("validate_codes needs the encoder's recon_mse (encode_items reports it)")
    preload()  # GX's import overlaps reading the IDs and computing the per-row frame
    input_ids = pq.read_table(artifact, columns=[ID_COLUMN]).column(ID_COLUMN).to_numpy()
    ids, codes, dedup = read_semantic_ids(semantic_ids)
    sizes = [int(k) for k in codebook_sizes]
    if codes.shape[1] != len(sizes):
        raise InputError(f"{semantic_ids} has {codes.shape[1]} code levels but the model has {len(sizes)}")
    prefix = _tuple_keys(codes)
    frame = coverage_frame(np.asarray(input_ids), ids, codes, dedup, prefix)
    in_range = bool(((codes >= 0) & (codes < np.asarray(sizes))).all()) if len(codes) else False
    metrics = code_metrics(codes, sizes) if in_range else {"n_items": int(len(ids))}
    metrics["recon_mse"] = float(recon_mse)
    log.info("validate_codes: %d output rows, %d input ids, metrics %s", len(ids), len(input_ids), metrics)
    prefixes = pd.DataFrame({"prefix": prefix})  # the frame's non-null prefixes
    rules = codes_expectations(sizes, checks.min_unique_ratio, checks.min_usage)
    result = run_suite(
        "codes",
        [
            *split_batches("rows", frame, rules, [ID_COLUMN], [prefixes, _distinct_codes(codes)], order=ID_COLUMN),
            Batch("quality", pd.DataFrame({"recon_mse": [float(recon_mse)]}),
                  quality_expectations(checks.max_recon_mse)),
        ],
    )
    report = {
        **result.to_dict(),
        "semantic_ids": str(semantic_ids),
        "artifact": str(artifact),
        "n_items": int(len(ids)),
        "n_input_items": int(len(input_ids)),
        "metrics": metrics,
        "params": {"codebook_sizes": sizes, **checks.to_dict()},
    }
    write_json_atomic(report_path, jsonable(report))
    result.raise_for_failures(str(report_path))
    return jsonable(
        {
            "ok": True,
            "n_items": int(len(ids)),
            "metrics": metrics,
            "report": str(report_path),
            "evaluated": len(result.checks),
            "seconds": result.seconds,
        }
    )
