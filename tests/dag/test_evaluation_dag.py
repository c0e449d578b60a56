"""The downstream-evaluation DAG end to end with `dag.test()`: after a real publish, on a tiny interactions
snapshot; skipped cleanly without one; refused on bad interactions; the gate flags a version, never unpublishes;
its last task moves `serving` only to a version that passed (or, without interactions, when allowed) and
updates the `semantic_ids_serving` asset.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import make_snapshot, run, states

pytestmark = pytest.mark.airflow

SNAPSHOT = "2026-05-01"
# A retriever budget that takes seconds on 2 cores: the point here is the wiring, not the figures.
EVAL_CONF = {"epochs": 2, "seeds": 1, "max_users": 200, "min_users": 10, "max_se": 2.0}


def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _write_interactions(roots: dict[str, Path], snapshot: str, **kwargs) -> Path:
    from rqvae.io.interactions import write_interactions
    from rqvae.io.readers import read_embeddings
    from rqvae.io.synth import synth_interactions

    emb = read_embeddings(roots["embeddings"] / snapshot)
    events = synth_interactions(emb.ids, emb.vectors, n_users=kwargs.pop("n_users", 150), events=12, step=20)
    for name, value in kwargs.items():
        events = type(events)(**{**events.__dict__, name: value(getattr(events, name))})
    return write_interactions(roots["interactions"] / snapshot, events)


def serving_events() -> list[dict]:
    """The extras of every `semantic_ids_serving` asset event so far, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                 .where(AssetModel.name == "semantic_ids_serving").order_by(AssetEvent.id)).all()
        return [dict(event.extra or {}) for event in events]


def serving(roots: dict[str, Path]) -> str | None:
    from rqvae.ids.promotion import read_serving

    return read_serving(roots["publish"])


def _evaluate(dag, **conf):
    defaults = {name: dag.params[name] for name in dag.params}
    return dag.test(logical_date=datetime(2026, 5, 2, tzinfo=UTC), run_conf={**defaults, **EVAL_CONF, **conf})


@pytest.fixture(scope="module")
def published(airflow_db, pipeline_dag, roots) -> Path:
    make_snapshot(roots, SNAPSHOT, seed=3)
    dag_run = run(pipeline_dag, SNAPSHOT)
    assert str(dag_run.state) == "success", states(dag_run)
    return roots["publish"] / SNAPSHOT


def test_missing_interactions_skip_cleanly_and_touch_nothing(published, evaluation_dag, roots, caplog):
    before = _tree_digest(published)
    dag_run = _evaluate(evaluation_dag, version=SNAPSHOT)
    found = states(dag_run)
    assert found["find_version"] == "success" and found["has_interactions"] == "success"
    assert found["validate_interactions"] == "skipped"
    assert found["evaluate_retrieval"] == "skipped" and found["record_evaluation"] == "skipped"
    assert found["promote"] == "skipped", "promote_without_evaluation is off: serving does not move"
    assert str(dag_run.state) == "success"
    assert _tree_digest(published) == before
    assert "no interactions snapshot for 2026-05-01" in caplog.text
    assert serving(roots) is None and not (roots["publish"] / "promotions.jsonl").exists() and not serving_events()


