"""Collaborative signal for RQ-VAE training: items the same users consume close together in time.

Content embeddings alone give residual k-means nearly everything an RQ-VAE can learn; what k-means cannot use
is behaviour. Training therefore adds a co-occurrence contrastive term (item2vec / FORGE style): pairs of items
that one user consumed within ``window`` positions of each other are positives, the other pairs of the batch
are negatives, and an InfoNCE loss on the encoder's latent pulls the positives together, so that co-consumed
items land in the same code prefixes. The encoder still maps *content* to latent: codes stay a function of the
item's embedding alone (encoding needs no logs), and cold-start items get codes from the same content map, held
to their content by the reconstruction loss, which every item keeps.

Memory is bounded by the logs, not by pairs: users' sequences are kept as one int32 item-row array plus user
offsets (CSR, 4 bytes an event), and pairs are *sampled* per step (``PairSampler``), never materialised. Reading
streams the Parquet parts batch by batch and drops items without an embedding before anything is sorted.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from .errors import InputError
from .interactions import COLUMNS, Interactions, interaction_files

log = logging.getLogger(__name__)

READ_BATCH_ROWS = 4_194_304
DEFAULT_WEIGHT = 0.3  # collaborative_weight where interactions are given and no weight is (CLI, DAG)


@dataclass(frozen=True)
class ItemSequences:
    """Every user's time-ordered events as rows of the item-embedding matrix (CSR).

    ``rows[offsets[u]:offsets[u + 1]]`` is user u's sequence; only events whose item has an embedding are kept.
    """

    rows: np.ndarray  # int32 [E]: index into the embeddings the sequences were built for
    offsets: np.ndarray  # int64 [U + 1]
    n_items: int  # rows of that embedding matrix
    n_events_read: int  # events in the source before unknown items (and any hold-out) were dropped

    @property
    def n_events(self) -> int:
        return int(self.rows.size)

    @property
    def n_users(self) -> int:
        return int(self.offsets.size - 1)

    def item_counts(self) -> np.ndarray:
        """Events per item row [n_items] (how warm each item is)."""
        return np.bincount(self.rows, minlength=self.n_items).astype(np.int64)

    def fingerprint(self) -> str:
        """Identity for checkpoints: a resumed run must have learnt from the same logs."""
        digest = hashlib.sha256(f"{self.n_items}:{self.rows.size}:{self.offsets.size}".encode())
        for part in (self.rows[:4096], self.rows[-4096:], self.offsets[:4096], self.offsets[-4096:]):
            digest.update(np.ascontiguousarray(part).tobytes())
        step = max(1, self.rows.size // 65_536)
        digest.update(np.ascontiguousarray(self.rows[::step]).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, int]:
        counts = self.item_counts()
        return {
            "n_interactions": self.n_events,
            "n_users": self.n_users,
            "n_items_with_interactions": int(np.count_nonzero(counts)),
            "n_events_read": self.n_events_read,
        }

    @classmethod
    def from_interactions(cls, interactions: Interactions, item_ids: np.ndarray) -> ItemSequences:
        """Map an in-memory log (sorted by user, time) onto ``item_ids``' rows; unknown items are dropped."""
        rows = item_rows(interactions.item_id, item_ids)
        return _build(interactions.user_id, interactions.timestamp, rows, len(item_ids), len(interactions),
                      holdout_last=0, presorted=True)


def item_rows(item_id: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Row of each ``item_id`` in ``item_ids`` (int32), -1 where the item has no embedding."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if item_ids.size >= np.iinfo(np.int32).max:
        raise ValueError(f"{item_ids.size} items do not fit int32 rows")
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]
    pos = np.searchsorted(sorted_ids, item_id)
    pos_c = np.minimum(pos, max(0, sorted_ids.size - 1))
    found = (pos < sorted_ids.size) & (sorted_ids[pos_c] == item_id) if sorted_ids.size else np.zeros(0, bool)
    return np.where(found, order[pos_c], -1).astype(np.int32)


def read_sequences(path: str | Path, item_ids: np.ndarray, *, holdout_last: int = 0) -> ItemSequences:
    """Stream an interactions file or snapshot folder into :class:`ItemSequences` for ``item_ids``.

    ``holdout_last=2`` keeps only each user's training part as :func:`rqvae.interactions.leave_one_out` cuts it
    (last event = test, second last = validation; users with fewer than 3 events dropped), after items without
    an embedding are removed: the same events as ``leave_one_out(log.restrict_items(item_ids))
    .train_interactions()``, without holding the full int64 log in memory. Peak memory is about 28 bytes per
    kept event (user and time int64, row int32, the sort order) whatever the number of Parquet parts.
    """
    users, times, rows = [], [], []
    n_read = 0
    for file in interaction_files(path):
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"not a readable Parquet file ({exc})", path=file) from exc
        missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise InputError(f"missing columns {missing}: expected {list(COLUMNS)}", path=file)
        for column in COLUMNS:
            kind = pf.schema_arrow.field(column).type
            if not pa.types.is_integer(kind):
                raise InputError(f"column {column!r} must be an integer type, found {kind}", path=file)
        for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=list(COLUMNS)):
            nulls = [c for c in COLUMNS if batch.column(c).null_count]
            if nulls:
                raise InputError(f"null values in columns {nulls}", path=file)
            n_read += batch.num_rows
            row = item_rows(batch.column("item_id").to_numpy().astype(np.int64, copy=False), item_ids)
            keep = row >= 0
            rows.append(row[keep])
            users.append(batch.column("user_id").to_numpy().astype(np.int64, copy=False)[keep])
            times.append(batch.column("timestamp").to_numpy().astype(np.int64, copy=False)[keep])
    user = np.concatenate(users) if users else np.empty(0, np.int64)
    del users
    time_ = np.concatenate(times) if times else np.empty(0, np.int64)
    del times
    row = np.concatenate(rows) if rows else np.empty(0, np.int32)
    del rows
    seqs = _build(user, time_, row, len(item_ids), n_read, holdout_last=holdout_last, presorted=False)
    log.info("interactions %s: %d of %d events on items with embeddings kept, %d users, %d items (hold-out %d)",
             path, seqs.n_events, n_read, seqs.n_users, seqs.summary()["n_items_with_interactions"], holdout_last)
    return seqs


