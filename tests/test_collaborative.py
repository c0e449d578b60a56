"""Collaborative training (rqvae.collaborative): the logs it reads, the pairs it samples, what it changes and what
it must not: weight 0 is today's training bit for bit, and nothing of a user's held-out events reaches the model."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rqvae.collaborative import DEFAULT_WEIGHT, ItemSequences, PairSampler, item_rows, read_sequences
from rqvae.config import ModelConfig, TrainConfig
from rqvae.interactions import Interactions, leave_one_out, read_interactions, write_interactions
from rqvae.train import train

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


def test_streamed_holdout_equals_leave_one_out_training_part(tmp_path):
    """read_sequences(holdout_last=2) learns from exactly the events the evaluation trains its retriever on."""
    rng = np.random.default_rng(0)
    log = _log(rng, n_users=60, n_items=80, events=8)
    folder = tmp_path / "2026-01-01"
    write_interactions(folder, log, part_rows=97)  # sorted parts
    item_ids = np.arange(70, dtype=np.int64)[::-1] * 3 + 5  # items 70..79 have no embedding
    expected = ItemSequences.from_interactions(
        leave_one_out(read_interactions(folder).restrict_items(item_ids)).train_interactions(), item_ids)
    got = read_sequences(folder, item_ids, holdout_last=2)
    np.testing.assert_array_equal(got.rows, expected.rows)
    np.testing.assert_array_equal(got.offsets, expected.offsets)
    assert got.n_events_read == len(log)
    full = read_sequences(folder, item_ids)
    assert full.n_events == int(np.isin(log.item_id, item_ids).sum())
    # rows in random order over several parts (distinct times: ties would make "last" ambiguous): sorted the same
    log = _log(rng, n_users=60, n_items=80, events=8, ties=False)
    _shuffled_parts(tmp_path / "shuffled", log, rng)
    again = read_sequences(tmp_path / "shuffled", item_ids, holdout_last=2)
    expected = ItemSequences.from_interactions(leave_one_out(log.restrict_items(item_ids)).train_interactions(),
                                               item_ids)
    np.testing.assert_array_equal(again.rows, expected.rows)
    np.testing.assert_array_equal(again.offsets, expected.offsets)


def test_pairs_stay_within_the_window_of_one_user():
    rows = np.arange(40, dtype=np.int32)
    seqs = ItemSequences(rows, np.array([0, 1, 11, 40]), n_items=40, n_events_read=40)  # user 0 has one event
    sampler = PairSampler(seqs, window=3)
    a, b = sampler.sample(5000, np.random.default_rng(0))
    user = np.searchsorted(seqs.offsets, a, side="right") - 1
    assert (user >= 1).all(), "a one-event user has no partner"
    assert (np.searchsorted(seqs.offsets, b, side="right") - 1 == user).all()
    gap = np.abs(a - b)
    assert gap.min() >= 1 and gap.max() <= 3
    assert set(np.unique(gap)) == {1, 2, 3}


def _clusters(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, DIM))
    label = rng.integers(0, k, n)
    x = centres[label] + 0.35 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), label


MODEL = {"input_dim": DIM, "num_codebooks": 2, "codebook_size": [8, 16], "kmeans_iters": 10}
TRAIN = {"epochs": 2, "batch_size": 128, "seed": 0, "device": "cpu", "collaborative_steps": 60}


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


def _change_held_out(log: Interactions, n_items: int) -> Interactions:
    """The same log with another item in each user's last two events (leave-one-out's validation and test)."""
    starts = np.flatnonzero(np.r_[True, log.user_id[1:] != log.user_id[:-1]])
    ends = np.r_[starts[1:], len(log)]
    ends = ends[ends - starts >= 3]
    last_two = np.concatenate([ends - 1, ends - 2])
    items = log.item_id.copy()
    items[last_two] = (items[last_two] + 3 * 17) % (3 * n_items) + 5
    return Interactions.from_arrays(log.user_id, items, log.timestamp)


def test_model_depends_only_on_the_training_part_of_the_logs():
    """Leakage pin: logs differing only in users' held-out events train the same model; all events do not."""
    x, _ = _clusters(600, 8, seed=1)
    ids = np.arange(600, dtype=np.int64) * 3 + 5
    log = _log(np.random.default_rng(3), n_users=50, n_items=600, events=12)
    changed = _change_held_out(log, 600)
    assert not np.array_equal(changed.item_id, log.item_id)
    cfg = TrainConfig(**TRAIN, collaborative_weight=1.0)

    def fit(interactions: Interactions):
        return _state(train(x, ModelConfig(**MODEL), cfg, show_progress=False, interactions=interactions,
                            item_ids=ids))

    held_out = fit(leave_one_out(log).train_interactions())
    assert _same(held_out, fit(leave_one_out(changed).train_interactions()))
    assert not _same(held_out, fit(log)), "the held-out events do change a model trained on all events"


def test_dag_collaborative_training_is_opt_in():
    """The DAG trains content-only unless a user sets the weight: an interactions snapshot alone (written for the
    downstream evaluation) must not change how IDs are made."""
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "dags" / "rqvae_semantic_ids.py").read_text()
    found = [node for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Param"
             and any(isinstance(a, ast.Constant) and a.value == "Collaborative weight"
                     for kw in node.keywords for a in [kw.value])]
    assert found and found[0].args[0].value == 0.0
    assert DEFAULT_WEIGHT > 0, "the CLI's --interactions without a weight does use the logs"


@pytest.mark.parametrize("bad", [{"collaborative_weight": -1.0}, {"collaborative_window": 0},
                                 {"collaborative_temperature": 0.0}])
def test_bad_collaborative_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)
