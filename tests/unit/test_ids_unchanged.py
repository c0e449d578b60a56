"""IDs for a fixed seed equal those of the code before the issue-14 refactor (tests/fixtures/ids_before_refactor).

A refactor of config, layout and encode paths must not change a single ID: this retrains with the same flags in
a fresh one-thread process (float sums in a fixed order) and compares every item's codes and dedup digit, for
the CLI's dedup encode and the pipeline stages' reassign path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ids_before_refactor"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _rqvae(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "rqvae.cli", "-q", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _ids(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    tables = [pq.read_table(f) for f in files]
    ids = np.concatenate([t.column("item_id").to_numpy() for t in tables])
    codes = np.concatenate([np.stack(t.column("codes").to_numpy(zero_copy_only=False)) for t in tables])
    dedup = np.concatenate([t.column("dedup").to_numpy() for t in tables])
    order = np.argsort(ids)
    return ids[order], codes[order], dedup[order]


def _expected(prefix: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = pq.read_table(FIXTURE / "ids.parquet")
    codes = np.stack(table.column(f"{prefix}codes").to_numpy(zero_copy_only=False))
    return table.column("item_id").to_numpy(), codes, table.column(f"{prefix}dedup").to_numpy()


def _assert_same(got: tuple, expected: tuple) -> None:
    assert np.array_equal(got[0], expected[0]), "item ids differ"
    changed = ~((got[1] == expected[1]).all(axis=1) & (got[2] == expected[2]))
    assert not changed.any(), f"{int(changed.sum())} of {len(changed)} IDs changed, e.g. items {got[0][changed][:5]}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ids") / "model"
    _rqvae("train", "--embeddings", str(FIXTURE / "embeddings.parquet"), "--out", str(out),
           "--num-codebooks", "3", "--codebook-size", "16", "--epochs", "2", "--seed", "3")
    return out


def test_cli_encode_gives_the_same_ids(model_dir: Path, tmp_path: Path) -> None:
    _rqvae("encode", "--model", str(model_dir), "--embeddings", str(FIXTURE / "embeddings.parquet"),
           "--out", str(tmp_path / "ids.parquet"))
    _assert_same(_ids(tmp_path / "ids.parquet"), _expected())


def test_pipeline_stages_give_the_same_reassigned_ids(model_dir: Path, tmp_path: Path) -> None:
    """plan_shards + encode_items (two shards) + resolve_collisions with `reassign`, as the DAG runs them."""
    script = (
        "import sys; from tests.helpers import encode_all; "
        "encode_all(sys.argv[1], sys.argv[2], sys.argv[3], shard_size=1000, collision_mode='reassign')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-c", script, str(model_dir), str(FIXTURE / "embeddings.parquet"),
                           str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    _assert_same(_ids(tmp_path / "work" / "semantic_ids"), _expected("reassign_"))
