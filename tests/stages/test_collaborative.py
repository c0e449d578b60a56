"""Collaborative training (rqvae.training.collaborative): the logs it reads, the embeddings it derives, what it changes
and what it must not: weight 0 is today's training bit for bit, nothing of a user's held-out events reaches the model,
and items without interactions still get IDs from their content."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rqvae.config import CodeChecks, InputChecks, ModelConfig, RetrainPolicy, TrainConfig
from rqvae.encoding.encode import encode_array
from rqvae.io.interactions import Interactions, leave_one_out, read_interactions, split_events, write_interactions
from rqvae.modes import Protocol
from rqvae.training.collaborative import (
    ItemSequences,
    collaborative_embeddings,
    item_rows,
    read_sequences,
)
from rqvae.training.loop import train
from tests.helpers import encode_all, run_info

DIM = 16


def _log(rng: np.random.Generator, n_users: int, n_items: int, events: int, ties: bool = True) -> Interactions:
    """Users with 1..2*events events (some below 3, dropped by leave-one-out), with repeated timestamps (ties)
    unless ``ties`` is False."""
    users, items, times = [], [], []
    for u in range(n_users):
        k = int(rng.integers(1, 2 * events))
        users.append(np.full(k, 10_000 + 7 * u))
        items.append(rng.integers(0, n_items, k) * 3 + 5)
        times.append(np.sort(rng.integers(0, 50, k)) if ties else np.sort(rng.choice(10_000, k, replace=False)))
    return Interactions.from_arrays(np.concatenate(users), np.concatenate(items), np.concatenate(times))


def _shuffled_parts(folder, log: Interactions, rng: np.random.Generator, parts: int = 3) -> None:
    """The log in several Parquet parts, rows in random order (as an upstream export may write them)."""
    folder.mkdir(parents=True)
    order = rng.permutation(len(log))
    for i, chunk in enumerate(np.array_split(order, parts)):
        pq.write_table(pa.table({"user_id": log.user_id[chunk], "item_id": log.item_id[chunk],
                                 "timestamp": log.timestamp[chunk], "rating": np.ones(len(chunk))}),
                       folder / f"part-{i:05d}.parquet")
    (folder / "_SUCCESS").touch()


def test_item_rows_maps_ids_and_marks_unknown_items():
    ids = np.array([40, 10, 30, 20], np.int64)
    assert item_rows(np.array([10, 20, 30, 40, 50, 0]), ids).tolist() == [1, 3, 2, 0, -1, -1]


@pytest.mark.parametrize("protocol", list(Protocol))
def test_streamed_holdout_equals_the_evaluation_training_part(tmp_path, protocol):
    """read_sequences(holdout=protocol) learns from exactly the events the evaluation trains its retriever on."""
    rng = np.random.default_rng(0)
    log = _log(rng, n_users=60, n_items=80, events=8)
    folder = tmp_path / "2026-01-01"
    write_interactions(folder, log, part_rows=97)  # sorted parts
    item_ids = np.arange(70, dtype=np.int64)[::-1] * 3 + 5  # items 70..79 have no embedding
    expected = ItemSequences.from_interactions(
        split_events(read_interactions(folder).restrict_items(item_ids), protocol).train_interactions(), item_ids)
    got = read_sequences(folder, item_ids, holdout=protocol)
    np.testing.assert_array_equal(got.rows, expected.rows)
    np.testing.assert_array_equal(got.offsets, expected.offsets)
    assert got.n_events_read == len(log)
    full = read_sequences(folder, item_ids, holdout=None)
    assert full.n_events == int(np.isin(log.item_id, item_ids).sum())
    # rows in random order over several parts (distinct times: ties would make "last" ambiguous): sorted the same
    log = _log(rng, n_users=60, n_items=80, events=8, ties=False)
    _shuffled_parts(tmp_path / "shuffled", log, rng)
    again = read_sequences(tmp_path / "shuffled", item_ids, holdout=protocol)
    expected = ItemSequences.from_interactions(
        split_events(log.restrict_items(item_ids), protocol).train_interactions(), item_ids)
    np.testing.assert_array_equal(again.rows, expected.rows)
    np.testing.assert_array_equal(again.offsets, expected.offsets)


def test_collaborative_embeddings_put_co_consumed_items_together():
    """Two disjoint user communities: items of one community end up near each other, far from the other's."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(80):
        users.append(np.full(12, u))
        items.append(rng.integers(0, 20, 12) + 20 * (u % 2))
    log = Interactions.from_arrays(np.concatenate(users), np.concatenate(items), np.tile(np.arange(12), 80))
    seqs = ItemSequences.from_interactions(log, np.arange(50, dtype=np.int64))  # items 40..49: no events
    emb = collaborative_embeddings(seqs, dim=4, seed=0, unit=True)
    v = emb.vectors
    assert v.shape == (50, 4) and np.allclose(np.linalg.norm(v[:40], axis=1), 1, atol=1e-4)
    assert not v[40:].any()
    sim = v[:40] @ v[:40].T
    same = np.equal.outer(np.arange(40) // 20, np.arange(40) // 20)
    assert sim[same].mean() > 0.5 > sim[~same].mean()
    np.testing.assert_array_equal(v, collaborative_embeddings(seqs, dim=4, seed=0, unit=True).vectors)
    raw = collaborative_embeddings(seqs, dim=4, seed=0).vectors  # V S^1/2: longer for items with more events
    np.testing.assert_allclose(raw[:40] / np.linalg.norm(raw[:40], axis=1, keepdims=True), v[:40], atol=1e-5)


def _clusters(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, DIM))
    label = rng.integers(0, k, n)
    x = centres[label] + 0.35 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), label


