"""Model directories: ``config.json`` + ``model.safetensors`` (+ ``behaviour.safetensors`` for collaborative
IDs), loaded without unpickling anything.

The SHA-256 of each weights file is stored in config.json and checked on load, so a tampered or half-written file
is refused with a clear error instead of producing wrong IDs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..errors import ModelLoadError
from ..model import RQVAE
from .fsutil import atomic_path, sha256_file, write_bytes_atomic

FORMAT = "rqvae-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BEHAVIOUR_NAME = "behaviour.safetensors"  # collaborative IDs: what turns an item's content into the model's input


def _state(model: RQVAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_model(model: RQVAE, model_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the model directory atomically per file (tmp + replace). Returns the directory."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_file(_state(model), str(tmp))
    behaviour = getattr(model, "behaviour", None)
    behaviour_file = model_dir / BEHAVIOUR_NAME
    if behaviour is not None:  # the model's input is content plus behaviour: encoders need both
        with atomic_path(behaviour_file) as tmp:
            behaviour.save(tmp)
    else:
        behaviour_file.unlink(missing_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.model_config().to_dict(),  # the whole ModelConfig, method and last_level_balance too
        "weights_sha256": sha256_file(weights),
        **({"behaviour_sha256": sha256_file(behaviour_file), "content_dim": behaviour.content_dim}
           if behaviour is not None else {}),
        **({"extra": extra} if extra else {}),
    }
    write_bytes_atomic(model_dir / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True).encode())
    return model_dir


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The parsed config.json of a model directory, checked for format."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} is not a model directory: {CONFIG_NAME} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise ModelLoadError(f"{path} is not an {FORMAT} config (missing 'format'/'model')")
    return config


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> RQVAE:
    """Rebuild an RQVAE from its directory; refuses missing, tampered or mismatching weights."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{model_dir}: {WEIGHTS_NAME} is missing")
    expected = config.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise ModelLoadError(
            f"{weights} does not match the checksum recorded in {CONFIG_NAME}: the file was modified or "
            "partially written; re-train or restore the model directory"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, ValueError) as exc:  # an OSError (I/O, memory) is not the file's fault: retryable
        raise ModelLoadError(f"{weights} is not a readable safetensors file: {exc}") from exc
    try:
        # directories written before the whole ModelConfig was stored lack method / last_level_balance:
        # their defaults apply (neither changes how a trained model encodes)
        model = RQVAE.from_config(ModelConfig.from_dict(config["model"]), device="cpu")
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{model_dir}: weights do not fit the recorded architecture: {exc}") from exc
    model.behaviour = _behaviour(model_dir, config, model.input_dim)
    return model.to(device).eval()


def _behaviour(model_dir: Path, config: dict[str, Any], input_dim: int) -> Any:
    """The directory's behaviour (collaborative IDs), checked against its recorded checksum; None without."""
    from ..training.behaviour import Behaviour

    path = model_dir / BEHAVIOUR_NAME
    expected = config.get("behaviour_sha256")
    if expected is None:
        return None
    if not path.is_file() or sha256_file(path) != expected:
        raise ModelLoadError(f"{path} is missing or does not match the checksum recorded in {CONFIG_NAME}: the model "
                             "needs it to encode items (content plus behaviour); restore the model directory")
    behaviour = Behaviour.load(path)
    if behaviour.dim != input_dim:
        raise ModelLoadError(f"{path}: behaviour of width {behaviour.dim} does not fit the model's input ({input_dim})")
    return behaviour
