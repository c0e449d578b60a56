"""Sharded encoding: any split of the artifact into row ranges gives exactly the IDs of one pass over it.

The DAG maps `encode_items` over the shards `plan_shards` cuts and `resolve_collisions` merges them; these tests
hold the library pieces (row-range reads, raw shards, the merge) to the single-pass `encode_file`, for both
collision modes and for an incremental run's pinned IDs, then run the real DAG with three shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.layout import run_key
from include.stages.plan_shards import plan_shards
from include.stages.resolve_collisions import check_shards
from rqvae.cli import main
from rqvae.config import EncodeOptions, ModelConfig, TrainConfig
from rqvae.encoding.encode import PinnedIds, encode_file
from rqvae.encoding.partitions import plan_partitions
from rqvae.encoding.shards import encode_shard, merge_shards
from rqvae.errors import InputError
from rqvae.io.checkpoint import save_model
from rqvae.io.idfile import merge_semantic_ids, read_semantic_ids, semantic_id_parts
from rqvae.io.readers import embeddings_table, iter_embeddings, read_embeddings
from rqvae.io.synth import synth
from rqvae.training.loop import train
from tests.helpers import DIM, encode_all, make_snapshot, run, states, xcoms

N = 6000
ROW_GROUP = 1000  # shard bounds below fall inside row groups, not on them


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model and a one-file artifact with small row groups (what load_embeddings writes, in miniature)."""
    folder = tmp_path_factory.mktemp("shards")
    data = read_embeddings(synth(folder / "src.parquet", N, dim=DIM, seed=5))
    artifact = folder / "embeddings.parquet"
    pq.write_table(embeddings_table(data.ids, data.vectors), artifact, row_group_size=ROW_GROUP)
    cfg = ModelConfig(input_dim=DIM, num_codebooks=2, codebook_size=[16, 16])
    model = train(data.vectors, cfg, TrainConfig(epochs=1, batch_size=512, init_items=N, seed=0),
                  show_progress=False).model
    return model, artifact, folder


