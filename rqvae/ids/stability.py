"""Stable IDs across runs: per-item embedding hashes (did an item change?) and ID churn between two versions.

A downstream recommender learns on semantic IDs; if a daily run renames items whose embedding did not change,
its tables go stale. An incremental run keeps the published ID of every item whose embedding hash is the same
as when it was published, and every publish measures churn: the share of items present in both versions
whose ID (codes and dedup) differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.fsutil import atomic_path
from ..io.hashing import embedding_hash
from ..io.idfile import read_semantic_ids
from ..io.readers import DEFAULT_BATCH_ROWS, iter_embeddings


def file_hashes(
    path: str | Path,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, embedding hashes) of every row (or of ``rows=(start, stop)``), streamed; sorted by item id."""
    ids_parts, hash_parts = [], []
    for ids, x in iter_embeddings(path, batch_rows=batch_rows, allow_pickle=allow_pickle, rows=rows):
        ids_parts.append(np.asarray(ids, dtype=np.int64))
        hash_parts.append(embedding_hash(x))
    if not ids_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, hashes = np.concatenate(ids_parts), np.concatenate(hash_parts)
    order = np.argsort(ids, kind="stable")
    return ids[order], hashes[order]


def write_hashes(path: str | Path, ids: np.ndarray, hashes: np.ndarray) -> Path:
    """Parquet (item_id int64, emb_hash int64), written to a temp name and moved into place."""
    path = Path(path)
    table = pa.table({"item_id": pa.array(ids, pa.int64()), "emb_hash": pa.array(hashes, pa.int64())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_hashes(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, hashes) sorted by item id."""
    table = pq.read_table(path, columns=["item_id", "emb_hash"])
    ids = table.column("item_id").to_numpy().astype(np.int64)
    hashes = table.column("emb_hash").to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], hashes[order]


def unchanged_items(
    old_ids: np.ndarray, old_hashes: np.ndarray, ids: np.ndarray, hashes: np.ndarray
) -> np.ndarray:
    """[N] bool over (ids, hashes): the item was in the old set with the same embedding hash.

    ``old_ids`` must be sorted ascending.
    """
    if len(old_ids) == 0:
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(old_ids, ids), len(old_ids) - 1)
    return (old_ids[pos] == ids) & (old_hashes[pos] == hashes)


def id_churn(previous: str | Path, current: str | Path) -> dict[str, Any]:
    """Churn between two semantic-ID files: of the items in both, the share whose codes or dedup differ.

    Also counts items added and removed. Memory: ids, codes and dedup of both files (~20 bytes an item each).
    """
    p_ids, p_codes, p_dedup = read_semantic_ids(previous)
    c_ids, c_codes, c_dedup = read_semantic_ids(current)
    order = np.argsort(p_ids, kind="stable")
    p_ids, p_codes, p_dedup = p_ids[order], p_codes[order], p_dedup[order]
    if len(p_ids):
        pos = np.minimum(np.searchsorted(p_ids, c_ids), len(p_ids) - 1)
        common = p_ids[pos] == c_ids
    else:
        pos, common = np.zeros(len(c_ids), np.int64), np.zeros(len(c_ids), bool)
    n_common = int(common.sum())
    same_width = p_codes.shape[1] == c_codes.shape[1]
    if same_width:
        changed = (p_codes[pos[common]] != c_codes[common]).any(1) | (p_dedup[pos[common]] != c_dedup[common])
        n_changed = int(changed.sum())
    else:
        n_changed = n_common  # a different number of levels renames every item
    return {
        "common_items": n_common,
        "changed_items": n_changed,
        "churn": round(n_changed / n_common, 6) if n_common else None,
        "added_items": int(len(c_ids) - n_common),
        "removed_items": int(len(p_ids) - n_common),
    }
