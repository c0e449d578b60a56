"""Collision resolution: make every item's semantic ID unique, by a dedup digit or by moving items.

Two items whose full code tuples collide need something to tell them apart. The ``dedup`` mode appends a
digit (0 for the first item of a bucket by item_id, 1 for the next, ...), which makes IDs L+1 long and gives
the extra digit no meaning. The ``reassign`` mode keeps IDs L codes long: every item but the first of a
bucket moves to the nearest *free* last-level code within its (L-1)-prefix, ranked by the distance of its
last-level residual to each last-level codeword, so the moved item still lands close to where the model put
it. Items whose prefix has no free code left stay and get a dedup digit.

Pinned items (``fixed``: published IDs kept by an incremental run) never move and keep their dedup value;
new items are resolved against their occupancy. ``reserved`` IDs (codes + dedup of retired items, see
:mod:`rqvae.ids.lineage`) occupy their slot like pinned items that are not in the output: nobody is given them.

Only numpy here: the caller supplies the distances (see :func:`rqvae.encoding.encode.encode_file`), so a test can
hand in any matrix. Movers are a minority, so the work is proportional to them, not to all items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from ..modes import CollisionMode
from ..quantize.metrics import assign_dedup, pack_codes

logger = logging.getLogger(__name__)

FIRST_CANDIDATES = 32  # nearest codes ranked per mover at first; the few that find none free get a full ranking
CHUNK_ROWS = 65_536  # movers per distance block ([CHUNK_ROWS, K] float32 at a time)

LastDistances = Callable[[np.ndarray], np.ndarray]
"""rows [M] (indices into the items) -> distances [M, K_last] of those items' last residuals to each codeword."""


class Reassignment(NamedTuple):
    codes: np.ndarray  # [N, L] int32, last level changed for moved items
    moved: np.ndarray  # [N] bool: items that left their original tuple
    stuck: np.ndarray  # [N] bool: items that had to move but found their prefix full (they keep a dedup digit)


Reserved = tuple[np.ndarray, np.ndarray]
"""(codes [R, L], dedup [R]) of IDs no item may be given (retired IDs)."""


class Resolution(NamedTuple):
    codes: np.ndarray  # [N, L] int32
    dedup: np.ndarray  # [N] int32: codes + dedup is unique per item
    stats: dict  # pre/post collision rate, items moved, stuck, largest dedup


