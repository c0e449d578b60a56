"""Stable IDs across runs through the real include/ stages: incremental keeps published IDs of unchanged
items, encodes new and changed ones uniquely, records churn (0 for an identical re-run); auto picks retrain
when the published model no longer fits; every version carries its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.files import read_json
from include.incremental import plan
from include.layout import RunFolder
from include.params import RunOptions
from include.stages.load_embeddings import load_embeddings
from include.stages.publish import publish
from include.stages.train_rqvae import train_rqvae
from include.stages.validate_codes import validate_codes
from include.stages.validate_dims import validate_dims
from include.versions import ITEM_HASHES
from rqvae.config import CodeChecks, InputChecks, ModelConfig, RetrainPolicy, TrainConfig
from rqvae.ids.stability import embedding_hash, id_churn
from rqvae.io.idfile import read_semantic_ids
from rqvae.io.readers import read_embeddings
from rqvae.io.synth import synth
from tests.helpers import encode_all, run_info

DIM = 16
MODEL = ModelConfig(input_dim=DIM, num_codebooks=2, codebook_size=16)
TRAIN = TrainConfig(epochs=1, batch_size=256)


def write_day(folder: Path, ids: np.ndarray, vectors: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "embedding": emb}), folder / "part-0.parquet")
    (folder / "_SUCCESS").touch()
    return folder


def run_day(base: Path, day: str, ids: np.ndarray, vectors: np.ndarray, mode: str, **kw) -> dict:
    """load -> validate -> train (or reuse) -> encode -> validate -> publish, as the DAG chains them."""
    work, root = base / "work" / day, base / "published"
    folder = RunFolder(work)
    loaded = load_embeddings(write_day(base / "emb" / day, ids, vectors), work)
    validate_dims(loaded["path"], folder.input_report, InputChecks(expected_dim=DIM, min_items=1))
    policy = RetrainPolicy(mode=mode, **{k: kw[k] for k in ("retrain_factor",) if k in kw})
    run = run_info(work, publish_root=root, snapshot=day)
    trained = train_rqvae(run, loaded["path"], MODEL, TRAIN, policy)
    encoded = encode_all(trained["model_path"], loaded["path"], work, collision_mode=kw.get("collision_mode"),
                         plan=trained["plan"])
    validate_codes(encoded["path"], loaded["path"], folder.codes_report, CodeChecks(min_unique_ratio=0.01),
                   codebook_sizes=encoded["codebook_size"], recon_mse=encoded["recon_mse"])
    published = publish(run, RunOptions(), loaded=loaded, trained=trained, encoded=encoded)
    version = Path(published["version_path"])
    for result in (trained, encoded):
        assert len(json.dumps(result)) < 4096, "XCom-sized"
    return {"trained": trained, "encoded": encoded, "version": version,
            "manifest": read_json(version / "manifest.json")}


def id_map(version: Path) -> dict[int, tuple]:
    ids, codes, dedup = read_semantic_ids(version / "semantic_ids.parquet")
    return {int(i): (*c, int(d)) for i, c, d in zip(ids, codes.tolist(), dedup, strict=True)}


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> dict:
    """Day 1 retrains; day 2 (some items changed, some new, some gone) runs incrementally; day 3 repeats day 2."""
    base = tmp_path_factory.mktemp("stable")
    items = read_embeddings(synth(base / "pool.parquet", 3600, dim=DIM, seed=5))
    ids, x = items.ids, items.vectors
    d1_ids, d1_x = ids[:3000], x[:3000]
    changed = d1_ids[100:200]
    d2_x_old = x[200:3000]
    rng = np.random.default_rng(1)
    moved = x[100:200] + rng.normal(0, 0.05, (100, DIM)).astype(np.float32)
    d2_ids = np.r_[changed, d1_ids[200:], ids[3000:3400]]
    d2_x = np.r_[moved / np.linalg.norm(moved, axis=1, keepdims=True), d2_x_old, x[3000:3400]].astype(np.float32)
    day1 = run_day(base, "2026-02-01", d1_ids, d1_x, "incremental")  # nothing published yet: retrains
    day2 = run_day(base, "2026-02-02", d2_ids, d2_x, "incremental", collision_mode="reassign")
    day3 = run_day(base, "2026-02-03", d2_ids, d2_x, "incremental")
    return {"base": base, "day1": day1, "day2": day2, "day3": day3, "changed": changed,
            "new": ids[3000:3400], "gone": d1_ids[:100], "kept": d1_ids[200:], "items": items}


def test_without_a_published_version_incremental_retrains(days):
    first = days["day1"]["trained"]["plan"]
    assert first["used"] == "retrain" and "no published version" in first["reason"]
    assert (days["day1"]["version"] / ITEM_HASHES).is_file()


def test_incremental_keeps_published_ids_of_unchanged_items(days):
    day1, day2 = id_map(days["day1"]["version"]), id_map(days["day2"]["version"])
    assert days["day2"]["trained"]["plan"]["used"] == "incremental"
    assert days["day2"]["encoded"]["n_pinned"] == len(days["kept"]) == 2800
    assert days["day2"]["encoded"]["n_encoded"] == 500  # 100 changed + 400 new
    assert all(day2[int(i)] == day1[int(i)] for i in days["kept"])
    assert not set(map(int, days["gone"])) & set(day2)
    # the model is the published one, byte for byte
    assert days["day2"]["manifest"]["checksums"]["model"] == days["day1"]["manifest"]["checksums"]["model"]


def test_new_and_changed_items_get_unique_ids_around_the_kept_ones(days):
    day2 = id_map(days["day2"]["version"])
    assert len(set(day2.values())) == len(day2)
    assert days["day2"]["encoded"]["collision_mode"] == "reassign"


def test_changed_items_are_re_encoded_with_the_published_model(days):
    from rqvae.encoding.encode import encode_array
    from rqvae.io.checkpoint import load_model

    model = load_model(days["day1"]["version"] / "model")
    day2 = id_map(days["day2"]["version"])
    emb = read_embeddings(RunFolder(days["base"] / "work" / "2026-02-02").embeddings)
    rows = np.isin(emb.ids, days["changed"])
    fresh = encode_array(model, emb.vectors[rows])
    got = np.array([day2[int(i)][:2] for i in emb.ids[rows]])
    # prefixes always come from the model; the last code too unless the item was moved off a taken code
    assert (got[:, 0] == fresh[:, 0]).all()
    assert (got[:, 1] == fresh[:, 1]).mean() > 0.5


def test_churn_is_recorded_and_zero_for_an_identical_incremental_re_run(days):
    churn2 = days["day2"]["manifest"]["churn"]
    assert churn2["previous"] == "2026-02-01" and churn2["common_items"] == 2900
    assert churn2["changed_items"] <= 100  # only changed items can be renamed
    assert churn2["added_items"] == 400 and churn2["removed_items"] == 100
    churn3 = days["day3"]["manifest"]["churn"]
    assert churn3["previous"] == "2026-02-02" and churn3["churn"] == 0.0
    assert days["day3"]["encoded"]["n_encoded"] == 0
    assert days["day1"]["manifest"]["churn"] == {"previous": None, "churn": None}


def test_each_version_carries_its_report(days):
    for key, churn_png in (("day1", False), ("day2", True)):
        report = days[key]["version"] / "report"
        for name in ("usage_per_level.png", "bucket_sizes.png", "recon_error.png", "index.html"):
            assert (report / name).stat().st_size > 1000, name
            assert f"report/{name}" in days[key]["manifest"]["files"]
        assert (report / "churn.png").exists() is churn_png
        page = (report / "index.html").read_text()
        assert 'src="usage_per_level.png"' in page and "unique_ratio" in page
        assert (report / "usage_per_level.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert days["day2"]["manifest"]["collisions"]["collision_mode"] == "reassign"


def test_auto_retrains_when_the_published_model_no_longer_fits(days):
    base, items = days["base"], days["items"]
    artifact = RunFolder(base / "work" / "2026-02-03").embeddings
    root = base / "published"
    same = plan(RetrainPolicy(mode="auto"), root, artifact, "cpu")
    assert same["used"] == "incremental" and same["n_new_or_changed"] == 0
    # a catalogue that drifted: every vector rotated far from what the model learned
    drifted = np.roll(items.vectors[:1000], 5, axis=1) * 3.0
    work = base / "work" / "drift"
    write_day(base / "emb" / "drift", items.ids[:1000], drifted.astype(np.float32))
    loaded = load_embeddings(base / "emb" / "drift", work)
    decision = plan(RetrainPolicy(mode="auto", retrain_factor=1.5), root, loaded["path"], "cpu")
    assert decision["used"] == "retrain" and decision["recon_mse_new"] > 1.5 * decision["recon_mse_published"]
    with pytest.raises(ValueError, match="expected one of"):
        RetrainPolicy(mode="sometimes")


def test_embedding_hash_sees_any_change_and_churn_counts_it(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    h = embedding_hash(x)
    y = x.copy()
    y[3, 6] = np.nextafter(y[3, 6], np.float32(9))  # one ulp in one value
    assert (embedding_hash(y) != h).tolist() == [i == 3 for i in range(50)]
    assert len(set(h.tolist())) == 50
    from rqvae.io.idfile import SemanticIdWriter

    ids = np.arange(4, dtype=np.int64)
    with SemanticIdWriter(tmp_path / "a.parquet", 2) as w:
        w.write(ids, np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), np.zeros(4, np.int32))
    with SemanticIdWriter(tmp_path / "b.parquet", 2) as w:
        w.write(ids[1:] + 0, np.array([[0, 1], [1, 0], [1, 1]]), np.array([0, 1, 0], np.int32))
    assert id_churn(tmp_path / "a.parquet", tmp_path / "b.parquet") == {
        "common_items": 3, "changed_items": 1, "churn": round(1 / 3, 6), "added_items": 0, "removed_items": 1,
    }


def published_recon_mse(version: Path, embeddings: Path) -> float:
    """Per-element MSE of every item decoded from its published codes: the figure the IDs really have."""
    import torch

    from rqvae.io.checkpoint import load_model

    model = load_model(version / "model").eval()
    emb = read_embeddings(embeddings)
    got = id_map(version)
    codes = torch.tensor(np.array([got[int(i)][:-1] for i in emb.ids]), dtype=torch.int64)
    with torch.no_grad():
        recon = model.decode_codes(codes).numpy().astype(np.float64)
    return float(((recon - emb.vectors) ** 2).mean())


def test_recon_mse_after_reassign_is_the_published_ids_figure(days):
    """reassign moves items off the model's code: the recorded recon MSE counts them at their new code."""
    encoded = days["day2"]["encoded"]
    assert encoded["collision_mode"] == "reassign" and encoded["moved"] > 0
    truth = published_recon_mse(days["day2"]["version"], RunFolder(days["base"] / "work" / "2026-02-02").embeddings)
    assert encoded["recon_mse"] == pytest.approx(truth, rel=1e-4)
    assert encoded["recon_mse"] > encoded["recon_mse_model"], "moved items are reconstructed worse"
    assert days["day2"]["manifest"]["metrics"]["encode"]["recon_mse"] == encoded["recon_mse"]
    dedup = days["day1"]["encoded"]  # dedup moves nobody: both figures agree with the published IDs
    assert dedup["recon_mse"] == dedup["recon_mse_model"] == pytest.approx(
        published_recon_mse(days["day1"]["version"], RunFolder(days["base"] / "work" / "2026-02-01").embeddings),
        rel=1e-4)


