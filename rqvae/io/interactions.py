"""User-item interaction logs: reading, time-ordering and the evaluation's split of each user's events.

Both the downstream evaluation and collaborative training read the same logs, so the split lives here, once:
whatever a tokenizer learns from interactions must come from :meth:`EventSplit.train_interactions` (or the same
rule streamed, :func:`held_out`), never from a user's validation or test events, or the evaluation would reward
memorising the answer. Two protocols (:class:`rqvae.modes.Protocol`): leave-one-out (each user's last event,
TIGER's) and temporal (each user's last 20% of events, 1 to 20, each predicted from all earlier ones).

Layout: a Parquet file, or a folder of Parquet parts (markers such as ``_SUCCESS`` and hidden files ignored),
with ``user_id`` int64, ``item_id`` int64, ``timestamp`` int64 and any extra columns (ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, InputError
from ..modes import Protocol
from .fsutil import atomic_path

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "item_id", "timestamp")
SUCCESS_MARKER = "_SUCCESS"
READ_BATCH_ROWS = 4_194_304  # events per streamed batch (~100 MiB of three int64 columns)
MIN_INTERACTIONS = 3  # a training, a validation and a test event
TEMPORAL_SHARE = 0.2  # the temporal protocol tests each user's last 20% of events ...
TEMPORAL_MAX = 20  # ... at most this many (at least one): a heavy user does not dominate the mean


@dataclass(frozen=True)
class Interactions:
    """One row per event, sorted by ``(user_id, timestamp)``; ties keep their order in the file."""

    user_id: np.ndarray  # int64 [E]
    item_id: np.ndarray  # int64 [E]
    timestamp: np.ndarray  # int64 [E]

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def n_users(self) -> int:
        return int(np.unique(self.user_id).size)

    def restrict_items(self, keep: np.ndarray) -> Interactions:
        """Only the events whose item is in ``keep`` (order kept): items without a semantic ID drop out."""
        mask = np.isin(self.item_id, np.asarray(keep, dtype=np.int64))
        return Interactions(self.user_id[mask], self.item_id[mask], self.timestamp[mask])

    @classmethod
    def from_arrays(cls, user_id: np.ndarray, item_id: np.ndarray, timestamp: np.ndarray) -> Interactions:
        """Sort events by user then time (stable), so sequences read in the order users consumed items."""
        user_id = np.asarray(user_id, dtype=np.int64)
        item_id = np.asarray(item_id, dtype=np.int64)
        timestamp = np.asarray(timestamp, dtype=np.int64)
        if not (user_id.shape == item_id.shape == timestamp.shape) or user_id.ndim != 1:
            raise ValueError(f"expected three 1-d arrays of one length, got {user_id.shape}, {item_id.shape}, "
                             f"{timestamp.shape}")
        order = np.lexsort((timestamp, user_id))
        return cls(user_id[order], item_id[order], timestamp[order])


def interaction_files(path: str | Path) -> list[Path]:
    """The Parquet files of an interactions file or snapshot folder, in name order."""
    path = Path(path)
    if not path.exists():
        raise InputError("interactions not found", path=path)
    if path.is_file():
        return [path]
    files = sorted(
        p for p in path.iterdir()
        if p.is_file() and not p.name.startswith((".", "_")) and not p.name.endswith((".tmp", ".crc"))
    )
    if not files:
        raise InputError("no interaction parts in the folder (markers and hidden files are ignored)", path=path)
    return files


def interaction_batches(
    path: str | Path, *, strict: bool = True, batch_rows: int = READ_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The ``user_id``, ``item_id``, ``timestamp`` batches of every Parquet file of ``path``: the one place an
    interactions snapshot is opened and its columns checked (training, the evaluation and its validation).

    Each file must be readable Parquet with the three columns (InputError naming the file otherwise). ``strict``
    also refuses non-integer columns and nulls, for readers that compute on the values; the validation task reads
    with ``strict=False``, so its suite can count and report such rows instead.
    """
    for file in interaction_files(path):
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"not a readable Parquet file ({exc})", path=file) from exc
        names = pf.schema_arrow.names
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise InputError(f"missing columns {missing}: expected {list(COLUMNS)}, found {names}", path=file)
        if strict:
            for column in COLUMNS:
                kind = pf.schema_arrow.field(column).type
                if not pa.types.is_integer(kind):
                    raise InputError(f"column {column!r} must be an integer type, found {kind}", path=file)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
            if strict:
                for column in COLUMNS:
                    nulls = batch.column(column).null_count
                    if nulls:
                        raise InputError(f"{nulls} null value(s) in column {column!r}", path=file)
            yield batch


def read_interactions(path: str | Path) -> Interactions:
    """Read ``user_id``, ``item_id``, ``timestamp`` from Parquet; refuse missing columns, nulls and non-integers."""
    users, items, times = [], [], []
    for batch in interaction_batches(path):
        users.append(batch.column("user_id").to_numpy().astype(np.int64, copy=False))
        items.append(batch.column("item_id").to_numpy().astype(np.int64, copy=False))
        times.append(batch.column("timestamp").to_numpy().astype(np.int64, copy=False))
    if not users:
        users = items = times = [np.empty(0, np.int64)]
    result = Interactions.from_arrays(np.concatenate(users), np.concatenate(items), np.concatenate(times))
    log.info("read %d interactions of %d users from %s", len(result), result.n_users, path)
    return result


