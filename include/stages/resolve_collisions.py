"""Stage `resolve_collisions`: merge the `encode_items` shards into the final IDs, `{work}/semantic_ids/`.

Two items may share a code tuple across shards, and an incremental run resolves new items around every kept
ID, so this is the one step that looks at all items. Up to a few million items it holds them at once (~30
bytes an item) and writes one final part per shard; larger runs without a previous version are split into
groups of whole level-1 codes and resolved one group at a time, one part per group, with the same IDs
(rqvae.encoding.partitions). The parts (`part-00000.parquet`, ...) are swapped in as a whole folder, with the item
hashes (for the next incremental run) and a sample of reconstruction errors (for the report). `validate_codes`
and `publish` read the parts as one dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from include.files import jsonable
from include.layout import RunFolder
from include.results import Encoded, RunInfo, ShardCodes, ShardSummary, Trained
from rqvae.config import EncodeOptions
from rqvae.errors import ConfigError

log = logging.getLogger(__name__)

RESOLVE_DEVICE = "cpu"  # the model only measures the residuals of the items `reassign` moves


def check_shards(shards: Sequence[ShardCodes]) -> list[ShardCodes]:
    """Shards sorted by index; raise when one is missing or the row ranges do not tile `[0, n)`."""
    ordered = sorted(shards, key=lambda s: int(s["index"]))
    if not ordered:
        raise ConfigError("no encode_items shards to merge")
    count = int(ordered[0]["count"])
    indices = [int(s["index"]) for s in ordered]
    if indices != list(range(count)) or any(int(s["count"]) != count for s in ordered):
        raise ConfigError(f"expected shards 0..{count - 1}, got indices {indices}")
    stop = 0
    for shard in ordered:
        start, end = (int(r) for r in shard["rows"])
        if start != stop or end <= start:
            raise ConfigError(f"shard {shard['index']} covers rows [{start}, {end}), expected to start at {stop}")
        stop = end
    return ordered


def resolve_collisions(
    run: RunInfo, artifact: str | Path, trained: Trained, shards: Sequence[ShardCodes], options: EncodeOptions
) -> Encoded:
    """Resolve collisions over all shards; returns `{path, n_items, n_shards, codebook_size, unique_ratio, ...}`.

    `options.collision_mode`: `dedup` or `reassign` (see rqvae.ids.collisions). Runs on CPU: the model is needed
    only for the last-level residuals of the items `reassign` moves. With a publish root, the previous version's
    IDs are carried on (include.continuity): retired IDs stay reserved for `options.retire_after` versions, items
    whose codes did not change keep their dedup digit; `{work}/retired_ids.parquet` and
    `{work}/collision_audit.parquet` result. `options.resolve_rows`: the most items held at once when there is
    no previous version (rqvae.encoding.partitions).
    """
    from include.continuity import lineage_for
    from rqvae.encoding.shards import merge_shards
    from rqvae.io.checkpoint import load_model
    from rqvae.model import resolve_device

    folder = RunFolder(Path(run["work_dir"]))
    ordered = check_shards(shards)
    model_dir, plan = trained["model_path"], trained["plan"]
    model = load_model(model_dir, device=resolve_device(RESOLVE_DEVICE))
    lineage = lineage_for(run["publish_root"], run["snapshot"], model_dir, plan, options.retire_after)
    folder.retired_ids.unlink(missing_ok=True)  # a retry without a publish root must not publish a stale one
    result = merge_shards(
        model, [s["path"] for s in ordered], artifact, folder.semantic_ids, options,
        hashes_path=folder.item_hashes, errors_path=folder.recon_errors, lineage=lineage,
        audit_path=folder.collision_audit,
    )
    if lineage is not None and lineage.retired_out is not None:
        lineage.retired_out.write(folder.retired_ids)
    result["mode"] = plan["used"]
    result["shards"] = [_summary(s) for s in ordered]
    log.info("resolve_collisions: %s", {k: v for k, v in result.items() if k != "shards"})
    return cast(Encoded, jsonable(result))


def _summary(shard: ShardCodes) -> ShardSummary:
    """The figures of one shard the result keeps (the manifest shows where each shard ran and how fast)."""
    keys = ("index", "rows", "n_pinned", "encode_seconds", "items_per_second", "device")
    return cast(ShardSummary, {k: shard.get(k) for k in keys})
