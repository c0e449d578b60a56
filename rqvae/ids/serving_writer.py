"""Writing a serving index straight from a semantic-ID file, a slice at a time: the arrays
:meth:`rqvae.ids.serving.ServingIndex.build` + ``save`` write, byte for byte, without holding them.

Building in memory holds the ID table as int64 [N, L + 1] twice, every trie level and the item lookup at once
(~200 bytes an item: 10 GiB at 50M items). Here the IDs are one packed int64 key each (rqvae.io.packed): the keys
are sorted once, every trie level is streamed from the sorted keys into its ``.npy`` file, and the item arrays
are written from the sort order and the ids, read again once the keys are gone. Peak: ~24 bytes an item
(the argsort of the ids: ids, their order, the leaf of each row and the sort's scratch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError
from ..io.fsutil import atomic_path
from ..io.packed import CHUNK_ROWS, read_ids, read_keys, small_dtype


class NpyStream:
    """One ``.npy`` file of a known dtype and length, written slice by slice: the bytes ``np.save`` writes."""

    def __init__(self, fh: BinaryIO, dtype: np.dtype, length: int) -> None:
        self.fh, self.dtype, self.length, self.written = fh, np.dtype(dtype), int(length), 0
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.length,)}
        np.lib.format.write_array_header_1_0(fh, header)

    def write(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, self.dtype)
        self.fh.write(values.tobytes())
        self.written += len(values)

    def check_complete(self) -> None:
        if self.written != self.length:
            raise RuntimeError(f"wrote {self.written} values into an array of {self.length}")


def write_index(
    semantic_ids: str | Path, folder: str | Path, codebook_sizes: Sequence[int]
) -> tuple[int, tuple[int, ...], dict[str, tuple[np.dtype, int]]] | None:
    """Write the index arrays of a semantic-ID file into ``folder/*.npy``; returns (n_items, sizes, arrays).

    ``arrays``: name -> (dtype, length), in the order ServingIndex.arrays gives. None when the IDs have no
    packed form (the caller builds in memory). Every file replaces its old version only once all are complete.
    """
    packed = read_keys(semantic_ids, codebook_sizes)
    if packed is None:
        return None
    keys, _, sizes = packed
    del packed
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    keys.sort()  # the same values as keys[order], without a second [N] array
    counts = _node_counts(keys, sizes)
    if counts[-1] != n:
        _raise_duplicate_ids(semantic_ids, keys, order)
    arrays: dict[str, tuple[np.dtype, int]] = {}
    arrays.update({f"keys_{d}": (np.dtype(np.int64), m) for d, m in enumerate(counts)})
    arrays.update({f"codes_{d}": (small_dtype(s - 1), m) for d, (s, m) in enumerate(zip(sizes, counts, strict=True))})
    leaf = small_dtype(n)
    arrays.update(items=(np.dtype(np.int64), n), item_sorted=(np.dtype(np.int64), n), item_leaf=(leaf, n))
    with ExitStack() as files:
        streams = {name: _open(files, Path(folder) / f"{name}.npy", dtype, length)
                   for name, (dtype, length) in arrays.items()}
        _write_trie(keys, sizes, streams)
        del keys
        ids = read_ids(semantic_ids, n)
        leaf_of_row = _write_items(ids, order, leaf, streams["items"])
        del order
        _write_item_lookup(ids, leaf_of_row, streams["item_sorted"], streams["item_leaf"])
        for stream in streams.values():
            stream.check_complete()
    return n, sizes, arrays


def _open(files: ExitStack, path: Path, dtype: np.dtype, length: int) -> NpyStream:
    tmp = files.enter_context(atomic_path(path))
    return NpyStream(files.enter_context(open(tmp, "wb")), dtype, length)


def _divisors(sizes: Sequence[int]) -> list[int]:
    """Per depth d, the key's divisor leaving the prefix of codes 0..d: the product of the sizes after d."""
    out, product = [], 1
    for size in reversed(sizes):
        out.append(product)
        product *= int(size)
    return out[::-1]


def _chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(values), CHUNK_ROWS):
        yield values[start : start + CHUNK_ROWS]


def _first_seen(prefix: np.ndarray, last: int) -> np.ndarray:
    """bool: where a sorted run of prefixes starts (`last`: the previous slice's final prefix, -1 for none)."""
    new = np.empty(len(prefix), bool)
    new[0] = prefix[0] != last
    np.not_equal(prefix[1:], prefix[:-1], out=new[1:])
    return new


def _node_counts(sorted_keys: np.ndarray, sizes: Sequence[int]) -> list[int]:
    """Nodes per depth (distinct prefixes of length d + 1); the last equals N unless two IDs are equal."""
    divisors = _divisors(sizes)
    counts, last = [0] * len(sizes), [-1] * len(sizes)
    for chunk in _chunks(sorted_keys):
        for depth, div in enumerate(divisors):
            prefix = chunk // div
            counts[depth] += int(np.count_nonzero(_first_seen(prefix, last[depth])))
            last[depth] = int(prefix[-1])
    return counts


def _write_trie(sorted_keys: np.ndarray, sizes: Sequence[int], streams: dict[str, NpyStream]) -> None:
    """Per depth, each node's key (parent node * size + code) and code, nodes numbered in sorted order.

    A row's parent at depth d is the count of depth d - 1 nodes started up to it, minus one: a running cumsum
    carried from slice to slice, so no level is ever held whole.
    """
    divisors = _divisors(sizes)
    seen, last = [0] * len(sizes), [-1] * len(sizes)
    for chunk in _chunks(sorted_keys):
        parent = np.zeros(len(chunk), np.int64)  # depth 0 hangs under the root, node 0
        for depth, (size, div) in enumerate(zip(sizes, divisors, strict=True)):
            prefix = chunk // div
            new = _first_seen(prefix, last[depth])
            code = prefix % size
            streams[f"keys_{depth}"].write((parent * size + code)[new])
            streams[f"codes_{depth}"].write(code[new])
            parent = seen[depth] + np.cumsum(new) - 1
            seen[depth] += int(np.count_nonzero(new))
            last[depth] = int(prefix[-1])


def _write_items(ids: np.ndarray, order: np.ndarray, leaf: np.dtype, items: NpyStream) -> np.ndarray:
    """Write the item of every leaf (ids in sorted-ID order); returns each file row's leaf, in the leaf dtype."""
    leaf_of_row = np.empty(len(ids), leaf)
    for start in range(0, len(ids), CHUNK_ROWS):
        rows = order[start : start + CHUNK_ROWS]
        items.write(ids[rows])
        leaf_of_row[rows] = np.arange(start, start + len(rows))
    return leaf_of_row


def _write_item_lookup(ids: np.ndarray, leaf_of_row: np.ndarray, item_sorted: NpyStream, item_leaf: NpyStream) -> None:
    """Item ids ascending and the leaf of each (ServingIndex.codes_of's lookup); duplicate item ids raise."""
    by_id = np.argsort(ids, kind="stable")
    last = None
    for start in range(0, len(ids), CHUNK_ROWS):
        rows = by_id[start : start + CHUNK_ROWS]
        sorted_ids = ids[rows]
        if (last is not None and sorted_ids[0] == last) or (sorted_ids[1:] == sorted_ids[:-1]).any():
            raise InputError("duplicate item ids in the ID table")
        item_sorted.write(sorted_ids)
        item_leaf.write(leaf_of_row[rows])
        last = sorted_ids[-1]


def _raise_duplicate_ids(semantic_ids: str | Path, sorted_keys: np.ndarray, order: np.ndarray) -> None:
    """The error ServingIndex.build raises for equal codes + dedup (ids read again: this is the failing path)."""
    ids = read_ids(semantic_ids, len(sorted_keys))
    same = sorted_keys[1:] == sorted_keys[:-1]
    raise InputError("codes + dedup are not unique", ids[order[1:][same]], count=int(same.sum()))
