"""RQVAE: encoder, residual quantiser, decoder, behind the users' constructor and forward contract.

The encoder and decoder start as (near-)identity maps: a linear skip path initialised from the data (identity,
or PCA when the latent is smaller than the input) plus an MLP branch whose last layer starts at zero. Training
therefore starts from residual k-means quality and can only improve on it, instead of from random weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import AUTO_DEVICE, ModelConfig, codebook_sizes, default_architecture
from .errors import ConfigError
from .modes import Distance, Gradient, KMeansInit, Method
from .quantize.kmeans import KMeansMethod
from .quantize.quantizer import ResidualQuantizer

if TYPE_CHECKING:
    from .training.behaviour import Behaviour

logger = logging.getLogger(__name__)

PARALLEL_ROWS = 4096  # rows per thread-pool block when encoding on CPU
ENCODE_BATCH_ROWS = 65_536  # rows per encode call over vectors already in memory: bounds the activations
PCA_MAX_ROWS = 262_144  # rows the PCA start's float64 SVD looks at: bounds its memory (2 GiB at D=1024)


class RQVAEOutput(NamedTuple):
    """What ``forward`` returns; unpacks as the users' 5-tuple."""

    x_hat: torch.Tensor  # [B, input_dim]
    semantic_ids: torch.Tensor  # [B, L] int64
    recon_loss: torch.Tensor
    rqvae_loss: torch.Tensor
    total_loss: torch.Tensor


