"""Small file helpers the stages share: checksums and atomic JSON writes.

Readers (the next task, a downstream consumer) must never see a half-written file, so everything is
written to a temporary name in the same folder and moved into place with `os.replace`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """`sha256:<hex>` of a file, read in 1 MiB chunks (artifacts reach gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def sha256_tree(folder: str | Path) -> tuple[str, dict[str, str]]:
    """One checksum for a folder (over sorted relative paths and file digests) plus each file's digest."""
    base = Path(folder)
    files = {p.relative_to(base).as_posix(): sha256_file(p) for p in sorted(base.rglob("*")) if p.is_file()}
    digest = hashlib.sha256()
    for name, file_digest in files.items():
        digest.update(f"{name}\0{file_digest}\n".encode())
    return f"sha256:{digest.hexdigest()}", files


def temp_path(path: str | Path) -> Path:
    """A unique sibling name for writing `path` before moving it into place."""
    target = Path(path)
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write JSON (indented, keys in insertion order) to a temp file, fsync, then `os.replace`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=_jsonable)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def jsonable(value: Any) -> Any:
    """Deep-convert numpy scalars / arrays and paths so results can go to XCom and JSON files."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    for plain in (bool, int, float, str):  # numpy float64 subclasses float: still make it a plain float
        if isinstance(value, plain):
            return plain(value)
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON: {value!r}")
