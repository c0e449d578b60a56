"""The behaviour side of collaborative IDs: interaction logs as item sequences, and item factors from them.

:mod:`rqvae.training.behaviour` builds the model's input from what is here: the training logs mapped onto the
catalogue's rows (:class:`ItemSequences`, streamed from Parquet with the evaluation's hold-out rule:
:func:`read_sequences`), and **behaviour factors** (:func:`collaborative_embeddings`): a truncated SVD of the
user-item matrix (rows scaled by 1/sqrt(events of the user), columns by 1/sqrt(events of the item): the
cosine-normalised co-occurrence of PureSVD / LSA), by a randomised range finder that only multiplies the matrix
with thin dense blocks, streamed over the events in chunks. Memory is the events (4 bytes each as item rows) plus a
few [items, rank] blocks, never the items x items co-occurrence.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.interactions import MIN_INTERACTIONS, Interactions, held_out, interaction_batches
from ..modes import Protocol

log = logging.getLogger(__name__)

OVERSAMPLE = 8  # extra columns of the randomised range finder
CHUNK_EVENTS = 2_097_152  # events per gather/scatter block of the streamed products
FINGERPRINT_ENDS = 4096  # first and last entries of the event arrays a fingerprint hashes (checked on resume)
FINGERPRINT_SAMPLE = 65_536  # about this many more events, evenly strided over the whole log


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
        ends = FINGERPRINT_ENDS
        for part in (self.rows[:ends], self.rows[-ends:], self.offsets[:ends], self.offsets[-ends:]):
            digest.update(np.ascontiguousarray(part).tobytes())
        step = max(1, self.rows.size // FINGERPRINT_SAMPLE)
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
        return _build(interactions.user_id, rows, len(item_ids), len(interactions), holdout=None)


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


def read_sequences(path: str | Path, item_ids: np.ndarray, *, holdout: Protocol | None) -> ItemSequences:
    """Stream an interactions file or snapshot folder into :class:`ItemSequences` for ``item_ids``.

    ``holdout`` (a Protocol) keeps only each user's training part as :func:`rqvae.io.interactions.split_events`
    cuts it (the test events and the validation event held out; users with fewer than 3 events dropped), after
    items without an embedding are removed: the same events as ``split_events(log.restrict_items(item_ids),
    protocol).train_interactions()``, without holding the full int64 log in memory. None keeps every event.
    Peak memory is about 28 bytes per kept event (user and time int64, row int32, the sort order) whatever the
    number of Parquet parts.
    """
    users, times, rows = [], [], []
    n_read = 0
    for batch in interaction_batches(path):
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
    order = np.lexsort((time_, user))  # stable: ties keep file order, as Interactions.from_arrays does
    del time_
    user = user[order]
    row = np.concatenate(rows)[order] if rows else np.empty(0, np.int32)
    del rows, order
    seqs = _build(user, row, len(item_ids), n_read, holdout=holdout)
    log.info("interactions %s: %d of %d events on items with embeddings kept, %d users, %d items (held out: %s)",
             path, seqs.n_events, n_read, seqs.n_users, seqs.summary()["n_items_with_interactions"],
             holdout or "nothing")
    return seqs


def _build(user: np.ndarray, row: np.ndarray, n_items: int, n_read: int, *, holdout: Protocol | None
           ) -> ItemSequences:
    """From events sorted by (user, time): drop unknown items, cut each user's held-out events (``holdout``)."""
    keep = row >= 0
    if not keep.all():
        user, row = user[keep], row[keep]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if user.size else np.empty(0, np.int64)
    ends = np.r_[starts[1:], user.size].astype(np.int64)
    if holdout is not None:
        enough = (ends - starts) >= MIN_INTERACTIONS
        starts, ends = starts[enough], ends[enough]
        ends = ends - held_out(ends - starts, holdout)
    lengths = ends - starts
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if holdout is not None or lengths.sum() != row.size:
        take = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        row = row[take]
    return ItemSequences(np.ascontiguousarray(row, dtype=np.int32), offsets, int(n_items), int(n_read))


