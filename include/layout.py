"""The per-run work folder: every artifact path is derived from `(work_root, snapshot, run_id)`.

`{work_root}/{snapshot}/{run}/`: deriving paths instead of passing them around makes re-runs idempotent (a
retry or a cleared task of a run rewrites its own files, and resumes its own checkpoints), and two runs never
share a folder, even of one snapshot: the scheduled run and a manual trigger with other params, or a backfill
over a day still running, each train, encode and publish from their own model and IDs. Finished runs leave a
marker; `prune_runs` keeps the newest few per snapshot and deletes run folders abandoned long ago.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from include.snapshot import parse_snapshot
from include.versions import COLLISION_AUDIT, ITEM_HASHES, RETIRED_IDS
from rqvae.errors import ConfigError
from rqvae.units import SECONDS_PER_DAY

log = logging.getLogger(__name__)

FINISHED_MARKER = "published.json"  # written by include.stages.publish once the run's version is published
STALE_RUN_DAYS = 7.0  # an unfinished run folder untouched this long belongs to a failed or abandoned run
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_key(run_id: str) -> str:
    """A folder name for an Airflow run_id (`manual__2026-11-30T12:00:00+00:00` has `:` and `+`): the readable
    part plus a short hash of the exact id, so two ids that read alike never share a folder."""
    text = str(run_id).strip()
    if not text:
        raise ConfigError("run_id is empty: a run folder needs the run's id")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', text).strip('._')[:80]}-{digest}"


@dataclass(frozen=True)
class RunFolder:
    """`{work_root}/{snapshot}/` and the files the stages write there."""

    root: Path

    @classmethod
    def for_snapshot(cls, work_root: str | Path, snapshot: str) -> RunFolder:
        """`{work_root}/{snapshot}/`: one folder for every run of the snapshot (library use, one run at a time)."""
        return cls(Path(work_root) / parse_snapshot(snapshot))

    @classmethod
    def for_run(cls, work_root: str | Path, snapshot: str, run_id: str) -> RunFolder:
        """`{work_root}/{snapshot}/{run_key(run_id)}/`: the DAG's folder, private to one run."""
        return cls(Path(work_root) / parse_snapshot(snapshot) / run_key(run_id))

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
        """The final IDs: `part-NNNNN.parquet` files (one per encode shard or level-1 group), read as one dataset."""
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
        return self.root / ITEM_HASHES  # publish copies it into the version under the same name

    @property
    def retired_ids(self) -> Path:
        """IDs reserved in this version (retired items' IDs, see include.continuity)."""
        return self.root / RETIRED_IDS

    @property
    def collision_audit(self) -> Path:
        """The items `collision_mode=reassign` moved, with rank and cost (see rqvae.ids.audit)."""
        return self.root / COLLISION_AUDIT

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


def prune_runs(snapshot_dir: str | Path, keep: int, current: str | Path | None = None,
               stale_days: float = STALE_RUN_DAYS) -> list[str]:
    """Delete old run folders of one snapshot; returns the names removed.

    Finished runs (with the marker) beyond the newest `keep` go, `current` counting as one of them; unfinished
    ones only when nothing in them changed for `stale_days` (a run still training writes a checkpoint per
    epoch), so a concurrent run's folder is never taken from under it.
    """
    if keep < 1:
        raise ConfigError(f"keep must be >= 1 (the current run's folder), got {keep}")
    base = Path(snapshot_dir)
    own = Path(current).name if current is not None else None
    finished, stale = [], []
    for folder in (p for p in base.iterdir() if p.is_dir() and not p.is_symlink() and p.name != own):
        marker = folder / FINISHED_MARKER
        if marker.is_file():
            finished.append((marker.stat().st_mtime, folder))
        elif time.time() - _last_change(folder) > stale_days * SECONDS_PER_DAY:
            stale.append(folder)
    finished.sort(reverse=True)
    doomed = [f for _, f in finished[keep - 1 if own else keep:]] + stale
    for folder in doomed:
        log.info("removing old run folder %s", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return sorted(f.name for f in doomed)


def _last_change(folder: Path) -> float:
    """The newest modification time of the folder or anything in it."""
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile (a retry rewriting its files): that is a change too
            return time.time()

    return max([mtime(folder), *(mtime(p) for p in folder.rglob("*"))])
