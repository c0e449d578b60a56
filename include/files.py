"""JSON helpers of the pipeline: read a record, make task results JSON-safe, write a record atomically.

What is left here is the Airflow side (numpy values in XCom and reports); atomic writes, folder swaps and
checksums are :mod:`rqvae.io.fsutil`'s, shared with the library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rqvae.io.fsutil import write_json_atomic as _write_json


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Indented JSON (keys in insertion order, numpy values converted), fsynced and renamed into place."""
    return _write_json(path, payload, default=_jsonable)


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
