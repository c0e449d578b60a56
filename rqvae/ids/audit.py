"""Collision audit: which items `collision_mode=reassign` moved, where to, and what it cost them.

Reassignment keeps IDs L codes long by moving colliding items to the nearest free last-level code of their
prefix. A consumer should be able to see which items no longer carry the code the model chose for them, how far
down their ranking they landed (``free_rank``: 0 = the nearest code that was free before anyone moved; higher
means other movers took nearer ones first) and how much worse they are reconstructed (``extra_recon_mse``: the
per-element MSE of the item decoded from its new codes minus from its original codes, in input space).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..io.fsutil import atomic_path
from ..io.readers import DEFAULT_BATCH_ROWS, iter_embeddings
from ..model import RQVAE
from ..quantize.metrics import pack_codes
from .collisions import CHUNK_ROWS

logger = logging.getLogger(__name__)


def audit_schema(levels: int) -> pa.Schema:
    return pa.schema([
        ("item_id", pa.int64()),
        ("original_codes", pa.list_(pa.int32(), levels)),
        ("new_codes", pa.list_(pa.int32(), levels)),
        ("dedup", pa.int32()),
        ("moved", pa.bool_()),  # False: the prefix was full, the item kept its codes and got a dedup digit
        ("free_rank", pa.int32()),  # rank of the chosen code among the codes free before reassignment; -1 if stuck
        ("distance_rank", pa.int32()),  # rank of the chosen code among all last-level codes (0 = the model's own)
        ("extra_distance", pa.float32()),  # last-level distance to the new codeword minus to the original one
        ("extra_recon_mse", pa.float32()),  # per-element MSE in input space, new codes minus original codes
    ])


def audit_collisions(
    model: RQVAE,
    embeddings_path: str | Path,
    out_path: str | Path,
    ids: np.ndarray,
    original: np.ndarray,
    final: np.ndarray,
    dedup: np.ndarray,
    movers: np.ndarray | None,
    last_distances: Callable[[np.ndarray], np.ndarray] | None,
    *,
    collision_mode: str,
    reserved_codes: np.ndarray | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False,
    extra_recon: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write the audit table (one row per item reassignment had to move) and return its summary.

    ``movers`` / ``last_distances``: as the resolution used them (None in dedup mode: an empty table).
    ``reserved_codes``: reserved tuples, which occupied their slot before anyone moved. ``extra_recon``: the
    moved items' :func:`recon_deltas`, in row order, when the caller has them (spares a pass over the input).
    """
    levels = original.shape[1]
    rows = np.flatnonzero(movers) if movers is not None else np.zeros(0, np.int64)
    moved = (final[rows] != original[rows]).any(1)
    free_rank = np.full(len(rows), -1, np.int32)
    dist_rank = np.zeros(len(rows), np.int32)
    extra_d = np.zeros(len(rows), np.float32)
    extra_mse = np.zeros(len(rows), np.float32)
    if moved.any() and last_distances is not None:
        mv = rows[moved]
        stays = np.ones(len(ids), bool)
        stays[rows] = False
        occupied_codes = original[stays] if reserved_codes is None else np.r_[original[stays], reserved_codes]
        f, d, e = _ranks(mv, original, final, occupied_codes, model.codebook_size, last_distances)
        free_rank[moved], dist_rank[moved], extra_d[moved] = f, d, e
        extra_mse[moved] = extra_recon if extra_recon is not None else recon_deltas(
            model, embeddings_path, ids[mv], original[mv], final[mv], batch_rows, allow_pickle
        )
    order = np.argsort(ids[rows], kind="stable")
    columns = [
        pa.array(ids[rows][order], pa.int64()),
        _fsl(original[rows][order], levels), _fsl(final[rows][order], levels),
        pa.array(np.asarray(dedup)[rows][order], pa.int32()), pa.array(moved[order]),
        pa.array(free_rank[order]), pa.array(dist_rank[order]), pa.array(extra_d[order]), pa.array(extra_mse[order]),
    ]
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.Table.from_arrays(columns, schema=audit_schema(levels)), tmp)
    summary = _summary(collision_mode, len(ids), moved, free_rank[moved], dist_rank[moved], extra_mse[moved])
    logger.info("collision audit: %s -> %s", summary, out_path)
    return summary


def _fsl(codes: np.ndarray, levels: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(codes, np.int32).reshape(-1)), levels)


