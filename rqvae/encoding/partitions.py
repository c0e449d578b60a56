"""Out-of-core collision resolution: raw shards split by level-1 code, each part resolved on its own.

Every rule of collision resolution acts inside one code tuple (dedup digits) or one (L-1)-prefix (``reassign``
moves an item only within its prefix, pinned and reserved IDs occupy their own tuple), so two items with
different level-1 codes never affect each other. Splitting the items into groups of whole level-1 codes and
resolving each group alone therefore gives exactly the IDs of one pass over all items, with memory bounded by
the largest group instead of N. What does need every item (the duplicate-id check, the id-sorted hash file,
the reconstruction-error figures) is done column by column over the shards, a few bytes an item.

The spill is plain Parquet in the raw-shard layout (no new dependency): one pass over the shards appends each
shard's rows to its groups' files, and each group is then read back whole. Rows keep input order within a group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError

logger = logging.getLogger(__name__)

HASH_WRITE_ROWS = 1_000_000  # rows per slice of the id-sorted hash file


class Survey(NamedTuple):
    """What one light read of the shards' code columns tells: rows per shard and the level-1 histogram."""

    sizes: list[int]
    level1: np.ndarray  # [K1] items per level-1 code

    @property
    def n_items(self) -> int:
        return int(sum(self.sizes))


def check_shard_schema(schema: pa.Schema, num_levels: int, columns: Sequence[str], path: str | Path) -> None:
    """Raise unless ``schema`` is a raw shard of a ``num_levels``-level model."""
    if tuple(schema.names) != tuple(columns) or schema.field("codes").type.list_size != num_levels:
        raise InputError(f"not a raw shard of a {num_levels}-level model: columns {schema.names}", path=path)


def survey(paths: Sequence[str | Path], num_levels: int, level1_size: int, columns: Sequence[str]) -> Survey:
    """Row counts and level-1 code histogram of the shards (reads only the codes column)."""
    if not paths:
        raise ValueError("merge_shards needs at least one shard")
    sizes, hist = [], np.zeros(int(level1_size), np.int64)
    for path in paths:
        check_shard_schema(pq.read_schema(path), num_levels, columns, path)
        codes = pq.read_table(path, columns=["codes"]).column("codes").combine_chunks()
        level1 = codes.flatten().to_numpy()[::num_levels] if len(codes) else np.zeros(0, np.int64)
        hist += np.bincount(level1, minlength=len(hist))[: len(hist)]
        sizes.append(len(codes))
    return Survey(sizes, hist)


def plan_partitions(level1: np.ndarray, max_rows: int) -> np.ndarray:
    """[K1] group index per level-1 code: consecutive codes packed while a group stays within ``max_rows``.

    A single code holding more than ``max_rows`` items gets a group of its own (it cannot be split).
    """
    group = np.zeros(len(level1), np.int64)
    current, filled = 0, 0
    for code, count in enumerate(np.asarray(level1, np.int64)):
        if filled and filled + count > max_rows:
            current, filled = current + 1, 0
        group[code] = current
        filled += int(count)
    return group


def spill(
    paths: Sequence[str | Path], group_of_code: np.ndarray, num_levels: int, schema: pa.Schema, folder: Path
) -> list[Path]:
    """Append every shard's rows to ``folder/group-{g:05d}.parquet`` by the group of their level-1 code.

    Returns the group files that received rows, in group order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for path in paths:
            table = pq.read_table(path).replace_schema_metadata(None)
            level1 = table.column("codes").combine_chunks().flatten().to_numpy()[::num_levels]
            group = group_of_code[level1]
            order = np.argsort(group, kind="stable")
            table = table.take(pa.array(order))
            bounds = np.searchsorted(group[order], np.arange(int(group_of_code.max()) + 2))
            for g in range(len(bounds) - 1):
                lo, hi = int(bounds[g]), int(bounds[g + 1])
                if hi > lo:
                    if g not in writers:
                        writers[g] = pq.ParquetWriter(folder / f"group-{g:05d}.parquet", schema)
                    writers[g].write_table(table.slice(lo, hi - lo))
            del table
    finally:
        for writer in writers.values():
            writer.close()
    return [folder / f"group-{g:05d}.parquet" for g in sorted(writers)]


def read_column(paths: Sequence[str | Path], sizes: Sequence[int], name: str, dtype: np.dtype) -> np.ndarray:
    """One column of all shards as a single preallocated array (no concatenation copy)."""
    out = np.empty(int(sum(sizes)), dtype)
    start = 0
    for path, size in zip(paths, sizes, strict=True):
        column = pq.read_table(path, columns=[name]).column(name)
        out[start : start + size] = column.to_numpy()
        start += size
    return out


def check_ids_and_write_hashes(
    paths: Sequence[str | Path], sizes: Sequence[int], embeddings_path: str | Path, hashes_path: str | Path | None
) -> None:
    """Raise on a duplicate item id anywhere in the shards; write ``hashes_path`` (item_id, emb_hash) sorted by id.

    About 24 bytes an item at the peak (ids, the sort order, the sorted ids), never the whole rows.
    """
    from ..io.fsutil import atomic_path

    ids = read_column(paths, sizes, "item_id", np.dtype(np.int64))
    order = np.argsort(ids, kind="stable") if hashes_path is not None else None
    if order is None:
        ids.sort()
    else:
        ids = ids[order]
    dup = np.unique(ids[1:][ids[1:] == ids[:-1]])
    if dup.size:
        raise InputError("duplicate item ids: each item must appear once", dup, count=int(dup.size),
                         path=embeddings_path)
    if hashes_path is None:
        return
    hashes = read_column(paths, sizes, "emb_hash", np.dtype(np.int64))[order]
    del order
    schema = pa.schema([("item_id", pa.int64()), ("emb_hash", pa.int64())])
    with atomic_path(hashes_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, len(ids), HASH_WRITE_ROWS):
            sl = slice(start, start + HASH_WRITE_ROWS)
            writer.write_table(pa.table({"item_id": ids[sl], "emb_hash": hashes[sl]}, schema=schema))
