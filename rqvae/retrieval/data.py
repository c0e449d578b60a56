"""From interaction logs to token sequences: the split, training windows and prompts.

Training uses only each user's training events, cut into non-overlapping windows of ``history + 1`` items, every
position predicted in one causal pass (far cheaper than one sample per position). The cut points shift by a
seeded random offset per user and epoch, so no pair of neighbours is always split apart. A prompt for an event
(the validation event, or any test event) is the up to ``history`` events right before it in the user's own
sequence, as it would be at serving time: a test prompt includes the validation event and earlier test events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError
from ..io.interactions import EventSplit, Interactions, split_events
from ..modes import Protocol
from .tokens import IdTable, TokenLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSplit:
    """The split every ID set is evaluated on, with what was dropped on the way."""

    split: EventSplit
    n_interactions: int  # events read
    dropped_interactions: int  # events whose item has no semantic ID
    dropped_users: int  # users left with fewer than min_interactions events


def prepare_split(interactions: Interactions, item_ids: np.ndarray, protocol: Protocol,
                  min_interactions: int) -> PreparedSplit:
    """Drop events of items without an ID, then split; the same call gives a tokenizer its training part."""
    kept = interactions.restrict_items(item_ids)
    split = split_events(kept, protocol, min_interactions)
    dropped_users = kept.n_users - len(split)
    if len(split) == 0:
        raise InputError(f"no user has {min_interactions} or more interactions with items that have IDs "
                         f"({len(interactions)} interactions, {len(interactions) - len(kept)} without an ID)")
    logger.info("%s split: %d users (%d dropped), %d test events, %d of %d interactions kept (%d items without an "
                "ID)", split.protocol, len(split), dropped_users, int(split.n_test.sum()), len(kept),
                len(interactions), len(interactions) - len(kept))
    return PreparedSplit(split, len(interactions), len(interactions) - len(kept), dropped_users)


class Sequences:
    """One ID set's view of a split: the table row of every event, and their tokens."""

    def __init__(self, split: EventSplit, table: IdTable, history: int) -> None:
        if history < 1:
            raise ConfigError(f"history must be >= 1, got {history}")
        self.split = split
        self.history = history
        self.layout = TokenLayout.of(table)
        self.item_tokens = self.layout.item_tokens(table)  # [N, L + 1]
        self.codes = np.column_stack([table.codes, table.dedup]).astype(np.int64)  # level-local, for the index
        order = np.argsort(table.item_ids)
        sorted_ids = table.item_ids[order]
        pos = np.minimum(np.searchsorted(sorted_ids, split.items), len(sorted_ids) - 1)
        if np.any(sorted_ids[pos] != split.items):
            missing = np.unique(split.items[sorted_ids[pos] != split.items])
            raise InputError("items of the split have no ID in this set", missing, count=len(missing))
        self.rows = order[pos]  # [E] table row of every event of the split
        self.train_rows = self.rows[split.train_mask()]

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

    def prompts(
        self, users: np.ndarray, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens [P, 1 + history * depth] right-padded, lengths [P], target codes [P, L + 1], target rows [P]) for
        the events at ``positions`` (indices into the split's items) of the users at ``users`` (their indices)."""
        users, positions = np.asarray(users, np.int64), np.asarray(positions, np.int64)
        n = np.minimum(positions - self.split.event_offsets[users], self.history)
        j = np.arange(self.history)
        take = j[None, :] < n[:, None]
        idx = (positions - n)[:, None] + j[None, :]
        depth = self.layout.depth
        tokens = np.full((len(positions), 1 + self.history * depth), self.layout.pad, np.int64)
        tokens[:, 0] = self.layout.bos
        u, s = np.nonzero(take)
        tokens[u[:, None], 1 + s[:, None] * depth + np.arange(depth)] = self.item_tokens[self.rows[idx[take]]]
        target_rows = self.rows[positions]
        return tokens, 1 + n * depth, self.codes[target_rows], target_rows


def test_events(split: EventSplit, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user index [T], position [T]) of the test events of the evaluated ``users`` (sorted user indices)."""
    user, position = split.test_positions()
    keep = np.isin(user, users)
    return user[keep], position[keep]
