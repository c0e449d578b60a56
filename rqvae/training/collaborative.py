"""Collaborative signal for RQ-VAE training: items the same users consume land in shared code prefixes.

On content embeddings alone an RQ-VAE learns little that residual k-means does not already find; what k-means
cannot use is behaviour. Training with interactions (see :func:`rqvae.training.loop.train`) therefore:

1. derives **collaborative embeddings** from the training logs: a truncated SVD of the user-item matrix (rows
   scaled by 1/sqrt(events of the user), columns by 1/sqrt(events of the item): the cosine-normalised
   co-occurrence of PureSVD / LSA), by a randomised range finder that only multiplies the matrix with thin dense
   blocks, streamed over the events in chunks. Memory is the events (4 bytes each as item rows) plus a few
   [items, rank] blocks, never the items x items co-occurrence;
2. **aligns** a ``dim``-wide block of the latent (the directions where the content varies least, so the
   reconstruction gives up the least) with ``scale x`` each item's unit collaborative vector, ``scale`` being
   ``collaborative_weight`` x the latent's typical norm: at weight 1 behaviour and content weigh alike in the
   distances the codebooks cut. The fit is in
   closed form (:func:`fit_alignment_`), through the encoder's linear path and a wide hidden layer that memorises
   warm items' behaviour; items count with confidence n / (n + 5) for n training events, items without events
   not at all;
3. fits the **codebooks after the alignment** (residual k-means on the aligned latent), then trains as usual
   with the alignment as an extra loss term (:class:`CollaborativeLoss`).

The encoder still maps *content* to latent, so codes remain a function of an item's embedding alone (encoding
reads no logs). A cold-start item's collaborative block is what the fitted map predicts from its content (near
content-similar warm items); the rest of its latent is its content, held by the reconstruction loss every item
keeps.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..io.interactions import MIN_INTERACTIONS, Interactions, held_out, interaction_batches
from ..modes import Protocol

log = logging.getLogger(__name__)

DEFAULT_WEIGHT = 1.0  # collaborative_weight where interactions are given and no weight is (CLI, library callers)
CONFIDENCE_EVENTS = 5.0  # an item with this many training events gets half the full alignment weight
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
    """Unit collaborative vectors per item row (zeros for items without events) and the alignment weights."""

    vectors: np.ndarray  # float32 [N, dim]
    confidence: np.ndarray  # float32 [N], n / (n + CONFIDENCE_EVENTS)
    singular_values: np.ndarray  # float64 [dim]
    seconds: float


def collaborative_embeddings(sequences: ItemSequences, dim: int, *, seed: int = 0, power_iters: int = 2
                             ) -> CollaborativeEmbeddings:
    """Item factors of the normalised user-item matrix A (users x items) by randomised SVD (Halko et al.).

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
    factors = factors / factors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    vectors = factors.float().numpy()
    vectors[counts == 0] = 0.0
    if vectors.shape[1] < dim:  # fewer users than dims: pad, the extra directions stay unused
        vectors = np.pad(vectors, ((0, 0), (0, dim - vectors.shape[1])))
    confidence = (counts / (counts + CONFIDENCE_EVENTS)).astype(np.float32)
    seconds = time.perf_counter() - t0
    log.info("collaborative embeddings: %d items x %d from %d events of %d users in %.1fs (top singular values %s)",
             n_items, dim, len(rows), n_users, seconds, [round(float(x), 3) for x in sing[:4]])
    return CollaborativeEmbeddings(vectors, confidence, sing.numpy(), seconds)


