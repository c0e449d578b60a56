"""On-disk cache of finished retriever runs, keyed by everything that decides their result.

One (ID set, seed) run costs minutes on CPU and a benchmark makes fifteen of them; with a cache it can run in
pieces (several processes on disjoint ID sets, or again after an interruption) and a last call with every set
assembles the table without retraining. A run is reused only when the IDs, the split, the evaluated users, the
retriever config and the seed are byte-for-byte the same, so a hit gives exactly what training would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io.fsutil import atomic_path, write_bytes_atomic
from .data import PreparedSplit
from .tokens import IdTable
from .train import RunResult

FORMAT = 2  # bump when the meaning of a stored run changes (2: per test event, any protocol)


def run_key(table: IdTable, prepared: PreparedSplit, users: np.ndarray, cfg: dict[str, Any], seed: int) -> str:
    """Hex digest of the IDs, the split, the users, the retriever config and the seed."""
    h = hashlib.sha256(f"retrieval-run/{FORMAT}/{prepared.split.protocol}".encode())
    split = prepared.split
    for array in (table.item_ids, table.codes, table.dedup, np.asarray(table.codebook_sizes), split.users,
                  split.event_offsets, split.items, split.timestamps, split.n_train, users):
        a = np.ascontiguousarray(array)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    h.update(json.dumps({**cfg, "seed": int(seed)}, sort_keys=True, default=str).encode())
    return h.hexdigest()


class RunCache:
    """Runs stored as ``{key}.npz`` (per-event metrics) + ``{key}.json`` (best epoch, history, seconds)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def get(self, key: str) -> RunResult | None:
        meta, arrays = self.folder / f"{key}.json", self.folder / f"{key}.npz"
        if not (meta.is_file() and arrays.is_file()):
            return None
        info = json.loads(meta.read_text())
        with np.load(arrays) as data:
            metrics = {name: data[name] for name in data.files}
        return RunResult(metrics, int(info["best_epoch"]), info["history"], float(info["seconds"]))

    def put(self, key: str, run: RunResult) -> None:
        """Arrays first, metadata last, each through a rename: a reader never sees half a run."""
        with atomic_path(self.folder / f"{key}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **run.metrics)  # a handle: given a name, savez would append ".npz" to the temp name
        meta = {"best_epoch": run.best_epoch, "history": run.history, "seconds": run.seconds}
        write_bytes_atomic(self.folder / f"{key}.json", json.dumps(meta).encode())
