"""End-to-end runs of the real DAG with `dag.test()` (Airflow on SQLite, tasks in-process, small data).

Each module gets its own roots (the `roots` fixture; the tasks read them from the environment at run time), so
the published folders seen here come from these runs only. The run helpers live in tests/helpers.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.layout import FINISHED_MARKER, run_key
from tests.helpers import DIM, TASK_IDS, latest, make_snapshot, run, states, xcoms

pytestmark = pytest.mark.airflow


def test_run_publishes_a_version_and_moves_latest(airflow_db, pipeline_dag, roots):
    make_snapshot(roots, "2026-02-01", seed=1)
    dag_run = run(pipeline_dag, "2026-02-01", export_json=True)
    assert str(dag_run.state) == "success", states(dag_run)
    assert set(states(dag_run).values()) == {"success"} and set(states(dag_run)) == set(TASK_IDS)

    version = roots["publish"] / "2026-02-01"
    assert latest(roots) == "2026-02-01" and (roots["publish"] / "latest").resolve() == version.resolve()
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["snapshot"] == "2026-02-01"
    assert manifest["airflow"] == {"dag_id": "rqvae_semantic_ids", "run_id": dag_run.run_id}
    work = roots["work"] / "2026-02-01" / run_key(dag_run.run_id)  # the run's own folder
    assert manifest["work"] == {"run_folder": work.name} and (work / FINISHED_MARKER).is_file()
    assert manifest["counts"]["n_items"] == 3000 and manifest["counts"]["dim"] == DIM
    assert manifest["config"]["params"]["codebook_size"] == 16
    assert manifest["config"]["model"]["model"]["codebook_size"] == [16, 16]
    assert manifest["validation"]["input"]["success"] and manifest["validation"]["codes"]["success"]
    assert manifest["metrics"]["train"]["n_train"] == 3000
    assert {"semantic_ids.parquet", "model/config.json", "semantic_id_dict.json", "validation/codes.json"} <= set(
        manifest["files"]
    )

    from rqvae.io.fsutil import sha256_file
    from rqvae.io.idfile import read_semantic_ids

    artifact = work / "embeddings.parquet"
    assert manifest["checksums"]["input"] == sha256_file(artifact, tagged=True)
    ids, codes, dedup = read_semantic_ids(version / "semantic_ids.parquet")
    assert sorted(ids.tolist()) == sorted(pq.read_table(artifact).column("item_id").to_pylist())
    assert codes.shape == (3000, 2)
    assert len(json.loads((version / "semantic_id_dict.json").read_text())) == 3000

    values = xcoms(dag_run)
    assert set(values) == set(TASK_IDS)
    for task_id, value in values.items():
        assert isinstance(value, list if task_id == "plan_shards" else dict), task_id
        assert len(json.dumps(value)) < 4096, f"{task_id} pushed a large XCom"
    assert values["plan_shards"] == [{"index": 0, "count": 1, "start": 0, "stop": 3000}], "one shard by default"
    assert values["publish"]["version_path"] == str(version) and values["publish"]["moved_latest"] is True
    assert values["wait_for_embeddings"]["snapshot"] == "2026-02-01"
    assert values["wait_for_embeddings"]["work_dir"] == str(work) and values["publish"]["pruned_runs"] == []


def test_wrong_dimension_fails_validate_dims_and_publishes_nothing(airflow_db, pipeline_dag, roots, capfd):
    """Runs after the test above in this module: the earlier version must stay `latest`."""
    previous = latest(roots)
    assert previous == "2026-02-01"
    folder = roots["embeddings"] / "2026-02-02"
    folder.mkdir(parents=True)
    vectors = np.random.default_rng(5).normal(size=(1000, DIM)).astype(np.float32).tolist()
    ids = list(range(5_000, 6_000))
    vectors[417] = vectors[417][:-1]  # item 5417 has 15 values
    table = pa.table({"item_id": pa.array(ids, pa.int64()), "embedding": pa.array(vectors, pa.list_(pa.float32()))})
    pq.write_table(table, folder / "part-00000.parquet")
    (folder / "_SUCCESS").touch()

    dag_run = run(pipeline_dag, "2026-02-02")
    found = states(dag_run)
    assert str(dag_run.state) == "failed"
    assert found["validate_dims"] == "failed" and found["load_embeddings"] == "success"
    assert all(found[t] == "upstream_failed" for t in TASK_IDS[3:]), found
    assert not (roots["publish"] / "2026-02-02").exists()
    assert latest(roots) == previous
    report = json.loads((roots["work"] / "2026-02-02" / run_key(dag_run.run_id) / "validation" / "input.json")
                        .read_text())
    assert report["failures"] == [
        "expect_column_values_to_be_between(dim): 1 of 1000 rows have dim 15 != 16; sample item ids: [5417]"
    ]
    assert "have dim 15 != 16; sample item ids: [5417]" in capfd.readouterr().out, "the task log names it"


def test_backfill_newest_first_gives_three_versions_and_latest_at_newest(airflow_db, pipeline_dag, roots):
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    for seed, day in enumerate(days):
        make_snapshot(roots, day, n=1000, seed=10 + seed)
    moved = {}
    for day in ["2026-03-03", "2026-03-01", "2026-03-02"]:  # newest first, then the older days
        dag_run = run(pipeline_dag, day)
        assert str(dag_run.state) == "success", states(dag_run)
        moved[day] = xcoms(dag_run)["publish"]["moved_latest"]
        assert latest(roots) == "2026-03-03"
    assert moved == {"2026-03-03": True, "2026-03-01": False, "2026-03-02": False}
    published = sorted(p.name for p in roots["publish"].iterdir() if p.name.startswith("2026-03"))
    assert published == days
    for day in days:
        assert json.loads((roots["publish"] / day / "manifest.json").read_text())["snapshot"] == day
    assert os.readlink(roots["publish"] / "latest") == "2026-03-03"


def test_sensor_timeout_fails_the_run_and_publishes_nothing(airflow_db, pipeline_dag, roots):
    before = latest(roots)
    folder = roots["embeddings"] / "2026-04-01"
    folder.mkdir(parents=True)
    (folder / "part-00000.parquet").write_bytes(b"")  # data being written, no _SUCCESS yet
    dag_run = run(pipeline_dag, "2026-04-01", sensor_timeout=2)
    found = states(dag_run)
    assert str(dag_run.state) == "failed"
    assert found["wait_for_embeddings"] == "failed"
    assert all(found[t] == "upstream_failed" for t in TASK_IDS[1:]), found
    assert not (roots["publish"] / "2026-04-01").exists() and not (roots["work"] / "2026-04-01").exists()
    assert latest(roots) == before
