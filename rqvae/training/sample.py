"""The rows a run trains on and evaluates on, drawn from the seed alone, and the fingerprint a checkpoint keeps.

Draws come from one generator in a fixed order (training sample or held-out split here, then the evaluation
sample, then the initialisation sample), so the same data and config always pick the same rows, also when the
vectors are read lazily from Parquet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..io.readers import EmbeddingRows
from .early_stop import heldout_split

if TYPE_CHECKING:
    from ..io.interactions import Interactions
    from .behaviour import FusedRows
    from .collaborative import ItemSequences

_FINGERPRINT_ROWS = 1024  # first and last rows of the training data its fingerprint hashes (checked on resume)
# With interactions, the codebooks are fitted on rows drawn with probability ~ (events + 1) ** TRAFFIC_POWER: codebook
# capacity goes where the traffic is, so popular regions get finer IDs. On MovieLens (temporal protocol, one seed,
# residual k-means on [content, behaviour]) power 1 moved Recall@10 from +0.001 to +0.014 over faiss (NLL -0.16 to
# -0.24 nats); 0.5 did little, 1.5 lost the NLL gain (docs/collaborative.md).
TRAFFIC_POWER = 1.0


@dataclass(frozen=True)
class Sample:
    """The training sample on the device, where its rows came from, and what per-epoch metrics are measured on."""

    x: torch.Tensor  # [n, D] float32: the rows trained on
    pick: np.ndarray | None  # their row numbers in the vectors (None: every row)
    held: np.ndarray | None  # held-out row numbers for early stopping (None: no early stopping)
    eval_x: torch.Tensor  # the held-out rows, else a fixed sample of the training rows
    meta: dict[str, Any]  # what a checkpoint must have been written for: data fingerprint and both configs
    traffic: np.ndarray | None = None  # [n] probability of each training row in a codebook fit; None: uniform

    @property
    def n(self) -> int:
        return self.x.shape[0]


def training_source(vectors: np.ndarray | EmbeddingRows, model_cfg: ModelConfig, cfg: TrainConfig,
                    interactions: Interactions | ItemSequences | None) -> np.ndarray | EmbeddingRows:
    """The vectors as float32 rows or lazy Parquet rows, checked against the model's input width."""
    if isinstance(vectors, EmbeddingRows) and interactions is not None and cfg.collaborative_weight > 0:
        vectors = vectors.take()  # the collaborative signal covers every item
    if isinstance(vectors, EmbeddingRows):
        source, shape = vectors, vectors.shape
    else:
        source = np.ascontiguousarray(vectors, dtype=np.float32)
        shape = source.shape
    if len(shape) != 2 or shape[1] != model_cfg.input_dim:
        raise ValueError(f"vectors must be [N, {model_cfg.input_dim}], got {shape}")
    return source


def prepare_sample(
    source: np.ndarray | EmbeddingRows | FusedRows,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    rng: np.random.Generator,
    device: torch.device,
    sequences: ItemSequences | None,
) -> Sample:
    """The training rows (at most ``max_train_items``), the held-out rows when early stopping, the evaluation
    rows and the checkpoint fingerprint; only these rows are read (or, with behaviour, made) from a lazy
    source."""
    total = source.shape[0]
    pick = held = None
    if cfg.early_stop_patience:
        pick, held = heldout_split(total, cfg, rng)
    elif total > cfg.max_train_items:
        pick = np.sort(rng.choice(total, cfg.max_train_items, replace=False))
    x_held = _rows(source, held) if held is not None else None
    x_np = _rows(source, pick)
    n = x_np.shape[0]
    x = torch.from_numpy(x_np).to(device)
    if x_held is None:
        eval_x = x[torch.from_numpy(np.sort(rng.choice(n, min(n, cfg.eval_items), replace=False))).to(device)]
    else:  # per-epoch metrics (and the early-stopping decision) on items training never sees
        eval_x = torch.from_numpy(x_held).to(device)
    meta = {"data": _fingerprint(x_np), "model": model_cfg.to_dict(), "train": cfg.to_dict()}
    traffic = None
    if sequences is not None:
        meta["interactions"] = sequences.fingerprint()
        counts = sequences.item_counts()
        traffic = (counts if pick is None else counts[pick]).astype(np.float64) + 1.0
        traffic = traffic ** TRAFFIC_POWER
        traffic /= traffic.sum()
    return Sample(x, pick, held, eval_x, meta, traffic)


def fit_rows(sample: Sample, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of the sample a codebook fit runs on: ``count`` distinct rows drawn uniformly, or with
    interactions ``count`` draws weighted by traffic (with replacement: a popular item counts several times)."""
    if sample.traffic is None:
        return np.sort(rng.choice(sample.n, min(sample.n, count), replace=False))
    return np.sort(rng.choice(sample.n, count, p=sample.traffic))


def _fingerprint(x: np.ndarray) -> str:
    """Cheap identity of the training data: shape plus a hash of its first and last rows."""
    digest = hashlib.sha256(f"{x.shape}".encode())
    digest.update(np.ascontiguousarray(x[:_FINGERPRINT_ROWS]).tobytes())
    digest.update(np.ascontiguousarray(x[-_FINGERPRINT_ROWS:]).tobytes())
    return digest.hexdigest()


def _rows(source: np.ndarray | EmbeddingRows | FusedRows, rows: np.ndarray | None) -> np.ndarray:
    """The given sorted rows of the vectors (all of them for None)."""
    if isinstance(source, np.ndarray):
        return source if rows is None else source[rows]
    return source.take(rows)
