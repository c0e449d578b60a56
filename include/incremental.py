"""Stable IDs across daily runs: the `mode` param (rqvae.modes.RunMode) and ID churn.

`incremental` reuses the model of the latest published version, keeps the published ID of every item whose
embedding hash is unchanged, encodes only new or changed items and resolves their collisions around the kept
IDs. `auto` picks incremental unless the published model reconstructs the new or changed items much worse
than it did its own items (recon MSE over `retrain_factor` x the recorded one): then the catalogue drifted
and a fresh model is worth the renamed IDs. Without a published version, every mode retrains.

Everything is derived from `{publish_root}/latest` and the work folder; the XComs carry only small dicts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from include.files import read_json
from include.results import Plan
from include.versions import Version, latest_version
from rqvae.config import RetrainPolicy
from rqvae.modes import RunMode

log = logging.getLogger(__name__)

AUTO_SAMPLE = 100_000  # new or changed items scored by `auto` (a seeded sample when there are more)


def base_version(publish_root: str | Path | None) -> Version | None:
    """The stored copy `latest` names, when it exists and holds a model, ids and hashes to build on."""
    latest = latest_version(publish_root) if publish_root is not None else None
    if latest is None:
        return None
    # the stored copy, not the name: a re-publish of that snapshot meanwhile must not swap the model's IDs
    version = latest.stored()
    needed = [version.model_config, version.semantic_ids, version.item_hashes]
    if not all(p.exists() for p in needed):
        missing = [p.name for p in needed if not p.exists()]
        log.warning("latest version %s lacks %s: cannot build on it", version.path, missing)
        return None
    return version


def plan(policy: RetrainPolicy, publish_root: str | Path | None, artifact: str | Path, device: str) -> Plan:
    """Decide how this run gets its model: `{requested, used, reason, base_version, ...}` (small, for XCom)."""
    mode, retrain_factor = policy.mode, policy.retrain_factor
    decision: dict[str, Any] = {"requested": mode.value, "used": RunMode.RETRAIN.value, "base_version": None}
    if mode == RunMode.RETRAIN:
        decision["reason"] = "mode retrain"
        return decision
    version = base_version(publish_root)
    if version is None:
        decision["reason"] = "no published version to build on"
        return decision
    from rqvae.ids.stability import file_hashes, read_hashes, unchanged_items
    from rqvae.io.checkpoint import read_config

    stored = read_config(version.model_dir)
    content_dim = int(stored.get("content_dim") or stored["model"]["input_dim"])  # a behaviour model's is wider
    ids, hashes = file_hashes(artifact)
    old_ids, old_hashes = read_hashes(version.item_hashes)
    kept = unchanged_items(old_ids, old_hashes, ids, hashes)
    decision.update(
        base_version=str(version.path),
        n_items=int(len(ids)),
        n_unchanged=int(kept.sum()),
        n_new_or_changed=int((~kept).sum()),
    )
    dim = _artifact_dim(artifact)
    if content_dim != dim:
        decision["reason"] = f"embedding dimension changed ({content_dim} -> {dim})"
        return decision
    if mode == RunMode.INCREMENTAL:
        decision.update(used=RunMode.INCREMENTAL.value, reason="mode incremental")
        return decision
    published = _published_recon_mse(version)
    new_mse = _recon_mse_of(version.model_dir, artifact, ids[~kept], device) if (~kept).any() else None
    decision.update(recon_mse_new=new_mse, recon_mse_published=published, retrain_factor=retrain_factor)
    if new_mse is not None and published is not None and new_mse > retrain_factor * published:
        decision["reason"] = f"recon MSE on new items {new_mse:.6g} > {retrain_factor} x published {published:.6g}"
        return decision
    decision.update(used=RunMode.INCREMENTAL.value, reason="published model still fits the new items")
    return decision


def reuse_model(version: str | Path, model_dir: str | Path) -> Path:
    """Copy the published model into the work folder (the run then publishes the same weights)."""
    model_dir = Path(model_dir)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(Version(Path(version)).model_dir, model_dir)
    return model_dir


def published_metrics(version: str | Path) -> dict[str, Any]:
    """The train metrics a version's manifest recorded (incremental runs report them as their own)."""
    manifest = Version(Path(version)).manifest
    return read_json(manifest).get("metrics", {}).get("train", {}) if manifest.exists() else {}


def pinned_ids(version: str | Path, artifact: str | Path, rows: tuple[int, int] | None = None):
    """The published IDs to keep: items of the artifact whose embedding hash equals the published one.

    ``rows=(start, stop)`` limits the answer to one shard of the artifact. Returns (rqvae.encoding.encode.PinnedIds,
    item ids of the artifact (or shard) sorted, their hashes).
    """
    import numpy as np

    from rqvae.encoding.encode import PinnedIds
    from rqvae.ids.stability import file_hashes, read_hashes, unchanged_items
    from rqvae.io.idfile import read_semantic_ids

    base = Version(Path(version))
    ids, hashes = file_hashes(artifact, rows=rows)
    old_ids, old_hashes = read_hashes(base.item_hashes)
    keep_ids = ids[unchanged_items(old_ids, old_hashes, ids, hashes)]
    p_ids, p_codes, p_dedup = read_semantic_ids(base.semantic_ids)
    order = np.argsort(p_ids, kind="stable")
    p_ids, p_codes, p_dedup = p_ids[order], p_codes[order], p_dedup[order]
    take = np.isin(p_ids, keep_ids, assume_unique=True)
    return PinnedIds(p_ids[take], p_codes[take], p_dedup[take]), ids, hashes


def _artifact_dim(artifact: str | Path) -> int:
    import pyarrow.parquet as pq

    field = pq.ParquetFile(artifact).schema_arrow.field("embedding").type
    return int(getattr(field, "list_size", 0) or 0) or _first_row_dim(artifact)


def _first_row_dim(artifact: str | Path) -> int:
    from rqvae.io.readers import iter_embeddings

    for _, x in iter_embeddings(artifact, batch_rows=1):
        return int(x.shape[1])
    return 0


def _published_recon_mse(version: Version) -> float | None:
    metrics = version.read_manifest().get("metrics", {}) if version.manifest.exists() else {}
    # the model's own fit (before reassign moved items), as `auto` measures the new items
    for source, key in [("encode", "recon_mse_model"), *((s, "recon_mse") for s in ("encode", "codes", "train"))]:
        value = metrics.get(source, {}).get(key)
        if value is not None:
            return float(value)
    return None


def _recon_mse_of(model_dir: Path, artifact: str | Path, item_ids, device: str) -> float:
    """Recon MSE of the published model on (a seeded sample of) the given items."""
    import numpy as np
    import torch

    from rqvae.io.checkpoint import load_model
    from rqvae.io.readers import iter_embeddings
    from rqvae.model import resolve_device

    ids = np.sort(np.asarray(item_ids, np.int64))
    if len(ids) > AUTO_SAMPLE:
        ids = np.sort(np.random.default_rng(0).choice(ids, AUTO_SAMPLE, replace=False))
    model = load_model(model_dir, device=resolve_device(device)).eval()
    total, count = 0.0, 0
    for batch_ids, x in iter_embeddings(artifact):
        batch_ids = np.asarray(batch_ids, np.int64)
        hit = np.isin(batch_ids, ids)
        if not hit.any():
            continue
        xt = torch.from_numpy(np.ascontiguousarray(model.inputs(batch_ids[hit], x[hit]), np.float32)).to(model.device)
        with torch.no_grad():
            err = (model.decode_codes(model.encode(xt)) - xt) ** 2
        total += float(err.double().sum())
        count += int(err.numel())
    return total / count
