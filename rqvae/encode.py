"""Encoding every item: stream embeddings in, semantic IDs out, in bounded memory.

The input is read batch by batch (never held whole); only ids, codes and per-item errors (~30 bytes an item)
are kept, since the dedup digit needs every item's code tuple before any row can be written.

One path, in two shapes: an encoding pass over rows (:func:`_encode_pass`) and one merge over all items
(:func:`_merge`: duplicate check, collision resolution, the recon MSE of the IDs as published). The pipeline
runs the pass per row range (:func:`encode_shard`, each on its own worker, each writing a raw shard) and the
merge once (:func:`merge_shards`, one final part per shard); :func:`encode_file` (``rqvae encode``) runs the
pass over all rows and the same merge in one process. Encoding is per item, so the IDs are identical either way.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .checkpoint import load_model
from .collisions import CollisionMode, collision_movers, resolve_collisions
from .errors import InputError
from .fsutil import atomic_path, remove_leftovers, replace_dir, temp_path
from .hashing import embedding_hash
from .idfile import SemanticIdWriter, write_json_dict
from .metrics import code_metrics
from .model import ENCODE_BATCH_ROWS, RQVAE
from .progress import Progress
from .readers import DEFAULT_BATCH_ROWS, iter_embeddings
from .search import distances, search_table
from .stability import write_hashes

if TYPE_CHECKING:
    from .lineage import Lineage

logger = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_ROWS = DEFAULT_BATCH_ROWS  # rows per slice written to a semantic-ID file
ERROR_SAMPLE = 200_000  # per-item recon errors kept for the report's histogram (an even stride over the items)


class PinnedIds(NamedTuple):
    """Published IDs an incremental run keeps: items found here are not encoded, and keep codes and dedup.

    ``ids`` must be sorted ascending (lookups are binary searches); codes [P, L] int32, dedup [P] int32.
    """

    ids: np.ndarray
    codes: np.ndarray
    dedup: np.ndarray


@torch.no_grad()
def encode_array(model: RQVAE, vectors: np.ndarray | torch.Tensor, batch_size: int = ENCODE_BATCH_ROWS) -> np.ndarray:
    """Codes [N, L] int32 for vectors [N, D]."""
    x = torch.as_tensor(vectors)
    out = np.empty((x.shape[0], model.num_codebooks), dtype=np.int32)
    model.eval()
    for start in range(0, x.shape[0], batch_size):
        out[start : start + batch_size] = model.encode(x[start : start + batch_size]).cpu().numpy()
    return out


@torch.no_grad()
def _encode_batch(model: RQVAE, x: np.ndarray, codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Codes of one batch (given ones are only decoded) and each item's mean squared reconstruction error."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(model.device)
    if codes is None:
        ct, err = model.encode_with_errors(xt)
    else:
        ct = torch.from_numpy(np.asarray(codes, np.int64)).to(model.device)
        err = ((model.decode_codes(ct) - xt) ** 2).double().mean(1)
    return ct.to(torch.int32).cpu().numpy(), err.cpu().numpy()


def _pinned_rows(pinned: PinnedIds | None, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask [n] of ids found in pinned, their positions in pinned)."""
    if pinned is None or len(pinned.ids) == 0:
        return np.zeros(len(ids), bool), np.zeros(0, np.int64)
    pos = np.minimum(np.searchsorted(pinned.ids, ids), len(pinned.ids) - 1)
    found = pinned.ids[pos] == ids
    return found, pos[found]


def _check_duplicates(ids: np.ndarray, path: str | Path) -> None:
    sorted_ids = np.sort(ids)
    dup = np.unique(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]])
    if dup.size:
        raise InputError("duplicate item ids: each item must appear once", dup, count=int(dup.size), path=path)


