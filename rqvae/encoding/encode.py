"""Encoding every item: stream embeddings in, semantic IDs out, in bounded memory.

The input is read batch by batch (never held whole); only ids, codes and per-item errors (~30 bytes an item)
are kept, since the dedup digit needs every item's code tuple before any row can be written.

One path, in two shapes: an encoding pass over rows (:func:`_encode_pass`) and one merge over all items
(:func:`_merge`: duplicate check, collision resolution, the recon MSE of the IDs as published). The pipeline
runs the pass per row range (:func:`rqvae.encoding.shards.encode_shard`, each on its own worker, each writing a raw
shard) and the merge once (:func:`rqvae.encoding.shards.merge_shards`, per group of level-1 codes beyond a few million
items); :func:`encode_file` (``rqvae encode``) runs the pass over all rows and the same merge in one process. Encoding
is per item, so the IDs are identical either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
import torch

from ..config import EncodeOptions
from ..errors import InputError
from ..ids.collisions import collision_movers, resolve_collisions
from ..io.checkpoint import load_model
from ..io.fsutil import atomic_path
from ..io.hashing import embedding_hash
from ..io.idfile import SemanticIdWriter, write_json_dict
from ..io.readers import DEFAULT_BATCH_ROWS, iter_embeddings
from ..model import ENCODE_BATCH_ROWS, RQVAE
from ..modes import CollisionMode
from ..progress import Progress
from ..quantize.metrics import CodeCounts
from ..quantize.search import distances, search_table

if TYPE_CHECKING:
    from ..ids.lineage import Lineage

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
def encode_array(model: RQVAE, vectors: np.ndarray | torch.Tensor, batch_size: int = ENCODE_BATCH_ROWS,
                 item_ids: np.ndarray | None = None) -> np.ndarray:
    """Codes [N, L] int32 for vectors [N, D] (of the items ``item_ids``, which a model with behaviour needs)."""
    if model.behaviour is not None:
        vectors = model.inputs(item_ids, np.asarray(vectors, np.float32))
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
            if x.shape[1] != model.content_dim:
                raise InputError(
                    f"embedding dimension {x.shape[1]} does not match the model's input_dim {model.content_dim}",
                    ids[:5], count=len(ids), path=embeddings_path,
                )
            ids = np.asarray(ids, dtype=np.int64)
            content = x
            x = model.inputs(ids, x)
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
                hash_parts.append(embedding_hash(content))  # what changed is judged on the item's own vector
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


def _pass_metrics(run: _Pass, codebook_size: Sequence[int], counts: CodeCounts | None = None) -> dict[str, Any]:
    """Code quality (before collision resolution), reconstruction error and speed of an encoding pass."""
    counts = counts if counts is not None else CodeCounts.of(run.codes, codebook_size)
    return {**counts.metrics(), **_error_metrics(run.errors, run.fixed, run.seconds, run.read_seconds)}


def _error_metrics(errors: np.ndarray, fixed: np.ndarray, seconds: float, read_seconds: float) -> dict[str, Any]:
    """Reconstruction-error figures and speed over all items of a pass (per-item errors, pinned mask)."""
    n = len(errors)
    new = ~fixed
    n_new = int(new.sum())
    return {
        "recon_mse": float(errors.sum()) / n,
        "recon_mse_encoded": float(errors[new].sum()) / n_new if n_new else None,
        "n_encoded": n_new,
        "n_pinned": int(n - n_new),
        "recon_error_quantiles": {f"p{q}": float(np.quantile(errors, q / 100)) for q in (50, 90, 99)},
        "encode_seconds": round(seconds, 3),
        "read_seconds": round(read_seconds, 3),
        "items_per_second": round(n / seconds, 1) if seconds > 0 else None,
    }


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
        xt = torch.from_numpy(np.ascontiguousarray(model.inputs(ids[hit], x[hit]), dtype=np.float32)).to(model.device)
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
    collision_mode: str | CollisionMode | None = None,
    pinned: PinnedIds | None = None,
    errors_path: str | Path | None = None,
) -> dict[str, Any]:
    """Encode every item of embeddings_path into the semantic-ID Parquet at out_path.

    The pipeline's encoding as one shard over all rows plus its merge, in one process (any input format, no
    raw shard on disk). Output columns: item_id int64, codes fixed_size_list<int32>[L], dedup int32.
    Optionally also writes ``semantic_id_dict.json`` ({"<item_id>": [codes]}) for existing inference code.

    ``collision_mode``: ``dedup`` (a digit tells items of one tuple apart) or ``reassign`` (colliding items move
    to the nearest free last-level code of their prefix first; see :mod:`rqvae.ids.collisions`); None takes
    :class:`rqvae.config.EncodeOptions`'s default. ``pinned``: IDs
    kept from a published version (incremental runs); those items are not re-encoded and the others are
    resolved around them. ``errors_path``: a .npy sample of per-item reconstruction errors (for reports).
    """
    model = model_or_dir if isinstance(model_or_dir, RQVAE) else load_model(model_or_dir)
    run = _encode_pass(model, embeddings_path, batch_rows, allow_pickle, show_progress, total, pinned)
    mode = EncodeOptions().collision_mode if collision_mode is None else CollisionMode.parse(collision_mode)
    merged = _merge(model, run, embeddings_path, mode, batch_rows, allow_pickle)
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
    _as_published(result, merged.moved_sum)
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
    moved_sum: float | None  # what `reassign` added to the summed per-item recon MSE (None: nothing moved)
    pre: CodeCounts  # of the model's codes
    post: CodeCounts | None  # of the published codes, where `reassign` moved items (None: the same as pre)


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
    ``lineage`` (see :mod:`rqvae.ids.lineage`) pins codes kept from the previous version and reserves retired IDs;
    ``audit_path`` gets the table of items reassignment moved (see :mod:`rqvae.ids.audit`).
    """
    _check_duplicates(run.ids, embeddings_path)
    mode = CollisionMode.parse(collision_mode)
    pre = CodeCounts.of(run.codes, model.codebook_size)
    metrics = _pass_metrics(run, model.codebook_size, pre)
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
        from ..ids.audit import audit_collisions

        metrics["collision_audit"] = audit_collisions(
            model, embeddings_path, audit_path, ids, codes, resolved.codes, resolved.dedup, movers, last_distances,
            collision_mode=mode.value, reserved_codes=None if reserved is None else reserved[0],
            batch_rows=batch_rows, allow_pickle=allow_pickle, extra_recon=extra_recon,
        )
    post = None
    if mode is CollisionMode.REASSIGN:
        post = CodeCounts.of(resolved.codes, model.codebook_size)
        metrics.update(post.metrics())  # unique ratio etc. of the IDs as published
    return Merged(ids, resolved.codes, resolved.dedup, metrics, moved_delta, pre, post)


