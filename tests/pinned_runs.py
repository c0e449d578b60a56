"""Pipeline runs whose outputs are pinned byte for byte (tests/dag/test_outputs_unchanged.py).

Run in a fresh one-thread process (float sums in a fixed order): ``python -m tests.pinned_runs OUT.json``. It
parses the real DAG, runs it with ``dag.test`` on a demo-like snapshot (default params) and on three consecutive
snapshots of a second data set (retrain, then incremental with ``reassign``, then an aligned retrain), and
writes a digest of every published version: the SHA-256 of each ID, model and serving file, and the manifest
and model config with times, run ids and machine paths left out. ``--write-fixture`` is how the fixture was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VOLATILE = ("seconds", "time", "_at", "run_id", "date", "speed", "per_s", "path", "dir", "host", "pid", "log",
            "started", "finished", "threads", "rss", "dag_run", "created", "checksum", "sha256", "bytes", "folder")
SKIPPED = ("report/", "validation/", "evaluation")  # rendered pages and GX reports carry times
DEMO = {"snapshot": "2026-03-01", "items": 4000, "dim": 32}
DAYS = {  # the second data set: three days, items coming and going
    "2026-03-02": ({"mode": "retrain"}, slice(0, 1500)),
    "2026-03-03": ({"mode": "incremental", "collision_mode": "reassign"}, slice(100, 1700)),
    "2026-03-04": ({"mode": "retrain", "align_retrain": "anchor"}, slice(200, 1800)),
}
SMALL = {"num_codebooks": 2, "codebook_size": 16, "epochs": 1, "batch_size": 256, "min_items": 500,
         "min_unique_ratio": 0.01, "max_recon_mse": 0.1}


def normalised(value: Any, tmp: str) -> Any:
    """JSON with volatile keys dropped and the run's temporary folder named `{tmp}` (file checksums too: the
    model folder's include its config.json, which records training times; the files are hashed one by one)."""
    if isinstance(value, dict):
        return {k: normalised(v, tmp) for k, v in sorted(value.items())
                if not any(word in k.lower() for word in VOLATILE)}
    if isinstance(value, list):
        return [normalised(v, tmp) for v in value]
    if isinstance(value, str):  # a version's stored copy is named by the time it was made
        return re.sub(r"/\.versions/([^/]+)/[^/]+/", r"/.versions/\1/{copy}/", value.replace(tmp, "{tmp}"))
    return value


def digest(version: Path, tmp: str) -> dict[str, Any]:
    """SHA-256 of every published file but reports; manifest and model config as normalised JSON."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in version.rglob("*") if p.is_file()):
        name = path.relative_to(version).as_posix()
        if name.startswith(SKIPPED):
            continue
        if name in ("manifest.json", "model/config.json"):
            files[name] = normalised(json.loads(path.read_text()), tmp)
        else:
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def main(out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pinned-"))
    for kind, folder in (("EMBEDDINGS", "embeddings"), ("WORK", "work"), ("PUBLISH", "published"),
                         ("INTERACTIONS", "interactions")):
        os.environ[f"RQVAE_{kind}_ROOT"] = str(tmp / folder)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.dag_processing.dagbag import DagBag

    from rqvae.io.readers import read_embeddings
    from rqvae.io.synth import synth
    from tests.helpers import run

    repo = Path(__file__).resolve().parents[1]
    bag = DagBag(dag_folder=str(repo / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["rqvae_semantic_ids"]
    defaults = {name: dag.params[name] for name in dag.params}
    result: dict[str, Any] = {}

    synth(tmp / "embeddings" / DEMO["snapshot"], DEMO["items"], dim=DEMO["dim"], seed=11)
    day = datetime.fromisoformat(DEMO["snapshot"]).replace(tzinfo=UTC)
    dag_run = dag.test(logical_date=day, run_conf=dict(defaults))  # the form untouched, as the demo runs it
    assert str(dag_run.state) == "success", DEMO
    result[f"demo/{DEMO['snapshot']}"] = digest(tmp / "published" / DEMO["snapshot"], str(tmp))

    pool = read_embeddings(synth(tmp / "pool.parquet", 1800, dim=16, seed=5))
    for day_name, (conf, rows) in DAYS.items():
        folder = tmp / "embeddings" / "days" / day_name
        folder.mkdir(parents=True)
        vectors = pool.vectors[rows]
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
        pq.write_table(pa.table({"item_id": pa.array(pool.ids[rows], pa.int64()), "embedding": emb}),
                       folder / "part-0.parquet")
        (folder / "_SUCCESS").touch()
        dag_run = run(dag, day_name, embeddings_root="days", expected_dim=16, **{**SMALL, **conf})
        assert str(dag_run.state) == "success", day_name
        result[f"days/{day_name}"] = digest(tmp / "published" / "days" / day_name, str(tmp))
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