def _build(
    user: np.ndarray, time_: np.ndarray, row: np.ndarray, n_items: int, n_read: int, *,
    holdout_last: int, presorted: bool,
) -> ItemSequences:
    """Sort by (user, time) stably, drop unknown items, cut the last ``holdout_last`` events of every user."""
    if holdout_last not in (0, 2):
        raise ValueError(f"holdout_last must be 0 (all events) or 2 (leave-one-out training part), got {holdout_last}")
    if not presorted:
        order = np.lexsort((time_, user))  # stable: ties keep file order, as Interactions.from_arrays does
        user, row = user[order], row[order]
        del order
    keep = row >= 0
    if not keep.all():
        user, row = user[keep], row[keep]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if user.size else np.empty(0, np.int64)
    ends = np.r_[starts[1:], user.size].astype(np.int64)
    if holdout_last:
        enough = (ends - starts) >= holdout_last + 1
        starts, ends = starts[enough], ends[enough] - holdout_last
    lengths = ends - starts
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if holdout_last or lengths.sum() != row.size:
        take = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        row = row[take]
    return ItemSequences(np.ascontiguousarray(row, dtype=np.int32), offsets, int(n_items), int(n_read))


class PairSampler:
    """Draws co-consumed pairs: an event uniformly at random, and a partner within ``window`` positions of it
    in the same user's sequence (never itself). Only users with at least two events take part.

    Events are drawn uniformly, so popular items anchor more pairs, as they do in the logs; ``rows`` then holds
    the rows the loss needs, which stays O(pairs per step) whatever the size of the logs.
    """

    def __init__(self, sequences: ItemSequences, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        lengths = np.diff(sequences.offsets)
        active = np.flatnonzero(lengths >= 2)
        self.rows = sequences.rows
        self._starts = sequences.offsets[:-1][active]
        self._lengths = lengths[active]
        # cumulative event counts of the active users: an event index maps to its user by one searchsorted
        self._cum = np.zeros(active.size + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=self._cum[1:])
        if self._cum[-1] == 0:
            raise ValueError("no user has two or more interactions with known items: no pairs to learn from")

    @property
    def n_events(self) -> int:
        return int(self._cum[-1])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` pairs (anchor rows, partner rows), int64 each."""
        e = rng.integers(0, self._cum[-1], size=n)
        u = np.searchsorted(self._cum, e, side="right") - 1
        pos = e - self._cum[u]
        length = self._lengths[u]
        span = np.minimum(self.window, length - 1)
        # an offset in [-span, span] \ {0}, reflected back into the sequence when it falls outside
        step = rng.integers(1, span + 1)
        sign = np.where(rng.random(n) < 0.5, -1, 1)
        other = pos + sign * step
        other = np.where((other < 0) | (other >= length), pos - sign * step, other)
        other = np.clip(other, 0, length - 1)
        other = np.where(other == pos, np.where(pos > 0, pos - 1, pos + 1), other)
        start = self._starts[u]
        return self.rows[start + pos].astype(np.int64), self.rows[start + other].astype(np.int64)


def info_nce(anchor: torch.Tensor, partner: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarity: row i of ``anchor`` should match row i of ``partner`` [B, D]."""
    a = F.normalize(anchor.float(), dim=1)
    b = F.normalize(partner.float(), dim=1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class CollaborativeLoss:
    """The co-occurrence term of the training objective: InfoNCE between the latents of sampled co-consumed pairs.

    ``vectors`` is the whole catalogue (pairs reach items outside the training sample); it stays where it is
    (host memory) and only each step's ``2 x pairs`` rows travel to the model's device.
    """

    target_default = "latent"

    def __init__(self, sequences: ItemSequences, vectors: np.ndarray, *, window: int, temperature: float,
                 pairs: int) -> None:
        if sequences.n_items != vectors.shape[0]:
            raise ValueError(f"interactions were mapped onto {sequences.n_items} items, vectors have {len(vectors)}")
        self.sampler = PairSampler(sequences, window)
        self.vectors = torch.from_numpy(vectors)
        self.temperature = float(temperature)
        self.pairs = int(pairs)
        self.target = self.target_default
        self.summary = sequences.summary()
        self.fingerprint = sequences.fingerprint()

    def __call__(self, model: torch.nn.Module, rng: np.random.Generator) -> torch.Tensor:
        a, b = self.sampler.sample(self.pairs, rng)
        rows = torch.from_numpy(np.concatenate([a, b]))
        x = self.vectors.index_select(0, rows).to(model.device, torch.float32)
        z = model.encode_latent(x)
        if self.target == "quantized":
            z = model.quantizer(z).quantized
        return info_nce(z[: self.pairs], z[self.pairs :], self.temperature)
