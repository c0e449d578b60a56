"""RQ-VAE semantic IDs for generative recommenders: the public API at a glance.

Names are resolved lazily so that ``import rqvae.readers`` (used by light pipeline tasks) does not pay for
importing torch. Importing the package sets OpenMP's passive wait and thread count first (:mod:`rqvae.threads`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import threads as _threads

# OpenMP reads its settings when torch first loads: set passive waiting and the team size before any rqvae
# module can import torch (see rqvae.threads).
_threads.configure()

__version__ = "0.1.0"

_EXPORTS = {
    "RQVAE": "rqvae.model",
    "RQVAEOutput": "rqvae.model",
    "ModelConfig": "rqvae.config",
    "TrainConfig": "rqvae.config",
    "train": "rqvae.train",
    "TrainResult": "rqvae.train",
    "encode_file": "rqvae.encode",
    "encode_array": "rqvae.encode",
    "load_model": "rqvae.checkpoint",
    "save_model": "rqvae.checkpoint",
    "code_metrics": "rqvae.metrics",
    "read_embeddings": "rqvae.readers",
    "ServingIndex": "rqvae.serving",
    "InputError": "rqvae.errors",
    "ModelLoadError": "rqvae.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import load_model, save_model
    from .config import ModelConfig, TrainConfig
    from .encode import encode_array, encode_file
    from .errors import InputError, ModelLoadError
    from .metrics import code_metrics
    from .model import RQVAE, RQVAEOutput
    from .readers import read_embeddings
    from .serving import ServingIndex
    from .train import TrainResult, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rqvae' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