def encode_stream(
    model: RQVAE,
    embeddings_path: str | Path,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False,
    show_progress: bool = True,
    total: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Encode a file or snapshot: returns ids [N], codes [N, L] int32 and metrics (incl. recon MSE)."""
    result = _encode_pass(model, embeddings_path, batch_rows, allow_pickle, show_progress, total)
    _check_duplicates(result.ids, embeddings_path)
    return result.ids, result.codes, _pass_metrics(result, model.codebook_size)


class _Pass(NamedTuple):
    ids: np.ndarray  # [N] in input order
    codes: np.ndarray  # [N, L] int32
    fixed: np.ndarray  # [N] bool: pinned (not encoded)
    fixed_dedup: np.ndarray  # [N] int32, meaningful where fixed
    errors: np.ndarray  # [N] float64: each item's mean squared reconstruction error
    hashes: np.ndarray | None  # [N] int64 embedding hashes, when asked for
    seconds: float
    read_seconds: float = 0.0  # of ``seconds``, the part spent reading and converting the input


def _encode_pass(
    model: RQVAE,
    embeddings_path: str | Path,
    batch_rows: int,
    allow_pickle: bool,
    show_progress: bool,
    total: int | None,
    pinned: PinnedIds | None = None,
    rows: tuple[int, int] | None = None,
    with_hashes: bool = False,
) -> _Pass:
    """One streaming pass: encode every item not pinned; pinned items are only decoded (for the recon error)."""
    model.eval()
    ids_parts, code_parts, fixed_parts, fdedup_parts, err_parts, hash_parts = [], [], [], [], [], []
    t0 = time.perf_counter()
    read_seconds = 0.0
    batches = _timed(iter_embeddings(embeddings_path, batch_rows=batch_rows, allow_pickle=allow_pickle, rows=rows))
    with Progress(total or 0, "encode", enabled=show_progress and bool(total)) as bar:
        for (ids, x), waited in batches:
            read_seconds += waited
            if x.shape[1] != model.input_dim:
                raise InputError(
                    f"embedding dimension {x.shape[1]} does not match the model's input_dim {model.input_dim}",
                    ids[:5], count=len(ids), path=embeddings_path,
                )
            ids = np.asarray(ids, dtype=np.int64)
            found, where = _pinned_rows(pinned, ids)
            codes = np.empty((len(ids), model.num_codebooks), np.int32)
            err = np.empty(len(ids), np.float64)
            fdedup = np.zeros(len(ids), np.int32)
            if not found.any():  # the common case: no boolean-mask copies of the batch
                codes[:], err[:] = _encode_batch(model, x)
            else:
                codes[found], err[found] = _encode_batch(model, x[found], pinned.codes[where])
                fdedup[found] = pinned.dedup[where]
                if not found.all():
                    codes[~found], err[~found] = _encode_batch(model, x[~found])
            ids_parts.append(ids)
            code_parts.append(codes)
            fixed_parts.append(found)
            fdedup_parts.append(fdedup)
            err_parts.append(err)
            if with_hashes:
                hash_parts.append(embedding_hash(x))
            bar.update(len(ids))
    if not ids_parts:
        raise InputError("no items to encode: the input is empty", path=embeddings_path)
    return _Pass(
        np.concatenate(ids_parts), np.concatenate(code_parts), np.concatenate(fixed_parts),
        np.concatenate(fdedup_parts), np.concatenate(err_parts),
        np.concatenate(hash_parts) if with_hashes else None, time.perf_counter() - t0, read_seconds,
    )


def _timed(batches: Iterator[T]) -> Iterator[tuple[T, float]]:
    """Each item with the seconds spent producing it (how much of a pass is reading, not encoding)."""
    while True:
        start = time.perf_counter()
        try:
            item = next(batches)
        except StopIteration:
            return
        yield item, time.perf_counter() - start


def _pass_metrics(run: _Pass, codebook_size: Sequence[int]) -> dict[str, Any]:
    """Code quality (before collision resolution), reconstruction error and speed of an encoding pass."""
    n = len(run.ids)
    new = ~run.fixed
    metrics = code_metrics(run.codes, codebook_size)
    metrics["recon_mse"] = float(run.errors.sum()) / n
    metrics["recon_mse_encoded"] = float(run.errors[new].sum()) / int(new.sum()) if new.any() else None
    metrics["n_encoded"] = int(new.sum())
    metrics["n_pinned"] = int(n - new.sum())
    metrics["recon_error_quantiles"] = {f"p{q}": float(np.quantile(run.errors, q / 100)) for q in (50, 90, 99)}
    metrics["encode_seconds"] = round(run.seconds, 3)
    metrics["read_seconds"] = round(run.read_seconds, 3)
    metrics["items_per_second"] = round(n / run.seconds, 1) if run.seconds > 0 else None
    return metrics


def _save_error_sample(path: str | Path, errors: np.ndarray) -> str:
    """Write an even-stride sample of per-item errors (float32 .npy, atomically) for the report's histogram."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, errors[:: max(1, len(errors) // ERROR_SAMPLE)].astype(np.float32))
    return str(path)


def _write_ids(path: Path, num_levels: int, ids: np.ndarray, codes: np.ndarray, dedup: np.ndarray) -> None:
    """One semantic-ID Parquet file, written in WRITE_ROWS slices (it appears only when complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with SemanticIdWriter(path, num_levels) as writer:
        for start in range(0, len(ids), WRITE_ROWS):
            sl = slice(start, start + WRITE_ROWS)
            writer.write(ids[sl], codes[sl], dedup[sl])


@torch.no_grad()
def last_residuals(
    model: RQVAE, embeddings_path: str | Path, item_ids: np.ndarray, batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False, codes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Last-level residuals [M, latent] of the given items (a second streaming pass over the input).

    Returns (ids sorted ascending, residuals in that order). Only the listed items are pushed through the
    model, so this costs a read of the input plus work proportional to the (few) items asked for. ``codes``
    [M, L] (aligned with item_ids), when known from the first pass, spare the code search: the residual is
    the latent minus the codewords of the first L-1 levels.
    """
    item_ids = np.asarray(item_ids, dtype=np.int64)
    wanted, first = np.unique(item_ids, return_index=True)
    known = None if codes is None else torch.from_numpy(np.asarray(codes, np.int64)[first])
    out = np.zeros((len(wanted), model.latent_dim), np.float32)
    last = model.num_codebooks - 1
    if len(wanted) == 0:
        return wanted, out
    for ids, x in iter_embeddings(embeddings_path, batch_rows=batch_rows, allow_pickle=allow_pickle):
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(wanted, ids), len(wanted) - 1)
        hit = wanted[pos] == ids
        if not hit.any():
            continue
        xt = torch.from_numpy(np.ascontiguousarray(x[hit], dtype=np.float32)).to(model.device)
        z = model.encode_latent(xt)
        if known is None:
            r = model.quantizer.residuals_of(z)[last]
        else:
            c = known[pos[hit]].to(z.device)
            r = z - sum((model.quantizer.codebook(level)[c[:, level]] for level in range(last)), torch.zeros_like(z))
        out[pos[hit]] = r.float().cpu().numpy()
    return wanted, out


