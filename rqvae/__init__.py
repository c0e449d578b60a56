"""RQ-VAE semantic IDs for generative recommenders: the public API at a glance.

Names are resolved lazily so that ``import rqvae.io.readers`` (used by light pipeline tasks) does not pay for
importing torch. Importing the package changes nothing in the process: the entry points that own a process (the
``rqvae`` CLI, every pipeline task through ``include.dag_defaults``, the benchmarks) call
:func:`rqvae.threads.configure` before torch loads; a notebook or a serving process may do the same.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "RQVAE": "rqvae.model",
    "RQVAEOutput": "rqvae.model",
    "ModelConfig": "rqvae.config",
    "TrainConfig": "rqvae.config",
    "train": "rqvae.training.loop",
    "TrainResult": "rqvae.training.loop",
    "encode_file": "rqvae.encoding.encode",
    "encode_array": "rqvae.encoding.encode",
    "load_model": "rqvae.io.checkpoint",
    "save_model": "rqvae.io.checkpoint",
    "code_metrics": "rqvae.quantize.metrics",
    "read_embeddings": "rqvae.io.readers",
    "ServingIndex": "rqvae.ids.serving",
    "InputError": "rqvae.errors",
    "ModelLoadError": "rqvae.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig
    from .encoding.encode import encode_array, encode_file
    from .errors import InputError, ModelLoadError
    from .ids.serving import ServingIndex
    from .io.checkpoint import load_model, save_model
    from .io.readers import read_embeddings
    from .model import RQVAE, RQVAEOutput
    from .quantize.metrics import code_metrics
    from .training.loop import TrainResult, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rqvae' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