def _moved_recon(
    model: RQVAE, embeddings_path: str | Path, ids: np.ndarray, original: np.ndarray, final: np.ndarray,
    movers: np.ndarray | None, batch_rows: int, allow_pickle: bool,
) -> tuple[np.ndarray | None, float | None]:
    """(per moved item: MSE from its new codes minus from its original ones, their sum).

    One more streaming pass over the input, made only when `reassign` moved items: their new codes are known
    only after every mover is placed. (None, None) when nothing moved.
    """
    if movers is None:
        return None, None
    rows = np.flatnonzero(movers)
    moved = rows[(final[rows] != original[rows]).any(1)]
    if moved.size == 0:
        return None, None
    from ..ids.audit import recon_deltas

    extra = recon_deltas(model, embeddings_path, ids[moved], original[moved], final[moved], batch_rows, allow_pickle)
    return extra, float(extra.astype(np.float64).sum())


def _as_published(result: dict[str, Any], moved_sum: float | None) -> None:
    """Make `recon_mse` the figure of the IDs as published: `reassign` moves items off the code the model chose,
    and the pass measured them before the move. The model's own figure stays as `recon_mse_model` (what an
    `auto` run compares new items against)."""
    result["recon_mse_model"] = result["recon_mse"]
    if moved_sum is not None:
        result["recon_mse"] = float(result["recon_mse"]) + moved_sum / max(1, int(result["n_items"]))