MODEL = {"input_dim": DIM, "num_codebooks": 2, "codebook_size": [8, 16], "kmeans_iters": 10}
TRAIN = {"epochs": 2, "batch_size": 128, "seed": 0, "device": "cpu", "collaborative_dim": 8}


def _state(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weight_zero_or_no_logs_is_content_only_training_bit_for_bit():
    x, _ = _clusters(600, 8, seed=1)
    ids = np.arange(600, dtype=np.int64)
    log = _log(np.random.default_rng(2), n_users=40, n_items=200, events=10)
    plain = train(x, ModelConfig(**MODEL), TrainConfig(**TRAIN), show_progress=False)
    zero = train(x, ModelConfig(**MODEL), TrainConfig(**TRAIN, collaborative_weight=0.0), show_progress=False,
                 interactions=log, item_ids=ids)
    assert _same(_state(plain), _state(zero))
    assert "collaborative" not in zero.metrics


def _change_held_out(log: Interactions, ids: np.ndarray) -> Interactions:
    """The same log with another known item in each user's last two events (leave-one-out's validation and test)."""
    starts = np.flatnonzero(np.r_[True, log.user_id[1:] != log.user_id[:-1]])
    ends = np.r_[starts[1:], len(log)]
    ends = ends[ends - starts >= 3]
    last_two = np.concatenate([ends - 1, ends - 2])
    items = log.item_id.copy()
    items[last_two] = ids[(np.searchsorted(np.sort(ids), items[last_two]) + 17) % len(ids)]
    assert np.isin(items, ids).all() and not np.array_equal(items, log.item_id)
    return Interactions.from_arrays(log.user_id, items, log.timestamp)


def test_model_depends_only_on_the_training_part_of_the_logs():
    """Leakage pin: logs differing only in users' held-out events train the same model; all events do not."""
    x, _ = _clusters(600, 8, seed=1)
    ids = np.arange(600, dtype=np.int64) * 3 + 5
    log = _log(np.random.default_rng(3), n_users=50, n_items=600, events=12)
    changed = _change_held_out(log, ids)
    cfg = TrainConfig(**TRAIN, collaborative_weight=1.0)

    def fit(interactions: Interactions):
        return _state(train(x, ModelConfig(**MODEL), cfg, show_progress=False, interactions=interactions,
                            item_ids=ids))

    held_out = fit(leave_one_out(log).train_interactions())
    assert _same(held_out, fit(leave_one_out(changed).train_interactions()))
    assert not _same(held_out, fit(log)), "the held-out events do change a model trained on all events"


def test_collaborative_training_is_the_default_everywhere():
    """Collaborative IDs won the downstream benchmark, so the DAG's form, the config and the CLI use a complete
    interactions snapshot unless a user sets the weight to 0 (the stage test below runs the default)."""
    from include.params import dag_params, from_params

    default = TrainConfig().collaborative_weight
    assert default > 0
    assert dag_params()["collaborative_weight"].value == default  # the form, generated from TrainConfig
    assert from_params({}).train.collaborative_weight == default


@pytest.mark.parametrize("bad", [{"collaborative_weight": -1.0}, {"collaborative_dim": 0}])
def test_bad_collaborative_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def _behaviour_world(n: int = 800, seed: int = 0):
    """Items whose content has a strong cluster and a weak direction telling which users consume them (its
    "community"); users consume items of one community. A quarter of the items have no interactions (cold)."""
    rng = np.random.default_rng(seed)
    strong = rng.integers(0, 8, n)
    community = rng.integers(0, 8, n)
    x = np.zeros((n, DIM))
    x[:, :8] = rng.normal(size=(8, 8))[strong]
    x[:, 8:] = 0.3 * rng.normal(size=(8, 8))[community]
    x += 0.08 * rng.normal(size=x.shape)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) + 100
    cold = rng.random(n) < 0.25
    users, items = [], []
    for u in range(240):
        pool = np.flatnonzero((community == u % 8) & ~cold)
        users.append(np.full(20, u))
        items.append(ids[rng.choice(pool, 20)])
    log = Interactions.from_arrays(np.concatenate(users), np.concatenate(items), np.tile(np.arange(20), 240))
    return x, ids, community, cold, log


