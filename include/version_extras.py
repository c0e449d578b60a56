"""What `publish` adds to a version besides the artifacts: item hashes, ID churn, collision figures, the report.

Kept out of include/stages/publish.py so the atomic-publish logic stays short: `add_extras` fills the staging folder
(before the rename, so consumers see the report together with the version) and returns the manifest entries.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from include.continuity import publish_lineage
from include.files import read_json
from include.layout import RunFolder
from include.results import Encoded, Trained
from include.versions import MODEL_CONFIG, REPORT_DIR, REPORT_INDEX, Version
from rqvae.modes import RunMode

log = logging.getLogger(__name__)

COLLISION_KEYS = ("collision_mode", "collision_rate_pre", "collision_rate_post", "moved", "stuck", "max_dedup")
REPORT_KEYS = (
    "n_items", "unique_ratio", "collision_rate", "max_bucket", "usage", "perplexity", "recon_mse",
    "recon_mse_encoded", "recon_error_quantiles", "n_encoded", "n_pinned", *COLLISION_KEYS,
)


def add_extras(
    staging: Path, folder: RunFolder, snapshot: str, train: Trained | dict[str, Any], encode: Encoded | dict[str, Any]
) -> dict[str, Any]:
    """Copy item hashes, measure churn against the previous version, write `report/`; returns manifest entries.

    `train` / `encode`: the train_rqvae and resolve_collisions results ({} when unknown). The publish root is
    the staging folder's parent (staging is created there so the final rename is atomic). The manifest keeps its
    key `mode` for train_rqvae's `plan` (readers of published versions, the UI among them, use it).
    """
    import numpy as np

    from include.results import content_only
    from rqvae.ids.report import training_signal, write_report

    version = Version(staging)
    if folder.item_hashes.exists():
        shutil.copy2(folder.item_hashes, version.item_hashes)
    sizes = encode.get("codebook_size") or read_json(folder.model_dir / MODEL_CONFIG)["model"]["codebook_size"]
    used = (train.get("plan") or {}).get("used", encode.get("mode", RunMode.RETRAIN.value))
    metrics = {"snapshot": snapshot, "mode": used}
    collaborative = train.get("collaborative") or content_only()  # manifest["collaborative"]: the UI reads it
    metrics["training signal"] = training_signal(collaborative)
    metrics.update({k: encode[k] for k in REPORT_KEYS if k in encode})
    if "recon_mse" not in metrics:
        metrics.update(read_json(folder.codes_report).get("metrics", {}))
    lineage = publish_lineage(staging, folder, snapshot, sizes, train, encode)  # index, migration, audit
    churn = _churn(lineage["migration"])
    metrics.update(_lineage_rows(lineage))
    errors = np.load(folder.recon_errors) if folder.recon_errors.exists() else None
    files = write_report(
        version.report_dir, version.semantic_ids, sizes, metrics, recon_errors=errors, churn=churn,
        title=f"Semantic IDs {snapshot}",
    )
    log.info("publish: churn vs %s: %s; report %s", churn.get("previous"), churn.get("churn"), files)
    return {
        "mode": train.get("plan") or {"used": RunMode.RETRAIN.value},
        "collisions": {k: encode[k] for k in COLLISION_KEYS if k in encode},
        "churn": churn,
        "collaborative": collaborative,
        **lineage,
        "report": f"{REPORT_DIR}/{REPORT_INDEX}",
    }


def _churn(migration: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `churn` (include.incremental.churn_against_previous's figures) from the migration summary,
    which compares the same two versions: a second pass over both ID sets would cost ~130 bytes an item."""
    if migration.get("previous") is None:
        return {"previous": None, "churn": None}
    common = migration["kept"] + migration["changed"]
    return {"previous": migration["previous"], "common_items": common, "changed_items": migration["changed"],
            "churn": migration["churn"], "added_items": migration["new"], "removed_items": migration["removed"]}


def _lineage_rows(lineage: dict[str, Any]) -> dict[str, Any]:
    """Report rows: migration counts, churn before -> after alignment, retired IDs, collision audit."""
    migration = lineage["migration"]
    rows: dict[str, Any] = {
        "migration": {k: migration.get(k) for k in ("previous", "kept", "changed", "new", "removed", "churn")},
    }
    alignment = migration.get("alignment") or {}
    if alignment.get("applied"):
        rows["alignment (churn before -> after)"] = {
            name: f"{alignment.get(f'{key}_before')} -> {alignment.get(f'{key}_after')}"
            for name, key in (("level-1 codes", "level1_churn"), ("codes", "codes_churn"), ("IDs", "id_churn"))
        }
    elif alignment:
        rows["alignment"] = alignment.get("reason")
    rows["retired IDs"] = {k: v for k, v in lineage["retired"].items() if k != "file"}
    rows["collision audit"] = {k: v for k, v in lineage["collision_audit"].items() if k != "file"}
    return rows
