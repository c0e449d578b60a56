"""Residual quantisation: L codebook levels, each coding what the previous levels left over.

Three properties the public baseline lacked and the tests pin: the vector subtracted at a level is the
codeword that level selected; the encoder gets gradients (straight-through, with the reconstruction
gradient also reaching the codebooks); codes depend on the item alone, never on its batch.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..modes import Distance, Gradient
from .kmeans import KMeansMethod, fit_codebook
from .search import distances, nearest_codeword, search_table

logger = logging.getLogger(__name__)

SEARCH_CHUNK = 1024  # rows per distance block in the fast path: [1024, K] stays in cache
GPU_SEARCH_CHUNK = 1 << 17  # on a GPU, blocks large enough that kernel launches do not dominate ([K, 128k] fp32)
GPU_SEARCH_BYTES = 256 << 20  # ... but a distance block of at most this many bytes, for large codebooks


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # [B, D] sum of selected codewords; gradient flows to encoder and codebooks
    codes: torch.Tensor  # [B, L] int64
    loss: torch.Tensor  # scalar: codebook + beta * commitment, summed over levels
    residuals: list[torch.Tensor]  # L tensors [B, D]: the input of each level (detached)


class ResidualQuantizer(nn.Module):
    """L levels of codebooks over a D-dimensional latent space."""

    def __init__(
        self,
        dim: int,
        codebook_sizes: list[int],
        shared: bool,
        distance: str | Distance,
        beta: float,
        gradient: str | Gradient,
    ) -> None:
        super().__init__()
        self.gradient = Gradient.parse(gradient)
        if shared and len(set(codebook_sizes)) != 1:
            raise ConfigError(f"shared_codebook=True needs one size for every level, got {codebook_sizes}")
        self.dim = dim
        self.codebook_sizes = list(codebook_sizes)
        self.shared = shared
        self.distance = Distance.parse(distance)
        self.beta = beta
        n_books = 1 if shared else len(codebook_sizes)
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.randn(codebook_sizes[i], dim) * 0.01) for i in range(n_books)
        )
        # a buffer, not an attribute: whether k-means ran must survive save/load
        self.register_buffer("initialized", torch.tensor(False))
        # the flag as a Python bool: reading the buffer off a GPU waits for every queued kernel, and each training
        # step asks; kept in step with the buffer where it changes (init_from_data_, loading a state dict)
        self.ready = False
        # fixed per-code penalty on the last level's distances (see fit_last_level_balance_); zeros = plain search
        self.register_buffer("last_level_bias", torch.zeros(codebook_sizes[-1]))

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    def codebook(self, level: int) -> torch.Tensor:
        """The [K, D] codebook of a level (the same tensor for every level when shared)."""
        return self.codebooks[0 if self.shared else level]

    def _scores(self, r: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
        """[B, K], lower is better (used for initialisation, where exact ties do not matter)."""
        return distances(r, *search_table(book, self.distance)).t()

    @torch.no_grad()
    def search(self, r: torch.Tensor, level: int) -> torch.Tensor:
        """Nearest codeword index [B] at a level (see :func:`nearest_codeword`)."""
        return nearest_codeword(r, *self._table(self.codebook(level).detach().to(r.dtype), level))

    def _table(self, book: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        keys, bias, l2 = search_table(book, self.distance)
        if level == self.num_levels - 1:
            bias = bias + self.last_level_bias.to(bias.dtype).unsqueeze(1)
        return keys, bias, l2

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise z [B, D]; returns codes, the quantised latent with gradients, and the VQ loss."""
        with torch.autocast(z.device.type, enabled=False):  # code search needs fp32, not bf16
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        residual = z
        selected, codes, residuals = [], [], []
        loss = z.new_zeros(())
        for level in range(self.num_levels):
            r_in = residual.detach()
            idx = self.search(r_in, level)
            codeword = self.codebook(level)[idx]  # the very codeword the search selected
            loss = loss + F.mse_loss(codeword, r_in) + self.beta * F.mse_loss(residual, codeword.detach())
            residuals.append(r_in)
            selected.append(codeword)
            codes.append(idx)
            residual = residual - codeword.detach()
        q = torch.stack(selected).sum(0)
        # value == q; d/dz == identity (straight-through), d/dq == identity (codebooks see the recon gradient)
        quantized = q + (z - z.detach()) if self.gradient is Gradient.STE else rotate_onto(z, q)
        return QuantizerOutput(quantized, torch.stack(codes, 1), loss, residuals)

    @torch.no_grad()
    def assign(self, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Codes [B, L] for z, in cache-sized row blocks: the inference fast path (no graph, no loss)."""
        chunk = chunk or search_chunk(z.device, max(self.codebook_sizes))
        out = torch.empty(z.shape[0], self.num_levels, dtype=torch.long, device=z.device)
        books = [self.codebook(level).detach().to(z.dtype) for level in range(self.num_levels)]
        tables = [self._table(b, level) for level, b in enumerate(books)]
        for start in range(0, z.shape[0], chunk):
            r = z[start : start + chunk].clone()
            for level, (book, table) in enumerate(zip(books, tables, strict=True)):
                idx = nearest_codeword(r, *table)
                out[start : start + chunk, level] = idx
                r.sub_(book.index_select(0, idx))
        return out

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the codewords named by codes [B, L] -> [B, D]."""
        return sum(self.codebook(level)[codes[:, level]] for level in range(self.num_levels))

    @torch.no_grad()
    def residuals_of(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The input of each level for z (used to re-seed dead codes)."""
        codes = self.assign(z)
        out, r = [], z.clone()
        for level in range(self.num_levels):
            out.append(r.clone())
            r -= self.codebook(level)[codes[:, level]]
        return out

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.ready = bool(self.initialized)

    @torch.no_grad()
    def init_from_data_(
        self,
        z: torch.Tensor,
        method: KMeansMethod,
        iters: int,
        generator: torch.Generator | None = None,
    ) -> None:
        """Residual k-means: fit level l on what levels < l leave over. Runs once, before training."""
        residual = z.detach().float().clone()
        if self.shared:
            # one codebook serves every level: fit it on the residuals of all levels together
            book = fit_codebook(residual, self.codebook_sizes[0], method, iters, generator)
            pool = [residual]
            for _ in range(1, self.num_levels):
                residual = residual - book[self._scores(residual, book).argmin(1)]
                pool.append(residual)
            book = fit_codebook(torch.cat(pool), self.codebook_sizes[0], method, iters, generator)
            self.codebooks[0].data.copy_(book)
        else:
            for level, k in enumerate(self.codebook_sizes):
                book = fit_codebook(residual, k, method, iters, generator)
                self.codebooks[level].data.copy_(book)
                residual = residual - book[self.search(residual, level)]
        self.initialized.fill_(True)
        self.ready = True
        logger.info("codebooks initialised on %d vectors (%s, %d iterations)", z.shape[0], _name(method), iters)

    @torch.no_grad()
    def fit_last_level_balance_(self, z: torch.Tensor, strength: float) -> None:
        """Penalise popular last-level codes by a fixed per-code term added to their distances.

        The penalty is ``strength * typical distance * log(count / mean count)``, measured once on z (a sample)
        and then frozen, so an item's codes still depend on the item alone. Spreading items over more
        last-level codes raises the unique-ID ratio at a small reconstruction cost.
        """
        self.last_level_bias.zero_()
        if strength <= 0:
            return
        level = self.num_levels - 1
        residual = self.residuals_of(z)[level]
        book = self.codebook(level).detach()
        idx = self.search(residual, level)
        counts = torch.bincount(idx, minlength=book.shape[0]).double()
        typical = ((residual - book[idx]) ** 2).sum(1).median().double()
        ratio = (counts + 1.0) / (counts.mean() + 1.0)
        self.last_level_bias.copy_((strength * typical * torch.log(ratio)).to(self.last_level_bias.dtype))

    @torch.no_grad()
    def reseed_dead_codes_(
        self, counts: torch.Tensor, residuals: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> int:
        """Replace codes unused since the last call (counts[level, k] == 0) by current residuals.

        Dead codes waste capacity and lower the unique-ID ratio; moving them onto real residuals of the
        level (picked at random) puts them where data lives. Returns how many codes were re-seeded.
        """
        total = 0
        levels = [0] if self.shared else range(self.num_levels)
        for level in levels:
            k = self.codebook_sizes[level]
            used = counts[:, :k].sum(0) if self.shared else counts[level, :k]
            dead = torch.nonzero(used == 0).flatten()
            source = residuals[level]
            if dead.numel() == 0 or source.shape[0] == 0:
                continue
            pick = torch.randint(0, source.shape[0], (dead.numel(),), generator=generator, device="cpu")
            self.codebook(level).data[dead.to(self.codebook(level).device)] = source[pick.to(source.device)].to(
                self.codebook(level).dtype
            )
            total += dead.numel()
        return total


def search_chunk(device: torch.device, k: int) -> int:
    """Rows per distance block: cache-sized on a CPU; on a GPU as many as keep [k, rows] fp32 within
    GPU_SEARCH_BYTES (131,072 rows for k = 256), and never fewer than the CPU's."""
    if device.type == "cpu":
        return SEARCH_CHUNK
    return max(SEARCH_CHUNK, min(GPU_SEARCH_CHUNK, GPU_SEARCH_BYTES // (4 * k)))


def _name(method: KMeansMethod) -> str:
    return method if isinstance(method, str) else getattr(method, "__name__", "callable")



def rotate_onto(z: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rotation trick: returns q's value, with gradients reaching z through the fixed rotation and rescaling
    that maps z onto q (instead of the identity of straight-through), so the encoder sees where q lies."""
    q = q.detach()
    z_norm = z.detach().norm(dim=1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=1, keepdim=True).clamp_min(eps)
    e, q_hat = z.detach() / z_norm, q / q_norm
    r = F.normalize(e + q_hat, dim=1, eps=eps)
    rotated = z - 2 * r * (r * z).sum(1, keepdim=True) + 2 * q_hat * (e * z).sum(1, keepdim=True)
    return rotated * (q_norm / z_norm)
