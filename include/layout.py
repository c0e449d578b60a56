"""The per-snapshot work folder: every artifact path is derived from `(work_root, snapshot)`.

Deriving paths instead of passing them around is what makes re-runs idempotent: a retry, a cleared task or a
backfill of the same snapshot rewrites the same files, and two snapshots never share a folder.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from include.snapshot import parse_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFolder:
    """`{work_root}/{snapshot}/` and the files the stages write there."""

    root: Path

    @classmethod
    def for_snapshot(cls, work_root: str | Path, snapshot: str) -> RunFolder:
        return cls(Path(work_root) / parse_snapshot(snapshot))

    @classmethod
    def of(cls, work_dir: str | Path) -> RunFolder:
        """The folder at an already-derived path (as passed between tasks)."""
        return cls(Path(work_dir))

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings.parquet"

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    @property
    def input_report(self) -> Path:
        return self.validation_dir / "input.json"

    @property
    def codes_report(self) -> Path:
        return self.validation_dir / "codes.json"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def semantic_ids(self) -> Path:
        """The final IDs: a folder of `part-NNNNN.parquet`, one per encode shard, read as one dataset."""
        return self.root / "semantic_ids"

    @property
    def shards_dir(self) -> Path:
        """Raw per-shard codes (before collision resolution), one file per mapped `encode_items` instance."""
        return self.root / "shards"

    def shard(self, index: int, count: int) -> Path:
        return self.shards_dir / f"shard-{index:05d}-of-{count:05d}.parquet"

    @property
    def item_hashes(self) -> Path:
        """item_id + emb_hash of every item: what an incremental run compares to find changed embeddings."""
        return self.root / "item_hashes.parquet"

    @property
    def retired_ids(self) -> Path:
        """IDs reserved in this version (retired items' IDs, see include.lineage)."""
        return self.root / "retired_ids.parquet"

    @property
    def collision_audit(self) -> Path:
        """The items `collision_mode=reassign` moved, with rank and cost (see rqvae.audit)."""
        return self.root / "collision_audit.parquet"

    @property
    def recon_errors(self) -> Path:
        """A sample of per-item reconstruction errors (.npy) for the report's histogram."""
        return self.root / "recon_errors.npy"

    def reset(self) -> None:
        """Empty the folder: a new load invalidates every downstream artifact of an earlier run."""
        if self.root.exists():
            log.info("removing previous work folder %s", self.root)
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
