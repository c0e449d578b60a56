"""Sharded encoding, as the pipeline maps it: each shard encodes a row range into a raw shard (no collision
resolution: that needs every item), and one merge resolves all shards into the final part files.

The merge holds up to ``resolve_rows`` items at once; larger runs are resolved in groups of whole level-1 codes
(:mod:`rqvae.encoding.partitions`). Either way it ends in :func:`rqvae.encoding.encode._merge`, the one place both
shapes of encoding resolve collisions, so a sharded run publishes exactly what ``rqvae encode`` would.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..ids.stability import write_hashes
from ..io.checkpoint import load_model
from ..io.fsutil import atomic_path, remove_leftovers, replace_dir, temp_path
from ..io.readers import DEFAULT_BATCH_ROWS
from ..model import RQVAE
from ..modes import CollisionMode
from .encode import (
    PinnedIds,
    _as_published,
    _encode_pass,
    _error_metrics,
    _merge,
    _Pass,
    _save_error_sample,
    _write_ids,
)
from .partitions import (
    Survey,
    check_ids_and_write_hashes,
    check_shard_schema,
    plan_partitions,
    read_column,
    spill,
    survey,
)

if TYPE_CHECKING:
    from ..config import EncodeOptions
    from ..ids.lineage import Lineage

logger = logging.getLogger(__name__)


SHARD_COLUMNS = ("item_id", "codes", "pinned", "pinned_dedup", "recon_error", "emb_hash")


def _shard_schema(num_levels: int) -> pa.Schema:
    """A raw shard: codes before collision resolution plus what the merge needs to finish every item."""
    return pa.schema(
        [
            ("item_id", pa.int64()),
            ("codes", pa.list_(pa.int32(), num_levels)),
            ("pinned", pa.bool_()),
            ("pinned_dedup", pa.int32()),
            ("recon_error", pa.float64()),
            ("emb_hash", pa.int64()),
        ]
    )


def encode_shard(
    model_or_dir: RQVAE | str | Path,
    embeddings_path: str | Path,
    out_path: str | Path,
    rows: tuple[int, int],
    *,
    pinned: PinnedIds | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Encode rows ``[start, stop)`` of a Parquet artifact into a raw shard file (see :func:`merge_shards`).

    No collision resolution here: it needs every item's codes. Returns small figures (for an XCom).
    """
    model = model_or_dir if isinstance(model_or_dir, RQVAE) else load_model(model_or_dir)
    start, stop = (int(r) for r in rows)
    run = _encode_pass(
        model, embeddings_path, batch_rows, False, show_progress, stop - start, pinned, rows=(start, stop),
        with_hashes=True,
    )
    if len(run.ids) != stop - start:
        raise InputError(f"shard [{start}, {stop}) read {len(run.ids)} rows", path=embeddings_path)
    flat = pa.array(np.ascontiguousarray(run.codes, np.int32).reshape(-1))
    table = pa.Table.from_arrays(
        [
            pa.array(run.ids),
            pa.FixedSizeListArray.from_arrays(flat, model.num_codebooks),
            pa.array(run.fixed),
            pa.array(run.fixed_dedup),
            pa.array(run.errors),
            pa.array(run.hashes),
        ],
        schema=_shard_schema(model.num_codebooks).with_metadata({"encode_seconds": f"{run.seconds:.6f}"}),
    )
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    result = {
        "path": str(out_path),
        "rows": [start, stop],
        "n_items": int(len(run.ids)),
        "n_pinned": int(run.fixed.sum()),
        "encode_seconds": round(run.seconds, 3),
        "items_per_second": round(len(run.ids) / run.seconds, 1) if run.seconds > 0 else None,
    }
    logger.info("encoded shard [%d, %d): %s", start, stop, result)
    return result


def _read_shards(paths: Sequence[str | Path], num_levels: int) -> _Pass:
    """Raw shards (or spill groups) concatenated in the given order, as one pass over their items."""
    tables = []
    seconds = 0.0
    for path in paths:
        table = pq.read_table(path)
        check_shard_schema(table.schema, num_levels, SHARD_COLUMNS, path)
        seconds += float((table.schema.metadata or {}).get(b"encode_seconds", b"0"))
        tables.append(table)
    if not tables:
        raise ValueError("merge_shards needs at least one shard")
    table = pa.concat_tables(tables).combine_chunks()
    del tables
    codes = table.column("codes").chunk(0).flatten().to_numpy().reshape(-1, num_levels).astype(np.int32)
    return _Pass(
        table.column("item_id").to_numpy(), codes, table.column("pinned").to_numpy(zero_copy_only=False),
        table.column("pinned_dedup").to_numpy(), table.column("recon_error").to_numpy(),
        table.column("emb_hash").to_numpy(), seconds,
    )


