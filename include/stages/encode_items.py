"""Stage `encode_items`: give every item of one shard (`plan_shards`) its codes with the trained model.

The DAG maps this task over the shards (`.expand`), so several `gpu` workers can encode one snapshot in
parallel. Each instance reads only its rows and writes a raw shard (`{work}/shards/`); `resolve_collisions`
then tells colliding items apart over all shards, which is why no shard resolves collisions itself. Encoding is
per item, so any shard size yields the same IDs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from include.files import jsonable
from include.layout import RunFolder
from include.results import RunInfo, Shard, ShardCodes, Trained
from rqvae.modes import RunMode

log = logging.getLogger(__name__)


def encode_items(run: RunInfo, artifact: str | Path, trained: Trained, shard: Shard, device: str) -> ShardCodes:
    """Encode the rows of one shard into `{work}/shards/shard-i-of-n.parquet`; returns small figures for XCom.

    `trained["plan"]` is train_rqvae's decision: when it used `incremental`, items whose embedding is unchanged
    since the base version keep their published IDs and only the others are encoded. `device`: TrainConfig's
    (auto = CUDA when the worker has it).
    """
    from include import incremental
    from rqvae.encoding.shards import encode_shard
    from rqvae.io.checkpoint import load_model
    from rqvae.model import resolve_device

    folder = RunFolder(Path(run["work_dir"]))
    plan = trained["plan"]
    index, count = int(shard["index"]), int(shard["count"])
    rows = (int(shard["start"]), int(shard["stop"]))
    model = load_model(trained["model_path"], device=resolve_device(device))
    pinned = None
    if plan["used"] == RunMode.INCREMENTAL:
        pinned, _, _ = incremental.pinned_ids(plan["base_version"], artifact, rows=rows)
        log.info("encode_items[%d]: keeping %d published IDs from %s", index, len(pinned.ids), plan["base_version"])
    result = encode_shard(model, artifact, folder.shard(index, count), rows, pinned=pinned)
    result.update(index=index, count=count, device=str(resolve_device(device)))
    return cast(ShardCodes, jsonable(result))