@dataclass(frozen=True)
class CollaborativeEmbeddings:
    """Behaviour factors per item row (zeros for items without events)."""

    vectors: np.ndarray  # float32 [N, dim]
    singular_values: np.ndarray  # float64 [dim]
    seconds: float


def collaborative_embeddings(sequences: ItemSequences, dim: int, *, seed: int, power_iters: int = 2,
                             unit: bool = False) -> CollaborativeEmbeddings:
    """Item factors V S^1/2 of the normalised user-item matrix A (users x items) by randomised SVD (Halko et al.);
    ``unit`` scales each item's factors to length 1.

    Only A @ [items, r] and A.T @ [users, r] products are needed; each is a gather and an ``index_add_`` over
    the events in chunks of CHUNK_EVENTS, so memory is 12 bytes an event (user and item int32, value float32)
    plus a few float32 [items, r] and [users, r] blocks, r = dim + 8: at 100M events on 5.7M items, ~1.2 GB
    + ~4 x 0.9 GB.
    """
    t0 = time.perf_counter()
    counts = sequences.item_counts()
    lengths = np.diff(sequences.offsets)
    users = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
    rows = sequences.rows
    # value of each event: 1/sqrt(events of its user) * 1/sqrt(events of its item)
    values = ((1.0 / np.sqrt(np.maximum(lengths, 1))).astype(np.float32)[users]
              * (1.0 / np.sqrt(np.maximum(counts, 1))).astype(np.float32)[rows])
    n_items, n_users = sequences.n_items, lengths.size
    rank = min(dim + OVERSAMPLE, max(1, min(n_items, n_users)))
    u_t, i_t, v_t = torch.from_numpy(users), torch.from_numpy(rows), torch.from_numpy(values)

    def a_mul(block: torch.Tensor) -> torch.Tensor:  # A @ block: [users, r]
        out = torch.zeros(n_users, block.shape[1])
        for s in range(0, len(v_t), CHUNK_EVENTS):
            sl = slice(s, s + CHUNK_EVENTS)
            out.index_add_(0, u_t[sl], block[i_t[sl]] * v_t[sl, None])
        return out

    def at_mul(block: torch.Tensor) -> torch.Tensor:  # A.T @ block: [items, r]
        out = torch.zeros(n_items, block.shape[1])
        for s in range(0, len(v_t), CHUNK_EVENTS):
            sl = slice(s, s + CHUNK_EVENTS)
            out.index_add_(0, i_t[sl], block[u_t[sl]] * v_t[sl, None])
        return out

    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(at_mul(a_mul(torch.randn(n_items, rank, generator=gen)))).Q
    for _ in range(power_iters):
        q = torch.linalg.qr(at_mul(torch.linalg.qr(a_mul(q)).Q)).Q
    b = a_mul(q).double()  # [users, r]; the items' right singular vectors are q @ (eigenvectors of b.T b)
    eigval, eigvec = torch.linalg.eigh(b.T @ b)
    top = torch.argsort(eigval, descending=True)[:dim]
    sing = eigval[top].clamp_min(0).sqrt()
    factors = (q.double() @ eigvec[:, top]) * sing.sqrt()
    if unit:
        factors = factors / factors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    vectors = factors.float().numpy()
    vectors[counts == 0] = 0.0
    if vectors.shape[1] < dim:  # fewer users than dims: pad, the extra directions stay unused
        vectors = np.pad(vectors, ((0, 0), (0, dim - vectors.shape[1])))
    seconds = time.perf_counter() - t0
    log.info("collaborative embeddings: %d items x %d from %d events of %d users in %.1fs (top singular values %s)",
             n_items, dim, len(rows), n_users, seconds, [round(float(x), 3) for x in sing[:4]])
    return CollaborativeEmbeddings(vectors, sing.numpy(), seconds)
