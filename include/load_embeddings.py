"""Stage `load_embeddings`: turn a snapshot in any supported layout into one canonical run artifact.

Downstream stages then read a single known format ({work}/embeddings.parquet: item_id int64, embedding
list<float32>) regardless of how the upstream job wrote the snapshot (Parquet parts, .npy, JSON lines). The
copy is lenient on purpose: rows of the wrong length survive so `validate_dims` can name them, rather than the
loader dying on the first odd row. The artifact's checksum goes to the manifest, tying a published version
to the exact input it was trained on.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from include.layout import RunFolder
from include.results import Loaded
from rqvae.fsutil import atomic_path, sha256_file
from rqvae.readers import DEFAULT_BATCH_ROWS

log = logging.getLogger(__name__)


def load_embeddings(
    snapshot_dir: str | Path,
    work_dir: str | Path,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_pickle: bool = False,
) -> Loaded:
    """Stream the snapshot into `{work_dir}/embeddings.parquet`; return `{path, n_items, dim, dims, checksum}`.

    The work folder is emptied first: a new load makes every artifact of an earlier run of the same
    snapshot stale (model checkpoints included, which training would otherwise resume from).
    """
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rqvae.errors import InputError
    from rqvae.readers import TABLE_SCHEMA as schema
    from rqvae.readers import iter_tables

    run_folder = RunFolder(Path(work_dir))
    run_folder.reset()
    target = run_folder.embeddings
    lengths: Counter[int] = Counter()
    n_items = 0
    with atomic_path(target) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in iter_tables(snapshot_dir, batch_rows=batch_rows, allow_pickle=allow_pickle):
                table = table.select(["item_id", "embedding"]).cast(schema)
                values, counts = np.unique(
                    pc.list_value_length(table.column("embedding")).fill_null(0).to_numpy(zero_copy_only=False),
                    return_counts=True,
                )
                lengths.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
                writer.write_table(table, row_group_size=batch_rows)
                n_items += table.num_rows
        if n_items == 0:
            raise InputError("the snapshot holds no items", path=snapshot_dir)
    nonzero = {k: v for k, v in lengths.items() if k > 0}
    dim = max(nonzero, key=lambda k: (nonzero[k], k)) if nonzero else 0
    checksum = sha256_file(target, tagged=True)
    log.info(
        "load_embeddings: %d items from %s -> %s (dim %d, lengths seen %s, %s)",
        n_items, snapshot_dir, target, dim, dict(sorted(lengths.items())), checksum,
    )
    return {
        "path": str(target),
        "n_items": n_items,
        "dim": dim,
        "dims": {str(k): v for k, v in sorted(lengths.items())[:10]},
        "checksum": checksum,
    }
