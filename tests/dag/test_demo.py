"""`make demo`'s script on a small snapshot: it runs the real DAG with `airflow dags test` in its own Airflow home
and prints where the version went, with the metrics and per-task durations the README quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = "2026-11-20"
SMALL = {"min_items": 100, "codebook_size": 16, "epochs": 1, "min_unique_ratio": 0.1, "max_recon_mse": 0.5}
EVAL = {"epochs": 1, "max_users": 200}


@pytest.mark.airflow
def test_demo_publishes_a_version_and_prints_where(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RQVAE_"))}
    env.update({
        "AIRFLOW_HOME": str(tmp_path / "airflow"),  # airflow_env() derives the SQLite DB from it
        "RQVAE_EMBEDDINGS_ROOT": str(tmp_path / "data" / "embeddings"),
        "RQVAE_WORK_ROOT": str(tmp_path / "data" / "work"),
        "RQVAE_PUBLISH_ROOT": str(tmp_path / "data" / "published"),
        "RQVAE_SENSOR_POKE_S": "1",
    })
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--items", "3000", "--dim", "16", "--date", SNAPSHOT,
         "--no-movielens", "--conf", json.dumps(SMALL), "--eval-conf", json.dumps(EVAL)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    version = tmp_path / "data" / "published" / SNAPSHOT
    assert f"published: {version}  (latest -> {SNAPSHOT})" in out
    for task_id in ("wait_for_embeddings", "train_rqvae", "encode_items[0]", "resolve_collisions", "publish"):
        assert any(line.split()[:2] == [task_id, "success"] for line in out.splitlines()), out
    assert "codebooks [16, 16, 16]" in out and "validation: input" in out
    assert (version / "semantic_ids.parquet").is_file() and (version / "report" / "index.html").is_file()
    assert (tmp_path / "data" / "published" / "latest").resolve() == version.resolve()
    # then the downstream evaluation of that version, on the synthetic interactions the demo wrote
    assert (tmp_path / "data" / "interactions" / SNAPSHOT / "_SUCCESS").is_file()
    assert f"evaluate [synthetic]: airflow dags test semantic_ids_evaluation {SNAPSHOT}" in out
    evaluation = json.loads((version / "evaluation.json").read_text())
    assert evaluation["retrieval"]["n_users"] == 200
    for set_name in ("this", "rqkmeans", "random"):
        assert any(line.split()[:1] == [set_name] for line in out.splitlines()), out
    # both aliases: serving moved only if the gate passed (the tiny evaluation may go either way)
    status = evaluation["summary"]["status"]
    serving = f"serving -> {SNAPSHOT}  (passed; automatic by semantic_ids_evaluation" if status == "passed" \
        else "serving -> none yet: no version passed the gate"
    assert f"== aliases [synthetic]: latest -> {SNAPSHOT}, {serving}" in out, out
    assert (tmp_path / "data" / "published" / "serving").exists() == (status == "passed")
