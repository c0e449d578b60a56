"""Collision resolution: reassignment keeps IDs L codes long and unique, moves only colliding items, and moves
each to its nearest free code; pinned (published) IDs never move; encode_file exposes both modes."""

from __future__ import annotations

import numpy as np
import pytest

from rqvae.config import ModelConfig, TrainConfig
from rqvae.encoding.encode import encode_array, encode_file, last_level_distances, last_residuals
from rqvae.ids.collisions import (
    collision_movers,
    dedup_with_fixed,
    reassign_collisions,
    resolve_collisions,
)
from rqvae.io.idfile import read_semantic_ids
from rqvae.io.readers import read_embeddings
from rqvae.io.synth import synth
from rqvae.quantize.metrics import assign_dedup, pack_codes
from rqvae.training.loop import train

SIZES = [4, 4, 8]


def random_case(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items crowded into few tuples (many collisions), item ids shuffled, a random distance matrix."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, 4, n), rng.integers(0, 2, n), rng.integers(0, 3, n)], 1).astype(np.int32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    dist = rng.random((n, SIZES[-1])).astype(np.float32)
    return ids, codes, dist


def unique_ids(codes: np.ndarray, dedup: np.ndarray) -> bool:
    return len(np.unique(pack_codes(np.c_[codes, dedup], [*SIZES, 1 << 20]))) == len(codes)


def test_reassignment_makes_ids_unique_and_keeps_l_codes():
    ids, codes, dist = random_case()
    out = resolve_collisions(ids, codes, SIZES, "reassign", lambda rows: dist[rows])
    assert out.codes.shape == codes.shape
    assert unique_ids(out.codes, out.dedup)
    # 4 x 2 prefixes x 8 last codes = 64 slots for 300 items: most prefixes fill, the rest keep a dedup digit
    assert out.stats["collision_rate_pre"] > out.stats["collision_rate_post"]
    assert out.stats["moved"] == int((out.codes != codes).any(1).sum())
    assert out.stats["stuck"] == int((out.dedup > 0).sum())


def test_reassignment_with_room_leaves_no_collision_and_no_dedup():
    ids, codes, dist = random_case(n=40, seed=1)  # 40 items in 24 prefixes x 8 codes: room for all
    out = resolve_collisions(ids, codes, SIZES, "reassign", lambda rows: dist[rows])
    assert out.stats["collision_rate_post"] == 0.0
    assert out.stats["stuck"] == 0
    assert out.stats["max_dedup"] == 0
    assert (out.dedup == 0).all()
    assert len(np.unique(pack_codes(out.codes, SIZES))) == len(ids)


def test_only_colliding_items_move_and_the_first_of_each_bucket_stays():
    ids, codes, dist = random_case(n=60, seed=2)
    movers = collision_movers(ids, codes, SIZES)
    result = reassign_collisions(ids, codes, SIZES, lambda rows: dist[rows])
    changed = (result.codes != codes).any(1)
    assert not changed[~movers].any()  # non-colliding items and bucket keepers unchanged
    assert (result.codes[:, :-1] == codes[:, :-1]).all()  # the prefix never changes
    key = pack_codes(codes, SIZES)
    for k in np.unique(key[movers]):
        bucket = np.flatnonzero(key == k)
        keeper = bucket[np.argmin(ids[bucket])]
        assert not movers[keeper]


def test_moved_items_land_on_their_nearest_free_code():
    ids, codes, dist = random_case(n=60, seed=3)
    result = reassign_collisions(ids, codes, SIZES, lambda rows: dist[rows])
    prefix = pack_codes(codes[:, :-1], SIZES[:-1])
    for i in np.flatnonzero(result.moved):
        same_prefix = prefix == prefix[i]
        occupied = set(result.codes[same_prefix, -1].tolist())
        target = result.codes[i, -1]
        closer = np.flatnonzero(dist[i] < dist[i, target])
        # every code nearer than the one it got is taken by someone in the end (it was taken or won first)
        assert set(closer.tolist()) <= occupied
        assert target != codes[i, -1]


def test_pinned_items_never_move_and_new_items_avoid_their_ids():
    ids, codes, dist = random_case(n=120, seed=4)
    rng = np.random.default_rng(0)
    fixed = rng.random(len(ids)) < 0.5
    # pinned items come from a valid published version: unique (codes, dedup) among themselves
    fixed_dedup = np.zeros(len(ids), np.int32)
    fixed_dedup[fixed] = assign_dedup(ids[fixed], codes[fixed], SIZES)
    for mode in ("dedup", "reassign"):
        out = resolve_collisions(
            ids, codes, SIZES, mode, lambda rows: dist[rows], fixed=fixed, fixed_dedup=fixed_dedup
        )
        assert (out.codes[fixed] == codes[fixed]).all(), mode
        assert (out.dedup[fixed] == fixed_dedup[fixed]).all(), mode
        assert unique_ids(out.codes, out.dedup), mode


def test_dedup_with_nothing_pinned_is_the_plain_dedup_digit():
    ids, codes, _ = random_case(n=200, seed=5)
    assert (dedup_with_fixed(ids, codes, SIZES) == assign_dedup(ids, codes, SIZES)).all()


def test_unknown_mode_and_missing_distances_are_refused():
    ids, codes, _ = random_case(n=10)
    with pytest.raises(ValueError, match="expected one of"):
        resolve_collisions(ids, codes, SIZES, "shuffle")
    with pytest.raises(ValueError, match="last_distances"):
        resolve_collisions(ids, codes, SIZES, "reassign")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collide")
    data = synth(folder / "items.parquet", 6000, dim=16, seed=1)
    vectors = read_embeddings(data).vectors
    cfg = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=[16, 32])
    result = train(vectors, cfg, TrainConfig(epochs=1, batch_size=512, init_items=6000, seed=0), show_progress=False)
    return result.model, data, folder


