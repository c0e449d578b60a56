"""Semantic-ID sets as the retriever sees them, and their token layout.

An item's ID is ``codes + [dedup]`` (L code levels plus one dedup level), so a retriever generates L + 1
tokens per item. Every level gets its own block of token ids, so "code 5 at level 0" and "code 5 at level 1"
are different tokens (the model must not confuse a coarse cluster with a fine one):

====================  =========================================  ==================================
level                 token id                                   block size
====================  =========================================  ==================================
code level l < L      ``offsets[l] + codes[:, l]``               ``codebook_sizes[l]``
dedup level L         ``offsets[L] + dedup``                     ``max(dedup) + 1`` (1 when unique)
BOS                   ``offsets[L + 1]``                         1 (starts every sequence)
PAD                   ``offsets[L + 1] + 1``                     1 (fills short sequences; never a target)
====================  =========================================  ==================================

``offsets[0] = 0`` and ``offsets[l + 1] = offsets[l] + size[l]``; the vocabulary has ``offsets[L + 1] + 2``
tokens. A user's sequence is ``BOS, item_1 tokens, item_2 tokens, ...``, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class IdTable:
    """One semantic-ID set: ``item_ids`` int64 [N], ``codes`` int32 [N, L], ``dedup`` int32 [N].

    ``codebook_sizes`` defaults to ``max code + 1`` per level; pass the model's sizes when some codes are unused,
    so every set of one L x K gets the same vocabulary.
    """

    item_ids: np.ndarray
    codes: np.ndarray
    dedup: np.ndarray
    codebook_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        ids = np.asarray(self.item_ids, dtype=np.int64)
        codes = np.asarray(self.codes, dtype=np.int32)
        dedup = np.asarray(self.dedup, dtype=np.int32)
        if codes.ndim != 2 or codes.shape[0] != ids.shape[0] or dedup.shape != ids.shape:
            raise InputError(f"ID table shapes disagree: ids {ids.shape}, codes {codes.shape}, dedup {dedup.shape}")
        if ids.size == 0:
            raise InputError("empty semantic-ID table")
        if codes.min() < 0 or dedup.min() < 0:
            raise InputError("negative codes or dedup values", ids[(codes.min(1) < 0) | (dedup < 0)])
        sizes = tuple(int(k) for k in self.codebook_sizes) or tuple(int(k) + 1 for k in codes.max(0))
        if len(sizes) != codes.shape[1] or any(int(m) >= k for m, k in zip(codes.max(0), sizes, strict=True)):
            raise InputError(f"codes do not fit codebook sizes {list(sizes)}")
        sorted_ids = np.sort(ids)
        dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        if dup.size:
            raise InputError("duplicate item ids in the ID table", np.unique(dup), count=int(np.unique(dup).size))
        full = np.column_stack([codes, dedup])
        _, first, counts = np.unique(full, axis=0, return_index=True, return_counts=True)
        if np.any(counts > 1):
            raise InputError("codes + dedup are not unique", ids[first[counts > 1]], count=int((counts > 1).sum()))
        for name, value in (("item_ids", ids), ("codes", codes), ("dedup", dedup), ("codebook_sizes", sizes)):
            object.__setattr__(self, name, value)

    @classmethod
    def from_parquet(cls, path: str | Path, codebook_sizes: tuple[int, ...] = ()) -> IdTable:
        """Read a semantic-ID file or part folder (``item_id``, ``codes``, ``dedup``)."""
        from ..io.idfile import read_semantic_ids

        ids, codes, dedup = read_semantic_ids(path)
        try:
            return cls(ids, codes, dedup, codebook_sizes)
        except InputError as exc:
            raise InputError(exc.problem, exc.sample_ids, exc.count, path=path) from None

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def levels(self) -> int:
        """Code levels L (the dedup level not counted)."""
        return int(self.codes.shape[1])

    def restrict(self, keep: np.ndarray) -> IdTable:
        """Only the items in ``keep``, with the same codebook sizes (dedup values kept, so IDs stay unique)."""
        mask = np.isin(self.item_ids, np.asarray(keep, dtype=np.int64))
        return IdTable(self.item_ids[mask], self.codes[mask], self.dedup[mask], self.codebook_sizes)


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of one ID set (see the module docstring)."""

    sizes: tuple[int, ...]  # L code levels, then the dedup level

    @classmethod
    def of(cls, table: IdTable) -> TokenLayout:
        return cls((*table.codebook_sizes, int(table.dedup.max()) + 1))

    @property
    def depth(self) -> int:
        """Tokens per item: L + 1."""
        return len(self.sizes)

    @property
    def offsets(self) -> np.ndarray:
        """int64 [L + 2]: start of each level's block; the last entry is BOS."""
        return np.r_[0, np.cumsum(self.sizes)].astype(np.int64)

    @property
    def bos(self) -> int:
        return int(self.offsets[-1])

    @property
    def pad(self) -> int:
        return self.bos + 1

    @property
    def vocab_size(self) -> int:
        return self.bos + 2

    def item_tokens(self, table: IdTable) -> np.ndarray:
        """int64 [N, L + 1]: the token ids of every item of ``table``, rows in table order."""
        full = np.column_stack([table.codes, table.dedup]).astype(np.int64)
        return full + self.offsets[:-1]
