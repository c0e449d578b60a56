"""Aligned retrains: relabel a new model's codes, level by level, to agree with the previous version's IDs.

A retrain learns codebooks whose rows come out in an arbitrary order, so code 17 today is unrelated to code 17
yesterday even when the codebooks are nearly the same up to a permutation, and a downstream model would have to
relearn every token. Relabelling one level's codes by a permutation changes no ID's meaning: in residual
quantisation a level-l code depends on the earlier levels only through the residual, which the permutation
does not touch. So for each level the permutation that maximises agreement with the previous IDs (an
assignment problem on the co-occurrence of old and new codes over items both versions share) is applied to the
codebook rows themselves: the saved model then encodes straight to the aligned codes, and every later step
(encoding, incremental runs on this model) sees only aligned codes.

Relabelling recovers level-1 codes well, but two independently trained models quantise the deeper residuals
differently (k-means in tens of dimensions has many near-equal optima), so full IDs still mostly change.
*Anchoring* goes further: the new model (encoder and decoder retrained) takes the previous model's codebooks,
refitted by Lloyd iterations on its own residuals level by level, so each codeword stays where it was unless the
data moved it. Every refit iteration buys reconstruction and costs stability, so the fewest iterations (0, 1, 2,
4, ...) whose reconstruction error is within ``max_mse_increase`` of the trained model's are used; when none
is, the trained codebooks are kept and only relabelled.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import INIT_ITEMS
from ..io.hashing import embedding_hash, id_sample
from ..io.idfile import read_semantic_ids
from ..io.readers import iter_embeddings, row_count
from ..model import RQVAE
from ..quantize.kmeans import lloyd
from ..quantize.metrics import assign_dedup

logger = logging.getLogger(__name__)

HUNGARIAN_MAX = 1024  # exact assignment up to this codebook size; larger codebooks use a greedy matching
ALIGN_SAMPLE = 262_144  # shared items encoded to estimate the co-occurrence (a deterministic pseudo-random draw)
# items (all, not only shared ones) anchored Lloyd refits and recon MSE use: a fresh initialisation's default sample
FIT_SAMPLE = INIT_ITEMS
MAX_MSE_INCREASE = 0.02  # anchoring is kept when recon MSE grows by at most this fraction
ANCHOR_ITERS = (0, 1, 2, 4, 8, 16)  # Lloyd iterations tried in turn (then the model's kmeans_iters)
MIN_UNCHANGED = 1000  # unchanged shared items enough to fit the permutations on alone (else all shared ones)


def max_weight_assignment(weights: np.ndarray) -> np.ndarray:
    """perm [n]: row i -> column perm[i], a bijection maximising sum(weights[i, perm[i]]) (square weights)."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"need a square weight matrix, got {w.shape}")
    if w.shape[0] > HUNGARIAN_MAX:
        return _greedy(w)
    return _hungarian(w.max(initial=0.0) - w)