def test_encode_file_reassign_gives_unique_l_code_ids(small_model):
    model, data, folder = small_model
    plain = encode_file(model, data, folder / "dedup.parquet", show_progress=False)
    moved = encode_file(model, data, folder / "reassign.parquet", collision_mode="reassign", show_progress=False)
    ids0, codes0, dedup0 = read_semantic_ids(folder / "dedup.parquet")
    ids1, codes1, dedup1 = read_semantic_ids(folder / "reassign.parquet")
    assert (ids0 == ids1).all()
    assert codes1.shape == codes0.shape
    assert plain["collision_rate_pre"] == moved["collision_rate_pre"] > 0
    assert moved["collision_rate_post"] < moved["collision_rate_pre"]
    assert moved["moved"] == int((codes0 != codes1).any(1).sum()) > 0
    assert len(np.unique(pack_codes(np.c_[codes1, dedup1], [16, 32, 1 << 20]))) == len(ids1)
    assert moved["max_dedup"] <= plain["max_dedup"]
    # items that did not collide keep the code the model gave them
    solo = ~collision_movers(ids0, codes0, [16, 32]) & (dedup0 == 0)
    key = pack_codes(codes0, [16, 32])
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    solo &= counts[inverse] == 1
    assert (codes1[solo] == codes0[solo]).all()


def test_last_level_distances_rank_the_models_own_code_first(small_model):
    model, data, _ = small_model
    items = read_embeddings(data)
    some = np.sort(items.ids[:300])
    got_ids, residuals = last_residuals(model, data, items.ids[:300])
    assert (got_ids == some).all()
    by_id = np.argsort(items.ids)
    picked = encode_array(model, items.vectors[by_id[np.searchsorted(items.ids[by_id], some)]])[:, -1]
    # the same residuals from the codes of the first pass (what encode_file uses: no second code search)
    _, from_codes = last_residuals(model, data, some, codes=picked_all(model, items, some))
    assert np.allclose(from_codes, residuals, atol=1e-5)
    d = last_level_distances(model, residuals)
    # the code the encoder picked is the nearest (up to the search's packed-float ties)
    assert np.allclose(d[np.arange(len(picked)), picked], d.min(1), rtol=1e-3, atol=1e-6)


def picked_all(model, items, some: np.ndarray) -> np.ndarray:
    by_id = np.argsort(items.ids)
    return encode_array(model, items.vectors[by_id[np.searchsorted(items.ids[by_id], some)]])
