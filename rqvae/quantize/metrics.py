"""Quality metrics of semantic IDs, shared by training logs, the CLI, the pipeline and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class CodeCounts:
    """The counts behind :func:`code_metrics`, which add up over item sets that share no code tuple.

    Sets split by their level-1 code never share a tuple, so a partitioned merge sums its partitions' counts
    and reports exactly what one pass over all items would.
    """

    n_items: int
    unique: int  # distinct code tuples
    collided: int  # items on a tuple shared with another item
    max_bucket: int
    per_level: tuple[np.ndarray, ...]  # each level's code histogram [K]

    @classmethod
    def of(cls, codes: np.ndarray, codebook_sizes: Sequence[int]) -> CodeCounts:
        codes = np.asarray(codes)
        _, counts = np.unique(pack_codes(codes, codebook_sizes), return_counts=True)
        hists = tuple(np.bincount(codes[:, level].astype(np.int64), minlength=int(k))
                      for level, k in enumerate(codebook_sizes))
        return cls(int(codes.shape[0]), len(counts), int(counts[counts > 1].sum()),
                   int(counts.max()) if len(counts) else 0, hists)

    def __add__(self, other: CodeCounts) -> CodeCounts:
        return CodeCounts(self.n_items + other.n_items, self.unique + other.unique, self.collided + other.collided,
                          max(self.max_bucket, other.max_bucket),
                          tuple(a + b for a, b in zip(self.per_level, other.per_level, strict=True)))

    def metrics(self) -> dict:
        n = self.n_items
        if n == 0:
            raise ValueError("code_metrics needs at least one item")
        usage, perplexity = [], []
        for hist in self.per_level:
            p = hist[hist > 0].astype(np.float64) / n
            usage.append(round(float((hist > 0).sum()) / len(hist), 6))
            perplexity.append(round(float(np.exp(-(p * np.log(p)).sum())), 4))
        return {
            "n_items": n,
            "unique_ratio": round(self.unique / n, 6),
            "collision_rate": round(self.collided / n, 6),
            "max_bucket": self.max_bucket,
            "usage": usage,
            "perplexity": perplexity,
        }


def code_metrics(codes: np.ndarray, codebook_sizes: Sequence[int]) -> dict:
    """Unique-ID ratio, collisions, per-level usage and perplexity, largest bucket of raw code tuples.

    collision_rate is the share of items whose code tuple is shared with at least one other item.
    usage is the fraction of a level's codes used at least once; perplexity is exp(entropy) of that
    level's code distribution (K when perfectly even, 1 when collapsed).
    """
    codes = np.asarray(codes)
    if int(codes.shape[0]) == 0:
        raise ValueError("code_metrics needs at least one item")
    return CodeCounts.of(codes, codebook_sizes).metrics()


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
