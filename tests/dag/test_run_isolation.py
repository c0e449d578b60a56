"""Run isolation: two runs of one snapshot at once never share a work folder, and every version they publish
is self-consistent (its model re-encodes its IDs exactly; its manifest names the run that made both).

The concurrent case runs on a real `airflow standalone` (LocalExecutor, scheduler, task processes), the way a
scheduled run and a manual trigger with other params meet; the retention rule is checked on plain folders.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import requests

from include.files import read_json
from include.layout import FINISHED_MARKER, prune_runs, run_key
from include.stages.publish import KEEP_SUPERSEDED
from include.versions import MANIFEST, VERSIONS, read_latest
from rqvae.io.fsutil import sha256_file, sha256_tree
from rqvae.io.idfile import read_semantic_ids
from rqvae.io.synth import synth
from tests.airflow_server import standalone
from tests.helpers import DIM, SMALL, encode_all

DAG_ID = "rqvae_semantic_ids"
SNAPSHOT = "2026-11-30"
RUN_TIMEOUT_S = 600
RUNS = {  # different params on purpose: their models and IDs must not mix
    "isolation-a": {"epochs": 3, "collision_mode": "dedup"},
    "isolation-b": {"epochs": 1, "collision_mode": "reassign"},
}


def test_run_keys_are_folder_names_and_tell_similar_ids_apart():
    key = run_key("manual__2026-11-30T12:00:00+00:00")
    assert key.startswith("manual__2026-11-30T12_00_00_00_00-") and "/" not in key and ":" not in key
    assert run_key("a:b") != run_key("a_b") and run_key("a:b") == run_key("a:b")
    with pytest.raises(ValueError, match="run_id is empty"):
        run_key(" ")


def test_prune_keeps_the_newest_finished_runs_and_never_a_live_one(tmp_path):
    snapshot = tmp_path / SNAPSHOT
    for age, name in enumerate(["new", "mid", "old"]):
        folder = snapshot / name
        folder.mkdir(parents=True)
        (folder / FINISHED_MARKER).write_text("{}")
        stamp = time.time() - 3600 * (age + 1)
        os.utime(folder / FINISHED_MARKER, (stamp, stamp))
    (snapshot / "live").mkdir()  # a concurrent run: no marker, written a minute ago
    (snapshot / "live" / "model").mkdir()
    (snapshot / "dead").mkdir()  # a failed run, untouched for ten days
    long_ago = time.time() - 10 * 86400
    os.utime(snapshot / "dead", (long_ago, long_ago))
    (snapshot / "current").mkdir()

    removed = prune_runs(snapshot, keep=2, current=snapshot / "current")
    assert removed == ["dead", "mid", "old"]
    assert sorted(p.name for p in snapshot.iterdir()) == ["current", "live", "new"]
    assert prune_runs(snapshot, keep=1, current=snapshot / "current") == ["new"]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune_runs(snapshot, keep=0)


@pytest.mark.airflow
@pytest.mark.slow
def test_two_concurrent_runs_of_one_snapshot_publish_self_consistent_versions(tmp_path, reliability_log):
    synth(tmp_path / "data" / "embeddings" / SNAPSHOT, 1000, dim=DIM, seed=3)
    with standalone(tmp_path, tmp_path / "airflow.log", dag_id=DAG_ID) as ui:
        headers = {"Authorization": f"Bearer {ui.token()}"}
        api = f"{ui.url}/api/v2/dags/{DAG_ID}"
        requests.patch(api, json={"is_paused": False}, headers=headers, timeout=30).raise_for_status()
        for run_id, params in RUNS.items():  # both queued at once: max_active_runs=2 lets them run together
            conf = {**SMALL, **params, "snapshot": SNAPSHOT, "keep_runs": 1}
            answer = requests.post(f"{api}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
                                   headers=headers, timeout=30)
            answer.raise_for_status()
        runs = wait_for(api, headers, list(RUNS))
    assert all(r["state"] == "success" for r in runs.values()), f"{runs}; see {ui.log}"
    a, b = (runs[r] for r in RUNS)
    assert a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"], "the two runs did not overlap"

    work, published = tmp_path / "data" / "work" / SNAPSHOT, tmp_path / "data" / "published"
    copies = sorted((published / VERSIONS / SNAPSHOT).iterdir())
    assert len(copies) == 1 + KEEP_SUPERSEDED == len(RUNS), "each run's copy: the current one and the superseded"
    manifests = {read_json(c / SNAPSHOT / MANIFEST)["airflow"]["run_id"]: c / SNAPSHOT for c in copies}
    assert set(manifests) == set(RUNS), "each run published its own copy"
    last = read_json(published / SNAPSHOT / MANIFEST)["airflow"]["run_id"]
    first = next(r for r in RUNS if r != last)
    assert read_latest(published) == SNAPSHOT and runs[last]["end_date"] > runs[first]["end_date"]
    assert sorted(p.name for p in work.iterdir()) == [run_key(last)], "keep_runs=1: the other finished run pruned"
    artifact = work / run_key(last) / "embeddings.parquet"

    checksums = set()
    for run_id, version in manifests.items():
        manifest = read_json(version / MANIFEST)
        params = manifest["config"]["params"]
        assert {k: params[k] for k in RUNS[run_id]} == RUNS[run_id], f"{run_id} published another run's params"
        assert manifest["work"] == {"run_folder": run_key(run_id)}
        assert manifest["checksums"]["input"] == sha256_file(artifact, tagged=True)
        assert manifest["checksums"]["model"] == sha256_tree(version / "model")[0]
        for name, entry in manifest["files"].items():
            assert sha256_file(version / name, tagged=True) == entry["sha256"], name
        # the published model re-encodes the published IDs exactly: model and IDs come from the same run
        again = encode_all(version / "model", artifact, tmp_path / "reencode" / run_id, collision_mode=params[
            "collision_mode"], publish_root=tmp_path / "empty", snapshot=SNAPSHOT)
        for mine, theirs in zip(read_semantic_ids(again["path"]), read_semantic_ids(version / "semantic_ids.parquet"),
                                strict=True):
            assert np.array_equal(mine, theirs), f"{run_id}: its model does not re-encode its IDs"
        checksums.add(manifest["checksums"]["model"])
    assert len(checksums) == len(RUNS), "different params, different models: the test would miss a mix-up"
    reliability_log.append(
        {
            "section": "fault",
            "fault": "two runs of one snapshot at once (LocalExecutor; 3 epochs + dedup, 1 epoch + reassign)",
            "left_behind": f"one work folder per run; keep_runs=1 pruned {run_key(first)[:20]}... after both finished",
            "latest_after_kill": "n/a",
            "after_retry": f"both published in turn, each copy self-consistent (its model re-encodes its IDs, "
                           f"manifest names its run); {SNAPSHOT} names the last ({last})",
            "versions_lost": 0,
        }
    )


def wait_for(api: str, headers: dict, run_ids: list[str]) -> dict[str, dict]:
    """Poll until every run is finished; returns each run's JSON (state, start_date, end_date)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        found = {r: requests.get(f"{api}/dagRuns/{r}", headers=headers, timeout=30).json() for r in run_ids}
        if all(run.get("state") in ("success", "failed") for run in found.values()):
            return found
        time.sleep(3)
    raise TimeoutError(f"runs not finished after {RUN_TIMEOUT_S}s: {found}")
