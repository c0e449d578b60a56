"""Constrained beam search and the exact next-item likelihood, both over real IDs only.

At every level the model's logits are renormalised over the children of the prefix (the trie's allowed codes),
so ``sum over levels of -log p(code | prefix)`` is the negative log-likelihood of the item under a proper
distribution over the catalogue: ID sets with different numbers of valid continuations compare fairly, and a
beam's score is exactly that log-probability, so beam ranking and NLL agree.
"""

from __future__ import annotations

import numpy as np
import torch

from .index import ROOT, PrefixIndex
from .model import Retriever


def _restricted_log_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log p over the allowed entries only; -inf elsewhere (and everywhere for a row with nothing allowed)."""
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
    return torch.where(allowed, logp, torch.full_like(logp, float("-inf")))


def _mask(index: PrefixIndex, nodes: np.ndarray, level: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(index.allowed_mask(nodes.ravel(), level)).to(device).view(*nodes.shape, -1)


@torch.no_grad()
def exact_nll(model: Retriever, index: PrefixIndex, tokens: torch.Tensor, lengths: torch.Tensor,
              targets: np.ndarray) -> np.ndarray:
    """NLL [U] (nats) of each user's true next item (level-local codes + dedup [U, L + 1]) given its history."""
    device = tokens.device
    past, valid, last = model.prefix(tokens, lengths)
    offsets = torch.as_tensor(model.offsets[:-1], device=device)
    target_tokens = torch.from_numpy(targets).to(device) + offsets
    hidden = torch.cat([last[:, None], model.extend(past, valid, lengths, target_tokens[:, None, :-1])[:, 0]], 1)
    nodes = index.walk(targets)
    parents = np.column_stack([np.full(len(targets), ROOT), nodes[:, :-1]])
    nll = torch.zeros(len(targets), dtype=torch.float64, device=device)
    for level in range(model.depth):
        logp = _restricted_log_softmax(model.level_logits(hidden[:, level], level),
                                       _mask(index, parents[:, level], level, device))
        true = torch.from_numpy(targets[:, level]).to(device)
        nll -= logp.gather(1, true[:, None])[:, 0].double()
    return nll.cpu().numpy()


@torch.no_grad()
def beam_search(model: Retriever, index: PrefixIndex, tokens: torch.Tensor, lengths: torch.Tensor,
                beam: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``beam`` items per user, best first: item ids [U, beam] (-1 where fewer exist) and log-probs."""
    device = tokens.device
    users = len(lengths)
    past, valid, last = model.prefix(tokens, lengths)
    logp = _restricted_log_softmax(model.level_logits(last, 0), _mask(index, np.full(users, ROOT), 0, device))
    width = min(beam, logp.shape[1])
    scores, codes = logp.topk(width, dim=1)
    if width < beam:  # fewer first-level codes than beams: the rest start dead
        scores = torch.cat([scores, scores.new_full((users, beam - width), float("-inf"))], 1)
        codes = torch.cat([codes, codes.new_zeros((users, beam - width))], 1)
    nodes = _alive(index.child(np.full(codes.shape, ROOT), 0, codes.cpu().numpy()), scores)
    generated = (codes + model.offsets[0])[:, :, None]  # [U, beam, g]
    for level in range(1, model.depth):
        hidden = model.extend(past, valid, lengths, generated)[:, :, -1]
        logp = _restricted_log_softmax(model.level_logits(hidden, level), _mask(index, nodes, level, device))
        size = logp.shape[-1]
        scores, flat = (scores[:, :, None] + logp).view(users, -1).topk(beam, dim=1)
        parent, codes = flat // size, flat % size
        parent_np = parent.cpu().numpy()
        nodes = index.child(np.take_along_axis(nodes, parent_np, 1), level, codes.cpu().numpy())
        nodes = _alive(nodes, scores)
        generated = torch.cat([generated.gather(1, parent[:, :, None].expand(-1, -1, generated.shape[2])),
                               (codes + model.offsets[level])[:, :, None]], 2)
    return index.item_of_leaf(nodes), scores.cpu().numpy()


def _alive(nodes: np.ndarray, scores: torch.Tensor) -> np.ndarray:
    """Beams with a -inf score hold no real prefix: mark them -1 so they stay empty."""
    return np.where(torch.isfinite(scores).cpu().numpy(), nodes, -1)


def rank_of(items: np.ndarray, target: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each target among its beam's items, -1 when absent (beams scored -inf hold no item, even
    when an item id happens to be -1)."""
    hit = items == target[:, None]
    if scores is not None:
        hit &= np.isfinite(scores)
    return np.where(hit.any(1), hit.argmax(1), -1)


def ranking_metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user Recall@5, Recall@10 and NDCG@10 (one relevant item: 1 / log2(rank + 2) inside the top 10)."""
    found = ranks >= 0
    return {
        "recall@5": (found & (ranks < 5)).astype(np.float64),
        "recall@10": (found & (ranks < 10)).astype(np.float64),
        "ndcg@10": np.where(found & (ranks < 10), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0),
    }