def last_level_distances(model: RQVAE, residuals: np.ndarray) -> np.ndarray:
    """Distances [M, K] of last-level residuals to each last-level codeword, as the model's search scores them
    (the same distance and the same frozen balance penalty), so 'nearest free' agrees with 'nearest'."""
    q = model.quantizer
    book = q.codebook(q.num_levels - 1).detach().float()
    keys, bias, l2 = search_table(book, q.distance)
    bias = bias + q.last_level_bias.float().unsqueeze(1)
    r = torch.from_numpy(np.ascontiguousarray(residuals, dtype=np.float32)).to(book.device)
    with torch.no_grad():
        return distances(r, keys, bias, l2).t().cpu().numpy()


def encode_file(
    model_or_dir: RQVAE | str | Path,
    embeddings_path: str | Path,
    out_path: str | Path,
    json_dict: str | Path | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False,
    show_progress: bool = True,
    total: int | None = None,
    *,
    collision_mode: str | CollisionMode = CollisionMode.DEDUP,
    pinned: PinnedIds | None = None,
    errors_path: str | Path | None = None,
) -> dict[str, Any]:
    """Encode every item of embeddings_path into the semantic-ID Parquet at out_path.

    The pipeline's encoding as one shard over all rows plus its merge, in one process (any input format, no
    raw shard on disk). Output columns: item_id int64, codes fixed_size_list<int32>[L], dedup int32.
    Optionally also writes ``semantic_id_dict.json`` ({"<item_id>": [codes]}) for existing inference code.

    ``collision_mode``: ``dedup`` (a digit tells items of one tuple apart) or ``reassign`` (colliding items move
    to the nearest free last-level code of their prefix first; see :mod:`rqvae.collisions`). ``pinned``: IDs
    kept from a published version (incremental runs); those items are not re-encoded and the others are
    resolved around them. ``errors_path``: a .npy sample of per-item reconstruction errors (for reports).
    """
    model = model_or_dir if isinstance(model_or_dir, RQVAE) else load_model(model_or_dir)
    run = _encode_pass(model, embeddings_path, batch_rows, allow_pickle, show_progress, total, pinned)
    merged = _merge(model, run, embeddings_path, collision_mode, batch_rows, allow_pickle)
    out_path = Path(out_path)
    t0 = time.perf_counter()
    _write_ids(out_path, model.num_codebooks, merged.ids, merged.codes, merged.dedup)
    result: dict[str, Any] = {
        "path": str(out_path),
        "n_items": int(len(merged.ids)),
        "num_levels": model.num_codebooks,
        "codebook_size": model.codebook_size,
        **merged.metrics,
        "max_dedup": int(merged.dedup.max()),
        "write_seconds": round(time.perf_counter() - t0, 3),
    }
    if errors_path is not None:
        result["errors_path"] = _save_error_sample(errors_path, run.errors)
    if json_dict is not None:
        result["json_dict"] = str(json_dict)
        result["json_items"] = write_json_dict(out_path, json_dict)
    _as_published(result, merged.recon_mse_moved)
    logger.info(
        "encoded %d items (%d pinned): unique %.4f, collisions %.4f -> %.4f (%s, %d moved), recon_mse %.6f, "
        "%s items/s -> %s",
        len(merged.ids), result["n_pinned"], result["unique_ratio"], result["collision_rate_pre"],
        result["collision_rate_post"], result["collision_mode"], result["moved"], result["recon_mse"],
        result["items_per_second"], out_path,
    )
    return result