def test_evaluation_writes_verdict_beside_the_unchanged_ids(published, evaluation_dag, roots):
    _write_interactions(roots, SNAPSHOT)
    ids_before = (published / "semantic_ids.parquet").read_bytes()
    # empty: the latest version is evaluated; a tolerant gate, so that it passes whatever the tiny data says
    dag_run = _evaluate(evaluation_dag, version="", max_se=1000.0)
    found = states(dag_run)
    assert found["validate_interactions"] == "success" and found["evaluate_retrieval"] == "success", found
    assert found["record_evaluation"] == "success" and found["promote"] == "success", found
    assert serving(roots) == SNAPSHOT and (roots["publish"] / "serving").resolve() == published.resolve()
    (move,) = [json.loads(line) for line in (roots["publish"] / "promotions.jsonl").read_text().splitlines()]
    assert move["kind"] == "automatic" and move["verdict"] == "passed" and move["from"] is None
    assert move["to"] == SNAPSHOT and move["by"] == "semantic_ids_evaluation" and move["run_id"] == dag_run.run_id
    assert "passed the downstream gate" in move["reason"]
    assert serving_events()[-1] == {"version": SNAPSHOT, "snapshot": SNAPSHOT, "verdict": "passed",
                                    "kind": "automatic", "forced": False,
                                    "serving_path": str(roots["publish"] / "serving")}
    assert (published / "semantic_ids.parquet").read_bytes() == ids_before

    evaluation = json.loads((published / "evaluation.json").read_text())
    sets = evaluation["retrieval"]["id_sets"]
    assert set(sets) == {"this", "rqkmeans", "random"}, "no previous version yet"
    retrieval, loo = evaluation["retrieval"], evaluation["leave_one_out"]["retrieval"]
    assert evaluation["protocol"] == retrieval["protocol"] == "temporal" and loo["protocol"] == "leave_one_out"
    assert retrieval["n_events"] > retrieval["n_users"] == loo["n_users"] == loo["n_events"] > 0
    for entry in sets.values():
        for metric in ("recall@5", "recall@10", "ndcg@10", "nll"):
            stat = entry["all"][metric]
            assert stat["n"] == retrieval["n_events"] and stat["users"] == retrieval["n_users"]
            assert stat["se"] is not None
    assert set(evaluation["paired"]) == {"this-rqkmeans", "this-random", "rqkmeans-random"}
    mde = evaluation["paired"]["this-rqkmeans"]["mde"]
    assert mde["nll"] == pytest.approx(2 * evaluation["paired"]["this-rqkmeans"]["nll"]["se"], abs=1e-5)
    assert evaluation["summary"]["protocol"] == "temporal"
    summary = evaluation["summary"]
    assert summary["status"] == found["record_evaluation"].replace("success", "passed").replace("failed", "failed")
    assert summary["nll"] == sets["this"]["all"]["nll"]["mean"]

    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["downstream"]["status"] == summary["status"]
    from rqvae.io.fsutil import sha256_file

    for name in ("evaluation.json", "report/evaluation.png", "report/index.html"):
        assert manifest["files"][name]["sha256"] == sha256_file(published / name, tagged=True), name
    page = (published / "report" / "index.html").read_text()
    assert page.count("<h2>Downstream evaluation</h2>") == 1 and "evaluation.png" in page
    assert "<h3>temporal:" in page and "<h3>leave_one_out:" in page and "detectable (2 SE)" in page