def _ranks(
    rows: np.ndarray, original: np.ndarray, final: np.ndarray, occupied_codes: np.ndarray, sizes: Sequence[int],
    last_distances: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(free_rank, distance_rank, extra_distance) of moved rows, ties broken by code as the search does."""
    sizes = [int(k) for k in sizes]
    k_last = sizes[-1]
    prefix_of = (lambda c: pack_codes(c[:, :-1], sizes[:-1])) if len(sizes) > 1 else (lambda c: np.zeros(len(c)))
    groups, group_of = np.unique(prefix_of(original[rows]), return_inverse=True)
    occupied = np.zeros((len(groups), k_last), bool)
    stay_prefix = prefix_of(occupied_codes)
    slot = np.minimum(np.searchsorted(groups, stay_prefix), len(groups) - 1)
    inside = groups[slot] == stay_prefix
    occupied[slot[inside], occupied_codes[inside, -1]] = True
    free_rank = np.empty(len(rows), np.int32)
    dist_rank = np.empty(len(rows), np.int32)
    extra = np.empty(len(rows), np.float32)
    codes = np.arange(k_last)
    for start in range(0, len(rows), CHUNK_ROWS):
        sl = slice(start, start + CHUNK_ROWS)
        d = np.asarray(last_distances(rows[sl]), np.float32)
        new, old = final[rows[sl], -1].astype(np.int64), original[rows[sl], -1].astype(np.int64)
        d_new = d[np.arange(len(d)), new][:, None]
        nearer = (d < d_new) | ((d == d_new) & (codes < new[:, None]))
        dist_rank[sl] = nearer.sum(1)
        free_rank[sl] = (nearer & ~occupied[group_of[sl]]).sum(1)
        extra[sl] = d_new[:, 0] - d[np.arange(len(d)), old]
    return free_rank, dist_rank, extra


@torch.no_grad()
def recon_deltas(
    model: RQVAE, embeddings_path: str | Path, item_ids: np.ndarray, original: np.ndarray, final: np.ndarray,
    batch_rows: int, allow_pickle: bool,
) -> np.ndarray:
    """Per item: MSE of x decoded from `final` minus from `original` (one streaming pass over the input)."""
    order = np.argsort(item_ids, kind="stable")
    wanted = item_ids[order]
    out = np.zeros(len(item_ids), np.float32)
    for ids, x in iter_embeddings(embeddings_path, batch_rows=batch_rows, allow_pickle=allow_pickle):
        ids = np.asarray(ids, np.int64)
        pos = np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)
        hit = wanted[pos] == ids
        if not hit.any():
            continue
        rows = order[pos[hit]]
        xt = torch.from_numpy(np.ascontiguousarray(model.inputs(ids[hit], x[hit]), np.float32)).to(model.device)
        errs = [((model.decode_codes(torch.from_numpy(c[rows].astype(np.int64)).to(model.device)) - xt) ** 2)
                .double().mean(1) for c in (final, original)]
        out[rows] = (errs[0] - errs[1]).float().cpu().numpy()
    return out


def _summary(
    mode: str, n_items: int, moved: np.ndarray, free_rank: np.ndarray, dist_rank: np.ndarray, extra_mse: np.ndarray
) -> dict[str, Any]:
    summary: dict[str, Any] = {"collision_mode": mode, "moved": int(moved.sum()), "stuck": int((~moved).sum())}
    if moved.any():
        summary.update(
            free_rank_mean=round(float(free_rank.mean()), 4),
            free_rank_p90=round(float(np.quantile(free_rank, 0.9)), 4),
            free_rank_max=int(free_rank.max()),
            nearest_free_share=round(float((free_rank == 0).mean()), 6),
            distance_rank_mean=round(float(dist_rank.mean()), 4),
            extra_recon_mse_mean=float(extra_mse.mean()),
            extra_recon_mse_p90=float(np.quantile(extra_mse, 0.9)),
            recon_mse_delta=float(extra_mse.astype(np.float64).sum() / max(1, n_items)),
        )
    return summary


def combine_audits(paths: Sequence[str | Path], out_path: str | Path, collision_mode: str, n_items: int
                   ) -> dict[str, Any]:
    """One audit table (sorted by item id) from the tables of groups resolved apart, and its summary.

    Each group's table lists only its own movers, so the union is the table one pass over all items would write.
    """
    tables = [pq.read_table(p) for p in paths]
    if not tables:
        raise ValueError("combine_audits needs at least one table")
    table = pa.concat_tables(tables)
    table = table.take(pa.array(np.argsort(table.column("item_id").to_numpy(), kind="stable")))
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    moved = table.column("moved").to_numpy(zero_copy_only=False)
    free_rank, dist_rank, extra_mse = (table.column(c).to_numpy()[moved]
                                       for c in ("free_rank", "distance_rank", "extra_recon_mse"))
    summary = _summary(collision_mode, n_items, moved, free_rank, dist_rank, extra_mse)
    logger.info("collision audit (%d groups): %s -> %s", len(tables), summary, out_path)
    return summary
