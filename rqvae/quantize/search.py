"""Nearest-codeword search, shared by k-means, training and encoding so that all three agree on every code."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modes import Distance

PACK_MAX_BITS = 12  # codebooks up to 4096 codes use the packed search; larger ones an exact argmin


def search_table(book: torch.Tensor, distance: Distance) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(keys [K, D], bias [K, 1], add_row_norm) such that distance = bias + keys . r (+ ||r||^2)."""
    if distance is Distance.COSINE:
        return -F.normalize(book, dim=1), book.new_ones(book.shape[0], 1), False
    return -2.0 * book, (book * book).sum(1, keepdim=True), True


def distances(r: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, l2: bool) -> torch.Tensor:
    """Non-negative distances [K, B]: squared L2, or 1 - cosine similarity (r is normalised here)."""
    if not l2:
        r = F.normalize(r, dim=1)
    d = torch.addmm(bias, keys, r.t())
    if l2:
        d.add_((r * r).sum(1).unsqueeze(0))
    return d.clamp_min_(0.0)


def nearest_codeword(r: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, l2: bool) -> torch.Tensor:
    """Index [B] of the nearest of K codewords for each row of r [B, D].

    Distances are laid out [K, B] so the reduction runs down columns, which vectorises; and the code index is
    packed into the low mantissa bits of each non-negative float distance, so one integer ``amin`` yields
    both the minimum and its index. That is 3-4x faster on CPU than ``argmin`` over rows. Distances are thus
    compared to about 15-20 significant bits (ties within ~3e-5 relative go to the lower index): the
    same rule everywhere (training, encoding, any device), so codes stay consistent.
    """
    d = distances(r, keys, bias, l2)
    k = d.shape[0]
    bits = max(1, (k - 1).bit_length())
    if bits > PACK_MAX_BITS:
        return d.argmin(0)
    low = (1 << bits) - 1
    packed = d.view(torch.int32).bitwise_and_(~low)
    packed.bitwise_or_(torch.arange(k, dtype=torch.int32, device=d.device).unsqueeze(1))
    return packed.amin(0).bitwise_and_(low).long()
