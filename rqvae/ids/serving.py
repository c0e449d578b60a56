"""The serving index: a compact, fast-loading form of a version's IDs for generative retrieval at serving time.

Beam search must only emit IDs that exist, and every consumer used to rebuild a prefix trie from the ID table
(seconds to minutes at millions of items). Each published version therefore carries ``serving_index/``: the
trie of :class:`rqvae.retrieval.index.PrefixIndex` as plain ``.npy`` arrays (per depth the sorted node keys
``parent * size + code`` and each node's code; the leaves' item ids), plus the item -> leaf lookup, and
``meta.json`` with the sizes and the token layout. Loading maps those arrays (or reads them), no sort, so a
5.7M-item index loads in milliseconds (docs/benchmarks.md, `serving` section).

Token layout (the one :mod:`rqvae.retrieval.tokens` defines): level l's code c is token ``offsets[l] + c`` for
the L code levels and the dedup level, then BOS and PAD; see docs/serving.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io.fsutil import atomic_path
from ..io.idfile import read_semantic_ids
from ..io.packed import small_dtype
from ..retrieval.index import ROOT, PrefixIndex
from ..retrieval.tokens import TokenLayout

logger = logging.getLogger(__name__)

FORMAT = "rqvae-serving-index"
FORMAT_VERSION = 1
META = "meta.json"
CACHE_ENTRIES = 1 << 16  # prefixes remembered by a prefix_allowed_tokens_fn (beams share most of them)
DENSE_MAX_BYTES = 1 << 30


def _small(values: np.ndarray, top: int) -> np.ndarray:
    """Values in the smallest unsigned dtype holding 0..top (codes are small; the file stays compact)."""
    return values.astype(small_dtype(top))


def _token_layout(sizes: Sequence[int]) -> dict[str, Any]:
    layout = TokenLayout(tuple(sizes))
    return {"offsets": layout.offsets.tolist(), "bos": layout.bos, "pad": layout.pad, "vocab_size": layout.vocab_size}


def _meta(n_items: int, sizes: Sequence[int], arrays: dict[str, list[Any]]) -> dict[str, Any]:
    """meta.json of an index: sizes, token layout and each array's [dtype, shape] (checked when loading)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "n_items": n_items, "levels": len(sizes) - 1,
        "sizes": list(sizes), "token_layout": _token_layout(sizes), "arrays": arrays,
    }


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    with atomic_path(folder / META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


class ServingIndex:
    """Answers codes -> item, item -> codes and "which next codes keep this prefix a real ID" for one version."""

    def __init__(self, trie: PrefixIndex, item_sorted: np.ndarray, item_leaf: np.ndarray) -> None:
        self.trie = trie
        self.item_sorted = item_sorted  # item ids ascending
        self.item_leaf = item_leaf  # leaf (row of the sorted ID table) of each of them

    # ---- building, saving, loading ---------------------------------------------------------------------
    @classmethod
    def build(
        cls, ids: np.ndarray, codes: np.ndarray, dedup: np.ndarray, codebook_sizes: Sequence[int] | None = None
    ) -> ServingIndex:
        """The index of one ID set (codes [N, L], dedup [N]); sizes default to max code + 1 per level.

        The same trie PrefixIndex builds, sorted by one packed int64 key instead of a multi-column lexsort
        (~10x faster at millions of items).
        """
        ids = np.asarray(ids, np.int64)
        full = np.column_stack([np.asarray(codes, np.int64), np.asarray(dedup, np.int64)])
        if full.ndim != 2 or len(full) != len(ids) or len(ids) == 0:
            raise InputError(f"need ids [N] and codes [N, L] with N > 0, got {ids.shape} and {np.shape(codes)}")
        levels = full[:, :-1].max(0) + 1 if codebook_sizes is None else codebook_sizes
        sizes = tuple(int(k) for k in levels) + (int(full[:, -1].max()) + 1,)
        if full.min() < 0 or len(sizes) != full.shape[1] or (full.max(0) >= np.array(sizes)).any():
            raise InputError(f"codes do not fit codebook sizes {list(sizes[:-1])}")
        order = _sort_rows(full, sizes)
        rows = full[order]
        same = (rows[1:] == rows[:-1]).all(1)
        if same.any():
            raise InputError("codes + dedup are not unique", ids[order[1:][same]], count=int(same.sum()))
        keys, node_codes = [], []
        parent = np.zeros(len(rows), np.int64)
        for depth, size in enumerate(sizes):
            key = parent * size + rows[:, depth]
            new = np.r_[True, key[1:] != key[:-1]]
            keys.append(key[new])
            node_codes.append(_small(rows[new, depth], size - 1))
            parent = np.cumsum(new) - 1
        items = ids[order]
        by_item = np.argsort(items, kind="stable")
        if (items[by_item][1:] == items[by_item][:-1]).any():
            raise InputError("duplicate item ids in the ID table")
        trie = PrefixIndex.from_arrays(sizes, keys, node_codes, items)
        return cls(trie, items[by_item], _small(by_item, len(items)))

    @classmethod
    def from_semantic_ids(cls, path: str | Path, codebook_sizes: Sequence[int] | None = None) -> ServingIndex:
        """Build from a semantic-ID file or part folder (item_id, codes, dedup)."""
        return cls.build(*read_semantic_ids(path), codebook_sizes)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"keys_{d}": k for d, k in enumerate(self.trie.keys)}
        out.update({f"codes_{d}": c for d, c in enumerate(self.trie.codes)})
        out.update(items=self.trie.items, item_sorted=self.item_sorted, item_leaf=self.item_leaf)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/*.npy`` and ``meta.json`` (last, so a complete meta means a complete index)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = self.arrays()
        for name, values in arrays.items():
            with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(values))
        _write_meta(folder, _meta(len(self), self.sizes,
                                  {name: [str(v.dtype), list(v.shape)] for name, v in arrays.items()}))
        logger.info("serving index: %d items, sizes %s -> %s", len(self), list(self.sizes), folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = True) -> ServingIndex:
        """Open a saved index: memory-mapped by default (milliseconds, pages shared by every worker process on the
        host, read in as queries touch them); ``mmap=False`` reads every array into memory up front."""
        folder = Path(folder)
        meta_path = folder / META
        if not meta_path.is_file():
            raise InputError(f"not a serving index: {META} is missing", path=folder)
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(f"unsupported serving index format {meta.get('format')!r} v{meta.get('format_version')}",
                             path=folder)
        arrays = {}
        for name, (dtype, shape) in meta["arrays"].items():
            values = np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            if str(values.dtype) != dtype or list(values.shape) != shape:
                raise InputError(f"{name}.npy is {values.dtype} {values.shape}, meta says {dtype} {shape}", path=folder)
            arrays[name] = values
        depth = len(meta["sizes"])
        trie = PrefixIndex.from_arrays(tuple(meta["sizes"]), [arrays[f"keys_{d}"] for d in range(depth)],
                                       [arrays[f"codes_{d}"] for d in range(depth)], arrays["items"])
        return cls(trie, arrays["item_sorted"], arrays["item_leaf"])

    # ---- queries --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.trie.items)

    @property
    def sizes(self) -> tuple[int, ...]:
        """L code levels, then the dedup level."""
        return self.trie.sizes

    @property
    def levels(self) -> int:
        return len(self.sizes) - 1

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(self.sizes)

    def lookup(self, codes: np.ndarray, dedup: np.ndarray | None = None) -> np.ndarray:
        """Item id of each ID (codes [B, L] with ``dedup`` [B], or full IDs [B, L + 1]); -1 where none exists."""
        full = np.asarray(codes, np.int64)
        full = full[None, :] if full.ndim == 1 else full
        if dedup is not None:
            full = np.column_stack([full, np.asarray(dedup, np.int64).reshape(-1)])
        if full.shape[1] != len(self.sizes):
            raise ValueError(f"expected IDs of {len(self.sizes)} values (codes + dedup), got {full.shape[1]}")
        return self.trie.lookup(full)

    def codes_of(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes [B, L] int32, dedup [B] int32, found [B] bool) of items; rows of unknown items are zero."""
        item_ids = np.atleast_1d(np.asarray(item_ids, np.int64))
        pos = np.minimum(np.searchsorted(self.item_sorted, item_ids), len(self) - 1)
        found = self.item_sorted[pos] == item_ids
        node = np.where(found, self.item_leaf[pos], 0).astype(np.int64)
        out = np.zeros((len(item_ids), len(self.sizes)), np.int32)
        for depth in range(len(self.sizes) - 1, -1, -1):  # walk up: a key is parent * size + code
            key = np.asarray(self.trie.keys[depth])[node]
            out[:, depth] = key % self.sizes[depth]
            node = key // self.sizes[depth]
        out[~found] = 0
        return out[:, :-1], out[:, -1], found

    def allowed(self, prefix: Sequence[int] | np.ndarray) -> np.ndarray:
        """Sorted level-local codes that may follow ``prefix`` (d codes, d <= L; the dedup level included).

        One prefix at a time (what `generate` asks): scalar binary searches down the trie, then the children's
        codes as a slice, no mask built; batches go through :meth:`allowed_mask`.
        """
        prefix = [int(c) for c in prefix]
        depth = len(prefix)
        if depth >= len(self.sizes):
            raise ValueError(f"a prefix has at most {len(self.sizes) - 1} values, got {depth}")
        keys, sizes = self.trie.keys, self.sizes
        node = ROOT
        for d, code in enumerate(prefix):
            if not 0 <= code < sizes[d]:
                return np.zeros(0, np.int64)
            key = node * sizes[d] + code
            pos = int(np.searchsorted(keys[d], key))
            if pos == len(keys[d]) or int(keys[d][pos]) != key:
                return np.zeros(0, np.int64)
            node = pos
        start, stop = np.searchsorted(keys[depth], [node * sizes[depth], (node + 1) * sizes[depth]])
        return np.asarray(self.trie.codes[depth][start:stop], np.int64)

    def allowed_mask(self, prefixes: np.ndarray) -> np.ndarray:
        """bool [B, sizes[d]] for prefixes [B, d]: which next codes keep each prefix a real ID."""
        prefixes = np.asarray(prefixes, np.int64)
        nodes = self.trie.walk(prefixes)[:, -1] if prefixes.shape[1] else np.full(len(prefixes), ROOT)
        return self.trie.allowed_mask(nodes, prefixes.shape[1])

    def prefix_allowed_tokens_fn(
        self,
        offsets: Sequence[int] | None = None,
        *,
        bos: int | None = None,
        eos: int | None = None,
        prompt_length: int | None = None,
    ) -> Callable[[int, Any], list[int]]:
        """``fn(batch_id, input_ids) -> allowed token ids`` for Hugging Face ``generate(prefix_allowed_tokens_fn=)``.

        ``offsets``: the first token id of each of the L + 1 levels (default: this index's layout, BOS and PAD
        after it). The ID being generated starts after the last ``bos`` in input_ids (encoder-decoder with
        ``decoder_start_token_id=bos``), or after ``prompt_length`` tokens (decoder-only, a fixed-length
        prompt). Once L + 1 tokens are out (or for an impossible prefix) only ``eos`` is allowed (default PAD).
        """
        layout = self.layout
        offs = np.asarray(layout.offsets[:-1] if offsets is None else offsets, np.int64)
        if len(offs) != len(self.sizes):
            raise ValueError(f"need {len(self.sizes)} level offsets (L codes + dedup), got {len(offs)}")
        if offsets is None:
            bos = layout.bos if bos is None else bos
            eos = layout.pad if eos is None else eos
        if eos is None or (bos is None and prompt_length is None):
            raise ValueError("with custom offsets give eos, and bos or prompt_length")
        sizes = np.asarray(self.sizes, np.int64)
        done = [int(eos)]
        cache: dict[tuple[int, ...], list[int]] = {}

        def fn(batch_id: int, input_ids: Any) -> list[int]:
            seq = np.asarray(input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids, np.int64)
            if prompt_length is not None:
                generated = seq[prompt_length:]
            else:
                starts = np.flatnonzero(seq == bos)
                if starts.size == 0:
                    raise ValueError(f"no BOS token {bos} in input_ids; pass prompt_length for prompts without it")
                generated = seq[starts[-1] + 1 :]
            depth = len(generated)
            if depth >= len(sizes):
                return done
            codes = generated - offs[:depth]
            if ((codes < 0) | (codes >= sizes[:depth])).any():
                return done
            key = tuple(codes.tolist())
            hit = cache.get(key)
            if hit is None:
                hit = (self.allowed(key) + offs[depth]).tolist() or done
                if len(cache) < CACHE_ENTRIES:
                    cache[key] = hit
            return hit

        return fn

    def dense(self, max_bytes: int = DENSE_MAX_BYTES, device: str | torch.device = "cpu") -> DenseTrie:
        """Per-level child tables as tensors (masks on a GPU), level by level while they fit in ``max_bytes``.

        A level that does not fit (typically the dedup level when buckets are large: [tuples, largest bucket])
        stays None; decode it with :meth:`allowed_mask` on the node ids, which are the same in both forms.
        """
        tables: list[torch.Tensor | None] = []
        budget = max_bytes
        for depth, (size, need) in enumerate(zip(self.sizes, self.dense_bytes(), strict=True)):
            if need > budget:
                tables.append(None)
                continue
            budget -= need
            keys = np.asarray(self.trie.keys[depth])
            table = np.full((need // (4 * size), size), -1, np.int32)
            table[keys // size, keys % size] = np.arange(len(keys), dtype=np.int32)
            tables.append(torch.from_numpy(table).to(device))
        if all(t is None for t in tables):
            raise ValueError(f"no level's dense table fits in max_bytes={max_bytes}; use allowed_mask instead")
        return DenseTrie(tables)

    def dense_bytes(self) -> list[int]:
        """Bytes of each level's dense table: 4 x (nodes one level up) x (codes of the level)."""
        parents = [1] + [len(k) for k in self.trie.keys[:-1]]
        return [4 * p * s for p, s in zip(parents, self.sizes, strict=True)]


class DenseTrie:
    """The trie as one int32 table per level, ``children[d][node, code]`` = child node or -1, on any device.

    ``children[d] >= 0`` is the dense mask of level d: row = the prefix's node (ROOT = 0 at level 0). A level
    left out for memory is None.
    """

    def __init__(self, children: list[torch.Tensor | None]) -> None:
        self.children = children

    @property
    def masks(self) -> list[torch.Tensor | None]:
        return [None if c is None else c >= 0 for c in self.children]

    def _table(self, level: int) -> torch.Tensor:
        table = self.children[level]
        if table is None:
            raise ValueError(f"level {level}'s dense table did not fit in max_bytes; use ServingIndex.allowed_mask")
        return table

    def mask(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """bool [B, size] of allowed codes after the prefixes ending at ``nodes`` [B] (-1 = dead: nothing)."""
        rows = self._table(level)[nodes.clamp_min(0)] >= 0
        return rows & (nodes >= 0).unsqueeze(1)

    def advance(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Child nodes [B] reached by ``codes`` [B] (-1 where not allowed or already dead)."""
        child = self._table(level)[nodes.clamp_min(0), codes.long()]
        return torch.where(nodes >= 0, child, torch.full_like(child, -1)).long()


def _sort_rows(full: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Lexicographic row order: one argsort of a packed int64 key when the sizes fit 63 bits, else lexsort."""
    if float(np.prod([float(s) for s in sizes])) < 2.0**63:
        key = np.zeros(len(full), np.int64)
        for depth, size in enumerate(sizes):
            key = key * int(size) + full[:, depth]
        return np.argsort(key, kind="stable")
    return np.lexsort(full.T[::-1])


def write_serving_index(semantic_ids: str | Path, folder: str | Path, codebook_sizes: Sequence[int]) -> dict[str, Any]:
    """Build and save the index of a semantic-ID file; returns what the manifest records about it.

    Streamed from the file by rqvae.ids.serving_writer (~24 bytes an item at the peak instead of ~200) into the files
    build + save write; IDs without a packed int64 form are built in memory instead.
    """
    from .serving_writer import write_index

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = write_index(semantic_ids, folder, codebook_sizes)
    if written is None:
        index = ServingIndex.from_semantic_ids(semantic_ids, codebook_sizes)
        index.save(folder)
        n_items, sizes = len(index), index.sizes
    else:
        n_items, sizes, arrays = written
        _write_meta(folder, _meta(n_items, sizes, {name: [str(dtype), [length]] for name, (dtype, length)
                                                   in arrays.items()}))
        logger.info("serving index: %d items, sizes %s -> %s (streamed)", n_items, list(sizes), folder)
    return {"path": folder.name + "/", "n_items": n_items, "sizes": list(sizes), "token_layout": _token_layout(sizes),
            "bytes": sum(p.stat().st_size for p in folder.iterdir())}
