"""Quality metrics of semantic IDs, shared by training logs, the CLI, the pipeline and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_codes(codes: np.ndarray, codebook_sizes: Sequence[int]) -> np.ndarray:
    """One int64 key per row (mixed radix) so tuples can be sorted and counted as scalars.

    Falls back to row-wise unique indices when the product of sizes does not fit in 63 bits.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != len(codebook_sizes):
        raise ValueError(f"codes must be [N, {len(codebook_sizes)}], got {codes.shape}")
    if float(np.prod([float(k) for k in codebook_sizes])) < 2.0**63:
        key = np.zeros(codes.shape[0], dtype=np.int64)
        for level, k in enumerate(codebook_sizes):
            key = key * int(k) + codes[:, level]
        return key
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    return inverse.astype(np.int64).ravel()


def code_metrics(codes: np.ndarray, codebook_sizes: Sequence[int]) -> dict:
    """Unique-ID ratio, collisions, per-level usage and perplexity, largest bucket of raw code tuples.

    collision_rate is the share of items whose code tuple is shared with at least one other item.
    usage is the fraction of a level's codes used at least once; perplexity is exp(entropy) of that
    level's code distribution (K when perfectly even, 1 when collapsed).
    """
    codes = np.asarray(codes)
    n = int(codes.shape[0])
    if n == 0:
        raise ValueError("code_metrics needs at least one item")
    _, counts = np.unique(pack_codes(codes, codebook_sizes), return_counts=True)
    usage, perplexity = [], []
    for level, k in enumerate(codebook_sizes):
        hist = np.bincount(codes[:, level].astype(np.int64), minlength=int(k)).astype(np.float64)
        p = hist[hist > 0] / n
        usage.append(round(float((hist > 0).sum()) / int(k), 6))
        perplexity.append(round(float(np.exp(-(p * np.log(p)).sum())), 4))
    return {
        "n_items": n,
        "unique_ratio": round(len(counts) / n, 6),
        "collision_rate": round(float(counts[counts > 1].sum()) / n, 6),
        "max_bucket": int(counts.max()),
        "usage": usage,
        "perplexity": perplexity,
    }


def assign_dedup(ids: np.ndarray, codes: np.ndarray, codebook_sizes: Sequence[int]) -> np.ndarray:
    """Dedup digit per item: 0 for the smallest item_id of a code tuple, 1 for the next, and so on.

    ``codes + [dedup]`` is then unique per item and stable for a given set of items.
    """
    ids = np.asarray(ids, dtype=np.int64)
    key = pack_codes(codes, codebook_sizes)
    order = np.lexsort((ids, key))
    sorted_key = key[order]
    pos = np.arange(len(order), dtype=np.int64)
    starts = np.where(np.r_[True, sorted_key[1:] != sorted_key[:-1]], pos, 0)
    np.maximum.accumulate(starts, out=starts)
    dedup = np.empty(len(order), dtype=np.int32)
    dedup[order] = (pos - starts).astype(np.int32)
    return dedup


def recon_mse(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Mean squared error per element, in input space."""
    diff = np.asarray(x, dtype=np.float64) - np.asarray(x_hat, dtype=np.float64)
    return float(np.mean(diff * diff))