def test_second_version_is_compared_with_the_previous_one(published, pipeline_dag, evaluation_dag, roots):
    from rqvae.io.readers import read_embeddings, write_embeddings

    emb = read_embeddings(roots["embeddings"] / SNAPSHOT)  # the next day: the same catalogue, 10% items moved
    vectors = emb.vectors.copy()
    moved = np.random.default_rng(0).choice(len(vectors), len(vectors) // 10, replace=False)
    vectors[moved] = np.roll(vectors[moved], 1, axis=0)
    write_embeddings(roots["embeddings"] / "2026-05-02" / "part-00000.parquet", emb.ids, vectors)
    (roots["embeddings"] / "2026-05-02" / "_SUCCESS").touch()
    assert str(run(pipeline_dag, "2026-05-02").state) == "success"
    assert serving(roots) == SNAPSHOT, "publishing moves latest, never serving"

    # no interactions for the new day yet: serving moves to it only when the form allows it
    assert states(_evaluate(evaluation_dag, version="2026-05-02"))["promote"] == "skipped"
    assert serving(roots) == SNAPSHOT
    allowed = _evaluate(evaluation_dag, version="2026-05-02", promote_without_evaluation=True)
    assert states(allowed)["promote"] == "success" and serving(roots) == "2026-05-02"
    assert serving_events()[-1]["verdict"] == "not evaluated"
    moves = [json.loads(line) for line in (roots["publish"] / "promotions.jsonl").read_text().splitlines()]
    assert moves[-1]["from"] == SNAPSHOT and "promote_without_evaluation" in moves[-1]["reason"]

    _write_interactions(roots, "2026-05-02")
    dag_run = _evaluate(evaluation_dag, version="2026-05-02")
    assert states(dag_run)["evaluate_retrieval"] == "success", states(dag_run)
    evaluation = json.loads((roots["publish"] / "2026-05-02" / "evaluation.json").read_text())
    assert evaluation["previous"] == SNAPSHOT and "previous" in evaluation["retrieval"]["id_sets"]
    assert "this-previous" in evaluation["paired"]


def test_bad_interactions_fail_validation_and_record_nothing(published, evaluation_dag, roots):
    before, root_before = _tree_digest(published), _tree_digest(roots["publish"])
    dag_run = _evaluate(evaluation_dag, version=SNAPSHOT, min_users=10_000)
    found = states(dag_run)
    assert found["validate_interactions"] == "failed" and found["evaluate_retrieval"] == "upstream_failed"
    assert found["promote"] == "upstream_failed" and str(dag_run.state) == "failed"
    assert _tree_digest(published) == before
    assert _tree_digest(roots["publish"]) == root_before, "serving, serving.json and the log unchanged"
    report = json.loads((roots["work"] / "evaluation" / SNAPSHOT / "interactions.json").read_text())
    assert not report["success"]
    assert any("min_users=10000" in line for line in report["failures"])


def test_gate_flags_a_worse_version_without_unpublishing(published, roots, tmp_path):
    from include.params import EvaluationOptions
    from include.stages.evaluate_retrieval import RESULT
    from include.stages.record_evaluation import QualityGateFailed, gate, record_evaluation

    result = json.loads((published / "evaluation.json").read_text())
    result["paired"]["this-rqkmeans"]["nll"] = {"mean": 0.5, "se": 0.1, "n": 100}  # 5 SE worse
    result["paired"]["this-rqkmeans"]["recall@10"] = {"mean": -0.01, "se": 0.01, "n": 100}  # 1 SE: inside noise
    assert gate(result, 2.0) == ["nll worse than rqkmeans by 0.5000 (5.0 paired SE > max_se=2.0)"]
    assert gate(result, 6.0) == []
    path = tmp_path / RESULT
    path.write_text(json.dumps({k: v for k, v in result.items() if k not in ("summary", "gate")}))
    ids_before = (published / "semantic_ids.parquet").read_bytes()
    with pytest.raises(QualityGateFailed, match="nll worse than rqkmeans"):
        record_evaluation(published, path, EvaluationOptions(max_se=2.0), run_id="manual__gate")
    assert (published / "semantic_ids.parquet").read_bytes() == ids_before
    assert (roots["publish"] / "latest").resolve().name in {SNAPSHOT, "2026-05-02"}
    flagged = json.loads((published / "evaluation.json").read_text())
    assert flagged["summary"]["status"] == "failed" and "rqkmeans" in flagged["summary"]["reason"]
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["downstream"]["status"] == "failed" and manifest["downstream"]["run_id"] == "manual__gate"


def test_a_republish_during_evaluation_makes_the_result_stale(published, tmp_path):
    from include.params import EvaluationOptions
    from include.stages.record_evaluation import StaleEvaluation, record_evaluation

    result = json.loads((published / "evaluation.json").read_text())
    result["semantic_ids_sha256"] = "sha256:" + "0" * 64
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(result))
    before = (published / "evaluation.json").read_bytes()
    with pytest.raises(StaleEvaluation):
        record_evaluation(published, path, EvaluationOptions())
    assert (published / "evaluation.json").read_bytes() == before


def test_the_newest_triggering_event_is_evaluated():
    from include.stages.find_version import triggering_version

    def event(day: str) -> SimpleNamespace:
        return SimpleNamespace(extra={"snapshot": day, "version_path": f"/p/{day}"})

    assert triggering_version({"semantic_ids": [event("2026-01-02"), event("2026-01-03"), event("2026-01-01")]}) \
        == "/p/2026-01-03"
    assert triggering_version({}) is None and triggering_version(None) is None
    assert triggering_version({"semantic_ids": [SimpleNamespace(extra={})]}) is None


def test_a_version_outside_the_publish_root_is_refused(roots):
    from include.settings import PathOutsideRootError, load_roots
    from include.stages.find_version import find_version

    with pytest.raises(PathOutsideRootError):
        find_version(load_roots(), "../../etc")


def test_synthetic_interactions_follow_content():
    from rqvae.io.synth import synth_interactions

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    ids = np.arange(1000, 1500, dtype=np.int64)
    events = synth_interactions(ids, vectors, n_users=20, events=10, step=5, seed=1)
    assert len(events) == 200 and events.n_users == 20
    same_user = events.user_id[1:] == events.user_id[:-1]
    row = {int(i): r for r, i in enumerate(ids)}
    a = vectors[[row[int(i)] for i in events.item_id[1:][same_user]]]
    b = vectors[[row[int(i)] for i in events.item_id[:-1][same_user]]]
    neighbours = np.mean(np.sum(a * b, axis=1))
    shuffled = np.mean(np.sum(a * b[rng.permutation(len(b))], axis=1))
    assert neighbours > shuffled + 0.1, (neighbours, shuffled)
