"""Sanity checks on an embedding matrix before it is trained on or encoded.

Bad vectors (NaN, all zeros, absurd magnitudes, duplicated ids) silently degrade a codebook rather than
crash it, so they are caught here and reported with counts and sample ids. All row checks run on
fixed-size chunks, keeping the temporary boolean arrays small even for multi-million-row inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SAMPLE_IDS, InputError
from .readers import DEFAULT_BATCH_ROWS

log = logging.getLogger(__name__)

CHECK_CHUNK_ROWS = DEFAULT_BATCH_ROWS  # rows checked at once: bounds the temporaries like a read batch


@dataclass
class _Problem:
    """One kind of bad row: its description, how many rows have it and the first few ids."""

    text: str
    count: int = 0
    samples: list[object] = field(default_factory=list)

    def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
        hits = int(mask.sum())
        if hits:
            self.count += hits
            if len(self.samples) < SAMPLE_IDS:
                self.samples.extend(ids[mask][: SAMPLE_IDS - len(self.samples)].tolist())


def check_embeddings(
    ids: np.ndarray,
    vectors: np.ndarray,
    expected_dim: int = 0,
    min_items: int = 1,
    max_abs: float = 1e3,
    path: str | Path | None = None,
) -> None:
    """Raise :class:`InputError` describing every problem found (count + sample ids each); else return."""
    ids = np.asarray(ids)
    vectors = np.asarray(vectors)
    _check_shape(ids, vectors, expected_dim, min_items, path)
    problems = _id_problems(ids)
    if not any(p.count for p in problems):
        problems.append(_duplicate_ids(ids))
    problems += _row_problems(ids, vectors, max_abs)
    found = [p for p in problems if p.count]
    if not found:
        log.info("embeddings ok: %d items, dim %d", len(ids), vectors.shape[1])
        return
    if len(found) == 1:
        raise InputError(found[0].text, sample_ids=found[0].samples, count=found[0].count, path=path)
    summary = "; ".join(f"{p.text} ({p.count} items, e.g. {p.samples})" for p in found)
    raise InputError(f"{len(found)} problems: {summary}", sample_ids=found[0].samples, path=path)


def _check_shape(
    ids: np.ndarray, vectors: np.ndarray, expected_dim: int, min_items: int, path: str | Path | None
) -> None:
    """Structural problems come first: nothing row-wise is meaningful until the shapes are right."""
    if vectors.ndim != 2:
        raise InputError(
            f"embeddings must be a 2-D matrix [items, dim], got shape {vectors.shape}", path=path
        )
    n, dim = vectors.shape
    if n == 0 or ids.size == 0:
        raise InputError("empty input: no embeddings", count=0, path=path)
    if ids.shape != (n,):
        raise InputError(f"{ids.size} ids for {n} vectors (ids shape {ids.shape})", path=path)
    if vectors.dtype.kind not in "iuf":
        raise InputError(f"embedding values must be numeric, got dtype {vectors.dtype}", path=path)
    if n < min_items:
        raise InputError(f"too few items: {n} < min_items={min_items}", sample_ids=ids, count=n, path=path)
    if expected_dim > 0 and dim != expected_dim:
        raise InputError(
            f"embedding dimension {dim} != expected {expected_dim}", sample_ids=ids, count=n, path=path
        )


def _id_problems(ids: np.ndarray) -> list[_Problem]:
    """Null or non-integer ids; row numbers stand in for ids that do not exist."""
    rows = np.arange(len(ids))
    if ids.dtype.kind in "iu":
        return []
    if ids.dtype.kind == "f":
        null = np.isnan(ids)
        with np.errstate(invalid="ignore"):
            fractional = ~null & (ids != np.floor(ids))
    elif ids.dtype.kind == "O":
        null = np.equal(ids, None)
        fractional = ~null & ~np.array(
            [isinstance(i, int | np.integer) and not isinstance(i, bool) for i in ids], dtype=bool
        )
    else:
        problem = _Problem(f"non-integer item ids (dtype {ids.dtype})")
        problem.add(ids, np.ones(len(ids), dtype=bool))
        return [problem]
    nulls = _Problem("null item ids (sample values are row numbers)")
    nulls.add(rows, null)
    bad = _Problem("non-integer item ids")
    bad.add(ids, fractional)
    return [nulls, bad]


def _duplicate_ids(ids: np.ndarray) -> _Problem:
    ordered = np.sort(ids.astype(np.int64, copy=False))
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    problem = _Problem("duplicate item ids (count = distinct ids repeated)")
    problem.add(repeated, np.ones(len(repeated), dtype=bool))
    return problem


def _row_problems(ids: np.ndarray, vectors: np.ndarray, max_abs: float) -> list[_Problem]:
    nonfinite = _Problem("vectors with NaN or Inf values")
    zero = _Problem("all-zero vectors")
    large = _Problem(f"vectors with |value| > {max_abs:g}")
    for start in range(0, len(vectors), CHECK_CHUNK_ROWS):
        block = vectors[start : start + CHECK_CHUNK_ROWS]
        block_ids = ids[start : start + CHECK_CHUNK_ROWS]
        finite = np.isfinite(block).all(axis=1)
        nonfinite.add(block_ids, ~finite)
        zero.add(block_ids, ~block.any(axis=1))
        with np.errstate(invalid="ignore"):
            large.add(block_ids, finite & (np.abs(block) > max_abs).any(axis=1))
    return [nonfinite, zero, large]
