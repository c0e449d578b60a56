"""Stage `encode_items`: give every item of the artifact its codes with the trained model, one shard at a time.

`plan_shards` cuts the artifact into contiguous row ranges of at most `shard_size` items; the DAG maps
`encode_items` over them (`.expand`), so several `gpu` workers can encode one snapshot in parallel. Each
instance reads only its rows and writes a raw shard (`{work}/shards/`); `resolve_collisions` then tells
colliding items apart over all shards, which is why no shard resolves collisions itself. Encoding is per item,
so any shard size yields the same IDs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import cast

from include.files import jsonable
from include.layout import RunFolder
from include.results import Plan, Shard, ShardCodes
from rqvae.errors import ConfigError

log = logging.getLogger(__name__)


def plan_shards(n_items: int, shard_size: int, max_shards: int | None = None) -> list[Shard]:
    """Row ranges `{index, count, start, stop}` covering `[0, n_items)`: ceil(n / shard_size) near-equal shards.

    Equal sizes rather than full shards plus a remainder, so parallel workers finish together. `max_shards` is
    Airflow's `[core] max_map_length`: more would fail the mapped task with a less helpful message.
    """
    if n_items < 1:
        raise ConfigError(f"nothing to shard: n_items={n_items}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    count = math.ceil(n_items / shard_size)
    if max_shards is not None and count > max_shards:
        raise ConfigError(
            f"shard_size={shard_size} cuts {n_items} items into {count} shards, more than the {max_shards} mapped "
            f"task instances Airflow allows ([core] max_map_length); use shard_size >= "
            f"{math.ceil(n_items / max_shards)}"
        )
    bounds = [i * n_items // count for i in range(count + 1)]
    return [Shard(index=i, count=count, start=bounds[i], stop=bounds[i + 1]) for i in range(count)]


def encode_items(
    model_dir: str | Path,
    artifact: str | Path,
    work_dir: str | Path,
    shard: Shard,
    *,
    device: str = "auto",
    plan: Plan | None = None,
) -> ShardCodes:
    """Encode the rows of one shard into `{work}/shards/shard-i-of-n.parquet`; returns small figures for XCom.

    `plan` is train_rqvae's decision: when it used `incremental`, items whose embedding is unchanged since the
    base version keep their published IDs and only the others are encoded.
    """
    from include import incremental
    from rqvae.checkpoint import load_model
    from rqvae.model import resolve_device
    from rqvae.shards import encode_shard

    folder = RunFolder(Path(work_dir))
    index, count = int(shard["index"]), int(shard["count"])
    rows = (int(shard["start"]), int(shard["stop"]))
    model = load_model(model_dir, device=resolve_device(device))
    pinned = None
    if plan and plan.get("used") == "incremental":
        pinned, _, _ = incremental.pinned_ids(plan["base_version"], artifact, rows=rows)
        log.info("encode_items[%d]: keeping %d published IDs from %s", index, len(pinned.ids), plan["base_version"])
    result = encode_shard(model, artifact, folder.shard(index, count), rows, pinned=pinned)
    result.update(index=index, count=count, device=str(resolve_device(device)))
    return cast(ShardCodes, jsonable(result))