class CollaborativeLoss:
    """The alignment term: ``sum_b w_b ||z_b @ basis - scale * c_b||^2 / (B * latent_dim)`` over a batch.

    Per latent element, like the reconstruction MSE per input element. ``basis`` [latent_dim, dim] holds the
    latent's least-varying principal directions on the sample it is fitted on; ``scale`` is ``weight`` x that
    sample's mean latent norm: the weight of behaviour against content in the distances the codebooks cut.
    """

    def __init__(self, embeddings: CollaborativeEmbeddings, rows: np.ndarray | None, z_sample: torch.Tensor,
                 summary: dict[str, int], weight: float = 1.0) -> None:
        dim = embeddings.vectors.shape[1]
        latent_dim = z_sample.shape[1]
        if dim >= latent_dim:
            raise ConfigError(f"collaborative_dim {dim} must be smaller than the latent ({latent_dim})")
        device = z_sample.device
        take = slice(None) if rows is None else torch.from_numpy(np.asarray(rows, np.int64))
        self.targets = torch.from_numpy(embeddings.vectors)[take].to(device)
        self.weights = torch.from_numpy(embeddings.confidence)[take].to(device)
        z = z_sample.detach().double()
        z = z - z.mean(0)
        _, vectors = torch.linalg.eigh(z.T @ z)  # ascending variance
        self.basis = vectors[:, :dim].float().contiguous().to(device)  # [latent_dim, dim]: the least-varying
        self.scale = float(weight) * float(z.norm(dim=1).mean())
        self.latent_dim = latent_dim
        self.summary = summary
        self.seconds = embeddings.seconds

    def __call__(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] of the items at ``index`` (rows of the training sample)."""
        diff = z.float() @ self.basis - self.scale * self.targets[index]
        return (self.weights[index] * diff.pow(2).sum(1)).sum() / (z.shape[0] * self.latent_dim)


@torch.no_grad()
def fit_alignment_(model: torch.nn.Module, x: torch.Tensor, index: torch.Tensor, loss: CollaborativeLoss, *,
                   max_rows: int, ridge: float = 1e-3, chunk: int = 4096) -> dict[str, float]:
    """Closed-form start of the alignment: weighted ridge regression from the encoder's features (content, and
    the hidden units of its MLP branch) to the collaborative targets sets the aligned block of the encoder's
    linear path and of the branch's last layer; the decoder's linear path is then refit to invert the new latent.

    Why closed form: the optimiser moves weights by about its learning rate per step, so the block would need
    thousands of steps to follow the targets; the regression solves the same least-squares problem at once.
    Why the hidden units: on real data content predicts only part of behaviour (MovieLens: ~35% of the target's
    energy linearly), and a branch as wide as the number of warm items can memorise the rest item by item; its
    first layer is rescaled to unit pre-activation spread so the units respond non-linearly. Items without
    interactions weigh nothing here: their block is what the fitted map predicts from their content.
    ``max_rows``: at most this many items (the most confident first) enter the regression.
    """
    t0 = time.perf_counter()
    enc, dec = model.encoder, model.decoder
    xc = x - model.input_mean
    weight = loss.weights[index]
    keep = torch.argsort(weight, descending=True, stable=True)[: min(max_rows, int((weight > 0).sum()))]
    first = enc.branch[0]
    spread = float(first(xc[keep[:chunk]]).std()) or 1.0
    first.weight.div_(spread)
    first.bias.div_(spread)

    def features(rows: torch.Tensor) -> torch.Tensor:  # [n, h + input + 1]: hidden units, content, intercept
        xr = xc[rows]
        return torch.cat([enc.branch[:-1](xr), xr, torch.ones(len(rows), 1, device=xr.device)], 1)

    def blocks(rows: torch.Tensor) -> Iterator[torch.Tensor]:
        yield from (rows[s : s + chunk] for s in range(0, len(rows), chunk))

    width = enc.branch[-1].in_features + xc.shape[1] + 1
    gram = torch.zeros(width, width, dtype=torch.float64, device=x.device)
    rhs = torch.zeros(width, loss.basis.shape[1], dtype=torch.float64, device=x.device)
    for rows in blocks(keep):  # float32 products (the cost), float64 sums and solve
        f = features(rows)
        fw = f * weight[rows, None]
        gram += (f.T @ fw).double()
        rhs += (fw.T @ (loss.scale * loss.targets[index[rows]])).double()
    lam = ridge * torch.trace(gram) / width
    coef = torch.linalg.solve(gram + lam * torch.eye(width, dtype=gram.dtype, device=gram.device), rhs)
    del gram
    hidden = enc.branch[-1].in_features
    basis = loss.basis.double()

    def set_block(weight_: torch.Tensor, block: torch.Tensor) -> None:  # weight_ [latent, k]: its basis part := block
        w64 = weight_.double()
        weight_.copy_((w64 - basis @ (basis.T @ w64) + basis @ block.T).to(weight_.dtype))

    set_block(enc.branch[-1].weight, coef[:hidden])
    set_block(enc.skip.weight, coef[hidden:-1])
    bias = enc.skip.bias.double() + enc.branch[-1].bias.double()
    enc.skip.bias.copy_((enc.skip.bias.double() - basis @ (basis.T @ bias) + basis @ coef[-1]).float())
    # the decoder's linear path: least squares from the new latent back to the centred input
    every = torch.arange(len(xc), device=xc.device)
    latent = enc.skip.out_features
    zz = torch.zeros(latent + 1, latent + 1, dtype=torch.float64, device=x.device)
    zx = torch.zeros(latent + 1, xc.shape[1], dtype=torch.float64, device=x.device)
    for rows in blocks(every):
        z = torch.cat([enc(xc[rows]), torch.ones(len(rows), 1, device=x.device)], 1).double()
        zz += z.T @ z
        zx += z.T @ xc[rows].double()
    eye = torch.eye(len(zz), dtype=zz.dtype, device=zz.device)
    back = torch.linalg.solve(zz + 1e-6 * torch.trace(zz) / len(zz) * eye, zx)
    dec.skip.weight.copy_(back[:-1].T.float())
    dec.skip.bias.copy_(back[-1].float())
    probe = keep[:chunk]
    target = loss.scale * loss.targets[index[probe]].double()
    w = weight[probe].double()
    zl = enc(xc[probe]).double() @ basis
    fit = float((w * ((zl - target) ** 2).sum(1)).sum() / (w * (target**2).sum(1)).sum().clamp_min(1e-12))
    recon = float(((dec(enc(xc[every[:chunk]])) - xc[every[:chunk]]) ** 2).mean())
    seconds = time.perf_counter() - t0
    log.info("alignment fitted in closed form on %d items x %d features in %.1fs: relative error %.3f (most "
             "confident %d), continuous recon MSE %.3g", len(keep), width, seconds, fit, len(probe), recon)
    return {"relative_error": fit, "recon_mse": recon, "rows": len(keep), "seconds": seconds}