def _hungarian(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost perfect matching (Hungarian method with potentials, O(n^3), one vectorised pass per step)."""
    n = cost.shape[0]
    u, v = np.zeros(n + 1), np.zeros(n + 1)
    match = np.zeros(n + 1, np.int64)  # match[j]: row (1-based) given column j; 0 = free
    way = np.zeros(n + 1, np.int64)
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            free = ~used[1:]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(masked.argmin()) + 1
            delta = masked[j1 - 1]
            cols = np.flatnonzero(used)
            u[match[cols]] += delta
            v[cols] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    perm = np.empty(n, np.int64)
    perm[match[1:] - 1] = np.arange(n)
    return perm


def _greedy(weights: np.ndarray) -> np.ndarray:
    """Heaviest pairs first, each row and column once; rows left over take the columns left over in order."""
    n = weights.shape[0]
    perm = np.full(n, -1, np.int64)
    taken = np.zeros(n, bool)
    nz_rows, nz_cols = np.nonzero(weights > 0)
    for pick in np.argsort(-weights[nz_rows, nz_cols], kind="stable"):
        row, col = nz_rows[pick], nz_cols[pick]
        if perm[row] < 0 and not taken[col]:
            perm[row], taken[col] = col, True
    perm[perm < 0] = np.flatnonzero(~taken)
    return perm


def level_permutations(
    previous: np.ndarray, new: np.ndarray, codebook_sizes: Sequence[int], shared: bool = False
) -> list[np.ndarray]:
    """Per level, new code -> aligned code, from the codes [M, L] of the same M items in both versions.

    A shared codebook serves every level, so it gets one permutation, fitted on all levels' co-occurrences.
    """
    previous, new = np.asarray(previous, np.int64), np.asarray(new, np.int64)
    sizes = [int(k) for k in codebook_sizes]
    counts = [np.bincount(new[:, lv] * k + previous[:, lv], minlength=k * k).reshape(k, k)
              for lv, k in enumerate(sizes)]
    if shared:
        perm = max_weight_assignment(sum(counts))
        return [perm] * len(sizes)
    return [max_weight_assignment(c) for c in counts]


def apply_permutations(codes: np.ndarray, perms: Sequence[np.ndarray]) -> np.ndarray:
    """codes [N, L] relabelled level by level (same dtype)."""
    codes = np.asarray(codes)
    out = np.empty_like(codes)
    for level, perm in enumerate(perms):
        out[:, level] = np.asarray(perm)[codes[:, level]]
    return out


def invert_permutations(perms: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.argsort(np.asarray(p)) for p in perms]


@torch.no_grad()
def permute_codebooks_(model: RQVAE, perms: Sequence[np.ndarray]) -> None:
    """Reorder the codebook rows (and the last level's balance penalty) so the model encodes to perm[code]."""
    q = model.quantizer
    inverse = invert_permutations(perms)
    for level in [0] if q.shared else range(q.num_levels):
        book = q.codebook(level)
        book.data.copy_(book.data[torch.from_numpy(inverse[level]).to(book.device)])
    bias = q.last_level_bias
    bias.copy_(bias[torch.from_numpy(inverse[-1]).to(bias.device)])


@torch.no_grad()
def anchor_codebooks_(model: RQVAE, previous: RQVAE, x: torch.Tensor, iters: int = 20) -> None:
    """Refit each level's codebook by Lloyd on the model's residuals of x, starting from the previous model's."""
    q, old = model.quantizer, previous.quantizer
    residual = model.encode_latent(x.to(model.device))
    for level in range(q.num_levels):
        start = old.codebook(level).detach().to(residual.device, residual.dtype)
        q.codebook(level).data.copy_(lloyd(residual, start.clone(), iters))
        residual = residual - q.codebook(level)[q.search(residual, level)]


def can_anchor(model: RQVAE, previous: RQVAE | None) -> str | None:
    """Why the previous codebooks cannot seed this model's (None when they can)."""
    if previous is None:
        return "no previous model"
    if previous.latent_dim != model.latent_dim or previous.codebook_size != model.codebook_size:
        return "the previous model has another latent size or codebook sizes"
    if model.quantizer.shared or bool(model.quantizer.last_level_bias.any()):
        return "shared codebook or last-level balance penalty"
    if model.latent_dim != model.input_dim:
        return "a PCA latent (its axes' signs are arbitrary per training)"
    return None


@torch.no_grad()
def _recon_mse(model: RQVAE, x: torch.Tensor) -> float:
    x = x.to(model.device)
    return float(((model.decode_codes(model.encode(x)) - x) ** 2).double().mean())


def _churn(prev: np.ndarray, prev_dedup: np.ndarray, ids: np.ndarray, codes: np.ndarray, sizes) -> dict[str, float]:
    """Level-1, code-tuple and full-ID churn of codes against the previous IDs of the same items (dedup by id)."""
    changed = (codes != prev).any(1)
    return {"level1_churn": round(float((codes[:, 0] != prev[:, 0]).mean()), 6),
            "codes_churn": round(float(changed.mean()), 6),
            "id_churn": round(float((changed | (assign_dedup(ids, codes, sizes) != prev_dedup)).mean()), 6)}


@torch.no_grad()
def align_model(
    model: RQVAE,
    embeddings_path: str | Path,
    previous_ids: str | Path,
    *,
    previous_model: RQVAE | None = None,
    anchor: bool = True,
    sample: int = ALIGN_SAMPLE,
    unchanged: tuple[np.ndarray, np.ndarray] | None = None,
    max_mse_increase: float = MAX_MSE_INCREASE,
) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
    """Align the model in place to the IDs in `previous_ids`; returns (the permutations applied, figures).

    Up to `sample` items present in both are encoded (the permutation is fitted on those whose embedding hash
    is unchanged when ``unchanged`` = (previous ids sorted, hashes) is given). With ``anchor`` and a compatible
    ``previous_model``, anchored codebooks are tried first (see the module docstring). Figures, on that sample:
    churn of level-1 codes, code tuples and full IDs (dedup digits within the sample) before and after, the
    per-level agreement, the method used and the recon MSE of the trained and the aligned model.
    """
    from .stability import unchanged_items

    p_ids, p_codes, p_dedup = read_semantic_ids(previous_ids)
    sizes = model.codebook_size
    if p_codes.shape[1] != len(sizes) or (len(p_codes) and bool((p_codes.max(0) >= np.array(sizes)).any())):
        return None, {"applied": False, "reason": f"previous IDs have another shape ({p_codes.shape[1]} levels)"}
    order = np.argsort(p_ids, kind="stable")
    p_ids, p_codes, p_dedup = p_ids[order], p_codes[order], p_dedup[order]
    common_fraction = min(1.0, sample / max(1, len(p_ids)))
    fit_fraction = min(1.0, FIT_SAMPLE / max(1, row_count(embeddings_path) or len(p_ids)))
    pairs: list[tuple[np.ndarray, ...]] = []
    fit_x = []
    model.eval()
    for ids, x in iter_embeddings(embeddings_path):
        ids = np.asarray(ids, np.int64)
        content, x = x, model.inputs(ids, x)  # the model's input (content, or content plus behaviour)
        fit_x.append(x[id_sample(ids ^ 0x5BD1E995, fit_fraction)])
        if not len(p_ids):
            continue
        pos = np.minimum(np.searchsorted(p_ids, ids), len(p_ids) - 1)
        keep = (p_ids[pos] == ids) & id_sample(ids, common_fraction)
        if keep.any():
            same = np.ones(int(keep.sum()), bool) if unchanged is None else unchanged_items(
                unchanged[0], unchanged[1], ids[keep], embedding_hash(content[keep]))
            pairs.append((ids[keep], x[keep], p_codes[pos[keep]], p_dedup[pos[keep]], same))
    if not pairs:
        return None, {"applied": False, "reason": "no item of the previous version to align on"}
    ids, x, prev, prev_dedup, same = (np.concatenate([p[i] for p in pairs]) for i in range(5))
    fit = same if same.sum() >= min(MIN_UNCHANGED, len(same)) else np.ones(len(same), bool)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    fit_t = torch.from_numpy(np.ascontiguousarray(np.concatenate(fit_x), np.float32))
    new = model.encode(xt.to(model.device)).cpu().numpy()
    perms = level_permutations(prev[fit], new[fit], sizes, model.quantizer.shared)
    aligned = apply_permutations(new, perms)
    figures: dict[str, Any] = {"applied": True, "method": "permuted", "sample": len(ids),
                               "recon_mse_trained": _recon_mse(model, fit_t)}
    why_not = can_anchor(model, previous_model) if anchor else "anchoring off"
    candidate = None
    if why_not is None:
        bound = figures["recon_mse_trained"] * (1 + max_mse_increase)
        for iters in sorted({*ANCHOR_ITERS, model.kmeans_iters}):
            candidate = copy.deepcopy(model)
            anchor_codebooks_(candidate, previous_model, fit_t, iters)  # type: ignore[arg-type]
            figures.update(anchor_iters=iters, recon_mse_anchored=_recon_mse(candidate, fit_t))
            if figures["recon_mse_anchored"] <= bound:
                break
        else:
            why_not = f"anchored recon MSE {figures['recon_mse_anchored']:.6g} > {bound:.6g} after {iters} iterations"
            candidate = None
    if candidate is not None:
        cand_new = candidate.encode(xt.to(model.device)).cpu().numpy()
        cand_perms = level_permutations(prev[fit], cand_new[fit], sizes)
        cand_aligned = apply_permutations(cand_new, cand_perms)
        permute_codebooks_(candidate, cand_perms)
        if (cand_aligned == prev).all(1).mean() > (aligned == prev).all(1).mean():
            model.load_state_dict(candidate.state_dict())
            perms, aligned, figures["method"] = cand_perms, cand_aligned, "anchored"
        else:
            why_not = "anchored codes agree less than relabelled ones"
    if figures["method"] == "permuted":
        permute_codebooks_(model, perms)
        figures["anchor_skipped"] = why_not
    before, after = _churn(prev, prev_dedup, ids, new, sizes), _churn(prev, prev_dedup, ids, aligned, sizes)
    figures.update({f"{k}_before": v for k, v in before.items()})
    figures.update({f"sample_{k}_after": v for k, v in after.items()})
    figures["level_agreement_before"] = [round(float(v), 6) for v in (new == prev).mean(0)]
    figures["level_agreement_after"] = [round(float(v), 6) for v in (aligned == prev).mean(0)]
    figures["recon_mse_aligned"] = _recon_mse(model, fit_t)
    logger.info("aligned the model (%s) on %d shared items: per-level agreement %s -> %s", figures["method"],
                len(ids), figures["level_agreement_before"], figures["level_agreement_after"])
    return perms, figures