def test_plan_covers_every_row_once_in_near_equal_shards():
    for n, size in [(1, 1), (10, 3), (6000, 1700), (5_700_000, 2_000_000), (999, 1000)]:
        shards = plan_shards(n, EncodeOptions(shard_size=size), None)
        assert len(shards) == -(-n // size)
        assert shards[0]["start"] == 0 and shards[-1]["stop"] == n
        assert all(a["stop"] == b["start"] for a, b in zip(shards, shards[1:], strict=False))
        sizes = [s["stop"] - s["start"] for s in shards]
        assert max(sizes) <= size and max(sizes) - min(sizes) <= 1, sizes
        assert [s["index"] for s in shards] == list(range(len(shards)))
    with pytest.raises(ValueError, match="shard_size"):
        EncodeOptions(shard_size=0)
    with pytest.raises(ValueError, match="nothing to shard"):
        plan_shards(0, EncodeOptions(shard_size=10), None)
    assert len(plan_shards(5000, EncodeOptions(shard_size=5), 1000)) == 1000
    with pytest.raises(ValueError, match=r"1001 shards, more than the 1000 .* use shard_size >= 6"):
        plan_shards(5001, EncodeOptions(shard_size=5), 1000)


def test_row_ranges_read_exactly_those_rows_across_row_groups_and_parts(tmp_path):
    data = read_embeddings(synth(tmp_path / "src.parquet", 2500, dim=4, seed=1))
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, (lo, hi) in enumerate([(0, 1100), (1100, 2500)]):  # two files, 300-row groups
        table = embeddings_table(data.ids[lo:hi], data.vectors[lo:hi])
        pq.write_table(table, parts / f"part-{i:05d}.parquet", row_group_size=300)
    for start, stop in [(0, 2500), (0, 1), (299, 301), (1000, 1200), (1099, 1101), (2400, 2500), (5, 2495)]:
        batches = list(iter_embeddings(parts, batch_rows=128, rows=(start, stop)))
        ids = np.concatenate([b[0] for b in batches])
        vectors = np.concatenate([b[1] for b in batches])
        assert np.array_equal(ids, data.ids[start:stop]), (start, stop)
        assert np.array_equal(vectors, data.vectors[start:stop]), (start, stop)
        assert max(len(b[0]) for b in batches) <= 128
    with pytest.raises(InputError, match="past the end"):
        list(iter_embeddings(parts, rows=(2000, 2600)))
    np.save(tmp_path / "m.npy", data.vectors)
    np.save(tmp_path / "m_ids.npy", data.ids)
    with pytest.raises(InputError, match="needs a Parquet input"):
        list(iter_embeddings(tmp_path / "m.npy", rows=(0, 10)))


def sharded(model, artifact: Path, out: Path, shard_size: int, **kw) -> dict:
    """What the DAG does: one encode_shard per planned range, then one merge."""
    pinned = kw.pop("pinned", None)
    paths = []
    for shard in plan_shards(N, EncodeOptions(shard_size=shard_size), None):
        path = out / "shards" / f"shard-{shard['index']}.parquet"
        encode_shard(model, artifact, path, (shard["start"], shard["stop"]), pinned=pinned, show_progress=False)
        paths.append(path)
    options = EncodeOptions(**{k: kw.pop(k) for k in ("collision_mode", "resolve_rows") if k in kw})
    return merge_shards(model, paths, artifact, out / "semantic_ids", options, **kw)


@pytest.mark.parametrize("collision_mode", ["dedup", "reassign"])
@pytest.mark.parametrize("shard_size", [1700, N])
def test_sharded_ids_equal_the_single_pass(setup, tmp_path, collision_mode, shard_size):
    model, artifact, _ = setup
    single = encode_file(model, artifact, tmp_path / "single.parquet", collision_mode=collision_mode,
                         show_progress=False)
    merged = sharded(model, artifact, tmp_path, shard_size, collision_mode=collision_mode)
    expected = read_semantic_ids(tmp_path / "single.parquet")
    got = read_semantic_ids(tmp_path / "semantic_ids")
    for a, b in zip(expected, got, strict=True):
        assert np.array_equal(a, b)
    assert single["collision_rate_pre"] > 0, "the case must have collisions to resolve"
    if collision_mode == "reassign":
        assert merged["moved"] == single["moved"] > 0
    assert len(semantic_id_parts(tmp_path / "semantic_ids")) == merged["n_shards"] == -(-N // shard_size)
    for key in ("unique_ratio", "collision_rate_pre", "collision_rate_post", "max_dedup", "n_items", "usage"):
        assert merged[key] == single[key], key
    assert merged["recon_mse"] == pytest.approx(single["recon_mse"], rel=1e-5)


def test_pinned_ids_survive_sharding(setup, tmp_path):
    """An incremental run: half the items keep published IDs, the rest are resolved around them."""
    model, artifact, _ = setup
    encode_file(model, artifact, tmp_path / "published.parquet", show_progress=False)
    ids, codes, dedup = read_semantic_ids(tmp_path / "published.parquet")
    keep = np.sort(np.random.default_rng(0).choice(len(ids), len(ids) // 2, replace=False))
    order = np.argsort(ids[keep])
    pinned = PinnedIds(ids[keep][order], codes[keep][order], dedup[keep][order] + 1)  # dedup 1.. forces a shift
    single = encode_file(model, artifact, tmp_path / "single.parquet", collision_mode="reassign", pinned=pinned,
                         show_progress=False)
    merged = sharded(model, artifact, tmp_path, 1700, collision_mode="reassign", pinned=pinned)
    for a, b in zip(read_semantic_ids(tmp_path / "single.parquet"), read_semantic_ids(tmp_path / "semantic_ids"),
                    strict=True):
        assert np.array_equal(a, b)
    assert merged["n_pinned"] == single["n_pinned"] == len(keep)


@pytest.mark.parametrize("collision_mode", ["dedup", "reassign"])
def test_cli_encode_gives_the_pipeline_stages_ids_and_recon_mse(setup, tmp_path, capsys, collision_mode):
    """`rqvae encode` and the DAG's encode_items (three shards) + resolve_collisions, on one saved model: the same
    item_id, codes and dedup, and the same recon MSE, the one of the IDs as published (after `reassign` moves)."""
    model, artifact, _ = setup
    model_dir = save_model(model, tmp_path / "model")
    out = tmp_path / "cli.parquet"
    code = main(["-q", "encode", "--model", str(model_dir), "--embeddings", str(artifact), "--out", str(out),
                 "--collision-mode", collision_mode])
    assert code == 0
    cli = json.loads(capsys.readouterr().out)
    staged = encode_all(model_dir, artifact, tmp_path / "work", shard_size=2500, collision_mode=collision_mode)
    assert staged["n_shards"] == 3
    for a, b in zip(read_semantic_ids(out), read_semantic_ids(staged["path"]), strict=True):
        assert np.array_equal(a, b)
    for key in ("n_items", "collision_mode", "moved", "stuck", "max_dedup", "unique_ratio", "collision_rate_post"):
        assert cli[key] == staged[key], key
    for key in ("recon_mse", "recon_mse_model"):  # the CLI prints 6 decimals
        assert cli[key] == pytest.approx(staged[key], abs=1e-6), key
    delta = (staged.get("collision_audit") or {}).get("recon_mse_delta")
    if collision_mode == "reassign":
        assert cli["moved"] > 0 and delta is not None and delta > 0
        assert staged["recon_mse"] == pytest.approx(staged["recon_mse_model"] + delta, rel=1e-9)
        assert cli["recon_mse"] == pytest.approx(cli["recon_mse_model"] + delta, abs=2e-6)
    else:
        assert delta is None and cli["recon_mse"] == cli["recon_mse_model"]


def test_merge_writes_hashes_and_refuses_a_bad_shard_set(setup, tmp_path):
    model, artifact, _ = setup
    merged = sharded(model, artifact, tmp_path, 2000, hashes_path=tmp_path / "hashes.parquet")
    hashes = pq.read_table(tmp_path / "hashes.parquet")
    assert hashes.num_rows == merged["n_items"] == N
    assert np.all(np.diff(hashes.column("item_id").to_numpy()) > 0), "sorted by item id"
    shards = [{"index": i, "count": 3, "rows": [i * 2000, (i + 1) * 2000], "path": "x"} for i in range(3)]
    assert [s["index"] for s in check_shards(list(reversed(shards)))] == [0, 1, 2]
    with pytest.raises(ValueError, match="expected shards 0..2"):
        check_shards(shards[:1] + shards[2:])
    with pytest.raises(ValueError, match="expected to start at 2000"):
        check_shards([shards[0], {**shards[1], "rows": [2500, 4000]}, shards[2]])
    paths = sorted((tmp_path / "shards").glob("*.parquet"))
    with pytest.raises(InputError, match="duplicate item ids"):
        merge_shards(model, [paths[0], paths[0]], artifact, tmp_path / "dup", EncodeOptions())
    assert not (tmp_path / "dup").exists()


def test_parts_read_and_merge_as_one_dataset(setup, tmp_path):
    model, artifact, _ = setup
    sharded(model, artifact, tmp_path, 1700)
    parts = semantic_id_parts(tmp_path / "semantic_ids")
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(4)]
    rows = merge_semantic_ids(tmp_path / "semantic_ids", tmp_path / "one.parquet")
    whole = read_semantic_ids(tmp_path / "semantic_ids")
    assert rows == len(whole[0]) == N
    for a, b in zip(whole, read_semantic_ids(tmp_path / "one.parquet"), strict=True):
        assert np.array_equal(a, b)
    assert pq.read_table(tmp_path / "semantic_ids").num_rows == N, "readable as a dataset by plain pyarrow"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no part"):
        read_semantic_ids(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-00000.parquet").write_bytes((parts[0]).read_bytes())
    pq.write_table(pa.table({"item_id": [1], "codes": [[1, 2, 3]], "dedup": [0]}), bad / "part-00001.parquet")
    with pytest.raises(InputError):
        read_semantic_ids(bad)


def _by_id(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, codes, dedup = read_semantic_ids(path)
    order = np.argsort(ids)
    return ids[order], codes[order], dedup[order]


def test_groups_pack_whole_level1_codes_within_the_bound():
    level1 = np.array([300, 300, 300, 2500, 0, 100, 900, 50])
    group = plan_partitions(level1, 1000)
    assert group.tolist() == [0, 0, 0, 1, 2, 2, 2, 3]
    sizes = np.bincount(group, weights=level1)
    assert all(size <= 1000 or np.sum(group == g) == 1 for g, size in enumerate(sizes)), "only a lone code may overflow"
    assert np.all(np.diff(group) >= 0) and plan_partitions(level1, 10**9).tolist() == [0] * 8


@pytest.mark.parametrize("collision_mode", ["dedup", "reassign"])
def test_resolving_groups_of_level1_codes_gives_the_single_pass_ids(setup, tmp_path, collision_mode):
    """Out of core: at most ~1000 items in memory at once, the same IDs, figures, hash file and audit as one piece."""
    model, artifact, _ = setup
    whole = sharded(model, artifact, tmp_path / "whole", 1700, collision_mode=collision_mode,
                    hashes_path=tmp_path / "whole" / "hashes.parquet", errors_path=tmp_path / "whole" / "errors.npy",
                    audit_path=tmp_path / "whole" / "audit.parquet")
    groups = sharded(model, artifact, tmp_path / "groups", 1700, collision_mode=collision_mode, resolve_rows=1000,
                     hashes_path=tmp_path / "groups" / "hashes.parquet",
                     errors_path=tmp_path / "groups" / "errors.npy", audit_path=tmp_path / "groups" / "audit.parquet")
    assert whole["n_parts"] == whole["n_shards"] == 4
    parts = semantic_id_parts(tmp_path / "groups" / "semantic_ids")
    assert groups["n_parts"] == len(parts) > 4
    level1 = [set(read_semantic_ids(part)[1][:, 0].tolist()) for part in parts]
    assert all(not (a & b) for i, a in enumerate(level1) for b in level1[i + 1:]), "a level-1 code in one group only"
    assert max(pq.read_metadata(part).num_rows for part in parts) <= 1000 or len(level1[0]) == 1
    for a, b in zip(_by_id(tmp_path / "whole" / "semantic_ids"), _by_id(tmp_path / "groups" / "semantic_ids"),
                    strict=True):
        assert np.array_equal(a, b)
    assert whole["collision_rate_pre"] > 0 and (collision_mode == "dedup" or whole["moved"] > 0)
    for key in ("n_items", "n_shards", "unique_ratio", "collision_rate", "collision_rate_pre", "collision_rate_post",
                "max_bucket", "usage", "perplexity", "moved", "stuck", "max_dedup", "n_encoded", "n_pinned",
                "recon_error_quantiles", "collision_mode"):
        assert groups[key] == whole[key], key
    for key in ("recon_mse", "recon_mse_model"):
        assert groups[key] == pytest.approx(whole[key], rel=1e-9), key
    hashes = [pq.read_table(tmp_path / f / "hashes.parquet") for f in ("whole", "groups")]
    assert hashes[0].equals(hashes[1])
    assert np.array_equal(np.load(tmp_path / "groups" / "errors.npy"), np.load(tmp_path / "whole" / "errors.npy"))
    audit_whole, audit_groups = (pq.read_table(tmp_path / f / "audit.parquet") for f in ("whole", "groups"))
    assert audit_groups.num_rows == audit_whole.num_rows == (whole["moved"] + whole["stuck"])
    for name in audit_whole.column_names:
        a, b = audit_whole.column(name).to_pylist(), audit_groups.column(name).to_pylist()
        assert a == (pytest.approx(b, rel=1e-5) if "extra" in name else b), name
    assert groups["collision_audit"].keys() == whole["collision_audit"].keys()
    for key, value in whole["collision_audit"].items():
        assert groups["collision_audit"][key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value)
    assert not [p.name for p in (tmp_path / "groups").iterdir() if p.name.startswith(".")], "no spill left behind"


def test_a_duplicate_id_in_two_groups_fails_and_keeps_the_previous_ids(setup, tmp_path):
    """The duplicate check covers all shards, not one group: the item's two rows differ, so their codes may too."""
    model, artifact, _ = setup
    sharded(model, artifact, tmp_path, 3000, resolve_rows=1000)
    before = read_semantic_ids(tmp_path / "semantic_ids")
    paths = sorted((tmp_path / "shards").glob("*.parquet"))
    first, second = pq.read_table(paths[0]), pq.read_table(paths[1])
    codes = second.column("codes").combine_chunks().flatten().to_numpy().reshape(-1, 2)
    row = int(np.flatnonzero(codes[:, 0] != first.column("codes")[0].as_py()[0])[0])
    victim = first.column("item_id")[0].as_py()
    ids = second.column("item_id").to_numpy().copy()
    ids[row] = victim
    pq.write_table(second.set_column(0, "item_id", pa.array(ids)), paths[1])
    with pytest.raises(InputError, match="duplicate item ids") as err:
        merge_shards(model, paths, artifact, tmp_path / "semantic_ids", EncodeOptions(resolve_rows=1000))
    assert str(victim) in str(err.value)
    for a, b in zip(before, read_semantic_ids(tmp_path / "semantic_ids"), strict=True):
        assert np.array_equal(a, b)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging or spill left behind"


def test_dag_with_three_shards_publishes_the_single_pass_ids(pipeline_dag, airflow_db, roots):
    """The real DAG: encode_items runs as three mapped instances and resolve_collisions holds at most ~1000 items
    at once (groups of level-1 codes); the published IDs equal encode_file's."""
    make_snapshot(roots, "2026-08-01", n=3000, seed=9)
    dag_run = run(pipeline_dag, "2026-08-01", shard_size=1000, collision_mode="reassign", resolve_rows=1000)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    mapped = [ti for ti in dag_run.get_task_instances() if ti.task_id == "encode_items"]
    assert sorted(ti.map_index for ti in mapped) == [0, 1, 2]
    work = roots["work"] / "2026-08-01" / run_key(dag_run.run_id)
    version = roots["publish"] / "2026-08-01"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["counts"]["encode_shards"] == 3
    assert manifest["metrics"]["encode"]["n_shards"] == 3
    n_parts = manifest["metrics"]["encode"]["n_parts"]
    parts = semantic_id_parts(work / "semantic_ids")
    assert len(parts) == manifest["counts"]["id_parts"] == n_parts >= 3
    level1 = [set(read_semantic_ids(part)[1][:, 0].tolist()) for part in parts]
    assert sum(len(codes) for codes in level1) == len(set().union(*level1)), "parts are groups of level-1 codes"
    single = encode_file(work / "model", work / "embeddings.parquet", work / "single.parquet",
                         collision_mode="reassign", show_progress=False)
    assert single["moved"] > 0
    for a, b in zip(_by_id(work / "single.parquet"), _by_id(version / "semantic_ids.parquet"), strict=True):
        assert np.array_equal(a, b)
    values = xcoms(dag_run)
    assert isinstance(values["plan_shards"], list) and len(values["plan_shards"]) == 3
    assert all(len(json.dumps(v)) < 8192 for v in values.values()), "XComs carry paths and figures, never data"


def test_a_shard_size_airflow_cannot_map_fails_before_training(pipeline_dag, airflow_db, roots, monkeypatch, capfd):
    """plan_shards runs before train_rqvae: a bad shard_size costs seconds, names the fix, publishes nothing."""
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "100")
    make_snapshot(roots, "2026-08-02", n=3000, seed=9)
    before = sorted(p.name for p in roots["publish"].iterdir()) if roots["publish"].exists() else []
    capfd.readouterr()
    dag_run = run(pipeline_dag, "2026-08-02", shard_size=10)
    log = capfd.readouterr().out
    assert "300 shards, more than the 100 mapped task instances" in log and "use shard_size >= 30" in log
    found = states(dag_run)
    assert found["plan_shards"] == "failed", found
    assert found["train_rqvae"] == found["encode_items"] == found["publish"] == "upstream_failed", found
    after = sorted(p.name for p in roots["publish"].iterdir()) if roots["publish"].exists() else []
    assert after == before
    assert not list((roots["work"] / "2026-08-02").glob("*/model")), "no training happened"
