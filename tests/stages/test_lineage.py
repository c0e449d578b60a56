"""Continuity between versions through the real include/ stages: retired IDs are never handed to another item
while reserved (three snapshots after the first, with removals, clones of removed items, a returning item),
every version carries its migration map, serving index and collision audit, and an aligned retrain keeps far
more IDs than an unaligned one while its published model still encodes exactly to the published codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from include.files import read_json
from include.layout import RunFolder
from include.stages.load_embeddings import load_embeddings
from include.stages.train_rqvae import train_rqvae
from include.stages.validate_codes import validate_codes
from include.stages.validate_dims import validate_dims
from rqvae.config import CodeChecks, InputChecks, ModelConfig, RetrainPolicy, TrainConfig
from rqvae.encoding.encode import encode_array
from rqvae.ids.align import apply_permutations, level_permutations, max_weight_assignment, permute_codebooks_
from rqvae.ids.audit import _ranks
from rqvae.ids.collisions import collision_movers, resolve_collisions
from rqvae.ids.lineage import Lineage, PreviousIds, RetiredIds, migration_map
from rqvae.ids.serving import ServingIndex
from rqvae.io.checkpoint import load_model
from rqvae.io.idfile import read_semantic_ids
from rqvae.io.readers import read_embeddings
from rqvae.io.synth import synth
from tests.helpers import encode_all, publish_work, run_info

DIM = 16
MODEL = ModelConfig(input_dim=DIM, num_codebooks=2, codebook_size=16)


def run_day(base: Path, day: str, ids: np.ndarray, x: np.ndarray, mode: str, **kw) -> dict:
    """load -> validate -> train (or reuse, maybe align) -> encode + resolve -> validate -> publish."""
    work, root, source = base / "work" / day, base / "published", base / "emb" / day
    source.mkdir(parents=True, exist_ok=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), DIM)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "embedding": emb}), source / "part-0.parquet")
    (source / "_SUCCESS").touch()
    folder = RunFolder(work)
    loaded = load_embeddings(source, work)
    validate_dims(loaded["path"], folder.input_report, InputChecks(expected_dim=DIM, min_items=1))
    training = TrainConfig(epochs=1, batch_size=256, seed=kw.get("seed", 0))
    policy = RetrainPolicy(mode=mode, align_retrain=kw.get("align", "anchor"))
    trained = train_rqvae(run_info(work, publish_root=root, snapshot=day), loaded["path"], MODEL, training, policy)
    encoded = encode_all(trained["model_path"], loaded["path"], work, collision_mode=kw.get("collision_mode"),
                         plan=trained["plan"], publish_root=root, snapshot=day, retire_after=kw.get("retire_after", 2))
    validate_codes(encoded["path"], loaded["path"], folder.codes_report, CodeChecks(min_unique_ratio=0.01),
                   codebook_sizes=encoded["codebook_size"], recon_mse=encoded["recon_mse"])
    version = Path(publish_work(day, work, root, loaded=loaded, trained=trained, encoded=encoded)["version_path"])
    manifest = read_json(version / "manifest.json")
    return {"trained": trained, "encoded": encoded, "version": version, "manifest": manifest}


def id_set(codes: np.ndarray, dedup: np.ndarray) -> set[tuple]:
    return {(*c, int(d)) for c, d in zip(codes.tolist(), dedup.tolist(), strict=True)}


def ids_of(version: Path) -> dict[int, tuple]:
    ids, codes, dedup = read_semantic_ids(version / "semantic_ids.parquet")
    return {int(i): (*c, int(d)) for i, c, d in zip(ids, codes.tolist(), dedup, strict=True)}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    base = tmp_path_factory.mktemp("lineage")
    return base, read_embeddings(synth(base / "pool.parquet", 3600, dim=DIM, seed=7))


@pytest.fixture(scope="module")
def snapshots(pool) -> dict:
    """Day 1 retrains on 3000 items; days 2-4 run incrementally with retire_after=2. Day 2 removes R1 and adds
    clones of R1's embeddings under new ids (which would land on R1's IDs); day 3 removes R2, adds its clones,
    brings 10 R1 items back unchanged; day 4 adds new items. Collisions: dedup, then reassign on day 3."""
    base, items = pool
    ids, x = items.ids, items.vectors
    fresh = ids.max() + 1 + np.arange(1000)
    r1, r2 = np.arange(0, 60), np.arange(60, 120)
    day1 = (ids[:3000], x[:3000])
    keep2 = np.arange(60, 3000)
    day2 = (np.r_[ids[keep2], fresh[:60], ids[3000:3100]], np.r_[x[keep2], x[r1], x[3000:3100]])
    keep3 = np.r_[np.arange(120, 3000), np.arange(3000, 3100)]
    day3 = (np.r_[ids[keep3], fresh[:60], fresh[60:120], ids[r1[:10]], ids[3100:3200]],
            np.r_[x[keep3], x[r1], x[r2], x[r1[:10]], x[3100:3200]])
    day4 = (np.r_[day3[0], ids[3200:3300]], np.r_[day3[1], x[3200:3300]])
    runs = {
        "d1": run_day(base, "2026-03-01", *day1, "retrain"),
        "d2": run_day(base, "2026-03-02", *day2, "incremental"),
        "d3": run_day(base, "2026-03-03", *day3, "incremental", collision_mode="reassign"),
        "d4": run_day(base, "2026-03-04", *day4, "incremental"),
    }
    return {"runs": runs, "ids": ids, "r1": ids[r1], "r2": ids[r2], "fresh": fresh}


def test_retired_ids_stay_reserved_for_retire_after_versions_and_are_never_reused(snapshots):
    runs = snapshots["runs"]
    d1 = ids_of(runs["d1"]["version"])
    r1_ids, r2_ids = {d1[int(i)] for i in snapshots["r1"]}, {d1[int(i)] for i in snapshots["r2"]}
    expected = {"d1": (set(), set()), "d2": (r1_ids, set()), "d3": (r1_ids, r2_ids), "d4": (set(), r2_ids)}
    for day, (must_r1, must_r2) in expected.items():
        version = runs[day]["version"]
        retired = RetiredIds.read(version / "retired_ids.parquet")
        reserved = id_set(retired.codes, retired.dedup)
        published = set(ids_of(version).values())
        assert not reserved & published, f"{day}: a reserved ID was given to an item"
        assert must_r1 - {d1[int(i)] for i in snapshots["r1"][:10]} <= reserved and must_r2 <= reserved, day
        assert runs[day]["manifest"]["retired"]["reserved"] == len(retired), day
        assert retired.age.max(initial=0) <= 2
    d2_ret = RetiredIds.read(runs["d2"]["version"] / "retired_ids.parquet")
    assert len(d2_ret) == 60 and set(d2_ret.retired_in) == {"2026-03-02"} and (d2_ret.age == 1).all()
    d4 = runs["d4"]["manifest"]["retired"]
    assert d4["expired"] == 50 and d4["reserved"] == 60  # R1 (less the 10 that came back) aged out, R2 still held
    # the clones of removed items got other IDs, although the model puts them on the very same codes
    d2 = ids_of(runs["d2"]["version"])
    clones = [d2[int(i)] for i in snapshots["fresh"][:60]]
    assert [c[:-1] for c in clones] == [d1[int(i)][:-1] for i in snapshots["r1"]]
    assert not set(clones) & r1_ids


def test_a_returning_item_with_the_same_embedding_takes_its_reserved_id_back(snapshots):
    runs = snapshots["runs"]
    d1, d3 = ids_of(runs["d1"]["version"]), ids_of(runs["d3"]["version"])
    back = snapshots["r1"][:10]
    assert all(d3[int(i)] == d1[int(i)] for i in back)
    assert runs["d3"]["manifest"]["retired"]["reclaimed"] == 10


def test_every_version_carries_its_migration_map(snapshots):
    runs = snapshots["runs"]
    for prev_day, day in (("d1", "d2"), ("d2", "d3"), ("d3", "d4")):
        before, after = ids_of(runs[prev_day]["version"]), ids_of(runs[day]["version"])
        table = pq.read_table(runs[day]["version"] / "migration.parquet").to_pylist()
        assert len(table) == len(set(before) | set(after))
        for row in table:
            item = row["item_id"]
            old = None if row["old_codes"] is None else (*row["old_codes"], row["old_dedup"])
            new = None if row["new_codes"] is None else (*row["new_codes"], row["new_dedup"])
            assert old == before.get(item) and new == after.get(item)
            assert row["status"] == ("new" if old is None else "removed" if new is None else
                                     "kept" if old == new else "changed")
        summary = runs[day]["manifest"]["migration"]
        counts = {s: sum(r["status"] == s for r in table) for s in ("kept", "changed", "new", "removed")}
        assert {k: summary[k] for k in counts} == counts and summary["previous"] == runs[prev_day]["version"].name
    d2 = runs["d2"]["manifest"]["migration"]
    assert d2["removed"] == 60 and d2["new"] == 160 and d2["changed"] == 0 and d2["churn"] == 0.0
    assert runs["d1"]["manifest"]["migration"]["previous"] is None
    assert runs["d1"]["manifest"]["migration"]["new"] == 3000
    page = (runs["d2"]["version"] / "report" / "index.html").read_text()
    assert "migration" in page and "retired IDs" in page and "collision audit" in page


def test_serving_index_and_collision_audit_are_published(snapshots):
    run = snapshots["runs"]["d3"]
    version, manifest = run["version"], run["manifest"]
    ids, codes, dedup = read_semantic_ids(version / "semantic_ids.parquet")
    index = ServingIndex.load(version / "serving_index")
    assert np.array_equal(index.lookup(codes, dedup), ids)
    assert manifest["serving_index"]["n_items"] == len(ids) and "serving_index/meta.json" in manifest["files"]
    audit = pq.read_table(version / "collision_audit.parquet").to_pylist()
    summary = manifest["collision_audit"]
    assert summary["collision_mode"] == "reassign" and summary["moved"] > 0
    assert summary["moved"] == manifest["collisions"]["moved"] and len(audit) == summary["moved"] + summary["stuck"]
    published = ids_of(version)
    model = load_model(version / "model")
    emb = read_embeddings(RunFolder(version.parent.parent / "work" / version.name).embeddings)
    row_of = {int(i): r for r, i in enumerate(emb.ids)}
    for row in audit:
        assert tuple(row["new_codes"]) + (row["dedup"],) == published[row["item_id"]]
        if row["moved"]:
            assert row["distance_rank"] >= 1 and 0 <= row["free_rank"] <= row["distance_rank"]
            assert row["new_codes"][:-1] == row["original_codes"][:-1] and row["extra_distance"] >= 0
    moved = [r for r in audit if r["moved"]][:20]
    x = torch.from_numpy(emb.vectors[[row_of[r["item_id"]] for r in moved]])
    fresh = encode_array(model, x.numpy())
    assert fresh.tolist() == [r["original_codes"] for r in moved]  # the model's own codes, before the move
    err = {col: ((model.decode_codes(torch.tensor([r[col] for r in moved])) - x) ** 2).mean(1).double().numpy()
           for col in ("original_codes", "new_codes")}
    got = np.array([r["extra_recon_mse"] for r in moved])
    assert np.allclose(got, err["new_codes"] - err["original_codes"], atol=1e-6)


def test_free_rank_counts_the_codes_that_were_free_before_anyone_moved():
    rng = np.random.default_rng(3)
    n, sizes = 200, [3, 3, 6]
    codes = np.column_stack([rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n)]).astype(np.int32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    dist = rng.random((n, 6)).astype(np.float32)
    out = resolve_collisions(ids, codes, sizes, "reassign", lambda rows: dist[rows])
    movers = collision_movers(ids, codes, sizes)
    moved = np.flatnonzero(movers & (out.codes != codes).any(1))
    free, rank, _ = _ranks(moved, codes, out.codes, codes[~movers], sizes, lambda rows: dist[rows])
    for i, row in enumerate(moved):
        taken = {int(c[-1]) for c in codes[~movers] if (c[:-1] == codes[row, :-1]).all()}
        chosen = out.codes[row, -1]
        nearer = [c for c in range(6) if dist[row, c] < dist[row, chosen]]
        assert rank[i] == len(nearer) and free[i] == len([c for c in nearer if c not in taken])
    assert (free == 0).mean() > 0.5  # greedy: most movers get the nearest code that was free


def test_retire_after_zero_frees_an_id_at_once_and_one_reserves_it_for_one_version():
    prev = PreviousIds("v1", np.array([1, 2, 3]), np.array([[0, 0], [0, 0], [1, 1]], np.int32),
                       np.array([0, 1, 0], np.int32))
    ids, codes = np.array([1, 3, 9]), np.array([[0, 0], [1, 1], [0, 0]], np.int32)  # 2 left, 9 lands on its codes

    def resolve(lineage: Lineage) -> list[tuple]:
        c, f, fd, reserved = lineage.prepare(ids, codes, np.zeros(3, bool), np.zeros(3, np.int32), None)
        out = resolve_collisions(ids, c, [2, 2], "dedup", fixed=f, fixed_dedup=fd, reserved=reserved)
        return [(*a, int(b)) for a, b in zip(out.codes.tolist(), out.dedup.tolist(), strict=True)]

    assert resolve(Lineage(prev, "v2", retire_after=0)) == [(0, 0, 0), (1, 1, 0), (0, 0, 1)]  # item 2's ID reused
    held = Lineage(prev, "v2", retire_after=1)
    assert resolve(held) == [(0, 0, 0), (1, 1, 0), (0, 0, 2)]
    assert held.retired_out.ids.tolist() == [2] and held.stats["reserved"] == 1
    v2 = PreviousIds("v2", ids, codes, np.array([0, 0, 2], np.int32))
    later = Lineage(v2, "v3", retire_after=1, retired=held.retired_out)
    later.prepare(ids, codes, np.zeros(3, bool), np.zeros(3, np.int32), None)
    assert len(later.retired_out) == 0 and later.stats["expired"] == 1


def test_alignment_permutes_codebook_rows_so_the_model_encodes_to_the_aligned_codes(pool, tmp_path):
    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.training.loop import train

    _, items = pool
    x = items.vectors[:2000]
    cfg = ModelConfig(input_dim=DIM, num_codebooks=2, codebook_size=[16, 16])
    models = [train(x, cfg, TrainConfig(epochs=1, batch_size=256, seed=s), show_progress=False).model
              for s in (0, 1)]
    old, new = (encode_array(m, x) for m in models)
    perms = level_permutations(old, new, [16, 16])
    rows = [models[1].quantizer.codebook(lv).detach().clone() for lv in range(2)]
    permute_codebooks_(models[1], perms)
    for level, perm in enumerate(perms):
        assert torch.equal(models[1].quantizer.codebook(level)[torch.from_numpy(perm)], rows[level])
    aligned = encode_array(models[1], x)
    assert (aligned == apply_permutations(new, perms)).all(1).mean() > 0.999  # only exact ties may differ
    assert (aligned == old).mean() > (new == old).mean() + 0.3
    w = np.array([[1, 9, 0], [8, 0, 0], [0, 0, 5]])
    assert max_weight_assignment(w).tolist() == [1, 0, 2]


@pytest.mark.parametrize("method", ["permute", "anchor"])
def test_aligned_retrain_keeps_more_ids_and_its_model_encodes_to_them(pool, method):
    base, items = pool
    root = base / f"align-{method}"
    ids, x = items.ids[:3000], items.vectors[:3000]
    first = run_day(root, "2026-04-01", ids, x, "retrain")
    second = run_day(root, "2026-04-02", ids, x, "retrain", seed=1, align=method)
    alignment = second["manifest"]["migration"]["alignment"]
    assert alignment["applied"] and alignment["base"] == "2026-04-01" and alignment["common_items"] == 3000
    assert alignment["method"] == ("anchored" if method == "anchor" else "permuted")
    assert alignment["level1_churn_before"] > 0.5 > alignment["level1_churn_after"]
    assert alignment["id_churn_after"] < alignment["id_churn_before"]
    assert alignment["id_churn_after"] == second["manifest"]["migration"]["churn"]
    if method == "anchor":  # refitting from the previous codebooks keeps most full IDs, at no recon cost here
        assert alignment["id_churn_after"] < 0.5
        assert alignment["recon_mse_aligned"] <= alignment["recon_mse_trained"] * 1.02
    published = ids_of(second["version"])
    codes = np.array([published[int(i)][:-1] for i in ids])
    assert np.array_equal(encode_array(load_model(second["version"] / "model"), x), codes)  # exact (dedup mode)
    assert read_json(second["version"] / "model" / "config.json")["extra"]["alignment"]["method"] == alignment["method"]
    assert first["manifest"]["migration"]["alignment"]["applied"] is False
    if method == "anchor":
        return
    # without alignment (and with catalogue changes) nothing is reserved: the code space is new
    third = run_day(root, "2026-04-03", items.ids[100:3100], items.vectors[100:3100], "retrain", align="off")
    migration = third["manifest"]["migration"]
    assert migration["alignment"] is None and migration["new"] == 100 and migration["removed"] == 100
    assert third["manifest"]["retired"]["reserved"] == 0 and "reset" in third["manifest"]["retired"]["reason"]
    table, summary = migration_map(None, ids, np.zeros((3000, 2), np.int32), np.arange(3000, dtype=np.int32))
    assert summary["new"] == 3000 and table.column("old_codes").null_count == 3000
