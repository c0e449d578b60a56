"""Stage `encode_items`: give every item of the artifact its semantic ID with the trained model.

Writes `{work}/semantic_ids.parquet` in the library's format (item_id, codes [L], dedup). Like training it
runs on the `gpu` queue and uses CUDA when present; encoding is streamed by the library in row batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from include.files import jsonable
from include.layout import RunFolder

log = logging.getLogger(__name__)


def encode_items(
    model_dir: str | Path,
    artifact: str | Path,
    work_dir: str | Path,
    *,
    device: str = "auto",
    total: int | None = None,
    collision_mode: str = "dedup",
    mode: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode all items; returns `{path, n_items, num_levels, codebook_size, unique_ratio, recon_mse, ...}`.

    `collision_mode`: `dedup` or `reassign` (see rqvae.collisions). `mode` is train_rqvae's decision: when it
    used `incremental`, items whose embedding is unchanged since the base version keep their published IDs
    and only the others are encoded. Item hashes and a sample of per-item recon errors go to the work
    folder for the next incremental run and for the report.
    """
    from include import incremental
    from rqvae.checkpoint import load_model
    from rqvae.encode import encode_file
    from rqvae.model import resolve_device
    from rqvae.stability import file_hashes, write_hashes

    folder = RunFolder(Path(work_dir))
    model = load_model(model_dir, device=resolve_device(device))
    pinned = None
    if mode and mode.get("used") == "incremental":
        pinned, ids, hashes = incremental.pinned_ids(mode["base_version"], artifact)
        log.info("encode_items: keeping %d published IDs from %s", len(pinned.ids), mode["base_version"])
    else:
        ids, hashes = file_hashes(artifact)
    write_hashes(folder.item_hashes, ids, hashes)
    result = encode_file(  # total: progress + ETA in the log
        model, artifact, folder.semantic_ids, total=total, collisions=collision_mode, pinned=pinned,
        errors_path=folder.recon_errors,
    )
    result["device"] = str(resolve_device(device))
    result["mode"] = (mode or {}).get("used", "retrain")
    log.info("encode_items: %s", result)
    return jsonable(result)
