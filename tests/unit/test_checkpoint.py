"""Model directories: round trip, no unpickling, tampering refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rqvae import RQVAE
from rqvae.errors import ModelLoadError
from rqvae.io.checkpoint import WEIGHTS_NAME, load_model, save_model


@pytest.fixture()
def model_dir(tmp_path: Path) -> tuple[RQVAE, Path, torch.Tensor]:
    x = torch.nn.functional.normalize(torch.randn(800, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    model = RQVAE(12, [24], 12, 3, [8, 16, 8], distances_method="cosine", device="cpu")
    model.initialize(x)
    return model, save_model(model, tmp_path / "m", extra={"note": "test"}), x


def test_round_trip_gives_identical_codes(model_dir) -> None:
    model, path, x = model_dir
    loaded = load_model(path)
    assert loaded.codebook_size == [8, 16, 8]
    assert loaded.quantizer.distance.value == "cosine"
    assert loaded.initialized
    assert torch.equal(loaded.encode(x), model.encode(x))
    config = json.loads((path / "config.json").read_text())
    assert config["extra"] == {"note": "test"} and len(config["weights_sha256"]) == 64


def test_weights_are_safetensors_not_pickle(model_dir) -> None:
    _, path, _ = model_dir
    head = (path / WEIGHTS_NAME).read_bytes()[:16]
    assert not head.startswith(b"\x80")  # a pickle stream starts with the PROTO opcode
    header_len = int.from_bytes(head[:8], "little")
    header = json.loads((path / WEIGHTS_NAME).read_bytes()[8 : 8 + header_len])
    assert "quantizer.codebooks.0" in header


def test_tampered_weights_are_refused(model_dir) -> None:
    _, path, _ = model_dir
    raw = bytearray((path / WEIGHTS_NAME).read_bytes())
    raw[-1] ^= 0xFF
    (path / WEIGHTS_NAME).write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="checksum"):
        load_model(path)


def test_missing_or_foreign_directory_is_refused(tmp_path: Path, model_dir) -> None:
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_model(tmp_path / "nothing")
    _, path, _ = model_dir
    (path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ModelLoadError, match="not an rqvae-model config"):
        load_model(path)


def test_pickled_weights_cannot_be_smuggled_in(model_dir) -> None:
    _, path, _ = model_dir
    torch.save({"x": np.array([1])}, path / WEIGHTS_NAME)  # a pickle where safetensors belong
    config = json.loads((path / "config.json").read_text())
    config.pop("weights_sha256")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_model(path)
