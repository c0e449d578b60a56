"""The evaluation's view of one published version: its folders (`VersionRef`, the `find_version` XCom), its
items and the embeddings it was trained on."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from include.results import VersionFound
from include.versions import Version
from rqvae.io.fsutil import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRef:
    """Everything the evaluation derives from one published version folder (small, for XCom)."""

    snapshot: str
    version_path: str
    publish_root: str
    previous_path: str | None
    interactions_dir: str
    embeddings_dir: str
    work_embeddings: str
    eval_dir: str

    def to_dict(self) -> VersionFound:
        return VersionFound(**asdict(self))

    @classmethod
    def from_dict(cls, found: VersionFound) -> VersionRef:
        """The ref back from `find_version`'s XCom."""
        return cls(**found)


def version_item_ids(ref: VersionRef) -> Any:
    """Item ids of the version (the items with an embedding in its snapshot)."""
    import pyarrow.parquet as pq

    return pq.read_table(Version(Path(ref.version_path)).semantic_ids, columns=["item_id"]).column(0).to_numpy()


def version_embeddings(ref: VersionRef) -> Any:
    """The embeddings the version was trained on: the work artifact if its checksum matches the manifest, else
    the snapshot folder (the work folder may have been re-run or cleaned since)."""
    from rqvae.io.readers import read_embeddings

    manifest = Version(Path(ref.version_path)).read_manifest()
    expected = (manifest.get("checksums") or {}).get("input")
    work = Path(ref.work_embeddings)
    if expected and work.is_file() and sha256_file(work, tagged=True) == expected:
        return read_embeddings(work)
    source = Path(ref.embeddings_dir)
    if not source.exists():
        raise FileNotFoundError(
            f"cannot rebuild the residual k-means baseline of {ref.snapshot}: neither the work artifact {work} "
            f"(matching the manifest's input checksum) nor the embeddings snapshot {source} is available"
        )
    log.info("work artifact %s missing or changed since publish: reading the snapshot %s", work, source)
    return read_embeddings(source)
