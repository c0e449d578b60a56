"""Stage `load_embeddings`: turn a snapshot in any supported layout into one canonical run artifact.

Downstream stages then read a single known format ({work}/embeddings.parquet: item_id int64, embedding
fixed_size_list<float32>[D], or list<float32> when rows differ in length) regardless of how the upstream job
wrote the snapshot (Parquet parts, .npy, JSON lines). The copy is lenient on purpose: rows of the wrong length
survive so `validate_dims` can name them, rather than the loader dying on the first odd row. The artifact's
checksum goes to the manifest, tying a published version to the exact input it was trained on.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from include.layout import RunFolder
from include.results import Loaded
from rqvae.io.fsutil import atomic_path, sha256_file
from rqvae.io.readers import DEFAULT_BATCH_ROWS

log = logging.getLogger(__name__)


def load_embeddings(
    snapshot_dir: str | Path,
    work_dir: str | Path,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Loaded:
    """Stream the snapshot into `{work_dir}/embeddings.parquet`; return `{path, n_items, dim, dims, checksum}`.

    The work folder is emptied first: a new load makes every artifact of an earlier run of the same
    snapshot stale (model checkpoints included, which training would otherwise resume from).
    """
    from rqvae.errors import InputError

    run_folder = RunFolder(Path(work_dir))
    run_folder.reset()
    target = run_folder.embeddings
    with atomic_path(target) as tmp:
        written = _write_artifact(snapshot_dir, tmp, batch_rows, fixed=True)
        if written is None:  # rows of another length: keep them, as variable-length lists, for validate_dims
            written = _write_artifact(snapshot_dir, tmp, batch_rows, fixed=False)
        n_items, lengths = written
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


def _write_artifact(
    snapshot_dir: str | Path, tmp: Path, batch_rows: int, *, fixed: bool
) -> tuple[int, Counter[int]] | None:
    """Stream the snapshot into ``tmp``; returns (items, rows per vector length).

    ``fixed``: write fixed-size lists of the first batch's length, which every later stage reads about 2.5x
    faster than variable-length lists (no per-row offsets to decode and check); None as soon as a row has
    another length, so the caller writes variable-length lists instead.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rqvae.io.readers import TABLE_SCHEMA, embeddings_schema, iter_tables

    lengths: Counter[int] = Counter()
    n_items = 0
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []  # leading batches of null vectors only: their width is not known yet
    try:
        for table in iter_tables(snapshot_dir, batch_rows=batch_rows, allow_pickle=False):  # never a pickle
            table = table.select(["item_id", "embedding"]).cast(TABLE_SCHEMA)
            column = table.column("embedding")
            row_lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
            values, counts = np.unique(row_lengths, return_counts=True)
            lengths.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
            n_items += table.num_rows
            schema = TABLE_SCHEMA
            if fixed:
                valid = row_lengths[column.is_valid().to_numpy(zero_copy_only=False)]
                if writer is None and not valid.size:
                    pending.append(table)
                    continue
                dim = int(valid[0]) if valid.size else writer.schema.field(1).type.list_size
                if dim < 1 or (valid != dim).any():
                    return None
                schema = embeddings_schema(dim)
                try:
                    table = table.cast(schema)
                except pa.ArrowInvalid:  # a batch of another length than the first
                    return None
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            for part in (*(t.cast(schema) for t in pending), table):
                writer.write_table(part, row_group_size=batch_rows)
            pending = []
    finally:
        if writer is not None:
            writer.close()
    if pending:  # no vector at all: nothing to take a width from (validate_dims refuses such a snapshot)
        return None
    return n_items, lengths
