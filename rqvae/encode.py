"""Encoding every item: stream embeddings in, semantic IDs out, in bounded memory.

The input is read batch by batch (never held whole); only ids and codes (12-20 bytes an item) are kept, since
the dedup digit needs every item's code tuple before any row can be written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .checkpoint import load_model
from .collisions import CollisionMode, collision_movers, resolve_collisions
from .errors import InputError
from .io import SemanticIdWriter, iter_embeddings, write_json_dict
from .metrics import code_metrics
from .model import RQVAE
from .progress import Progress
from .search import distances, search_table

logger = logging.getLogger(__name__)

WRITE_ROWS = 262_144
ERROR_SAMPLE = 200_000  # per-item recon errors kept for the report's histogram (an even stride over the items)


class PinnedIds(NamedTuple):
    """Published IDs an incremental run keeps: items found here are not encoded, and keep codes and dedup.

    ``ids`` must be sorted ascending (lookups are binary searches); codes [P, L] int32, dedup [P] int32.
    """

    ids: np.ndarray
    codes: np.ndarray
    dedup: np.ndarray


@torch.no_grad()
def encode_array(model: RQVAE, vectors: np.ndarray | torch.Tensor, batch_size: int = 65_536) -> np.ndarray:
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
    ct = model.encode(xt) if codes is None else torch.from_numpy(np.asarray(codes, np.int64)).to(model.device)
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
    batch_rows: int = 262_144,
    allow_pickle: bool = False,
    show_progress: bool = True,
    total: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Encode a file or snapshot: returns ids [N], codes [N, L] int32 and metrics (incl. recon MSE)."""
    result = _encode_pass(model, embeddings_path, batch_rows, allow_pickle, show_progress, total)
    return result.ids, result.codes, result.metrics


class _Pass(NamedTuple):
    ids: np.ndarray  # [N] in input order
    codes: np.ndarray  # [N, L] int32
    fixed: np.ndarray  # [N] bool: pinned (not encoded)
    fixed_dedup: np.ndarray  # [N] int32, meaningful where fixed
    errors: np.ndarray  # per-item recon error sample (float32)
    metrics: dict[str, Any]