def _agreement(codes: np.ndarray, labels: np.ndarray) -> float:
    """Share of item pairs with the same level-1 code that have the same label (1/8 for unrelated codes)."""
    table = np.zeros((codes.max() + 1, labels.max() + 1))
    np.add.at(table, (codes, labels), 1)
    return float((table**2).sum() - len(codes)) / float((table.sum(1) ** 2).sum() - len(codes))


def test_collaborative_codes_follow_behaviour_and_cold_items_follow_their_content():
    x, ids, community, cold, log = _behaviour_world()
    model = {**MODEL, "codebook_size": [8, 16]}
    base = train(x, ModelConfig(**model), TrainConfig(**TRAIN), show_progress=False)
    collab = train(x, ModelConfig(**model), TrainConfig(**TRAIN, collaborative_weight=1.0), show_progress=False,
                   interactions=log, item_ids=ids)
    codes_base = base.model.encode(torch.from_numpy(x)).numpy()
    codes = encode_array(collab.model, x, item_ids=ids)
    with pytest.raises(ValueError, match="needs each item's id"):
        encode_array(collab.model, x)
    before, after = _agreement(codes_base[:, 0], community), _agreement(codes[:, 0], community)
    assert after > before + 0.1, (before, after)
    # cold items: never seen in the logs, placed by what their content says about behaviour (by less than warm
    # ones: codebooks fitted by traffic spend few codewords where no events are)
    assert _agreement(codes[cold, 0], community[cold]) > _agreement(codes_base[cold, 0], community[cold]) + 0.04
    report = collab.metrics["collaborative"]
    assert report["used"] and report["dim"] == TRAIN["collaborative_dim"]
    assert report["n_items_with_events"] == len(np.unique(log.item_id))


