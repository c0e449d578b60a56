"""Collaborative IDs: the vector a model quantises carries what users do with an item, not only what it says.

Content embeddings put two films with similar plots side by side even when their audiences never meet; the
codes a generative recommender predicts should also group items the same users consume. The model's input for
an item is therefore ``z = [content, behaviour]``, each block centred and scaled to unit mean squared norm, the
behaviour block weighted by ``collaborative_weight`` (1: both blocks count the same), and the RQ-VAE (or
residual k-means) cuts codes from it as it would from content alone:

1. **Behaviour factors** F [items, r] from the training interactions: a randomised truncated SVD of the user x item
   matrix, normalised by both degrees (:func:`rqvae.training.collaborative.collaborative_embeddings`).
2. **Cold items** have no events and so no factors: a ridge regression G (content -> behaviour), fitted on the
   items that have events, weighted by how many, predicts theirs.
3. **Shrinkage**: an item with few events has noisy factors, so its vector is pulled toward the content's
   prediction, ``F' = w F + (1 - w) x G`` with ``w = n / (n + CONFIDENCE_EVENTS)``; an item with no events gets
   the prediction alone, so a new item's ID still follows its content.
4. **Traffic**: the codebooks are fitted on rows drawn with probability ~ events + 1
   (:data:`rqvae.training.sample.TRAFFIC_POWER`), so the items users consume most get the finest IDs.

Everything an encoder needs later is stored in the model directory (``behaviour.safetensors``, written and checked
by :mod:`rqvae.io.checkpoint`): the shrunk vectors of
the items that had events, G, and the two blocks' centres and scales. Encoding an item then needs its id and its
content vector (:meth:`Behaviour.inputs`); an item the model never saw events for is placed by its content alone.
Every step is a pass over the events or a product with [items, r] blocks, so the cost grows with the logs and the
catalogue, not with their product.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError

logger = logging.getLogger("rqvae.training.loop")

CONFIDENCE_EVENTS = 5.0  # an item with this many training events keeps half its own factors, half the prediction
# the ridge penalty, relative to the content's mean squared norm per dimension: small, so that weak content
# directions which tell audiences apart survive it (1.0 left cold items' codes blind to them on a test world)
RIDGE = 0.1
CHUNK_ROWS = 262_144  # content rows per block of the ridge's normal equations and of the inputs


@dataclass
class Behaviour:
    """What turns an item's id and content vector into the model's input (see the module docstring)."""

    item_ids: np.ndarray  # int64 [W], sorted: items that had training events
    factors: np.ndarray  # float32 [W, r]: their shrunk behaviour vectors
    ridge: np.ndarray  # float32 [D + 1, r]: content (and an intercept) -> behaviour, for every other item
    content_mean: np.ndarray  # float32 [D]
    factor_mean: np.ndarray  # float32 [r]
    content_scale: float  # 1 / root mean squared norm of the centred content
    factor_scale: float  # weight / root mean squared norm of the centred behaviour vectors
    seconds: float = 0.0  # how long the factors took (reported, not stored)

    @property
    def content_dim(self) -> int:
        return int(self.content_mean.shape[0])

    @property
    def dim(self) -> int:
        """The width of the model's input: content plus behaviour."""
        return self.content_dim + int(self.factor_mean.shape[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Behaviour vectors [n, r] the content alone predicts."""
        return (x @ self.ridge[:-1] + self.ridge[-1]).astype(np.float32, copy=False)

    def inputs(self, item_ids: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The model's input [n, D + r] for items ``item_ids`` with content ``x`` [n, D]."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.content_dim:
            raise ValueError(f"content vectors must be [n, {self.content_dim}], got {x.shape}")
        f = self.predict(x)
        ids = np.asarray(item_ids, np.int64)
        if len(self.item_ids):
            pos = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
            seen = self.item_ids[pos] == ids
            f[seen] = self.factors[pos[seen]]
        out = np.empty((len(x), self.dim), np.float32)
        np.multiply(x - self.content_mean, self.content_scale, out=out[:, : self.content_dim])
        np.multiply(f - self.factor_mean, self.factor_scale, out=out[:, self.content_dim :])
        return out

    def save(self, path: str | Path) -> Path:
        """Write the arrays to ``path`` (safetensors)."""
        from safetensors.numpy import save_file

        path = Path(path)
        save_file({"item_ids": self.item_ids, "factors": self.factors, "ridge": self.ridge,
                   "content_mean": self.content_mean, "factor_mean": self.factor_mean,
                   "scales": np.array([self.content_scale, self.factor_scale], np.float64)}, str(path))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Behaviour:
        """The behaviour written to ``path`` by :meth:`save`."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            t = load_file(str(path))
            scales = t["scales"]
            return cls(t["item_ids"], t["factors"], t["ridge"], t["content_mean"], t["factor_mean"],
                       float(scales[0]), float(scales[1]))
        except (SafetensorError, KeyError, IndexError, OSError) as exc:
            raise ModelLoadError(f"unreadable behaviour file ({exc})", path=path) from exc


class FusedRows:
    """The model's inputs of every row of the catalogue, made on demand: the training sample reads only its rows
    (the full [N, D + r] matrix would double the memory of a large catalogue)."""

    def __init__(self, behaviour: Behaviour, item_ids: np.ndarray, x: np.ndarray) -> None:
        self.behaviour, self.item_ids, self.x = behaviour, np.asarray(item_ids, np.int64), x

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[0], self.behaviour.dim

    def take(self, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            return self.behaviour.inputs(self.item_ids, self.x)
        return self.behaviour.inputs(self.item_ids[rows], self.x[rows])


def fit_behaviour(x: np.ndarray, item_ids: np.ndarray, counts: np.ndarray, factors: np.ndarray,
                  weight: float) -> Behaviour:
    """The behaviour of a catalogue: content ``x`` [N, D] of the items ``item_ids`` [N], their training events
    ``counts`` [N] and SVD factors [N, r] (zero where no events), the behaviour block's ``weight``."""
    t0 = time.perf_counter()
    x = np.asarray(x, np.float32)
    counts = np.asarray(counts, np.float64)
    shrink = counts / (counts + CONFIDENCE_EVENTS)
    ridge = _ridge(x, factors, shrink)
    warm = np.flatnonzero(counts > 0)
    shrunk = np.empty((len(warm), factors.shape[1]), np.float32)
    for start in range(0, len(warm), CHUNK_ROWS):
        rows = warm[start : start + CHUNK_ROWS]
        w = shrink[rows, None].astype(np.float32)
        predicted = x[rows] @ ridge[:-1] + ridge[-1]
        shrunk[start : start + len(rows)] = w * factors[rows] + (1 - w) * predicted
    order = np.argsort(item_ids[warm], kind="stable")
    warm_ids, shrunk = np.asarray(item_ids, np.int64)[warm][order], shrunk[order]
    content_mean, content_rms = _centre(x)
    # the behaviour block over every item: the shrunk vectors of warm items, the prediction for the others
    cold = np.ones(len(x), bool)
    cold[warm] = False
    f_sum = shrunk.astype(np.float64).sum(0)
    f_sq = float((shrunk.astype(np.float64) ** 2).sum())
    for start in range(0, len(x), CHUNK_ROWS):
        part = np.flatnonzero(cold[start : start + CHUNK_ROWS]) + start
        if len(part):
            predicted = (x[part] @ ridge[:-1] + ridge[-1]).astype(np.float64)
            f_sum += predicted.sum(0)
            f_sq += float((predicted**2).sum())
    factor_mean = f_sum / len(x)
    factor_rms = math.sqrt(max(f_sq / len(x) - float(factor_mean @ factor_mean), 1e-24))
    behaviour = Behaviour(warm_ids, shrunk, ridge, content_mean.astype(np.float32), factor_mean.astype(np.float32),
                          1.0 / content_rms, float(weight) / factor_rms)
    logger.info("behaviour: %d of %d items with events, %d dims, weight %s (ridge + shrinkage %.0f events) in %.1fs",
                len(warm), len(x), factors.shape[1], weight, CONFIDENCE_EVENTS, time.perf_counter() - t0)
    return behaviour


def _ridge(x: np.ndarray, factors: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """G [D + 1, r] minimising sum_i w_i ||[x_i, 1] G - f_i||^2 + RIDGE * tr(X'WX) / D * ||G (no intercept)||^2."""
    d, r = x.shape[1], factors.shape[1]
    gram = np.zeros((d + 1, d + 1))
    cross = np.zeros((d + 1, r))
    for start in range(0, len(x), CHUNK_ROWS):
        sl = slice(start, start + CHUNK_ROWS)
        w = weight[sl]
        keep = w > 0
        if not keep.any():
            continue
        xm = np.c_[x[sl][keep], np.ones(int(keep.sum()))].astype(np.float64)
        xw = xm * w[keep, None]
        gram += xm.T @ xw
        cross += xw.T @ factors[sl][keep].astype(np.float64)
    penalty = RIDGE * np.trace(gram[:-1, :-1]) / max(d, 1) * np.eye(d + 1)
    penalty[-1, -1] = 0.0
    if not gram.any():  # no item had events: no behaviour to predict
        return np.zeros((d + 1, r), np.float32)
    return np.linalg.solve(gram + penalty + 1e-9 * np.eye(d + 1), cross).astype(np.float32)


def _centre(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(mean [D], root mean squared norm of the centred rows), in blocks."""
    total = x.astype(np.float64).sum(0) if len(x) <= CHUNK_ROWS else sum(
        x[s : s + CHUNK_ROWS].astype(np.float64).sum(0) for s in range(0, len(x), CHUNK_ROWS))
    mean = total / max(len(x), 1)
    sq = sum(float(((x[s : s + CHUNK_ROWS] - mean) ** 2).sum()) for s in range(0, len(x), CHUNK_ROWS))
    return mean, math.sqrt(max(sq / max(len(x), 1), 1e-24))
