"""What `publish` adds to a version besides the artifacts: item hashes, ID churn, collision figures, the report.

Kept out of include/publish.py so the atomic-publish logic stays short: `add_extras` fills the staging folder
(before the rename, so consumers see the report together with the version) and returns the manifest entries.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from include.files import read_json
from include.incremental import ITEM_HASHES, churn_against_previous
from include.layout import RunFolder

log = logging.getLogger(__name__)

REPORT_DIR = "report"
COLLISION_KEYS = ("collision_mode", "collision_rate_pre", "collision_rate_post", "moved", "stuck", "max_dedup")
REPORT_KEYS = (
    "n_items", "unique_ratio", "collision_rate", "max_bucket", "usage", "perplexity", "recon_mse",
    "recon_mse_encoded", "recon_error_quantiles", "n_encoded", "n_pinned", *COLLISION_KEYS,
)


def add_extras(
    staging: Path, folder: RunFolder, snapshot: str, upstream: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Copy item hashes, measure churn against the previous version, write `report/`; returns manifest entries.

    The publish root is the staging folder's parent (staging is created there so the final rename is atomic).
    """
    import numpy as np

    from rqvae.report import write_report

    if folder.item_hashes.exists():
        shutil.copy2(folder.item_hashes, staging / ITEM_HASHES)
    ids_path = staging / "semantic_ids.parquet"
    churn = churn_against_previous(staging.parent, snapshot, ids_path)
    from include.publish import encode_result

    train, encode = upstream.get("train_rqvae", {}), encode_result(upstream)
    sizes = encode.get("codebook_size") or read_json(folder.model_dir / "config.json")["model"]["codebook_size"]
    metrics = {"snapshot": snapshot, "mode": (train.get("mode") or {}).get("used", encode.get("mode", "retrain"))}
    metrics.update({k: encode[k] for k in REPORT_KEYS if k in encode})
    if "recon_mse" not in metrics:
        metrics.update(read_json(folder.codes_report).get("metrics", {}))
    errors = np.load(folder.recon_errors) if folder.recon_errors.exists() else None
    files = write_report(
        staging / REPORT_DIR, ids_path, sizes, metrics, recon_errors=errors, churn=churn,
        title=f"Semantic IDs {snapshot}",
    )
    log.info("publish: churn vs %s: %s; report %s", churn.get("previous"), churn.get("churn"), files)
    return {
        "mode": train.get("mode") or {"used": "retrain"},
        "collisions": {k: encode[k] for k in COLLISION_KEYS if k in encode},
        "churn": churn,
        "report": f"{REPORT_DIR}/index.html",
    }