class Merged(NamedTuple):
    """All items with their final IDs, and the figures of the pass and of the collision resolution."""

    ids: np.ndarray  # [N] in input order
    codes: np.ndarray  # [N, L] int32, as published
    dedup: np.ndarray  # [N] int32
    metrics: dict[str, Any]  # code quality of the published codes, recon error of the model's codes, collisions
    recon_mse_moved: float | None  # what `reassign` added to the recon MSE (None: nothing moved)


def _merge(
    model: RQVAE,
    run: _Pass,
    embeddings_path: str | Path,
    collision_mode: str | CollisionMode,
    batch_rows: int,
    allow_pickle: bool,
    lineage: Lineage | None = None,
    audit_path: str | Path | None = None,
) -> Merged:
    """Final IDs once collisions over all items of the pass are resolved.

    The one place both shapes of encoding end in, so a sharded run publishes exactly what a single pass would.
    ``lineage`` (see :mod:`rqvae.lineage`) pins codes kept from the previous version and reserves retired IDs;
    ``audit_path`` gets the table of items reassignment moved (see :mod:`rqvae.audit`).
    """
    _check_duplicates(run.ids, embeddings_path)
    mode = CollisionMode.parse(collision_mode)
    metrics = _pass_metrics(run, model.codebook_size)
    ids, codes, fixed, fixed_dedup, reserved = run.ids, run.codes, run.fixed, run.fixed_dedup, None
    if lineage is not None:
        codes, fixed, fixed_dedup, reserved = lineage.prepare(ids, codes, fixed, fixed_dedup, run.hashes)
        metrics["lineage"] = lineage.stats
    t0 = time.perf_counter()
    last_distances = movers = None
    if mode is CollisionMode.REASSIGN:
        movers = collision_movers(ids, codes, model.codebook_size, fixed, reserved)
        mover_ids, residuals = last_residuals(
            model, embeddings_path, ids[movers], batch_rows, allow_pickle, codes=codes[movers]
        )

        def last_distances(rows: np.ndarray) -> np.ndarray:
            return last_level_distances(model, residuals[np.searchsorted(mover_ids, ids[rows])])

    resolved = resolve_collisions(
        ids, codes, model.codebook_size, mode, last_distances, fixed=fixed, fixed_dedup=fixed_dedup,
        reserved=reserved,
    )
    metrics.update(resolved.stats)
    metrics["resolve_seconds"] = round(time.perf_counter() - t0, 3)
    extra_recon, moved_delta = _moved_recon(model, embeddings_path, ids, codes, resolved.codes, movers, batch_rows,
                                            allow_pickle)
    if audit_path is not None:
        from .audit import audit_collisions

        metrics["collision_audit"] = audit_collisions(
            model, embeddings_path, audit_path, ids, codes, resolved.codes, resolved.dedup, movers, last_distances,
            collision_mode=mode.value, reserved_codes=None if reserved is None else reserved[0],
            batch_rows=batch_rows, allow_pickle=allow_pickle, extra_recon=extra_recon,
        )
    if mode is CollisionMode.REASSIGN:
        metrics.update(code_metrics(resolved.codes, model.codebook_size))  # unique ratio etc. of the IDs as published
    return Merged(ids, resolved.codes, resolved.dedup, metrics, moved_delta)


