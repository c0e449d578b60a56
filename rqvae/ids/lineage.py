"""Continuity between published versions: retired IDs stay reserved, kept codes keep their dedup, and a
migration map says what happened to every item.

A downstream generative recommender learned "this ID means that item". If a removed item's ID were handed to a
new item the next day, the recommender would recommend the new item for the old one's history; so an ID whose
item disappeared is *retired*: reserved (given to no other item) for ``retire_after`` versions, recorded in
each version's ``retired_ids.parquet`` with its age. An item that comes back with the same embedding takes its
reserved ID again. Reservations only make sense while the code space is the same (incremental runs, or a
retrain aligned to the previous version, see :mod:`rqvae.ids.align`); an unaligned retrain starts a new code space
and resets them.

:class:`Lineage` is applied by :func:`rqvae.encoding.shards.merge_shards` between reading the raw codes and resolving
collisions; :func:`migration_map` compares the published IDs with the previous version's afterwards
(:func:`write_migration_map` writes the same file for `publish` from packed IDs, a row group at a time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.fsutil import atomic_path
from ..io.idfile import iter_semantic_ids, read_semantic_ids
from ..io.packed import CHUNK_ROWS, id_radix, pack, read_keys, unpack

logger = logging.getLogger(__name__)

STATUSES = ("kept", "changed", "new", "removed")


@dataclass(frozen=True)
class PreviousIds:
    """A published version's IDs, sorted by item id, with its name (a snapshot)."""

    name: str | None
    ids: np.ndarray
    codes: np.ndarray
    dedup: np.ndarray

    @classmethod
    def read(cls, path: str | Path, name: str | None = None) -> PreviousIds:
        ids, codes, dedup = read_semantic_ids(path)
        order = np.argsort(ids, kind="stable")
        return cls(name, ids[order], codes[order], dedup[order])

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found [N] bool, row in this version [N]) for item ids."""
        ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0:
            return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return self.ids[pos] == ids, pos


@dataclass(frozen=True)
class RetiredIds:
    """Reserved IDs: the item that held each, its codes, dedup, embedding hash, the version that retired it, age."""

    ids: np.ndarray
    codes: np.ndarray
    dedup: np.ndarray
    hashes: np.ndarray
    retired_in: np.ndarray  # snapshot names (str)
    age: np.ndarray  # versions since retirement: 1 in the version where the item disappeared

    @classmethod
    def empty(cls, levels: int) -> RetiredIds:
        return cls(np.zeros(0, np.int64), np.zeros((0, levels), np.int32), np.zeros(0, np.int32),
                   np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask: np.ndarray) -> RetiredIds:
        return RetiredIds(*(np.asarray(a)[mask] for a in (self.ids, self.codes, self.dedup, self.hashes,
                                                           self.retired_in, self.age)))

    @classmethod
    def concat(cls, parts: list[RetiredIds]) -> RetiredIds:
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("ids", "codes", "dedup", "hashes", "retired_in", "age")))

    @classmethod
    def read(cls, path: str | Path) -> RetiredIds:
        table = pq.read_table(path)
        levels = table.schema.field("codes").type.list_size
        codes = table.column("codes").combine_chunks().flatten().to_numpy().reshape(-1, levels)
        return cls(table.column("item_id").to_numpy(), codes.astype(np.int32), table.column("dedup").to_numpy(),
                   table.column("emb_hash").to_numpy(), np.asarray(table.column("retired_in").to_pylist(), object),
                   table.column("age").to_numpy().astype(np.int32))

    def write(self, path: str | Path) -> Path:
        levels = self.codes.shape[1]
        table = pa.table({
            "item_id": pa.array(self.ids, pa.int64()),
            "codes": pa.FixedSizeListArray.from_arrays(pa.array(self.codes.reshape(-1), pa.int32()), levels),
            "dedup": pa.array(self.dedup, pa.int32()),
            "emb_hash": pa.array(self.hashes, pa.int64()),
            "retired_in": pa.array(self.retired_in.tolist(), pa.string()),
            "age": pa.array(self.age, pa.int32()),
        })
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return Path(path)


def _id_in(codes: np.ndarray, dedup: np.ndarray, other_codes: np.ndarray, other_dedup: np.ndarray) -> np.ndarray:
    """[N] bool: whether each ID (codes + dedup) is among the other IDs, via one packed int64 key per ID."""
    a = np.column_stack([codes, dedup]).astype(np.int64)
    b = np.column_stack([other_codes, other_dedup]).astype(np.int64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros(len(a), bool)
    radix = np.maximum(a.max(0), b.max(0)) + 1
    if float(np.prod(radix.astype(np.float64))) >= 2.0**63:  # too wide to pack: compare whole rows
        void = np.dtype((np.void, 8 * a.shape[1]))
        return np.isin(np.ascontiguousarray(a).view(void).ravel(), np.ascontiguousarray(b).view(void).ravel())
    weights = np.r_[np.cumprod(radix[::-1])[::-1][1:], 1]
    return np.isin(a @ weights, b @ weights)


@dataclass
class Lineage:
    """What a new version inherits from the previous one, applied before collisions are resolved.

    ``reserve``: the code space is the previous one (incremental, or an aligned retrain), so retired IDs stay
    reserved. ``reclaim``: a returning item with an unchanged embedding takes its reserved ID back (incremental
    runs only: after a retrain every ID must be what the model encodes).
    """

    previous: PreviousIds | None
    snapshot: str
    retire_after: int  # versions a retired ID stays reserved (EncodeOptions.retire_after)
    retired: RetiredIds | None = None
    previous_hashes: tuple[np.ndarray, np.ndarray] | None = None
    reserve: bool = True
    reclaim: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    retired_out: RetiredIds | None = None

    def prepare(
        self, ids: np.ndarray, codes: np.ndarray, fixed: np.ndarray, fixed_dedup: np.ndarray,
        hashes: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """(codes, fixed, fixed_dedup, reserved IDs) for collision resolution; fills ``stats``, ``retired_out``."""
        ids, codes = np.asarray(ids, np.int64), np.asarray(codes, np.int32).copy()
        fixed, fixed_dedup = np.asarray(fixed, bool).copy(), np.asarray(fixed_dedup, np.int32).copy()
        levels = codes.shape[1]
        prev = self.previous
        self.retired_out = RetiredIds.empty(levels)
        if prev is None or prev.codes.shape[1] != levels:
            self.stats = {"previous": None if prev is None else prev.name, "reserved": 0,
                          "reason": "no previous version" if prev is None else "previous version has other levels"}
            return codes, fixed, fixed_dedup, None
        found, pos = prev.locate(ids)
        self.stats = {"previous": prev.name}
        same = found & ~fixed & (codes == prev.codes[pos]).all(1)
        fixed[same], fixed_dedup[same] = True, prev.dedup[pos[same]]
        self.stats["kept_dedup"] = int(same.sum())
        if not self.reserve:
            self.stats.update(reserved=0, reason="retrain without alignment: a new code space, reservations reset")
            return codes, fixed, fixed_dedup, None
        retired = self._retire(ids, codes, fixed, fixed_dedup, hashes)
        clash = _id_in(retired.codes, retired.dedup, codes[fixed], fixed_dedup[fixed])  # a pinned ID wins
        self.retired_out = retired.take(~clash)
        self.stats.update(reserved=len(self.retired_out), retire_after=self.retire_after)
        reserved = (self.retired_out.codes, self.retired_out.dedup) if len(self.retired_out) else None
        return codes, fixed, fixed_dedup, reserved

    def _retire(
        self, ids: np.ndarray, codes: np.ndarray, fixed: np.ndarray, fixed_dedup: np.ndarray,
        hashes: np.ndarray | None,
    ) -> RetiredIds:
        """Age the previous reservations, reclaim those of returning items, retire the items that left."""
        prev, levels = self.previous, codes.shape[1]
        assert prev is not None
        old = self.retired if self.retired is not None else RetiredIds.empty(levels)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        at = np.minimum(np.searchsorted(sorted_ids, old.ids), max(0, len(ids) - 1))
        returning = (sorted_ids[at] == old.ids) if len(ids) else np.zeros(len(old), bool)
        reclaimed = 0
        if self.reclaim and hashes is not None and returning.any():
            rows = order[at[returning]]
            back = old.take(returning)
            taken = _id_in(back.codes, back.dedup, codes[fixed], fixed_dedup[fixed])
            ok = (np.asarray(hashes)[rows] == back.hashes) & ~fixed[rows] & ~taken
            codes[rows[ok]], fixed[rows[ok]], fixed_dedup[rows[ok]] = back.codes[ok], True, back.dedup[ok]
            reclaimed = int(ok.sum())
        carried = old.take(~returning)
        carried = RetiredIds(carried.ids, carried.codes, carried.dedup, carried.hashes, carried.retired_in,
                             carried.age + 1)
        gone = ~np.isin(prev.ids, ids, assume_unique=True)
        new_hashes = np.zeros(int(gone.sum()), np.int64)
        if self.previous_hashes is not None and gone.any():
            h_ids, h_values = self.previous_hashes
            hit = np.minimum(np.searchsorted(h_ids, prev.ids[gone]), max(0, len(h_ids) - 1))
            new_hashes = np.where(h_ids[hit] == prev.ids[gone], h_values[hit], 0) if len(h_ids) else new_hashes
        fresh = RetiredIds(prev.ids[gone], prev.codes[gone], prev.dedup[gone], new_hashes,
                           np.full(int(gone.sum()), self.snapshot, object), np.ones(int(gone.sum()), np.int32))
        both = RetiredIds.concat([carried, fresh])
        alive = both.age <= self.retire_after
        self.stats.update(newly_retired=int(gone.sum()), expired=int((~alive).sum()), reclaimed=reclaimed,
                          returned=int(returning.sum()))
        return both.take(alive)


def migration_map(
    previous: PreviousIds | None, ids: np.ndarray, codes: np.ndarray, dedup: np.ndarray
) -> tuple[pa.Table, dict[str, Any]]:
    """Per item: old codes/dedup, new codes/dedup, status (kept, changed, new, removed); plus summary counts.

    Rows: every current item by item id, then the removed ones. ``kept`` = same codes and dedup; old columns
    are null for new items, new columns for removed ones. Summary: counts per status, churn (changed / items
    in both), and the churn of level-1 codes and of code tuples over the items in both.
    """
    order = np.argsort(ids, kind="stable")
    ids, codes = np.asarray(ids, np.int64)[order], np.asarray(codes, np.int32)[order]
    dedup = np.asarray(dedup, np.int32)[order]
    n, levels = codes.shape
    prev = previous if previous is not None else PreviousIds(None, np.zeros(0, np.int64),
                                                             np.zeros((0, levels), np.int32), np.zeros(0, np.int32))
    found, pos = prev.locate(ids)
    old_levels = prev.codes.shape[1]
    removed = ~np.isin(prev.ids, ids, assume_unique=True)
    same_width = old_levels == levels
    changed = found.copy()
    if same_width:
        changed[found] = (prev.codes[pos[found]] != codes[found]).any(1) | (prev.dedup[pos[found]] != dedup[found])
    status = np.where(found, np.where(changed, 1, 0), 2).astype(np.int8)  # index into STATUSES
    n_removed = int(removed.sum())
    all_ids = np.r_[ids, prev.ids[removed]]
    old_codes = np.zeros((n + n_removed, old_levels), np.int32)
    old_codes[:n][found], old_codes[n:] = prev.codes[pos[found]], prev.codes[removed]
    old_dedup = np.zeros(n + n_removed, np.int32)
    old_dedup[:n][found], old_dedup[n:] = prev.dedup[pos[found]], prev.dedup[removed]
    has_old = np.r_[found, np.ones(n_removed, bool)]
    has_new = np.r_[np.ones(n, bool), np.zeros(n_removed, bool)]
    new_codes = np.r_[codes, np.zeros((n_removed, levels), np.int32)]
    new_dedup = np.r_[dedup, np.zeros(n_removed, np.int32)]
    table = _migration_table(all_ids, np.r_[status, np.full(n_removed, 3, np.int8)], old_codes, old_dedup, has_old,
                             new_codes, new_dedup, has_new)
    common = int(found.sum())
    summary: dict[str, Any] = {
        "previous": prev.name,
        **{name: int((status == code).sum()) for code, name in enumerate(STATUSES[:3])},
        "removed": n_removed,
        "churn": round(int(changed.sum()) / common, 6) if common else None,
    }
    if common and same_width:
        summary["level1_churn"] = round(float((prev.codes[pos[found], 0] != codes[found, 0]).mean()), 6)
        summary["codes_churn"] = round(float((prev.codes[pos[found]] != codes[found]).any(1).mean()), 6)
    return table, summary


def _migration_table(
    ids: np.ndarray, status: np.ndarray, old_codes: np.ndarray, old_dedup: np.ndarray, has_old: np.ndarray,
    new_codes: np.ndarray, new_dedup: np.ndarray, has_new: np.ndarray,
) -> pa.Table:
    """Rows of the migration map (status: index into STATUSES); old / new columns are null where has_* is not."""
    return pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "status": pa.DictionaryArray.from_arrays(pa.array(status), pa.array(STATUSES)),
        "old_codes": _codes_column(old_codes, has_old),
        "old_dedup": pa.array(old_dedup, pa.int32(), mask=~has_old),
        "new_codes": _codes_column(new_codes, has_new),
        "new_dedup": pa.array(new_dedup, pa.int32(), mask=~has_new),
    })


def _codes_column(codes: np.ndarray, valid: np.ndarray) -> pa.Array:
    values = pa.array(np.ascontiguousarray(codes, np.int32).reshape(-1), pa.int32())
    return pa.FixedSizeListArray.from_arrays(values, codes.shape[1], mask=pa.array(~valid))


def write_migration(path: str | Path, table: pa.Table) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


MIGRATION_ROW_GROUP = 1 << 20  # rows per row group: pq.write_table's default, so a streamed map is the same file


@dataclass(frozen=True)
class _SortedIds:
    """A version's IDs by item id in ~20 bytes an item: ids ascending, packed keys in file order, and the file
    row of each sorted id (the keys are gathered a slice at a time where rows are written)."""

    ids: np.ndarray
    keys: np.ndarray
    order: np.ndarray
    radix: tuple[int, ...]

    @classmethod
    def read(cls, path: str | Path, code_sizes: Sequence[int] | None) -> _SortedIds | None:
        """None when the IDs have no packed form or an item id repeats (migration_map then does the work)."""
        if code_sizes is None:
            radix = id_radix(path)
            if radix is None:
                return None
            code_sizes = radix[:-1]
        packed = read_keys(path, code_sizes, with_ids=True)
        if packed is None:
            return None
        keys, ids, radix = packed
        del packed
        order = np.argsort(ids, kind="stable")
        ids.sort()  # the values of ids[order], in place
        if any((chunk[1:] == chunk[:-1]).any() for chunk in _overlapping_chunks(ids)):
            return None
        if len(order) < 2**32:
            order = order.astype(np.uint32)
        return cls(ids, keys, order, radix)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, codes, dedup) of sorted rows [start, stop)."""
        codes, dedup = unpack(self.keys[self.order[start:stop]], self.radix)
        return self.ids[start:stop], codes, dedup