class SkipMLP(nn.Module):
    """y = W x + b + MLP(x), with the MLP's last layer zero-initialised so y starts linear in x."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim)
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        last = nn.Linear(width, out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.branch = nn.Sequential(*layers, last)
        with torch.no_grad():
            self.skip.weight.copy_(torch.eye(out_dim, in_dim))
            self.skip.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.branch(x)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if device is None or str(device) == AUTO_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class RQVAE(nn.Module):
    """Residual-quantised autoencoder producing L codes per item.

    Args mirror the users' script; ``hidden_channels``/``latent_dim`` left as None follow their rule
    (see :func:`rqvae.config.default_architecture`). ``codebook_size`` is one size per level or an int.
    ``center`` subtracts the data mean (stored with the model) before encoding. These defaults are the users',
    not the pipeline's :class:`rqvae.config.ModelConfig` (docs/configuration.md lists where and why they
    differ); :meth:`from_config` builds a ModelConfig's model.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_channels: Sequence[int] | None = None,
        latent_dim: int | None = None,
        num_codebooks: int | None = None,
        codebook_size: int | Sequence[int] = 256,
        shared_codebook: bool = False,
        kmeans_method: KMeansMethod = KMeansInit.KMEANS,
        kmeans_iters: int = 20,
        distances_method: str | Distance = Distance.L2,
        loss_beta: float = 0.25,
        device: str | torch.device | None = AUTO_DEVICE,
        *,
        center: bool = True,
        gradient: str | Gradient = Gradient.STE,
    ) -> None:
        super().__init__()
        if hidden_channels is None or latent_dim is None:
            auto_hidden, auto_latent = default_architecture(input_dim)
            hidden_channels = auto_hidden if hidden_channels is None else hidden_channels
            latent_dim = auto_latent if latent_dim is None else latent_dim
        sizes = codebook_sizes(
            codebook_size if isinstance(codebook_size, int) else list(codebook_size), num_codebooks
        )
        if not callable(kmeans_method):
            try:
                kmeans_method = KMeansInit.parse(kmeans_method)
            except ConfigError as exc:
                raise ConfigError(f"{exc} or a callable") from None
        if kmeans_iters < 0:
            raise ConfigError(f"kmeans_iters must be >= 0, got {kmeans_iters}")
        self.input_dim = int(input_dim)
        self.latent_dim = int(latent_dim)
        self.hidden_channels = [int(h) for h in hidden_channels]
        self.kmeans_method = kmeans_method
        self.kmeans_iters = int(kmeans_iters)
        self.center = bool(center)
        self.encoder = SkipMLP(self.input_dim, self.hidden_channels, self.latent_dim)
        self.decoder = SkipMLP(self.latent_dim, list(reversed(self.hidden_channels)), self.input_dim)
        self.quantizer = ResidualQuantizer(
            self.latent_dim, sizes, shared_codebook, distances_method, loss_beta, gradient
        )
        self.register_buffer("input_mean", torch.zeros(self.input_dim))
        # ModelConfig fields the constructor does not take (they act in training); from_config sets them and
        # model directories store them, so a saved model's config is the whole ModelConfig
        self.method = Method.RQVAE
        self.last_level_balance = 0.0
        # collaborative IDs (rqvae.training.behaviour): what turns an item's id and content into this model's
        # input; None when the input is the content itself
        self.behaviour: Behaviour | None = None
        logger.info(
            "RQVAE: input %d -> hidden %s -> latent %d; %d levels x %s codes (%s, %s%s)",
            self.input_dim, self.hidden_channels, self.latent_dim, len(sizes), sizes, distances_method,
            kmeans_method if isinstance(kmeans_method, str) else "custom k-means",
            ", shared codebook" if shared_codebook else "",
        )
        self.to(resolve_device(device))

    # ---- configuration -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig, device: str | torch.device | None = AUTO_DEVICE) -> RQVAE:
        """The model a :class:`rqvae.config.ModelConfig` describes (the pipeline's and the CLI's defaults)."""
        model = cls(**config.model_kwargs(), device=device)
        model.method = config.method
        model.last_level_balance = float(config.last_level_balance)
        return model

    @property
    def content_dim(self) -> int:
        """The width of the item vectors it encodes: the input's, or with behaviour the content block's."""
        return self.input_dim if self.behaviour is None else self.behaviour.content_dim

    def inputs(self, item_ids: np.ndarray | None, x: np.ndarray) -> np.ndarray:
        """The model's input for items ``item_ids`` with content vectors ``x``: ``x`` itself, or with behaviour
        content plus behaviour (which needs the ids)."""
        if self.behaviour is None:
            return x
        if item_ids is None:
            raise ValueError("this model's IDs learned from behaviour: encoding needs each item's id with its vector")
        return self.behaviour.inputs(item_ids, x)

    @property
    def device(self) -> torch.device:
        return self.input_mean.device

    @property
    def num_codebooks(self) -> int:
        return self.quantizer.num_levels

    @property
    def codebook_size(self) -> list[int]:
        return list(self.quantizer.codebook_sizes)

    @property
    def initialized(self) -> bool:
        ready = getattr(self.quantizer, "ready", None)  # the buffer's value without a device read
        return bool(self.quantizer.initialized) if ready is None else ready  # None: pickled by an older version

    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (what model directories store)."""
        if not isinstance(self.kmeans_method, str):
            method = KMeansInit.KMEANS  # a callable cannot be stored; it only mattered for initialisation
        else:
            method = self.kmeans_method
        return {
            "input_dim": self.input_dim,
            "hidden_channels": self.hidden_channels,
            "latent_dim": self.latent_dim,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "shared_codebook": self.quantizer.shared,
            "kmeans_method": method,
            "kmeans_iters": self.kmeans_iters,
            "distances_method": self.quantizer.distance.value,
            "loss_beta": self.quantizer.beta,
            "center": self.center,
            "gradient": self.quantizer.gradient,
        }

    def model_config(self) -> ModelConfig:
        """The whole ModelConfig of this model, as model directories store it: :meth:`config` plus the
        training-only ``method`` and ``last_level_balance``."""
        return ModelConfig(**self.config(), method=self.method, last_level_balance=self.last_level_balance)

    # ---- data-dependent initialisation ---------------------------------------------------------------
    @torch.no_grad()
    def initialize(
        self, x: torch.Tensor, generator: torch.Generator | None = None, *, kmeans_method: KMeansMethod | None = None
    ) -> None:
        """Set the input mean, the linear skip paths (PCA when compressing) and the codebooks from data.

        Call once with a representative sample (tens of thousands of items) before training. ``kmeans_method``
        overrides the model's own for this call (training with interactions starts from ``none`` and fits the
        codebooks after the alignment).
        """
        x = self._prepare(x)
        if self.center:
            self.input_mean.copy_(x.mean(0))
        xc = x - self.input_mean
        enc = torch.eye(self.latent_dim, self.input_dim, device=x.device)
        if self.latent_dim < self.input_dim:
            # top principal directions: the best linear start when the latent must compress
            _, _, vh = torch.linalg.svd(xc[:PCA_MAX_ROWS].double(), full_matrices=False)
            enc = vh[: self.latent_dim].float()
        self.encoder.skip.weight.copy_(enc)
        self.encoder.skip.bias.zero_()
        self.decoder.skip.weight.copy_(enc.t())
        self.decoder.skip.bias.zero_()
        z = self.encoder(xc)
        method = self.kmeans_method if kmeans_method is None else kmeans_method
        self.quantizer.init_from_data_(z, method, self.kmeans_iters, generator)

    # ---- the users' API ------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, device=self.device)
        if x.dtype != torch.float32:
            x = x.float()
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected input of shape [B, {self.input_dim}], got {tuple(x.shape)}")
        return x

    def _require_init(self, x: torch.Tensor) -> None:
        if self.initialized:
            return
        if not self.training:
            raise RuntimeError("RQVAE codebooks are not initialised: train the model or call initialize(x) first")
        logger.warning(
            "initialising codebooks from the first batch (%d items); call initialize() with a larger sample "
            "for better codes", x.shape[0],
        )
        self.initialize(x)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latent z [B, latent_dim]."""
        return self.encoder(x - self.input_mean)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction in input space; no final activation, so negative values come back too."""
        return self.decoder(z) + self.input_mean

    def forward(self, x: torch.Tensor) -> RQVAEOutput:
        """Returns (x_hat, semantic_ids [B, L] int64, recon_loss, rqvae_loss, total_loss)."""
        x = self._prepare(x)
        self._require_init(x)
        q = self.quantizer(self.encode_latent(x))
        x_hat = self.decode_latent(q.quantized)
        recon = F.mse_loss(x_hat, x)
        return RQVAEOutput(x_hat, q.codes, recon, q.loss, recon + q.loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic IDs [B, L] int64. Depends on each row alone: batch size, order and companions don't matter."""
        x = self._prepare(x)
        self._require_codebooks()
        out = torch.empty(x.shape[0], self.num_codebooks, dtype=torch.long, device=x.device)

        def run(rows: slice) -> None:
            out[rows] = self.quantizer.assign(self.encode_latent(x[rows]))

        self._for_blocks(x.shape[0], run)
        return out

    @torch.no_grad()
    def encode_with_errors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [B, L] int64, mean squared reconstruction error [B] float64) in one pass over the rows.

        Codes are exactly :meth:`encode`'s; each block is decoded while it is still in cache, which is what
        makes whole-file encoding (which reports every item's error) cheap compared to a separate decode.
        """
        x = self._prepare(x)
        self._require_codebooks()
        codes = torch.empty(x.shape[0], self.num_codebooks, dtype=torch.long, device=x.device)
        errors = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)

        def run(rows: slice) -> None:
            block = x[rows]
            c = self.quantizer.assign(self.encode_latent(block))
            codes[rows] = c
            errors[rows] = ((self.decode_latent(self._codewords(c)) - block) ** 2).double().mean(1)

        self._for_blocks(x.shape[0], run)
        return codes, errors

    def _codewords(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the codewords of valid codes [B, L] (level by level, as :meth:`ResidualQuantizer.lookup`)."""
        q = self.quantizer
        total = q.codebook(0).index_select(0, codes[:, 0])
        for level in range(1, q.num_levels):
            total = total + q.codebook(level).index_select(0, codes[:, level])
        return total

    def _require_codebooks(self) -> None:
        if not self.initialized:
            raise RuntimeError("RQVAE codebooks are not initialised: train the model or call initialize(x) first")

    def _for_blocks(self, n: int, run: Callable[[slice], None]) -> None:
        """Call ``run`` on row blocks; on CPU, blocks go to a thread pool with single-threaded torch ops.

        Small per-block ops barely use intra-op threads on CPU, so blocks on a pool use every core. Each
        worker runs its ops with one thread, so the pool never nests OpenMP teams (which oversubscribe the
        cores and, with active waiting, spin). The pool has as many workers as torch has intra-op threads,
        which :mod:`rqvae.threads` sizes from the CPUs this process may really use.
        """
        workers = torch.get_num_threads()
        if self.device.type != "cpu":
            run(slice(0, n))
            return
        blocks = [slice(start, start + PARALLEL_ROWS) for start in range(0, n, PARALLEL_ROWS)]
        if workers < 2 or len(blocks) < 2:
            for rows in blocks:
                run(rows)
            return

        def task(rows: slice) -> None:
            with torch.inference_mode():
                run(rows)

        torch.set_num_threads(1)  # worker threads take their OpenMP team size from this; restored below
        try:
            with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                list(pool.map(task, blocks))
        finally:
            torch.set_num_threads(workers)

    def _get_codebook(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The users' per-level view: a list of L LongTensors of shape [B]."""
        return list(self.encode(x).unbind(1))

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruct x_hat [B, input_dim] from codes [B, L]."""
        codes = torch.as_tensor(codes, device=self.device).long()
        if codes.dim() != 2 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"expected codes of shape [B, {self.num_codebooks}], got {tuple(codes.shape)}")
        limits = torch.tensor(self.codebook_size, device=codes.device)
        if bool(((codes < 0) | (codes >= limits)).any()):
            raise ValueError(f"codes out of range for codebook sizes {self.codebook_size}")
        return self.decode_latent(self.quantizer.lookup(codes))
