"""One typed config vocabulary shared by the CLI, the pipeline's params and model directories.

Names follow the users' RQVAE constructor (num_codebooks, codebook_size, latent_dim, ...). Unknown keys are
refused with the list of valid ones, so a typo in a config file or a trigger form never passes silently.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self


def codebook_sizes(codebook_size: int | list[int] | tuple[int, ...], num_codebooks: int | None) -> list[int]:
    """Normalise ``codebook_size`` (an int or one size per level) to a list of length num_codebooks."""
    if isinstance(codebook_size, int):
        sizes = [codebook_size] * (num_codebooks if num_codebooks is not None else 3)
    else:
        sizes = [int(k) for k in codebook_size]
        if num_codebooks is not None and len(sizes) != num_codebooks:
            raise ValueError(
                f"codebook_size has {len(sizes)} entries but num_codebooks={num_codebooks}; "
                "give one size per level or a single int"
            )
    if not sizes:
        raise ValueError("need at least one codebook level (num_codebooks >= 1)")
    bad = [k for k in sizes if k < 2]
    if bad:
        raise ValueError(f"every codebook_size must be >= 2, got {sizes}")
    return sizes


def default_architecture(input_dim: int) -> tuple[list[int], int]:
    """The users' existing rule for hidden widths and latent size when they give none."""
    if input_dim < 8:
        latent = max(4, input_dim // 2)
        return [input_dim], latent
    latent = max(8, input_dim // 4)
    return [max(8, input_dim // 2), latent], latent


METHODS = ("rqvae", "rqkmeans")  # rqkmeans: residual k-means only (identity encoder/decoder, no training steps)


class _Strict:
    """from_dict / to_dict with unknown keys refused."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        valid = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class ModelConfig(_Strict):
    """Architecture of an RQVAE. ``latent_dim=0`` means the input dimension (identity-initialised encoder).

    ``method="rqkmeans"`` stops after the residual k-means initialisation (no learned encoder/decoder);
    ``gradient`` is "ste" (straight-through) or "rotation" (rotation trick); ``last_level_balance`` > 0
    penalises popular last-level codes (see ResidualQuantizer.fit_last_level_balance_).
    """

    input_dim: int
    num_codebooks: int = 3
    codebook_size: list[int] = field(default_factory=lambda: [256, 256, 256])
    latent_dim: int = 0
    hidden_channels: list[int] | None = None
    shared_codebook: bool = False
    kmeans_method: str = "progressive"
    kmeans_iters: int = 20
    distances_method: str = "l2"
    loss_beta: float = 0.25
    center: bool = True
    gradient: str = "ste"
    method: str = "rqvae"
    last_level_balance: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {list(METHODS)}")
        if self.last_level_balance < 0:
            raise ValueError(f"last_level_balance must be >= 0, got {self.last_level_balance}")
        if self.input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {self.input_dim}")
        self.codebook_size = codebook_sizes(self.codebook_size, self.num_codebooks)
        if self.latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0 (0 = input_dim), got {self.latent_dim}")
        if self.hidden_channels is None:
            self.hidden_channels = [max(64, 2 * self.input_dim)]

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``RQVAE(...)``."""
        kwargs = self.to_dict()
        kwargs["latent_dim"] = self.latent_dim or self.input_dim
        for training_only in ("method", "last_level_balance"):
            kwargs.pop(training_only)
        return kwargs


@dataclass
class TrainConfig(_Strict):
    """How to train. ``max_steps > 0`` caps optimiser steps; otherwise ``epochs`` passes are made."""

    epochs: int = 5
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    max_steps: int = 0
    max_train_items: int = 1_000_000
    init_items: int = 131_072
    eval_items: int = 65_536
    reseed_every: int = 200
    seed: int = 0
    device: str = "auto"
    # Collaborative signal (rqvae.collaborative), used only when train() gets interactions; weight 0 = content only.
    collaborative_weight: float = 0.0  # behaviour's weight against content in the latent (1 = alike)
    collaborative_dim: int = 64  # latent block aligned with the collaborative embeddings (at most latent / 4)
    collaborative_hidden: int = 8192  # max hidden width with interactions (~1 unit per warm item); 0 = unchanged

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_train_items", "init_items", "eval_items", "collaborative_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.collaborative_weight < 0 or self.collaborative_hidden < 0:
            raise ValueError("collaborative_weight and collaborative_hidden must be >= 0, got "
                             f"{self.collaborative_weight} and {self.collaborative_hidden}")


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a JSON file ``{"model": {...}, "train": {...}}``; returns the two sections (either may be empty)."""
    data = json.loads(Path(path).read_text())
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise ValueError(f"unknown sections {unknown} in {path}; expected 'model' and/or 'train'")
    return dict(data.get("model", {})), dict(data.get("train", {}))