def merge_shards(
    model_or_dir: RQVAE | str | Path,
    shard_paths: Sequence[str | Path],
    embeddings_path: str | Path,
    out_dir: str | Path,
    options: EncodeOptions,
    *,
    hashes_path: str | Path | None = None,
    errors_path: str | Path | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    lineage: Lineage | None = None,
    audit_path: str | Path | None = None,
) -> dict[str, Any]:
    """Resolve collisions over all shards and write the final ``{out_dir}/part-{i:05d}.parquet`` files.

    ``options`` gives the collision mode and ``resolve_rows``: up to that many items are resolved in one piece, one
    part per shard in row order. More items are split into groups of whole level-1 codes (see
    :mod:`rqvae.encoding.partitions`), resolved one group at a time, one part per group: the same IDs, in memory
    bounded by the largest group. A run carrying a previous version's IDs (``lineage`` with a previous version) is
    resolved in one piece, since the lineage rules compare every item with that version. Shards must be given in row
    order of the artifact.

    The part folder is written beside ``out_dir`` and swapped in whole, so readers never see a mix of two runs'
    parts. ``hashes_path``: item_id + emb_hash of every item (sorted by id), for the next incremental run.
    ``lineage``: continuity with the previous version (kept dedup, retired IDs); ``audit_path``: the table of
    items `reassign` moved (written in either mode, empty for `dedup`).
    """
    model = model_or_dir if isinstance(model_or_dir, RQVAE) else load_model(model_or_dir)
    collision_mode, partition_rows = options.collision_mode, options.resolve_rows
    levels = model.num_codebooks
    seen = survey(shard_paths, levels, model.codebook_size[0], SHARD_COLUMNS)
    whole = seen.n_items <= partition_rows or (lineage is not None and lineage.previous is not None)
    out_dir = Path(out_dir)
    remove_leftovers(out_dir)  # staging / spill / moved-aside folders of a killed merge: the retry starts clean
    staging, spill_dir = temp_path(out_dir), temp_path(out_dir)
    try:
        staging.mkdir(parents=True)
        if whole:
            metrics, moved_sum = _merge_whole(model, shard_paths, seen.sizes, embeddings_path, staging,
                                              collision_mode, hashes_path, errors_path, batch_rows, lineage,
                                              audit_path)
        else:
            metrics, moved_sum = _merge_groups(model, shard_paths, seen, embeddings_path, staging, spill_dir,
                                               collision_mode, hashes_path, errors_path, batch_rows, lineage,
                                               audit_path, partition_rows)
        replace_dir(staging, out_dir)
    finally:
        for leftover in (staging, spill_dir):
            if leftover.exists():
                shutil.rmtree(leftover)
    result: dict[str, Any] = {
        "path": str(out_dir),
        "n_items": seen.n_items,
        "n_shards": len(seen.sizes),
        "num_levels": levels,
        "codebook_size": model.codebook_size,
        **metrics,
    }
    _as_published(result, moved_sum)
    logger.info(
        "merged %d shard(s), %d items in %d part(s): unique %.4f, collisions %.4f -> %.4f (%s, %d moved), "
        "recon_mse %.6f -> %s",
        len(seen.sizes), seen.n_items, result["n_parts"], result["unique_ratio"], result["collision_rate_pre"],
        result["collision_rate_post"], result["collision_mode"], result["moved"], result["recon_mse"], out_dir,
    )
    return result


