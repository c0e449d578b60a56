"""Encoding every item: stream embeddings in, semantic IDs out, in bounded memory.

The input is read batch by batch (never held whole); only ids and codes (12-20 bytes an item) are kept, since
the dedup digit needs every item's code tuple before any row can be written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_model
from .errors import InputError
from .io import SemanticIdWriter, iter_embeddings, write_json_dict
from .metrics import assign_dedup, code_metrics
from .model import RQVAE
from .progress import Progress

logger = logging.getLogger(__name__)

WRITE_ROWS = 262_144


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
def _encode_batch(model: RQVAE, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Codes of one batch and its summed squared reconstruction error."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(model.device)
    codes = model.encode(xt)
    err = float(((model.decode_codes(codes) - xt) ** 2).double().sum())
    return codes.to(torch.int32).cpu().numpy(), err


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
    model.eval()
    ids_parts, code_parts, sq_err, n_values = [], [], 0.0, 0
    t0 = time.perf_counter()
    with Progress(total or 0, "encode", enabled=show_progress and bool(total)) as bar:
        for ids, x in iter_embeddings(embeddings_path, batch_rows=batch_rows, allow_pickle=allow_pickle):
            if x.shape[1] != model.input_dim:
                raise InputError(
                    f"embedding dimension {x.shape[1]} does not match the model's input_dim {model.input_dim}",
                    ids[:5], count=len(ids), path=embeddings_path,
                )
            codes, err = _encode_batch(model, x)
            ids_parts.append(np.asarray(ids, dtype=np.int64))
            code_parts.append(codes)
            sq_err += err
            n_values += x.size
            bar.update(len(ids))
    if not ids_parts:
        raise InputError("no items to encode: the input is empty", path=embeddings_path)
    ids = np.concatenate(ids_parts)
    codes = np.concatenate(code_parts)
    _check_duplicates(ids, embeddings_path)
    seconds = time.perf_counter() - t0
    metrics = code_metrics(codes, model.codebook_size)
    metrics["recon_mse"] = sq_err / n_values
    metrics["encode_seconds"] = round(seconds, 3)
    metrics["items_per_second"] = round(len(ids) / seconds, 1) if seconds > 0 else None
    return ids, codes, metrics


def encode_file(
    model_or_dir: RQVAE | str | Path,
    embeddings_path: str | Path,
    out_path: str | Path,
    json_dict: str | Path | None = None,
    batch_rows: int = 262_144,
    allow_pickle: bool = False,
    show_progress: bool = True,
    total: int | None = None,
) -> dict[str, Any]:
    """Encode every item of embeddings_path into the semantic-ID Parquet at out_path.

    Output columns: item_id int64, codes fixed_size_list<int32>[L], dedup int32. Optionally also writes
    ``semantic_id_dict.json`` ({"<item_id>": [codes]}) for existing inference code.
    """
    model = model_or_dir if isinstance(model_or_dir, RQVAE) else load_model(model_or_dir)
    ids, codes, metrics = encode_stream(model, embeddings_path, batch_rows, allow_pickle, show_progress, total)
    dedup = assign_dedup(ids, codes, model.codebook_size)
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
        "max_dedup": int(dedup.max()),
        **metrics,
    }
    if json_dict is not None:
        result["json_dict"] = str(json_dict)
        result["json_items"] = write_json_dict(out_path, json_dict)
    logger.info(
        "encoded %d items: unique %.4f, recon_mse %.6f, %s items/s -> %s",
        len(ids), metrics["unique_ratio"], metrics["recon_mse"], metrics["items_per_second"], out_path,
    )
    return result
