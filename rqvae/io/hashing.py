"""The project's fast array hashes, in one place because their values are load-bearing.

All three are vectorised numpy on uint64 with wrap-around arithmetic, built on the same odd multiplier:
2**64 divided by the golden ratio (multiplying by an odd number permutes uint64; this one carries low bits
into the high ones). They are three different hashes for three jobs, and none may change its values:

- :func:`embedding_hash` values are stored in every published version (item_hashes.parquet) and compared
  across runs to keep the IDs of items whose embedding did not change;
- :func:`id_sample` picks the items an aligned retrain fits its code permutations on, so it decides IDs;
- :func:`int_rows_hash` only finds duplicate rows in memory (data validation), kept as it was so reports
  stay comparable.

None is cryptographic: they detect change and spread ids evenly, they do not resist forged input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # round(2**64 / golden ratio), odd
SPLITMIX_1 = 0xBF58476D1CE4E5B9  # splitmix64's finaliser multipliers
SPLITMIX_2 = 0x94D049BB133111EB
NULL_MARK = 0xD6E8FEB86659FD93  # added to a null's 0 so a null differs from every value in its column
_MASK64 = (1 << 64) - 1

_GAMMA = np.uint64(GOLDEN_GAMMA)


def embedding_hash(vectors: np.ndarray) -> np.ndarray:
    """One int64 per row from the exact float32 bytes of the row (any change to any value changes it).

    Polynomial over the row's 32-bit words, then a splitmix64 finaliser; vectorised over rows, one pass per
    column.
    """
    words = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    h = np.full(words.shape[0], words.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = h * _GAMMA + words[:, j].astype(np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(SPLITMIX_1)
        h ^= h >> np.uint64(27)
        h *= np.uint64(SPLITMIX_2)
        h ^= h >> np.uint64(31)
    return h.view(np.int64)


def id_sample(ids: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of a deterministic pseudo-random subset of int64 ids, about ``fraction`` of them.

    Fibonacci hashing of the id: the same id is in or out in every run, whatever the batch it is read in.
    XOR the ids with a salt for a second, independent draw.
    """
    if fraction >= 1.0:
        return np.ones(len(ids), bool)
    with np.errstate(over="ignore"):
        h = np.asarray(ids, np.int64).view(np.uint64) * _GAMMA
        h ^= h >> np.uint64(31)
    return h < np.uint64(min(int(fraction * 2.0**64), _MASK64))


def int_rows_hash(columns: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One uint64 per row mixing integer columns, each given as (int64 values with nulls as 0, null mask).

    Equal rows get equal hashes and a null differs from every value; each column is mixed in with its own odd
    multiplier, so swapping two columns' values changes the hash.
    """
    total = np.zeros(len(columns[0][0]), dtype=np.uint64)
    for index, (values, nulls) in enumerate(columns):
        words = np.asarray(values, np.int64).view(np.uint64)
        marks = np.asarray(nulls).astype(np.uint64) * np.uint64(NULL_MARK)
        salt = np.uint64((GOLDEN_GAMMA * (2 * index + 1)) & _MASK64)
        total = (total ^ (words + marks)) * salt
    return total
