"""A training process killed mid-run resumes from its last epoch checkpoint and ends where an
uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rqvae.config import ModelConfig, TrainConfig
from rqvae.io.checkpoint import load_model
from rqvae.training.loop import CHECKPOINT_DIR, train

MODEL = {"input_dim": 16, "num_codebooks": 2, "codebook_size": 16, "hidden_channels": [32]}
TRAIN = {"epochs": 12, "batch_size": 32, "seed": 3, "reseed_every": 50}

SCRIPT = """
import sys, numpy as np
from rqvae.config import ModelConfig, TrainConfig
from rqvae.training.loop import train
train(np.load(sys.argv[1]), ModelConfig(**{model}), TrainConfig(**{train}), out_dir=sys.argv[2], show_progress=False)
"""


def test_killed_training_resumes_from_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2500, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "model"
    script = SCRIPT.format(model=MODEL, train=TRAIN)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "x.npy"), str(out)],
                            start_new_session=True)
    progress = out / CHECKPOINT_DIR / "progress.json"
    deadline = time.monotonic() + 120
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "config.json").exists() or (out / CHECKPOINT_DIR).exists()

    resumed = train(x, ModelConfig(**MODEL), TrainConfig(**TRAIN), out_dir=out, show_progress=False)
    assert 1 <= resumed.resumed_from_epoch < TRAIN["epochs"]
    assert [h["epoch"] for h in resumed.history] == list(range(1, TRAIN["epochs"] + 1))
    assert not (out / CHECKPOINT_DIR).exists()

    fresh = train(x, ModelConfig(**MODEL), TrainConfig(**TRAIN), out_dir=tmp_path / "fresh", show_progress=False)
    a, b = load_model(out).state_dict(), load_model(tmp_path / "fresh").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert fresh.resumed_from_epoch == 0


def test_checkpoint_for_other_data_is_ignored(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    cfg = TrainConfig(epochs=1, batch_size=64, seed=0)
    out = tmp_path / "m"
    train(x, ModelConfig(**MODEL), cfg, out_dir=out, show_progress=False)
    # fake a leftover checkpoint from a different dataset: the run must start fresh, not resume it
    (out / CHECKPOINT_DIR).mkdir()
    (out / CHECKPOINT_DIR / "progress.json").write_text('{"data": "other", "epoch": 1}')
    result = train(x, ModelConfig(**MODEL), cfg, out_dir=out, show_progress=False)
    assert result.resumed_from_epoch == 0
