"""Continuity between published versions, for the stages: aligned retrains (`train_rqvae`), retired IDs and kept
dedup digits (`resolve_collisions`), and what `publish` adds for serving (index, migration map, audit).

The previous version is the newest one older than this snapshot (what `latest` named before a forward run);
an incremental run builds on the version it took its model from. The library parts live in `rqvae.ids.align`,
`rqvae.ids.lineage`, `rqvae.ids.audit` and `rqvae.ids.serving`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.layout import RunFolder
from include.results import Encoded, Plan, Trained
from include.versions import COLLISION_AUDIT, MIGRATION, RETIRED_IDS, Version, previous_version
from rqvae.modes import Alignment, RunMode

if TYPE_CHECKING:
    from rqvae.ids.lineage import Lineage

log = logging.getLogger(__name__)

def align_retrain(model_dir: str | Path, artifact: str | Path, publish_root: str | Path | None, snapshot: str,
                  device: str, method: Alignment) -> dict[str, Any]:
    """Align a freshly trained model's codes with the previous version; the figures for the manifest.

    `method`: `anchor` (refit the codebooks from the previous ones when that costs <= 2% recon MSE, then
    relabel), `permute` (relabel only). The codebook rows are changed in the saved model, so it encodes
    straight to the aligned codes; the model's config keeps the permutations and figures (`extra.alignment`).
    """
    from rqvae.ids.align import align_model
    from rqvae.ids.stability import read_hashes
    from rqvae.io.checkpoint import load_model, read_config, save_model
    from rqvae.model import resolve_device

    previous = previous_version(publish_root, snapshot) if publish_root is not None else None
    if previous is None:
        return {"applied": False, "reason": "no previous version"}
    model = load_model(model_dir, device=resolve_device(device))
    old_sizes = read_config(previous.model_dir)["model"]["codebook_size"]
    if list(old_sizes) != model.codebook_size:
        return {"applied": False, "base": previous.name,
                "reason": f"codebook sizes changed ({old_sizes} -> {model.codebook_size})"}
    hashes = read_hashes(previous.item_hashes) if previous.item_hashes.exists() else None
    anchor = method == Alignment.ANCHOR
    before = load_model(previous.model_dir, device=model.device) if anchor else None
    perms, figures = align_model(model, artifact, previous.semantic_ids, previous_model=before,
                                 anchor=anchor, unchanged=hashes)
    figures["base"] = previous.name
    if perms is None:
        return figures
    extra = dict(read_config(model_dir).get("extra") or {})
    extra["alignment"] = {**figures, "permutations": [p.tolist() for p in perms]}
    save_model(model.cpu(), model_dir, extra=extra)
    return figures


def lineage_for(
    publish_root: str | Path | None, snapshot: str, model_dir: str | Path, plan: Plan, retire_after: int,
) -> Lineage | None:
    """The rqvae.ids.lineage.Lineage of this run (`plan`: train_rqvae's), or None without a publish root (library
    use)."""
    from rqvae.ids.lineage import Lineage, PreviousIds, RetiredIds
    from rqvae.ids.stability import read_hashes
    from rqvae.io.checkpoint import read_config

    if publish_root is None:
        return None
    incremental = plan["used"] == RunMode.INCREMENTAL
    base = plan.get("base_version") if incremental else None
    previous = Version(Path(base)) if base else previous_version(publish_root, snapshot)
    if previous is None:
        return Lineage(None, snapshot, retire_after)
    alignment = {} if incremental else (read_config(model_dir).get("extra") or {}).get("alignment") or {}
    aligned = bool(alignment.get("applied")) and alignment.get("base") == previous.name
    reserve = incremental or aligned
    retired = RetiredIds.read(previous.retired_ids) if reserve and previous.retired_ids.exists() else None
    hashes = read_hashes(previous.item_hashes) if previous.item_hashes.exists() else None
    return Lineage(PreviousIds.read(previous.semantic_ids, previous.name), snapshot, retire_after,
                   retired=retired, previous_hashes=hashes, reserve=reserve, reclaim=incremental)


def publish_lineage(
    staging: Path, folder: RunFolder, snapshot: str, sizes: list[int], train: Trained | dict[str, Any],
    encode: Encoded | dict[str, Any],
) -> dict[str, Any]:
    """Write serving_index/, migration.parquet, retired_ids.parquet and collision_audit.parquet into the staging
    folder; returns the manifest entries `serving_index`, `migration`, `retired`, `collision_audit`."""
    from rqvae.ids.lineage import RetiredIds, write_migration_map
    from rqvae.ids.serving import write_serving_index

    version = Version(staging)
    serving = write_serving_index(version.semantic_ids, version.serving_index, sizes)  # checks codes fit sizes
    previous = previous_version(staging.parent, snapshot)
    migration = write_migration_map(version.migration, version.semantic_ids,
                                    previous.semantic_ids if previous is not None else None,
                                    previous.name if previous is not None else None, code_sizes=sizes)
    migration["file"] = MIGRATION
    migration["alignment"] = _alignment(train, migration)
    lineage = encode.get("lineage") or {}
    if folder.retired_ids.exists():
        shutil.copy2(folder.retired_ids, version.retired_ids)
    else:
        RetiredIds.empty(len(sizes)).write(version.retired_ids)
    retired = {k: lineage[k] for k in ("retire_after", "reserved", "newly_retired", "expired", "reclaimed",
                                        "returned", "kept_dedup", "reason") if k in lineage}
    retired.setdefault("reserved", 0)
    retired["file"] = RETIRED_IDS
    audit = dict(encode.get("collision_audit") or {"collision_mode": encode.get("collision_mode"), "moved": 0,
                                                    "stuck": 0})
    if folder.collision_audit.exists():
        shutil.copy2(folder.collision_audit, version.collision_audit)
        audit["file"] = COLLISION_AUDIT
    log.info("publish: migration %s; retired %s; audit %s", migration, retired, audit)
    return {"serving_index": serving, "migration": migration, "retired": retired, "collision_audit": audit}


def _alignment(train: Trained | dict[str, Any], after: dict[str, Any]) -> dict | None:
    """Churn before alignment (the trained model's codes, on the alignment sample) next to after (as published)."""
    figures = train.get("alignment")
    if (train.get("plan") or {}).get("used", RunMode.RETRAIN) != RunMode.RETRAIN or not figures:
        return None
    out = dict(figures)
    if figures.get("applied"):
        out.update(common_items=after.get("kept", 0) + after.get("changed", 0),
                   level1_churn_after=after.get("level1_churn"), codes_churn_after=after.get("codes_churn"),
                   id_churn_after=after.get("churn"))
    return out