def test_behaviour_places_warm_items_by_their_factors_and_cold_ones_by_their_content(tmp_path):
    """An item with events enters the model with its stored behaviour vector, any other with what its content
    predicts; the behaviour is saved with the model (checksummed) and a tampered file is refused."""
    from rqvae.errors import ModelLoadError
    from rqvae.io.checkpoint import load_model

    x, ids, _, cold, log = _behaviour_world()
    result = train(x, ModelConfig(**MODEL), TrainConfig(**TRAIN, collaborative_weight=1.0), tmp_path / "m",
                   show_progress=False, interactions=log, item_ids=ids)
    behaviour = result.model.behaviour
    warm_ids = np.unique(log.item_id)
    np.testing.assert_array_equal(behaviour.item_ids, warm_ids)
    assert result.model.input_dim == DIM + TRAIN["collaborative_dim"] == behaviour.dim
    z = behaviour.inputs(ids, x)
    assert z.shape == (len(ids), behaviour.dim)
    np.testing.assert_allclose(z[:, :DIM], (x - behaviour.content_mean) * behaviour.content_scale, rtol=1e-6)
    predicted = (behaviour.predict(x) - behaviour.factor_mean) * behaviour.factor_scale
    np.testing.assert_allclose(z[cold, DIM:], predicted[cold], rtol=1e-5, atol=1e-6)
    assert not np.allclose(z[~cold, DIM:], predicted[~cold], atol=1e-3), "warm items keep their own behaviour"
    unknown = behaviour.inputs(ids + 10_000, x)  # ids the logs never named: content alone decides
    np.testing.assert_allclose(unknown[:, DIM:], predicted, rtol=1e-5, atol=1e-6)
    loaded = load_model(tmp_path / "m")
    np.testing.assert_array_equal(encode_array(loaded, x, item_ids=ids), encode_array(result.model, x, item_ids=ids))
    weights = tmp_path / "m" / "behaviour.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(ModelLoadError, match="checksum"):
        load_model(tmp_path / "m")


def test_pipeline_stage_uses_a_complete_interactions_snapshot_and_the_manifest_says_so(tmp_path):
    """include.stages.train_rqvae: an absent or unfinished snapshot trains content-only, exactly as without one; a
    complete one trains on each user's leave-one-out training part (the held-out events change nothing), and publish
    records it in manifest["collaborative"] and the report."""
    from include.stages.load_embeddings import load_embeddings
    from include.stages.validate_codes import validate_codes
    from include.stages.validate_dims import validate_dims
    from rqvae.io.fsutil import sha256_file
    from tests.helpers import publish_work

    x, ids, _, _, log = _behaviour_world(n=600, seed=1)
    day = "2026-01-01"
    emb_dir = tmp_path / "embeddings" / day
    emb_dir.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ids, "embedding": pa.array(list(x), pa.list_(pa.float32()))}),
                   emb_dir / "part-00000.parquet")
    (emb_dir / "_SUCCESS").touch()
    root = tmp_path / "interactions"
    model = ModelConfig(input_dim=DIM, num_codebooks=2, codebook_size=16)
    training = TrainConfig(epochs=1, batch_size=128, device="cpu")  # the default weight: collaborative when complete
    policy = RetrainPolicy(align_retrain="off")

    def run(name: str, interactions: Interactions | None, success: bool = True) -> tuple[dict, str]:
        work = tmp_path / name / day
        loaded = load_embeddings(emb_dir, work)
        folder = root / name
        if interactions is not None:
            write_interactions(folder, interactions)
            if not success:
                (folder / "_SUCCESS").unlink()
        run_ = run_info(work, interactions_dir=folder)
        run_["interactions_name"] = folder.relative_to(root).as_posix()
        trained = train_rqvae(run_, loaded["path"], model, training, policy)
        return trained, sha256_file(work / "model" / "model.safetensors")

    from include.stages.train_rqvae import train_rqvae

    plain, plain_sha = run("absent", None)
    unfinished, unfinished_sha = run("unfinished", log, success=False)
    assert plain["collaborative"] == unfinished["collaborative"] == {
        "used": False, "weight": 0.0, "interactions": None, "n_interactions": 0, "n_items_with_interactions": 0}
    assert plain_sha == unfinished_sha
    used, used_sha = run("complete", log)
    held_out = split_events(log, Protocol.TEMPORAL).train_interactions()  # what the evaluation DAG may test on
    entry = used["collaborative"]
    assert entry["used"] and entry["weight"] == 1.0 and entry["interactions"] == "complete"
    assert entry["n_interactions"] == len(held_out)
    assert entry["n_items_with_interactions"] == len(np.unique(held_out.item_id))
    assert used_sha != plain_sha
    _, changed_sha = run("changed", _change_held_out(log, ids))
    assert changed_sha == used_sha, "each user's last two events must not reach the model"

    work = tmp_path / "complete" / day
    loaded = {"path": str(work / "embeddings.parquet")}
    validate_dims(loaded["path"], work / "validation" / "input.json", InputChecks(expected_dim=DIM, min_items=1))
    encoded = encode_all(used["model_path"], loaded["path"], work)
    validate_codes(encoded["path"], loaded["path"], work / "validation" / "codes.json",
                   CodeChecks(min_unique_ratio=0.01), codebook_sizes=encoded["codebook_size"],
                   recon_mse=encoded["recon_mse"])
    result = publish_work(day, work, tmp_path / "published", trained=used, encoded=encoded)
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["collaborative"] == entry
    page = (tmp_path / "published" / day / "report" / "index.html").read_text()
    assert "content + interactions complete (collaborative weight 1" in page