@dataclass(frozen=True)
class _OldKeys:
    """The previous version against the current one: each current item's old packed key (-1: new item) and the
    removed items (ids ascending, their keys), under the previous version's own radix."""

    keys: np.ndarray
    radix: tuple[int, ...]
    gone_ids: np.ndarray
    gone_keys: np.ndarray

    @classmethod
    def read(cls, path: str | Path, current: _SortedIds) -> _OldKeys | None:
        """Streamed from the previous file (never held whole); None when its IDs have no packed form."""
        radix = id_radix(path)
        if radix is None:
            return None
        old = np.full(len(current.ids), -1, np.int64)
        gone_ids, gone_keys = [], []
        for ids, codes, dedup in iter_semantic_ids(path):
            key = pack(codes, dedup, radix)
            pos = np.minimum(np.searchsorted(current.ids, ids), len(current.ids) - 1)
            hit = current.ids[pos] == ids
            old[pos[hit]] = key[hit]
            gone_ids.append(ids[~hit])
            gone_keys.append(key[~hit])
        by_id = np.argsort(np.concatenate(gone_ids), kind="stable")
        return cls(old, radix, np.concatenate(gone_ids)[by_id], np.concatenate(gone_keys)[by_id])


def write_migration_map(
    path: str | Path, semantic_ids: str | Path, previous: str | Path | None = None,
    previous_name: str | None = None, code_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write :func:`migration_map`'s table (vs the previous version's semantic-ID file) to ``path``; its summary.

    The same rows, row groups and bytes as migration_map + write_migration, built a row group at a time from
    packed IDs: ~20 bytes an item (28 with a previous version, plus 16 a removed item) instead of ~200, for 50M
    items in 3 GiB. ``code_sizes`` (the codebook sizes) saves a pass over the file; IDs that do not pack (or a
    repeated item id) go through migration_map.
    """
    current = _SortedIds.read(semantic_ids, code_sizes)
    old = None if current is None or previous is None else _OldKeys.read(previous, current)
    if current is None or (previous is not None and old is None):
        before = PreviousIds.read(previous, previous_name) if previous is not None else None
        table, summary = migration_map(before, *read_semantic_ids(semantic_ids))
        write_migration(path, table)
        return summary
    counts = dict.fromkeys(("kept", "changed", "new", "level1", "codes"), 0)
    n, n_removed = len(current.ids), 0 if old is None else len(old.gone_ids)
    with atomic_path(path) as tmp:
        writer = None
        try:
            for start in range(0, n + n_removed, MIGRATION_ROW_GROUP):
                table = _migration_rows(current, old, start, min(start + MIGRATION_ROW_GROUP, n + n_removed), counts)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    return _migration_summary(previous_name if old is not None else None, counts, n_removed,
                              old is None or len(old.radix) == len(current.radix))


def _migration_rows(current: _SortedIds, old: _OldKeys | None, start: int, stop: int, counts: dict[str, int]
                    ) -> pa.Table:
    """Rows [start, stop) of the map: current items by id, then the removed ones; adds to the status counts."""
    n, levels = len(current.ids), len(current.radix) - 1
    old_levels = levels if old is None else len(old.radix) - 1
    ids, codes, dedup = current.rows(min(start, n), min(stop, n))
    old_key = np.full(len(ids), -1, np.int64) if old is None else old.keys[min(start, n) : min(stop, n)]
    found = old_key >= 0
    old_codes, old_dedup = np.zeros((len(ids), old_levels), np.int32), np.zeros(len(ids), np.int32)
    if found.any():
        assert old is not None
        old_codes[found], old_dedup[found] = unpack(old_key[found], old.radix)
    changed = found.copy()
    if old_levels == levels:
        differs = old_codes[found] != codes[found]
        changed[found] = differs.any(1) | (old_dedup[found] != dedup[found])
        counts["level1"] += int(differs[:, 0].sum()) if levels else 0
        counts["codes"] += int(differs.any(1).sum())
    status = np.where(found, np.where(changed, 1, 0), 2).astype(np.int8)
    for code, name in enumerate(STATUSES[:3]):
        counts[name] += int((status == code).sum())
    gone = slice(max(start, n) - n, max(stop, n) - n)
    if old is None:
        gone_ids, gone_codes, gone_dedup = np.zeros(0, np.int64), np.zeros((0, levels), np.int32), np.zeros(0, np.int32)
    else:
        gone_ids, (gone_codes, gone_dedup) = old.gone_ids[gone], unpack(old.gone_keys[gone], old.radix)
    k = len(gone_ids)
    return _migration_table(
        np.r_[ids, gone_ids], np.r_[status, np.full(k, 3, np.int8)], np.r_[old_codes, gone_codes],
        np.r_[old_dedup, gone_dedup], np.r_[found, np.ones(k, bool)], np.r_[codes, np.zeros((k, levels), np.int32)],
        np.r_[dedup, np.zeros(k, np.int32)], np.r_[np.ones(len(ids), bool), np.zeros(k, bool)])


def _migration_summary(previous: str | None, counts: dict[str, int], n_removed: int, same_width: bool
                       ) -> dict[str, Any]:
    """migration_map's summary from the counts: statuses, churn, level-1 and code-tuple churn."""
    common = counts["kept"] + counts["changed"]
    summary: dict[str, Any] = {
        "previous": previous,
        **{name: counts[name] for name in STATUSES[:3]},
        "removed": n_removed,
        "churn": round(counts["changed"] / common, 6) if common else None,
    }
    if common and same_width:
        summary["level1_churn"] = round(counts["level1"] / common, 6)
        summary["codes_churn"] = round(counts["codes"] / common, 6)
    return summary


def _overlapping_chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    """Slices of CHUNK_ROWS + 1 values, each sharing its first value with the previous one's last."""
    for start in range(0, max(1, len(values) - 1), CHUNK_ROWS):
        yield values[start : start + CHUNK_ROWS + 1]