def _moved_recon(
    model: RQVAE, embeddings_path: str | Path, ids: np.ndarray, original: np.ndarray, final: np.ndarray,
    movers: np.ndarray | None, batch_rows: int, allow_pickle: bool,
) -> tuple[np.ndarray | None, float | None]:
    """(per moved item: MSE from its new codes minus from its original ones, their sum over all items).

    One more streaming pass over the input, made only when `reassign` moved items: their new codes are known
    only after every mover is placed. (None, None) when nothing moved.
    """
    if movers is None:
        return None, None
    rows = np.flatnonzero(movers)
    moved = rows[(final[rows] != original[rows]).any(1)]
    if moved.size == 0:
        return None, None
    from .audit import recon_deltas

    extra = recon_deltas(model, embeddings_path, ids[moved], original[moved], final[moved], batch_rows, allow_pickle)
    return extra, float(extra.astype(np.float64).sum() / max(1, len(ids)))


def _as_published(result: dict[str, Any], recon_mse_moved: float | None) -> None:
    """Make `recon_mse` the figure of the IDs as published: `reassign` moves items off the code the model chose,
    and the pass measured them before the move. The model's own figure stays as `recon_mse_model` (what an
    `auto` run compares new items against)."""
    result["recon_mse_model"] = result["recon_mse"]
    if recon_mse_moved is not None:
        result["recon_mse"] = float(result["recon_mse"]) + recon_mse_moved


# ------------------------------------------------------------------------------------------- sharded encoding

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


