"""Training one retriever on one ID set, and scoring it.

The epoch kept is the one with the best validation NLL (exact, over real IDs), so a budget of a few epochs
neither under- nor over-fits by luck; the test item is read only once, by the kept model.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import AUTO_DEVICE
from ..errors import ConfigError
from ..model import resolve_device
from ..modes import Protocol
from .data import Sequences, test_events
from .decode import beam_search, exact_nll, rank_of, ranking_metrics
from .index import PrefixIndex
from .model import Retriever

logger = logging.getLogger(__name__)


@dataclass
class RetrievalConfig:
    """The retriever's budget; one config is applied to every ID set of a comparison.

    ``protocol``: which events are tested (rqvae.modes.Protocol: each user's last one, or the last 20% of them).
    ``history``: items of context (at most). ``max_users``: evaluate (validation and test) a sample of this many
    users, drawn with ``seed``, so every ID set and retriever seed sees the same users; 0 = all. Training always
    uses every user's training part. ``cold_threshold``: a test item with fewer training interactions is "cold".
    ``device``: "auto" picks CUDA when present. Defaults were tuned on MovieLens small (671 users, 100k ratings):
    small batches learn most per epoch, and no dropout, since the best-validation epoch is kept anyway (dropout 0.1
    cost 0.2 nats of validation NLL after 5 epochs, and time).
    """

    protocol: Protocol = Protocol.LEAVE_ONE_OUT
    history: int = 20
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.0
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    beam: int = 20
    max_users: int = 0
    min_interactions: int = 3
    cold_threshold: int = 5
    eval_batch: int = 256
    device: str = AUTO_DEVICE
    seed: int = 0

    def __post_init__(self) -> None:
        self.protocol = Protocol.parse(self.protocol)
        for name in ("history", "d_model", "layers", "heads", "epochs", "batch_size", "beam", "eval_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_users < 0:
            raise ConfigError(f"max_users must be >= 0 (0 = all), got {self.max_users}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass
class RunResult:
    """One (ID set, seed) run: per-event metrics of the evaluated users' test events and how training went."""

    metrics: dict[str, np.ndarray]  # name -> [T]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _batches(n: int, size: int) -> range:
    return range(0, n, size)


def _nll(model: Retriever, index: PrefixIndex, seqs: Sequences, users: np.ndarray, positions: np.ndarray,
         cfg: RetrievalConfig, device: torch.device) -> np.ndarray:
    """Exact NLL of the events at ``positions`` (of the users at ``users``), each from its own history."""
    model.eval()
    out = []
    for start in _batches(len(positions), cfg.eval_batch):
        part = slice(start, start + cfg.eval_batch)
        tokens, lengths, codes, _ = seqs.prompts(users[part], positions[part])
        out.append(exact_nll(model, index, torch.from_numpy(tokens).to(device),
                             torch.from_numpy(lengths).to(device), codes))
    return np.concatenate(out) if out else np.zeros(0)


def _ranks(model: Retriever, index: PrefixIndex, seqs: Sequences, users: np.ndarray, positions: np.ndarray,
           cfg: RetrievalConfig, device: torch.device, item_ids: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    for start in _batches(len(positions), cfg.eval_batch):
        part = slice(start, start + cfg.eval_batch)
        tokens, lengths, _, rows = seqs.prompts(users[part], positions[part])
        items, scores = beam_search(model, index, torch.from_numpy(tokens).to(device),
                                    torch.from_numpy(lengths).to(device), cfg.beam)
        out.append(rank_of(items, item_ids[rows], scores))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def train_and_score(seqs: Sequences, index: PrefixIndex, item_ids: np.ndarray, users: np.ndarray,
                    cfg: RetrievalConfig, seed: int) -> RunResult:
    """Train with teacher forcing (AdamW, warm-up then cosine), keep the best-validation-NLL epoch, score test.

    ``item_ids``: the ID table's item ids in row order (what beam search returns is compared with them).
    ``users``: indices in the split of the users to evaluate (sorted); every test event of theirs is scored, in
    the split's order. Seeded: same inputs and seed, same result on CPU.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Retriever(seqs.layout, cfg.history + 1, cfg.d_model, cfg.layers, cfg.heads, cfg.dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_windows = len(seqs.windows(np.random.default_rng(seed)))  # window counts vary by a few with the offsets
    total = cfg.epochs * math.ceil(n_windows / cfg.batch_size)
    warmup = min(cfg.warmup_steps, max(1, total // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    valid_positions = seqs.split.valid_positions[users]
    best_nll, best_epoch, best_state = math.inf, 0, None
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        windows = seqs.windows(rng)
        loss_sum, steps = 0.0, 0
        for start in _batches(len(windows), cfg.batch_size):
            batch = windows[start : start + cfg.batch_size]
            width = int((batch != seqs.layout.pad).sum(1).max())  # trim the padding the whole batch shares
            loss = model.loss(torch.from_numpy(batch[:, :width]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            steps += 1
        valid_nll = float(np.mean(_nll(model, index, seqs, users, valid_positions, cfg, device)))
        history.append({"epoch": epoch, "train_loss": loss_sum / max(1, steps), "valid_nll": valid_nll})
        logger.info("retriever seed %d epoch %d/%d: train loss %.4f, valid NLL %.4f (%.1fs)", seed, epoch,
                    cfg.epochs, loss_sum / max(1, steps), valid_nll, time.perf_counter() - t0)
        if valid_nll < best_nll:
            best_nll, best_epoch, best_state = valid_nll, epoch, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    test_users, test_positions = test_events(seqs.split, users)
    metrics = ranking_metrics(_ranks(model, index, seqs, test_users, test_positions, cfg, device, item_ids))
    metrics["nll"] = _nll(model, index, seqs, test_users, test_positions, cfg, device)
    return RunResult(metrics, best_epoch, history, time.perf_counter() - t0)


def run_summary(result: RunResult) -> dict[str, Any]:
    """The JSON-able part of a run (no per-user arrays)."""
    return {"best_epoch": result.best_epoch, "seconds": round(result.seconds, 2), "history": result.history}
