"""File-system helpers every writer shares: atomic files, a folder swap, SHA-256 checksums, leftover clean-up.

Readers (the next task, a serving process, a user) must never see half a file or a folder mixing two runs,
and a retried task must start from a clean slate. So everything is written under a hidden temporary sibling
name (``.<name>.tmp-<random>``) in the same folder and renamed into place; a replaced folder is first moved
aside (``.<name>.old-<random>``). :func:`remove_leftovers` knows both patterns, so whatever a killed process
left is found again. Standard library only: the light pipeline tasks import this without numpy or torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # checksums read 1 MiB at a time: artifacts reach gigabytes
SHA256_TAG = "sha256:"
TEMP = "tmp"  # marker of a sibling being written
ASIDE = "old"  # marker of a folder moved aside by replace_dir


def temp_path(path: str | Path, kind: str = TEMP) -> Path:
    """A unique hidden sibling of ``path`` (``.<name>.<kind>-<8 hex>``): readers skip it, retries never collide."""
    target = Path(path)
    return target.with_name(f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling to write; it replaces ``path`` only if the block ends without an error.

    ``fsync=True`` flushes the written file to disk before the rename, for small records (reports,
    manifests) that must survive a power cut once the rename is visible. On any failure the temporary file
    (or folder) is deleted and ``path`` keeps its previous content.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`; returns ``path``."""
    final = Path(path)
    with atomic_path(final, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return final


def write_json_atomic(
    path: str | Path,
    payload: Any,
    *,
    default: Callable[[Any], Any] | None = None,
    sort_keys: bool = False,
    fsync: bool = True,
) -> Path:
    """Write ``payload`` as indented JSON with a final newline, fsynced, through :func:`atomic_path`.

    ``default`` converts values JSON does not know (the pipeline passes its numpy-aware converter).
    """
    text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=default) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def replace_dir(staging: str | Path, final: str | Path, aside: str | Path | None = None) -> None:
    """Put the complete folder ``staging`` at ``final``; an existing ``final`` is moved to ``aside``, then deleted.

    Two renames because a folder cannot replace a non-empty one: a crash between them leaves ``aside``
    complete (``.<name>.old-<random>`` unless given), for :func:`remove_leftovers` or the caller to handle.
    The old folder is deleted only once the new one is in place.
    """
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.rename(staging, final)
        return
    aside = Path(aside) if aside is not None else temp_path(final, ASIDE)
    os.rename(final, aside)
    os.rename(staging, final)
    shutil.rmtree(aside)


def remove_leftovers(final: str | Path, kinds: tuple[str, ...] = (TEMP, ASIDE)) -> list[Path]:
    """Delete the temporary / moved-aside siblings of ``final`` that an interrupted writer left; returns them.

    Only names :func:`temp_path` makes (``.<name>.<kind>-*``) are touched, so a retry starts clean without
    any risk to other files in the folder.
    """
    target = Path(final)
    found = sorted(p for kind in kinds for p in target.parent.glob(f".{target.name}.{kind}-*"))
    for leftover in found:
        log.warning("removing %s left by an interrupted write", leftover)
        _remove(leftover)
    return found


def sha256_file(path: str | Path, *, tagged: bool = False) -> str:
    """SHA-256 of a file as hex, or as ``sha256:<hex>`` with ``tagged=True``.

    Both forms are stored on disk and must not change: model directories keep the bare hex in
    ``config.json`` (``weights_sha256``), published manifests the self-describing tagged form. One function
    with the choice made at the call site keeps them from drifting apart.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return f"{SHA256_TAG}{digest.hexdigest()}" if tagged else digest.hexdigest()


def sha256_tree(folder: str | Path) -> tuple[str, dict[str, str]]:
    """One tagged checksum for a folder plus each file's tagged digest, keyed by relative POSIX path.

    The folder digest hashes ``<relative path>\\0<file digest>\\n`` over the files in sorted order, so it
    changes with any content, name or added file; published manifests store it (the model folder).
    """
    base = Path(folder)
    files = {
        p.relative_to(base).as_posix(): sha256_file(p, tagged=True) for p in sorted(base.rglob("*")) if p.is_file()
    }
    digest = hashlib.sha256()
    for name, file_digest in files.items():
        digest.update(f"{name}\0{file_digest}\n".encode())
    return f"{SHA256_TAG}{digest.hexdigest()}", files