@pytest.mark.airflow
def test_incremental_mode_through_the_dag_over_three_consecutive_snapshots(airflow_db, pipeline_dag, roots):
    """The real DAG (dag.test) with mode=incremental on three days: the first retrains, the next two reuse the
    published model, keep every unchanged item's ID, and give new items IDs no kept item has."""
    from tests.helpers import run, states, xcoms

    pool = read_embeddings(synth(roots["embeddings"].parent / "pool.parquet", 1400, dim=DIM, seed=7))
    days = {"2026-06-01": slice(0, 1000), "2026-06-02": slice(100, 1200), "2026-06-03": slice(150, 1400)}
    decisions, maps = {}, {}
    for day, rows in days.items():
        write_day(roots["embeddings"] / day, pool.ids[rows], pool.vectors[rows])
        dag_run = run(pipeline_dag, day, mode="incremental", min_items=500, max_recon_mse=0.1)
        assert str(dag_run.state) == "success", states(dag_run)
        decisions[day] = xcoms(dag_run)["train_rqvae"]["plan"]
        maps[day] = id_map(roots["publish"] / day)
        assert read_json(roots["publish"] / day / "manifest.json")["airflow"]["run_id"] == dag_run.run_id
    first, second, third = days
    assert decisions[first]["used"] == "retrain" and decisions[second]["used"] == decisions[third]["used"] == \
        "incremental"
    for earlier, later in ((first, second), (second, third)):
        base = Path(decisions[later]["base_version"])
        assert base.name == earlier and base.resolve() == (roots["publish"] / earlier).resolve()
        kept = set(maps[earlier]) & set(maps[later])
        assert kept and all(maps[later][i] == maps[earlier][i] for i in kept), f"{later} renamed a kept item"
        added = set(maps[later]) - set(maps[earlier])
        assert len(added) == 200
        assert len(set(maps[later].values())) == len(maps[later]), "an ID given twice"
    checksums = {read_json(roots["publish"] / d / "manifest.json")["checksums"]["model"] for d in days}
    assert len(checksums) == 1, "incremental runs publish the first day's model"
    assert read_json(roots["publish"] / "latest.json")["snapshot"] == third