def _read_shards(paths: Sequence[str | Path], num_levels: int) -> tuple[_Pass, list[int]]:
    """Raw shards concatenated in the given order, as one pass over all items, and each shard's row count."""
    tables = []
    seconds = 0.0
    for path in paths:
        table = pq.read_table(path)
        if tuple(table.schema.names) != SHARD_COLUMNS or table.schema.field("codes").type.list_size != num_levels:
            raise InputError(f"not a raw shard of a {num_levels}-level model: columns {table.schema.names}",
                             path=path)
        seconds += float((table.schema.metadata or {}).get(b"encode_seconds", b"0"))
        tables.append(table)
    if not tables:
        raise ValueError("merge_shards needs at least one shard")
    table = pa.concat_tables(tables).combine_chunks()
    codes = table.column("codes").chunk(0).flatten().to_numpy().reshape(-1, num_levels).astype(np.int32)
    run = _Pass(
        table.column("item_id").to_numpy(), codes, table.column("pinned").to_numpy(zero_copy_only=False),
        table.column("pinned_dedup").to_numpy(), table.column("recon_error").to_numpy(),
        table.column("emb_hash").to_numpy(), seconds,
    )
    return run, [t.num_rows for t in tables]


def merge_shards(
    model_or_dir: RQVAE | str | Path,
    shard_paths: Sequence[str | Path],
    embeddings_path: str | Path,
    out_dir: str | Path,
    *,
    collision_mode: str | CollisionMode = CollisionMode.DEDUP,
    hashes_path: str | Path | None = None,
    errors_path: str | Path | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    lineage: Lineage | None = None,
    audit_path: str | Path | None = None,
) -> dict[str, Any]:
    """Resolve collisions over all shards and write ``{out_dir}/part-{i:05d}.parquet``, one part per shard.

    Shards must be given in row order of the artifact (what :func:`encode_file` would have read). The part
    folder is written beside ``out_dir`` and swapped in whole, so readers never see a mix of two runs' parts.
    ``hashes_path``: item_id + emb_hash of every item (sorted by id), for the next incremental run.
    ``lineage``: continuity with the previous version (kept dedup, retired IDs); ``audit_path``: the table of
    items `reassign` moved (written in either mode, empty for `dedup`).
    """
    model = model_or_dir if isinstance(model_or_dir, RQVAE) else load_model(model_or_dir)
    run, sizes = _read_shards(shard_paths, model.num_codebooks)
    merged = _merge(model, run, embeddings_path, collision_mode, batch_rows, False, lineage, audit_path)
    ids, codes, dedup = merged.ids, merged.codes, merged.dedup
    out_dir = Path(out_dir)
    remove_leftovers(out_dir)  # staging / moved-aside folders of a killed merge: the retry starts clean
    staging = temp_path(out_dir)
    try:
        bounds = np.cumsum([0, *sizes])
        for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            _write_ids(staging / f"part-{index:05d}.parquet", model.num_codebooks, ids[lo:hi], codes[lo:hi],
                       dedup[lo:hi])
        replace_dir(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    result: dict[str, Any] = {
        "path": str(out_dir),
        "n_items": int(len(ids)),
        "n_shards": len(sizes),
        "num_levels": model.num_codebooks,
        "codebook_size": model.codebook_size,
        **merged.metrics,
        "max_dedup": int(dedup.max()),
    }
    if hashes_path is not None:
        order = np.argsort(ids, kind="stable")
        write_hashes(hashes_path, ids[order], run.hashes[order])
    if errors_path is not None:
        result["errors_path"] = _save_error_sample(errors_path, run.errors)
    _as_published(result, merged.recon_mse_moved)
    logger.info(
        "merged %d shard(s), %d items: unique %.4f, collisions %.4f -> %.4f (%s, %d moved), recon_mse %.6f -> %s",
        len(sizes), len(ids), result["unique_ratio"], result["collision_rate_pre"], result["collision_rate_post"],
        result["collision_mode"], result["moved"], result["recon_mse"], out_dir,
    )
    return result