def test_cli_train_with_interactions(tmp_path, capsys):
    from rqvae.cli import main

    x, ids, _, _, log = _behaviour_world(n=400, seed=2)
    pq.write_table(pa.table({"item_id": ids, "embedding": pa.array(list(x), pa.list_(pa.float32()))}),
                   tmp_path / "items.parquet")
    write_interactions(tmp_path / "logs", log)
    code = main(["--quiet", "train", "--embeddings", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "m"),
                 "--num-codebooks", "2", "--codebook-size", "8", "--epochs", "1", "--batch-size", "128",
                 "--device", "cpu", "--interactions", str(tmp_path / "logs"), "--holdout-last", "2"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["collaborative"]["used"] and printed["collaborative"]["weight"] == TrainConfig().collaborative_weight
    held = leave_one_out(log).train_interactions()
    assert printed["collaborative"]["n_items_with_events"] == len(np.unique(held.item_id))
    assert main(["--quiet", "encode", "--model", str(tmp_path / "m"), "--embeddings", str(tmp_path / "items.parquet"),
                 "--out", str(tmp_path / "ids.parquet")]) == 0  # the ids in the file find each item's behaviour
    assert pq.read_table(tmp_path / "ids.parquet").num_rows == len(ids)


def test_downstream_benchmark_trains_collaborative_ids_on_the_training_part_only(monkeypatch):
    """bench/downstream.py's collaborative ID set learns from the split's training events, never a held-out one."""
    import bench.downstream as bench
    import rqvae.training.loop

    x, ids, _, _, log = _behaviour_world(n=300, seed=3)  # every user: 20 events at times 0..19
    split = leave_one_out(log)
    seen: list[Interactions] = []
    real = rqvae.training.loop.train
    monkeypatch.setattr(rqvae.training.loop, "train", lambda *a, **k: seen.append(k["interactions"]) or real(*a, **k))
    inputs = bench.BenchInputs(ids, x, split.train_interactions(), log, levels=2, codebook_size=8, seed=0)
    table, quality = bench.ID_SETS["collab"].build(inputs)
    events = set(zip(seen[0].user_id.tolist(), seen[0].timestamp.tolist(), strict=True))
    held_out = {(u, t) for u in split.users.tolist() for t in (18, 19)}  # validation and test events
    assert len(events) == len(split.train_items) and not events & held_out
    assert len(table) == len(ids) and 0 < quality["unique_ratio"] <= 1


def test_interrupted_collaborative_training_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    """The alignment is fitted once, on the initial latent; a resumed run must reuse the checkpointed one, not refit
    it on the half-trained latent, and end where an uninterrupted run ends."""
    import rqvae.training.loop as train_module

    x, _ = _clusters(800, 8, seed=4)
    ids = np.arange(800, dtype=np.int64) * 3 + 5
    log = _log(np.random.default_rng(5), n_users=60, n_items=800, events=12)
    cfg = TrainConfig(**{**TRAIN, "epochs": 4}, collaborative_weight=1.0)
    model = ModelConfig(**MODEL, latent_dim=12)  # a latent unlike the input: the alignment lives in latent space
    save = train_module._save_checkpoint

    def crash_after_epoch_2(*args, **kwargs):
        save(*args, **kwargs)
        if args[4] == 2:
            raise RuntimeError("worker lost")

    monkeypatch.setattr(train_module, "_save_checkpoint", crash_after_epoch_2)
    with pytest.raises(RuntimeError, match="worker lost"):
        train(x, model, cfg, out_dir=tmp_path / "m", show_progress=False, interactions=log,
              item_ids=ids)
    monkeypatch.setattr(train_module, "_save_checkpoint", save)
    resumed = train(x, model, cfg, out_dir=tmp_path / "m", show_progress=False, interactions=log,
                    item_ids=ids)
    assert resumed.resumed_from_epoch == 2
    fresh = train(x, model, cfg, out_dir=tmp_path / "fresh", show_progress=False, interactions=log,
                  item_ids=ids)
    assert resumed.metrics["collaborative"]["used"]
    a, b = _state(resumed), _state(fresh)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_early_stopping_with_interactions_holds_items_out_of_both_signals():
    x, _ = _clusters(600, 8, seed=1)
    ids = np.arange(600, dtype=np.int64) * 3 + 5
    log = _log(np.random.default_rng(3), n_users=50, n_items=600, events=12)
    cfg = TrainConfig(**{**TRAIN, "epochs": 3}, collaborative_weight=1.0, early_stop_patience=1)
    result = train(x, ModelConfig(**MODEL), cfg, show_progress=False, interactions=log, item_ids=ids)
    assert result.metrics["eval_heldout"] is True
    assert result.metrics["n_train"] == 600 - 60
    assert result.metrics["collaborative"]["used"] is True
    assert 1 <= result.metrics["epochs_run"] <= 3
    curve = [result.metrics["init_recon_mse"]] + [h["recon_mse"] for h in result.history]
    assert result.metrics["best_epoch"] == int(np.argmin(curve))


def test_codebooks_go_where_the_traffic_is(monkeypatch):
    """With interactions the codebooks are fitted on rows drawn by traffic (rqvae.training.sample.TRAFFIC_POWER):
    the items users consume most get more distinct IDs than with uniform draws, the rarely consumed ones fewer."""
    import rqvae.training.sample as sample

    rng = np.random.default_rng(1)
    n = 800
    x = rng.normal(size=(n, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) + 100
    hot = x[:, 0] > 0  # half of the content space holds nearly all the traffic
    events = np.where(hot, 30, 1)
    items = np.repeat(ids, events)
    rng.shuffle(items)
    users = np.arange(len(items)) // 15
    log = Interactions.from_arrays(users, items, np.arange(len(items)))

    def distinct_ids(power: float) -> tuple[int, int]:
        monkeypatch.setattr(sample, "TRAFFIC_POWER", power)
        result = train(x, ModelConfig(**MODEL), TrainConfig(**TRAIN, collaborative_weight=1.0), show_progress=False,
                       interactions=log, item_ids=ids)
        codes = encode_array(result.model, x, item_ids=ids)
        whole = codes[:, 0] * MODEL["codebook_size"][1] + codes[:, 1]
        return len(np.unique(whole[hot])), len(np.unique(whole[~hot]))

    default = sample.TRAFFIC_POWER
    uniform_hot, uniform_rare = distinct_ids(0.0)
    weighted_hot, weighted_rare = distinct_ids(default)
    assert weighted_hot > 1.2 * uniform_hot, (uniform_hot, weighted_hot)
    assert weighted_rare < uniform_rare, (uniform_rare, weighted_rare)