def _merge_whole(
    model: RQVAE, shard_paths: Sequence[str | Path], sizes: Sequence[int], embeddings_path: str | Path,
    staging: Path, collision_mode: str | CollisionMode, hashes_path: str | Path | None,
    errors_path: str | Path | None, batch_rows: int, lineage: Lineage | None, audit_path: str | Path | None,
) -> tuple[dict[str, Any], float | None]:
    """All items resolved in one piece; one part per shard, in row order."""
    run = _read_shards(shard_paths, model.num_codebooks)
    merged = _merge(model, run, embeddings_path, collision_mode, batch_rows, False, lineage, audit_path)
    bounds = np.cumsum([0, *sizes])
    for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        _write_ids(staging / f"part-{index:05d}.parquet", model.num_codebooks, merged.ids[lo:hi],
                   merged.codes[lo:hi], merged.dedup[lo:hi])
    metrics = {**merged.metrics, "max_dedup": int(merged.dedup.max()), "n_parts": len(sizes)}
    if hashes_path is not None:
        order = np.argsort(run.ids, kind="stable")
        write_hashes(hashes_path, run.ids[order], run.hashes[order])
    if errors_path is not None:
        metrics["errors_path"] = _save_error_sample(errors_path, run.errors)
    return metrics, merged.moved_sum


def _merge_groups(
    model: RQVAE, shard_paths: Sequence[str | Path], seen: Survey, embeddings_path: str | Path, staging: Path,
    spill_dir: Path, collision_mode: str | CollisionMode, hashes_path: str | Path | None,
    errors_path: str | Path | None, batch_rows: int, lineage: Lineage | None, audit_path: str | Path | None,
    partition_rows: int,
) -> tuple[dict[str, Any], float | None]:
    """Items split into groups of whole level-1 codes, each resolved alone (see :mod:`rqvae.encoding.partitions`).

    First the figures that need every item, one column at a time: the duplicate check and the hash file, then
    the reconstruction errors. Then the spill, and one group in memory at a time.
    """
    mode = CollisionMode.parse(collision_mode)
    sizes = seen.sizes
    check_ids_and_write_hashes(shard_paths, sizes, embeddings_path, hashes_path)
    errors = read_column(shard_paths, sizes, "recon_error", np.dtype(np.float64))
    fixed = read_column(shard_paths, sizes, "pinned", np.dtype(bool))
    seconds = sum(float((pq.read_schema(p).metadata or {}).get(b"encode_seconds", b"0")) for p in shard_paths)
    metrics = _error_metrics(errors, fixed, seconds, 0.0)
    if errors_path is not None:
        metrics["errors_path"] = _save_error_sample(errors_path, errors)
    del errors, fixed

    group_of_code = plan_partitions(seen.level1, partition_rows)
    groups = spill(shard_paths, group_of_code, model.num_codebooks, _shard_schema(model.num_codebooks), spill_dir)
    logger.info("resolving %d items in %d groups of whole level-1 codes (at most %d items each where possible)",
                seen.n_items, len(groups), partition_rows)
    pre = post = None
    moved = stuck = max_dedup = 0
    resolve_seconds, moved_sum, audits = 0.0, None, []
    for index, group in enumerate(groups):
        run = _read_shards([group], model.num_codebooks)
        audit = spill_dir / f"audit-{index:05d}.parquet" if audit_path is not None else None
        merged = _merge(model, run, embeddings_path, mode, batch_rows, False, lineage, audit)
        _write_ids(staging / f"part-{index:05d}.parquet", model.num_codebooks, merged.ids, merged.codes,
                   merged.dedup)
        group.unlink()
        pre = merged.pre if pre is None else pre + merged.pre
        published = merged.post if merged.post is not None else merged.pre
        post = published if post is None else post + published
        stats = merged.metrics
        moved, stuck = moved + int(stats["moved"]), stuck + int(stats["stuck"])
        max_dedup = max(max_dedup, int(merged.dedup.max()))
        resolve_seconds += float(stats["resolve_seconds"])
        if merged.moved_sum is not None:
            moved_sum = (moved_sum or 0.0) + merged.moved_sum
        if audit is not None:
            audits.append(audit)
        del run, merged
    assert pre is not None and post is not None
    metrics.update(pre.metrics())
    if lineage is not None:
        metrics["lineage"] = lineage.stats
    metrics.update(
        collision_mode=mode.value, collision_rate_pre=pre.metrics()["collision_rate"],
        collision_rate_post=post.metrics()["collision_rate"], moved=moved, stuck=stuck, max_dedup=max_dedup,
        resolve_seconds=round(resolve_seconds, 3), n_parts=len(groups),
    )
    if mode is CollisionMode.REASSIGN:
        metrics.update(post.metrics())
    if audit_path is not None:
        from ..ids.audit import combine_audits

        metrics["collision_audit"] = combine_audits(audits, audit_path, mode.value, seen.n_items)
    return metrics, moved_sum
