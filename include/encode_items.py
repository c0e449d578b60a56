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
) -> dict[str, Any]:
    """Encode all items; returns `{path, n_items, num_levels, codebook_size, unique_ratio, recon_mse, ...}`."""
    from rqvae.checkpoint import load_model
    from rqvae.encode import encode_file
    from rqvae.model import resolve_device

    folder = RunFolder(Path(work_dir))
    model = load_model(model_dir, device=resolve_device(device))
    result = encode_file(model, artifact, folder.semantic_ids, total=total)  # total: progress + ETA in the log
    result["device"] = str(resolve_device(device))
    log.info("encode_items: %s", result)
    return jsonable(result)