def write_interactions(folder: str | Path, interactions: Interactions, *, part_rows: int = 1_000_000) -> Path:
    """Write a snapshot folder: ``part-NNNNN.parquet`` files, then ``_SUCCESS`` last (what sensors wait for)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(interactions)
    for index, start in enumerate(range(0, max(n, 1), part_rows)):
        stop = min(start + part_rows, n)
        table = pa.table({
            "user_id": pa.array(interactions.user_id[start:stop], pa.int64()),
            "item_id": pa.array(interactions.item_id[start:stop], pa.int64()),
            "timestamp": pa.array(interactions.timestamp[start:stop], pa.int64()),
        })
        with atomic_path(folder / f"part-{index:05d}.parquet") as tmp:
            pq.write_table(table, tmp)
    (folder / SUCCESS_MARKER).touch()
    return folder


@dataclass(frozen=True)
class EventSplit:
    """Per user, events by time: ``[train ... | validation | test ...]`` (CSR over every kept event).

    The validation event (the one just before the test block) chooses a retriever's best epoch; the test
    events are scored, each from every event before it (earlier test events included, as at serving time). Only
    the training events may be learned from, by the retriever and by a tokenizer being evaluated.
    """

    protocol: Protocol
    users: np.ndarray  # int64 [U]
    event_offsets: np.ndarray  # int64 [U + 1] into items
    items: np.ndarray  # int64 [E], each kept user's events in time order
    timestamps: np.ndarray  # int64 [E]
    n_train: np.ndarray  # int64 [U]: a user's positions [0, n_train) are training events

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_test(self) -> np.ndarray:
        """[U] test events per user."""
        return np.diff(self.event_offsets) - self.n_train - 1

    @property
    def offsets(self) -> np.ndarray:
        """[U + 1] offsets of each user's training events in ``train_items``."""
        return np.r_[0, np.cumsum(self.n_train)].astype(np.int64)

    def train_mask(self) -> np.ndarray:
        """[E] bool: the event is a training event."""
        counts = np.diff(self.event_offsets)
        position = np.arange(len(self.items)) - np.repeat(self.event_offsets[:-1], counts)
        return position < np.repeat(self.n_train, counts)

    @property
    def train_items(self) -> np.ndarray:
        return self.items[self.train_mask()]

    @property
    def valid_positions(self) -> np.ndarray:
        """[U] index into ``items`` of each user's validation event."""
        return self.event_offsets[:-1] + self.n_train

    @property
    def valid(self) -> np.ndarray:
        return self.items[self.valid_positions]

    def test_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(user index [T], index into ``items`` [T]) of every test event: users in order, each in time order."""
        count = self.n_test
        first = self.valid_positions + 1
        user = np.repeat(np.arange(len(self.users)), count)
        within = np.arange(int(count.sum())) - np.repeat(np.r_[0, np.cumsum(count)[:-1]], count)
        return user, first[user] + within

    @property
    def test_items(self) -> np.ndarray:
        return self.items[self.test_positions()[1]]

    def train_interactions(self) -> Interactions:
        """Only the training part: the one input a tokenizer may learn from while it is being evaluated."""
        mask = self.train_mask()
        users = np.repeat(self.users, np.diff(self.event_offsets))
        return Interactions(users[mask], self.items[mask].copy(), self.timestamps[mask].copy())


def count_test_events(n_events: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Test events of users with ``n_events`` events: 1 (leave-one-out), or their last ``TEMPORAL_SHARE`` of
    events, at least 1 and at most ``TEMPORAL_MAX`` (temporal)."""
    n_events = np.asarray(n_events, np.int64)
    if Protocol.parse(protocol) == Protocol.LEAVE_ONE_OUT:
        return np.ones_like(n_events)
    return np.clip(np.floor(TEMPORAL_SHARE * n_events).astype(np.int64), 1, TEMPORAL_MAX)


def held_out(n_events: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Events per user no tokenizer may learn from under ``protocol``: the test events and the validation one."""
    return count_test_events(n_events, protocol) + 1


def split_events(interactions: Interactions, protocol: Protocol,
                 min_interactions: int = MIN_INTERACTIONS) -> EventSplit:
    """Split every user with at least ``min_interactions`` (>= 3) events under ``protocol``; others are dropped.

    Every protocol leaves each kept user at least one training event, one validation and one test event."""
    protocol = Protocol.parse(protocol)
    if min_interactions < MIN_INTERACTIONS:
        raise ConfigError(f"min_interactions must be >= 3 (train, validation, test), got {min_interactions}")
    user_id = interactions.user_id
    if len(user_id) and np.any(np.diff(user_id) < 0):
        raise ValueError("interactions must be sorted by user (build them with Interactions.from_arrays)")
    starts = np.flatnonzero(np.r_[True, user_id[1:] != user_id[:-1]]) if len(user_id) else np.empty(0, np.int64)
    ends = np.r_[starts[1:], len(user_id)].astype(np.int64)
    keep = (ends - starts) >= min_interactions
    starts, ends = starts[keep], ends[keep]
    counts = ends - starts
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    rows = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1], dtype=np.int64)
    dropped = int(np.count_nonzero(~keep))
    if dropped:
        log.info("%s split: dropped %d user(s) with fewer than %d interactions", protocol, dropped, min_interactions)
    return EventSplit(protocol, user_id[starts].copy(), offsets, interactions.item_id[rows],
                      interactions.timestamp[rows], counts - held_out(counts, protocol))


def leave_one_out(interactions: Interactions, min_interactions: int = MIN_INTERACTIONS) -> EventSplit:
    """TIGER's split: per user, last event = test, second last = validation, the rest = training."""
    return split_events(interactions, Protocol.LEAVE_ONE_OUT, min_interactions)
