"""A prefix trie of the real IDs, stored as sorted arrays so every query is a vectorised binary search.

Generative retrieval must only emit IDs that exist: at each level the decoder may choose among the children of
the prefix it has generated so far. Rows of ``codes + [dedup]`` are sorted lexicographically; the prefixes of
length d + 1 then become consecutive runs, numbered 0, 1, ... in sorted order (the trie's nodes at depth d).
A node at depth d is keyed ``parent * size[d] + code``; those keys are sorted, so "child of node n with code c"
and "all children of node n" are ``searchsorted`` calls over a whole beam at once. Codes here are level-local
(0 .. size - 1); :class:`~rqvae.retrieval.tokens.TokenLayout` adds the per-level token offsets.
"""

from __future__ import annotations

import numpy as np

from .tokens import IdTable, TokenLayout

ROOT = 0  # the single node above depth 0


class PrefixIndex:
    """Trie of one ID set. Node ids are per depth; the leaves (depth L) are the items, in sorted-ID order."""

    def __init__(self, table: IdTable) -> None:
        full = np.column_stack([table.codes, table.dedup]).astype(np.int64)
        order = np.lexsort(full.T[::-1])
        self.sizes = TokenLayout.of(table).sizes
        self.rows = full[order]  # [N, L + 1] sorted IDs
        self.items = table.item_ids[order]  # leaf node i is item self.items[i]
        self.keys: list[np.ndarray] = []  # per depth: sorted unique node keys (parent * size + code)
        self.codes: list[np.ndarray] = []  # per depth: the last code of each node
        parent = np.zeros(len(full), np.int64)
        for depth, size in enumerate(self.sizes):
            key = parent * size + self.rows[:, depth]
            new = np.r_[True, key[1:] != key[:-1]]
            self.keys.append(key[new])
            self.codes.append(self.rows[new, depth])
            parent = np.cumsum(new) - 1

    @classmethod
    def from_arrays(
        cls, sizes: tuple[int, ...], keys: list[np.ndarray], codes: list[np.ndarray], items: np.ndarray
    ) -> PrefixIndex:
        """A trie from its saved arrays (see :mod:`rqvae.ids.serving`): no sort, so loading costs only the read.

        ``rows`` (the sorted ID table, used only while building) is not kept.
        """
        index = cls.__new__(cls)
        index.sizes = tuple(int(s) for s in sizes)
        index.keys, index.codes, index.items = list(keys), list(codes), np.asarray(items)
        return index

    @property
    def depth(self) -> int:
        """Tokens per ID (L + 1)."""
        return len(self.sizes)

    def __len__(self) -> int:
        return len(self.items)

    def child(self, nodes: np.ndarray, depth: int, codes: np.ndarray) -> np.ndarray:
        """Node ids at ``depth`` reached from ``nodes`` (at depth - 1; ROOT for depth 0) by ``codes``; -1 if none."""
        keys, size = self.keys[depth], self.sizes[depth]
        nodes, codes = np.asarray(nodes, np.int64), np.asarray(codes, np.int64)
        key = nodes * size + codes
        pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        # a code outside the level would alias the next node's key
        return np.where((keys[pos] == key) & (nodes >= 0) & (codes >= 0) & (codes < size), pos, -1)

    def child_ranges(self, nodes: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """[start, stop) of the children of ``nodes`` in the depth's node list (empty for node -1)."""
        nodes = np.asarray(nodes, np.int64)
        size = self.sizes[depth]
        start = np.searchsorted(self.keys[depth], nodes * size)
        stop = np.searchsorted(self.keys[depth], (nodes + 1) * size)
        return start, np.where(nodes >= 0, stop, start)

    def allowed_mask(self, nodes: np.ndarray, depth: int) -> np.ndarray:
        """bool [B, size[depth]]: which next codes keep each prefix a real ID."""
        start, stop = self.child_ranges(nodes, depth)
        counts = stop - start
        mask = np.zeros((len(start), self.sizes[depth]), bool)
        rows = np.repeat(np.arange(len(start)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        mask[rows, self.codes[depth][np.repeat(start, counts) + within]] = True
        return mask

    def allowed(self, prefix: np.ndarray) -> np.ndarray:
        """Sorted codes that may follow one prefix (a [d] array of level-local codes, d <= L)."""
        nodes = self.walk(np.asarray(prefix, np.int64)[None, :])
        node = nodes[0, -1] if len(prefix) else ROOT
        return np.flatnonzero(self.allowed_mask(np.array([node]), len(prefix))[0])

    def walk(self, prefixes: np.ndarray) -> np.ndarray:
        """Nodes [B, d] after each code of prefixes [B, d] (-1 from the first code that leaves the trie)."""
        prefixes = np.asarray(prefixes, np.int64)
        out = np.empty(prefixes.shape, np.int64)
        node = np.full(len(prefixes), ROOT, np.int64)
        for depth in range(prefixes.shape[1]):
            node = self.child(node, depth, prefixes[:, depth])
            out[:, depth] = node
        return out

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Item id of every full ID [B, L + 1] (codes + dedup), -1 where no item has it."""
        leaves = self.walk(ids)[:, -1]
        return np.where(leaves >= 0, self.items[np.maximum(leaves, 0)], -1)

    def item_of_leaf(self, leaves: np.ndarray) -> np.ndarray:
        """Item ids of leaf nodes (-1 stays -1)."""
        leaves = np.asarray(leaves, np.int64)
        return np.where(leaves >= 0, self.items[np.maximum(leaves, 0)], -1)
