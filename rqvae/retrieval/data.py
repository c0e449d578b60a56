"""From interaction logs to token sequences: the leave-one-out split, training windows and prompts.

Training uses only each user's training part, cut into non-overlapping windows of ``history + 1`` items, every
position predicted in one causal pass (far cheaper than one sample per position). The cut points shift by a
seeded random offset per user and epoch, so no pair of neighbours is always split apart. Prompts for the
validation item are the last ``history`` training items; prompts for the test item also include the
validation item, as they would at serving time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError
from ..io.interactions import Interactions, LeaveOneOut, leave_one_out
from .tokens import IdTable, TokenLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSplit:
    """The split every ID set is evaluated on, with what was dropped on the way."""

    split: LeaveOneOut
    n_interactions: int  # events read
    dropped_interactions: int  # events whose item has no semantic ID
    dropped_users: int  # users left with fewer than min_interactions events


def prepare_split(interactions: Interactions, item_ids: np.ndarray, min_interactions: int = 3) -> PreparedSplit:
    """Drop events of items without an ID, then split; the same call gives a tokenizer its training part."""
    kept = interactions.restrict_items(item_ids)
    split = leave_one_out(kept, min_interactions)
    dropped_users = kept.n_users - len(split)
    if len(split) == 0:
        raise InputError(f"no user has {min_interactions} or more interactions with items that have IDs "
                         f"({len(interactions)} interactions, {len(interactions) - len(kept)} without an ID)")
    logger.info("split: %d users (%d dropped), %d of %d interactions kept (%d items without an ID)",
                len(split), dropped_users, len(kept), len(interactions), len(interactions) - len(kept))
    return PreparedSplit(split, len(interactions), len(interactions) - len(kept), dropped_users)


class Sequences:
    """One ID set's view of a split: item rows in the set, and their tokens."""

    def __init__(self, split: LeaveOneOut, table: IdTable, history: int) -> None:
        if history < 1:
            raise ConfigError(f"history must be >= 1, got {history}")
        self.split = split
        self.history = history
        self.layout = TokenLayout.of(table)
        self.item_tokens = self.layout.item_tokens(table)  # [N, L + 1]
        self.codes = np.column_stack([table.codes, table.dedup]).astype(np.int64)  # level-local, for the index
        order = np.argsort(table.item_ids)
        sorted_ids = table.item_ids[order]

        def rows(items: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(sorted_ids, items), len(sorted_ids) - 1)
            if np.any(sorted_ids[pos] != items):
                missing = np.unique(items[sorted_ids[pos] != items])
                raise InputError("items of the split have no ID in this set", missing, count=len(missing))
            return order[pos]

        self.train_rows = rows(split.train_items)
        self.valid_rows = rows(split.valid)
        self.test_rows = rows(split.test)

    @property
    def seq_len(self) -> int:
        """Tokens of a full training window: BOS + (history + 1) items."""
        return 1 + (self.history + 1) * self.layout.depth

    def windows(self, rng: np.random.Generator) -> np.ndarray:
        """Training windows [W, seq_len] int64 (PAD-filled on the right), shuffled."""
        offsets = self.split.offsets
        counts = np.diff(offsets)
        size = self.history + 1
        user = np.repeat(np.arange(len(counts)), counts)
        j = np.arange(offsets[-1]) - offsets[:-1][user]  # position of each event in its user's training part
        shift = rng.integers(0, size, len(counts))[user]
        window_of = (j + shift) // size
        new = np.r_[True, (user[1:] != user[:-1]) | (window_of[1:] != window_of[:-1])] if len(j) else np.zeros(0, bool)
        window = np.cumsum(new) - 1
        slot = np.arange(len(j)) - np.flatnonzero(new)[window]
        depth = self.layout.depth
        out = np.full((int(new.sum()), self.seq_len), self.layout.pad, np.int64)
        out[:, 0] = self.layout.bos
        cols = 1 + slot[:, None] * depth + np.arange(depth)
        out[window[:, None], cols] = self.item_tokens[self.train_rows]
        return out[rng.permutation(len(out))]

    def prompts(self, users: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens [U, 1 + history * depth] right-padded, lengths [U], target codes [U, L + 1], target rows [U])
        for the users at positions ``users`` of the split; ``target`` is "valid" or "test"."""
        if target not in ("valid", "test"):
            raise ConfigError(f"target must be 'valid' or 'test', got {target!r}")
        users = np.asarray(users, np.int64)
        end = self.split.offsets[users + 1]
        n_train = end - self.split.offsets[users]
        extra = 1 if target == "test" else 0  # the validation item joins the test prompt
        n = np.minimum(n_train + extra, self.history)
        from_train = n - extra
        j = np.arange(self.history)
        rows = np.full((len(users), self.history), -1, np.int64)
        take = j[None, :] < from_train[:, None]
        idx = (end - from_train)[:, None] + j[None, :]
        rows[take] = self.train_rows[idx[take]]
        if extra:
            rows[np.arange(len(users)), from_train] = self.valid_rows[users]
        depth = self.layout.depth
        tokens = np.full((len(users), 1 + self.history * depth), self.layout.pad, np.int64)
        tokens[:, 0] = self.layout.bos
        filled = rows >= 0
        u, s = np.nonzero(filled)
        tokens[u[:, None], 1 + s[:, None] * depth + np.arange(depth)] = self.item_tokens[rows[filled]]
        target_rows = (self.valid_rows if target == "valid" else self.test_rows)[users]
        return tokens, 1 + n * depth, self.codes[target_rows], target_rows