def _encode_pass(
    model: RQVAE,
    embeddings_path: str | Path,
    batch_rows: int,
    allow_pickle: bool,
    show_progress: bool,
    total: int | None,
    pinned: PinnedIds | None = None,
) -> _Pass:
    """One streaming pass: encode every item not pinned; pinned items are only decoded (for the recon error)."""
    model.eval()
    ids_parts, code_parts, fixed_parts, fdedup_parts, err_parts = [], [], [], [], []
    sq_err = new_err = 0.0
    n_new = 0
    t0 = time.perf_counter()
    with Progress(total or 0, "encode", enabled=show_progress and bool(total)) as bar:
        for ids, x in iter_embeddings(embeddings_path, batch_rows=batch_rows, allow_pickle=allow_pickle):
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
            if found.any():
                codes[found], err[found] = _encode_batch(model, x[found], pinned.codes[where])
                fdedup[found] = pinned.dedup[where]
            if not found.all():
                codes[~found], err[~found] = _encode_batch(model, x[~found])
                new_err += float(err[~found].sum())
                n_new += int((~found).sum())
            ids_parts.append(ids)
            code_parts.append(codes)
            fixed_parts.append(found)
            fdedup_parts.append(fdedup)
            err_parts.append(err.astype(np.float32))
            sq_err += float(err.sum())
            bar.update(len(ids))
    if not ids_parts:
        raise InputError("no items to encode: the input is empty", path=embeddings_path)
    ids = np.concatenate(ids_parts)
    codes = np.concatenate(code_parts)
    errors = np.concatenate(err_parts)
    _check_duplicates(ids, embeddings_path)
    seconds = time.perf_counter() - t0
    metrics = code_metrics(codes, model.codebook_size)
    metrics["recon_mse"] = sq_err / len(ids)
    metrics["recon_mse_encoded"] = new_err / n_new if n_new else None
    metrics["n_encoded"] = n_new
    metrics["n_pinned"] = int(len(ids) - n_new)
    metrics["recon_error_quantiles"] = {
        f"p{q}": float(np.quantile(errors, q / 100)) for q in (50, 90, 99)
    }
    metrics["encode_seconds"] = round(seconds, 3)
    metrics["items_per_second"] = round(len(ids) / seconds, 1) if seconds > 0 else None
    stride = max(1, len(errors) // ERROR_SAMPLE)
    return _Pass(ids, codes, np.concatenate(fixed_parts), np.concatenate(fdedup_parts), errors[::stride], metrics)


@torch.no_grad()
def last_residuals(
    model: RQVAE, embeddings_path: str | Path, item_ids: np.ndarray, batch_rows: int = 262_144,
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
    batch_rows: int = 262_144,
    allow_pickle: bool = False,
    show_progress: bool = True,
    total: int | None = None,
    *,
    collisions: str | CollisionMode = CollisionMode.DEDUP,
    pinned: PinnedIds | None = None,
    errors_path: str | Path | None = None,
) -> dict[str, Any]:
    """Encode every item of embeddings_path into the semantic-ID Parquet at out_path.

    Output columns: item_id int64, codes fixed_size_list<int32>[L], dedup int32. Optionally also writes
    ``semantic_id_dict.json`` ({"<item_id>": [codes]}) for existing inference code.

    ``collisions``: ``dedup`` (a digit tells items of one tuple apart) or ``reassign`` (colliding items move to
    the nearest free last-level code of their prefix first; see :mod:`rqvae.collisions`). ``pinned``: IDs
    kept from a published version (incremental runs); those items are not re-encoded and the others are
    resolved around them. ``errors_path``: a .npy sample of per-item reconstruction errors (for reports).
    """
    mode = CollisionMode.parse(collisions)
    model = model_or_dir if isinstance(model_or_dir, RQVAE) else load_model(model_or_dir)
    run = _encode_pass(model, embeddings_path, batch_rows, allow_pickle, show_progress, total, pinned)
    ids, metrics = run.ids, run.metrics
    t0 = time.perf_counter()
    last_distances = None
    if mode is CollisionMode.REASSIGN:
        movers = collision_movers(ids, run.codes, model.codebook_size, run.fixed)
        mover_ids, residuals = last_residuals(
            model, embeddings_path, ids[movers], batch_rows, allow_pickle, codes=run.codes[movers]
        )

        def last_distances(rows: np.ndarray) -> np.ndarray:
            return last_level_distances(model, residuals[np.searchsorted(mover_ids, ids[rows])])

    resolved = resolve_collisions(
        ids, run.codes, model.codebook_size, mode, last_distances, fixed=run.fixed, fixed_dedup=run.fixed_dedup
    )
    codes, dedup = resolved.codes, resolved.dedup
    metrics.update(resolved.stats)
    metrics["resolve_seconds"] = round(time.perf_counter() - t0, 3)
    if mode is CollisionMode.REASSIGN:
        metrics.update(code_metrics(codes, model.codebook_size))  # unique ratio etc. of the IDs as published
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with SemanticIdWriter(out_path, model.num_codebooks) as writer:
        for start in range(0, len(ids), WRITE_ROWS):
            sl = slice(start, start + WRITE_ROWS)
            writer.write(ids[sl], codes[sl], dedup[sl])
    result: dict[str, Any] = {
        "path": str(out_path),
        "n_items": int(len(ids)),
        "num_levels": model.num_codebooks,
        "codebook_size": model.codebook_size,
        **metrics,
        "max_dedup": int(dedup.max()),
    }
    if errors_path is not None:
        errors_path = Path(errors_path)
        errors_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = errors_path.with_name(errors_path.name + ".tmp.npy")
        np.save(tmp, run.errors)
        tmp.replace(errors_path)
        result["errors_path"] = str(errors_path)
    if json_dict is not None:
        result["json_dict"] = str(json_dict)
        result["json_items"] = write_json_dict(out_path, json_dict)
    logger.info(
        "encoded %d items (%d pinned): unique %.4f, collisions %.4f -> %.4f (%s, %d moved), recon_mse %.6f, "
        "%s items/s -> %s",
        len(ids), metrics["n_pinned"], metrics["unique_ratio"], metrics["collision_rate_pre"],
        metrics["collision_rate_post"], mode.value, metrics["moved"], metrics["recon_mse"],
        metrics["items_per_second"], out_path,
    )
    return result
