"""Semantic IDs held as one int64 key each, read batch by batch: what `publish` keeps for tens of millions of items.

An ID's L codes and its dedup, taken as the digits of a mixed radix (the dedup last), make one int64 whose
numeric order is the IDs' lexicographic order. Held as [N] int64 rather than int64 [N, L + 1] tables, the serving
index, the migration map and the report need 8 bytes an ID instead of 28-48, sort it as a scalar and unpack it
a slice at a time where a file is written. A radix whose product needs more than 63 bits has no packed form;
callers then take their in-memory path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .formats import open_parquet
from .idfile import iter_semantic_ids, semantic_id_parts

CHUNK_ROWS = 1 << 20  # rows per slice when a packed array is scanned or written out


def fits(radix: Sequence[int]) -> bool:
    """Whether keys of this radix stay below 2**63 (the test rqvae.ids.serving uses for its packed sort)."""
    return float(np.prod([float(r) for r in radix])) < 2.0**63


def small_dtype(top: int) -> np.dtype:
    """The smallest unsigned dtype holding 0..top, else int64 (the serving index's compact arrays)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def count_rows(path: str | Path) -> int:
    """Rows of a semantic-ID file or part folder, from the Parquet footers (arrays are sized before reading)."""
    return sum(open_parquet(part).metadata.num_rows for part in semantic_id_parts(path))


def pack(codes: np.ndarray, dedup: np.ndarray | None, radix: Sequence[int]) -> np.ndarray:
    """int64 key per row of codes [n, L] (and dedup [n] when given: radix has L + 1 digits, else L)."""
    key = np.zeros(len(codes), np.int64)
    for level in range(codes.shape[1]):
        key *= int(radix[level])
        key += codes[:, level]
    if dedup is not None:
        key *= int(radix[-1])
        key += dedup
    return key


def unpack(keys: np.ndarray, radix: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(codes int32 [n, L], dedup int32 [n]) of packed keys: the inverse of :func:`pack`."""
    rest = np.array(keys, np.int64)
    digits = np.empty((len(rest), len(radix)), np.int32)
    for depth in range(len(radix) - 1, -1, -1):
        digits[:, depth] = rest % int(radix[depth])
        rest //= int(radix[depth])
    return np.ascontiguousarray(digits[:, :-1]), digits[:, -1].copy()


def id_radix(path: str | Path) -> tuple[int, ...] | None:
    """Max + 1 of every code level and of the dedup, from one pass over the file (codebook sizes unknown).

    None when there is nothing to pack: no rows, a negative value, or a product beyond 63 bits.
    """
    top: np.ndarray | None = None
    for _, codes, dedup in iter_semantic_ids(path):
        if codes.min(initial=0) < 0 or dedup.min() < 0:
            return None
        batch = np.r_[codes.max(0), dedup.max()].astype(np.int64)
        top = batch if top is None else np.maximum(top, batch)
    radix = None if top is None else tuple(int(t) + 1 for t in top)
    return radix if radix is not None and fits(radix) else None


def read_ids(path: str | Path, n: int) -> np.ndarray:
    """The item ids [n] int64 of a semantic-ID file, in file order (read on their own, when they are needed)."""
    ids = np.empty(n, np.int64)
    row = 0
    for batch_ids, _, _ in iter_semantic_ids(path):
        ids[row : row + len(batch_ids)] = batch_ids
        row += len(batch_ids)
    _check_rows(row, n, path)
    return ids


def read_keys(
    path: str | Path, code_sizes: Sequence[int], *, with_ids: bool = False
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]] | None:
    """(keys int64 [N] in file order, item ids [N] or None, radix = code_sizes + (dedup max + 1,)).

    The dedup size is known only at the end, so codes are packed as they come and the dedup added last (12 bytes
    an item while reading, 8 after; 16 / 24 with ids). None when the radix would not fit 63 bits or the file is
    empty; codes outside `code_sizes` raise InputError (the message rqvae.ids.serving gives).
    """
    sizes = np.asarray([int(s) for s in code_sizes], np.int64)
    n = count_rows(path)
    if n == 0 or not fits(sizes):
        return None
    keys, dedup = np.empty(n, np.int64), np.empty(n, np.int32)
    ids = np.empty(n, np.int64) if with_ids else None
    row = 0
    for batch_ids, codes, batch_dedup in iter_semantic_ids(path):
        if codes.shape[1] != len(sizes) or codes.min() < 0 or batch_dedup.min() < 0 or (codes.max(0) >= sizes).any():
            raise InputError(f"codes do not fit codebook sizes {sizes.tolist()}")
        stop = row + len(batch_ids)
        keys[row:stop], dedup[row:stop] = pack(codes, None, sizes), batch_dedup
        if ids is not None:
            ids[row:stop] = batch_ids
        row = stop
    _check_rows(row, n, path)
    radix = (*sizes.tolist(), int(dedup.max()) + 1)
    if not fits(radix):
        return None
    keys *= radix[-1]
    keys += dedup
    return keys, ids, radix


def _check_rows(read: int, expected: int, path: str | Path) -> None:
    if read != expected:
        raise InputError(f"read {read} semantic ids where the Parquet footers count {expected}", path=path)