def with_reserved(
    ids: np.ndarray,
    codes: np.ndarray,
    fixed: np.ndarray | None,
    fixed_dedup: np.ndarray | None,
    reserved: Reserved | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The items followed by one pinned placeholder per reserved ID (ids -1, -2, ...; rows n.. of the result).

    Placeholders sort with the pinned items and never move, so every rule that respects pinned IDs respects
    reserved ones; callers keep the first n rows of whatever they compute.
    """
    if reserved is None or len(reserved[0]) == 0:
        return ids, codes, fixed, fixed_dedup
    n, r = len(ids), len(reserved[0])
    pinned = np.zeros(n, bool) if fixed is None else np.asarray(fixed, bool)
    given = np.zeros(n, np.int32) if fixed_dedup is None else np.asarray(fixed_dedup, np.int32)
    return (
        np.r_[np.asarray(ids, np.int64), -1 - np.arange(r, dtype=np.int64)],
        np.r_[np.asarray(codes, np.int32), np.asarray(reserved[0], np.int32).reshape(r, -1)],
        np.r_[pinned, np.ones(r, bool)],
        np.r_[given, np.asarray(reserved[1], np.int32)],
    )


def collision_movers(
    ids: np.ndarray,
    codes: np.ndarray,
    codebook_sizes: Sequence[int],
    fixed: np.ndarray | None = None,
    reserved: Reserved | None = None,
) -> np.ndarray:
    """[N] bool: items that share their tuple with an item ranked before them (pinned first, then by item_id).

    Pinned items are never movers, even when several of them share a tuple (their dedup values differ). An
    item on a reserved tuple is a mover too.
    """
    n = len(ids)
    ids, codes, fixed, _ = with_reserved(ids, codes, fixed, None, reserved)
    ids = np.asarray(ids, dtype=np.int64)
    key = pack_codes(codes, codebook_sizes)
    pinned = np.zeros(len(ids), bool) if fixed is None else np.asarray(fixed, bool)
    order = np.lexsort((ids, ~pinned, key))
    sorted_key = key[order]
    later = np.r_[False, sorted_key[1:] == sorted_key[:-1]]
    movers = np.zeros(len(ids), bool)
    movers[order[later]] = True
    return (movers & ~pinned)[:n]


def reassign_collisions(
    ids: np.ndarray,
    codes: np.ndarray,
    codebook_sizes: Sequence[int],
    last_distances: LastDistances,
    *,
    fixed: np.ndarray | None = None,
    first_candidates: int = FIRST_CANDIDATES,
) -> Reassignment:
    """Move every colliding item but the first of its bucket to the nearest free last-level code of its prefix.

    Greedy by distance: in each round every unplaced mover points at its nearest code still free; where
    several point at the same code, the closest (then the smallest item_id) takes it and the others look
    again next round. Occupancy only grows, so each moved item ends on a code that no item occupied when it
    was placed and every code nearer to it is taken. Deterministic for a given input.
    """
    ids = np.asarray(ids, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int32)
    sizes = [int(k) for k in codebook_sizes]
    n, levels = codes.shape
    k_last = sizes[-1]
    movers = collision_movers(ids, codes, sizes, fixed)
    rows = np.flatnonzero(movers)
    out = codes.copy()
    moved = np.zeros(n, bool)
    stuck = np.zeros(n, bool)
    if rows.size == 0:
        return Reassignment(out, moved, stuck)

    prefix = pack_codes(codes[:, :-1], sizes[:-1]) if levels > 1 else np.zeros(n, np.int64)
    groups, group_of = np.unique(prefix[rows], return_inverse=True)
    # occupancy of the last level within each prefix that has movers: every item that stays puts a mark
    occupied = np.zeros((len(groups), k_last), bool)
    stays = np.flatnonzero(~movers)
    slot = np.minimum(np.searchsorted(groups, prefix[stays]), len(groups) - 1)
    inside = groups[slot] == prefix[stays]
    occupied[slot[inside], codes[stays[inside], -1]] = True

    target = np.full(rows.size, -1, np.int64)
    pending = np.arange(rows.size)
    for width in (min(first_candidates, k_last), k_last):
        if pending.size == 0:
            break
        cand, cand_d = _rank(last_distances, rows[pending], width)
        placed = _place(cand, cand_d, group_of[pending], ids[rows[pending]], occupied)
        target[pending] = placed
        pending = pending[placed < 0]
        if width == k_last:
            break
    ok = target >= 0
    out[rows[ok], -1] = target[ok]
    moved[rows[ok]] = True
    stuck[rows[~ok]] = True
    logger.info(
        "reassigned %d of %d colliding items to free last-level codes; %d found their prefix full",
        int(ok.sum()), rows.size, int((~ok).sum()),
    )
    return Reassignment(out, moved, stuck)


def _rank(last_distances: LastDistances, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The `width` nearest last-level codes of each row, nearest first: codes [M, width], distances [M, width]."""
    cand = np.empty((rows.size, width), np.int64)
    cand_d = np.empty((rows.size, width), np.float32)
    for start in range(0, rows.size, CHUNK_ROWS):
        d = np.asarray(last_distances(rows[start : start + CHUNK_ROWS]), dtype=np.float32)
        if d.ndim != 2 or d.shape[0] != min(CHUNK_ROWS, rows.size - start):
            raise ValueError(f"last_distances returned shape {d.shape} for {min(CHUNK_ROWS, rows.size - start)} rows")
        if width < d.shape[1]:
            part = np.argpartition(d, width - 1, axis=1)[:, :width]
        else:
            part = np.broadcast_to(np.arange(d.shape[1]), d.shape)
        part_d = np.take_along_axis(d, part, 1)
        order = np.argsort(part_d, axis=1, kind="stable")
        cand[start : start + len(d)] = np.take_along_axis(part, order, 1)
        cand_d[start : start + len(d)] = np.take_along_axis(part_d, order, 1)
    return cand, cand_d


def _place(
    cand: np.ndarray, cand_d: np.ndarray, group: np.ndarray, item_ids: np.ndarray, occupied: np.ndarray
) -> np.ndarray:
    """Rounds of 'point at the nearest free candidate, closest claimant wins'; returns the code per mover or -1.

    Updates `occupied` in place. Each round places at least one mover per contested code or advances
    pointers past taken codes, so it ends after at most width + (movers per prefix) rounds.
    """
    m, width = cand.shape
    ptr = np.zeros(m, np.int64)
    result = np.full(m, -1, np.int64)
    active = np.flatnonzero(~occupied[group].all(1))  # a full prefix has nothing to offer
    k_last = occupied.shape[1]
    columns = np.arange(width)
    while active.size:
        # move each pointer to its first candidate still free (one vectorised step instead of one per taken code)
        free = ~occupied[group[active][:, None], cand[active]] & (columns >= ptr[active][:, None])
        has = free.any(1)
        active = active[has]
        if active.size == 0:
            break
        ptr[active] = free[has].argmax(1)
        code = cand[active, ptr[active]]
        dist = cand_d[active, ptr[active]]
        claim = group[active].astype(np.int64) * k_last + code
        order = np.lexsort((item_ids[active], dist, claim))
        first = np.r_[True, claim[order][1:] != claim[order][:-1]]
        winners = active[order[first]]
        result[winners] = cand[winners, ptr[winners]]
        occupied[group[winners], result[winners]] = True
        keep = np.ones(active.size, bool)
        keep[order[first]] = False
        active = active[keep]
    return result


def dedup_with_fixed(
    ids: np.ndarray,
    codes: np.ndarray,
    codebook_sizes: Sequence[int],
    fixed: np.ndarray | None = None,
    fixed_dedup: np.ndarray | None = None,
) -> np.ndarray:
    """Dedup digits where pinned items keep theirs and the others count on after a bucket's largest pinned value.

    Without pinned items this is :func:`rqvae.quantize.metrics.assign_dedup` (0, 1, ... by item_id in each bucket).
    """
    if fixed is None or not np.any(fixed):
        return assign_dedup(ids, codes, codebook_sizes)
    ids = np.asarray(ids, dtype=np.int64)
    pinned = np.asarray(fixed, bool)
    given = np.asarray(fixed_dedup, dtype=np.int64)
    key = pack_codes(codes, codebook_sizes)
    order = np.lexsort((ids, ~pinned, key))
    sorted_key = key[order]
    pos = np.arange(len(order), dtype=np.int64)
    new_bucket = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    bucket = np.cumsum(new_bucket) - 1
    starts = pos[new_bucket]
    base = np.full(len(starts), -1, np.int64)
    np.maximum.at(base, bucket[pinned[order]], given[order][pinned[order]])
    n_pinned = np.bincount(bucket[pinned[order]], minlength=len(starts))
    rank = pos - starts[bucket] - n_pinned[bucket]  # rank among the bucket's unpinned items (pinned sort first)
    dedup_sorted = np.where(pinned[order], given[order], base[bucket] + 1 + rank)
    dedup = np.empty(len(order), np.int32)
    dedup[order] = dedup_sorted.astype(np.int32)
    return dedup


def resolve_collisions(
    ids: np.ndarray,
    codes: np.ndarray,
    codebook_sizes: Sequence[int],
    collision_mode: str | CollisionMode,
    last_distances: LastDistances | None = None,
    *,
    fixed: np.ndarray | None = None,
    fixed_dedup: np.ndarray | None = None,
    reserved: Reserved | None = None,
) -> Resolution:
    """Unique IDs (codes + dedup) under `collision_mode`, with the figures a report needs.

    ``collision_rate_pre``/``_post``: share of items whose code tuple (without dedup) is shared, before and
    after moving; ``moved``: items that changed their last code; ``stuck``: movers whose prefix was full.
    ``reserved`` IDs are given to no item (figures count the items only).
    """
    mode = CollisionMode.parse(collision_mode)
    n = len(ids)
    codes = np.asarray(codes, dtype=np.int32)
    pre = collision_rate(codes, codebook_sizes)
    ids, codes, fixed, fixed_dedup = with_reserved(ids, codes, fixed, fixed_dedup, reserved)
    moved = stuck = 0
    if mode is CollisionMode.REASSIGN:
        if last_distances is None:
            raise ConfigError("collision mode 'reassign' needs last_distances (the model's last-level distances)")
        result = reassign_collisions(ids, codes, codebook_sizes, last_distances, fixed=fixed)
        codes, moved, stuck = result.codes, int(result.moved.sum()), int(result.stuck.sum())
    dedup = dedup_with_fixed(ids, codes, codebook_sizes, fixed, fixed_dedup)[:n]
    codes = codes[:n]
    stats = {
        "collision_mode": mode.value,
        "collision_rate_pre": pre,
        "collision_rate_post": collision_rate(codes, codebook_sizes) if mode is CollisionMode.REASSIGN else pre,
        "moved": moved,
        "stuck": stuck,
        "max_dedup": int(dedup.max()) if dedup.size else 0,
    }
    return Resolution(codes, dedup, stats)


def collision_rate(codes: np.ndarray, codebook_sizes: Sequence[int]) -> float:
    """Share of items whose full code tuple is shared with at least one other item."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(pack_codes(codes, codebook_sizes), return_inverse=True, return_counts=True)
    return round(float((counts[inverse] > 1).sum()) / len(codes), 6)
