"""What `publish` streams out of core (rqvae.io.packed, rqvae.ids.serving_writer, the streamed migration map and report
tallies) writes exactly what the in-memory construction writes: the same serving index files byte for byte,
the same migration rows, the same plot counts and churn, with slices forced small so that runs, parents and
duplicates straddle slice boundaries; and it fails the way the in-memory path fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import rqvae.ids.lineage as lineage
import rqvae.ids.report as report
import rqvae.ids.serving_writer as serving_writer
from rqvae.errors import InputError
from rqvae.ids.lineage import PreviousIds, migration_map, write_migration, write_migration_map
from rqvae.ids.serving import ServingIndex, write_serving_index
from rqvae.ids.stability import id_churn
from rqvae.io.idfile import SemanticIdWriter, read_semantic_ids
from rqvae.io.packed import pack, read_keys, unpack
from rqvae.quantize.metrics import assign_dedup

SIZES = (4, 3, 5)
SLICE = 97  # rows per slice when streaming: a prime, so boundaries fall everywhere


def crowded(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Few codes for many items (dedup up to dozens, unused codes), item ids shuffled."""
    rng = np.random.default_rng(seed)
    codes = np.column_stack([rng.integers(0, 2, n), rng.integers(0, 3, n), rng.integers(0, 5, n) ** 2 % 5])
    ids = rng.permutation(40 * n)[:n].astype(np.int64) * 3 + 5
    codes = codes.astype(np.int32)
    return ids, codes, assign_dedup(ids, codes, SIZES)


def write_parts(folder: Path, ids: np.ndarray, codes: np.ndarray, dedup: np.ndarray, parts: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(len(ids)), parts)):
        with SemanticIdWriter(folder / f"part-{i:05d}.parquet", codes.shape[1]) as writer:
            writer.write(ids[rows], codes[rows], dedup[rows])
    return folder


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    for module in (serving_writer, lineage, report):
        monkeypatch.setattr(module, "CHUNK_ROWS", SLICE)


@pytest.fixture
def table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return crowded(1500, seed=3)


def test_packing_round_trips_and_keeps_the_lexicographic_order(table):
    _, codes, dedup = table
    radix = (*SIZES, int(dedup.max()) + 1)
    keys = pack(codes, dedup, radix)
    back_codes, back_dedup = unpack(keys, radix)
    assert np.array_equal(back_codes, codes) and np.array_equal(back_dedup, dedup)
    assert np.array_equal(np.argsort(keys, kind="stable"), np.lexsort(np.column_stack([codes, dedup]).T[::-1]))


def test_streamed_serving_index_is_build_and_save_byte_for_byte(table, tmp_path):
    ids_path = write_parts(tmp_path / "ids", *table)
    assert table[2].max() > 0  # collisions: the dedup level branches
    ServingIndex.build(*table, SIZES).save(tmp_path / "reference")
    info = write_serving_index(ids_path, tmp_path / "streamed", SIZES)
    names = sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "streamed").iterdir())
    for name in names:
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    meta = json.loads((tmp_path / "streamed" / "meta.json").read_text())
    assert info["n_items"] == meta["n_items"] == len(table[0]) and info["sizes"] == meta["sizes"]
    loaded = ServingIndex.load(tmp_path / "streamed")
    assert np.array_equal(loaded.lookup(table[1], table[2]), table[0])


@pytest.mark.parametrize("fault", ["same_id", "same_item", "code_too_big"])
def test_streamed_serving_index_fails_like_build_and_leaves_the_old_index(table, tmp_path, fault):
    ids, codes, dedup = (a.copy() for a in table)
    if fault == "same_id":
        codes[7], dedup[7] = codes[1200], dedup[1200]
    elif fault == "same_item":
        ids[900] = ids[11]
    else:
        codes[5, 2] = SIZES[2]
    ids_path = write_parts(tmp_path / "ids", ids, codes, dedup)
    with pytest.raises(InputError) as expected:
        ServingIndex.build(ids, codes, dedup, SIZES)
    folder = tmp_path / "index"
    write_serving_index(write_parts(tmp_path / "good", *table), folder, SIZES)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(InputError) as got:
        write_serving_index(ids_path, folder, SIZES)
    assert str(got.value) == str(expected.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp files, nothing replaced


def test_ids_too_wide_to_pack_are_built_in_memory(tmp_path):
    ids, codes, dedup = crowded(300, seed=5)
    wide = [2**21] * 3  # 63 bits for the codes alone: no room for the dedup digit
    assert read_keys(write_parts(tmp_path / "ids", ids, codes, dedup), wide) is None
    info = write_serving_index(tmp_path / "ids", tmp_path / "index", wide)
    assert info["sizes"] == [*wide, int(dedup.max()) + 1]
    ServingIndex.build(ids, codes, dedup, wide).save(tmp_path / "reference")
    for path in (tmp_path / "reference").iterdir():
        assert (tmp_path / "index" / path.name).read_bytes() == path.read_bytes()


def previous_of(table: tuple[np.ndarray, ...], seed: int, levels: int | None = None) -> tuple[np.ndarray, ...]:
    """Another version of the table: some items removed, some new, some with other codes, ids reshuffled."""
    ids, codes, dedup = table
    rng = np.random.default_rng(seed)
    keep = rng.random(len(ids)) > 0.1
    ids, codes, dedup = ids[keep], codes[keep].copy(), dedup[keep]
    moved = rng.random(len(ids)) < 0.2
    codes[moved, 2] = (codes[moved, 2] + 1) % SIZES[2]
    new_ids = np.arange(70) * 3 + 1  # ids the current table never uses (its ids are 5 mod 3)
    ids = np.r_[ids, new_ids]
    codes = np.r_[codes, rng.integers(0, 2, (70, codes.shape[1])).astype(np.int32)]
    if levels is not None:
        codes = codes[:, :levels]
    order = rng.permutation(len(ids))
    sizes = SIZES[: codes.shape[1]]
    return ids[order], codes[order], assign_dedup(ids[order], codes[order], sizes)


@pytest.mark.parametrize("previous", [None, "same", "fewer_levels"])
def test_streamed_migration_map_has_migration_map_s_rows_and_summary(table, tmp_path, monkeypatch, previous):
    monkeypatch.setattr(lineage, "MIGRATION_ROW_GROUP", 211)  # several row groups, removed rows straddling one
    current = write_parts(tmp_path / "current", *table)
    before_path, before = None, None
    if previous is not None:
        old = previous_of(table, seed=9, levels=2 if previous == "fewer_levels" else None)
        before_path = write_parts(tmp_path / "previous", *old, parts=2)
        before = PreviousIds.read(before_path, "2026-01-01")
    table_ref, summary_ref = migration_map(before, *table)
    summary = write_migration_map(tmp_path / "streamed.parquet", current, before_path,
                                  "2026-01-01" if previous else None, code_sizes=SIZES)
    assert summary == summary_ref
    assert summary["new"] > 0 and (previous is None or summary["removed"] > 0 and summary["changed"] > 0)
    streamed = pq.read_table(tmp_path / "streamed.parquet")
    assert streamed.schema.equals(table_ref.schema) and streamed.to_pylist() == table_ref.to_pylist()
    assert write_migration_map(tmp_path / "no_sizes.parquet", current, before_path,
                               "2026-01-01" if previous else None) == summary_ref


def test_streamed_migration_map_is_the_same_file_with_the_default_row_groups(table, tmp_path):
    current = write_parts(tmp_path / "current", *table)
    before_path = write_parts(tmp_path / "previous", *previous_of(table, seed=4))
    table_ref, _ = migration_map(PreviousIds.read(before_path, "v1"), *table)
    write_migration(tmp_path / "reference.parquet", table_ref)
    write_migration_map(tmp_path / "streamed.parquet", current, before_path, "v1", code_sizes=SIZES)
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "reference.parquet").read_bytes()


def test_churn_taken_from_the_migration_summary_is_id_churn(table, tmp_path):
    from include.version_extras import _churn

    current = write_parts(tmp_path / "current", *table)
    before_path = write_parts(tmp_path / "previous", *previous_of(table, seed=2))
    summary = write_migration_map(tmp_path / "m.parquet", current, before_path, "v1", code_sizes=SIZES)
    assert _churn(summary) == {"previous": "v1", **id_churn(before_path, current)}
    assert _churn(write_migration_map(tmp_path / "m0.parquet", current)) == {"previous": None, "churn": None}


def test_report_tallies_streamed_equal_the_whole_table_s(table, tmp_path):
    ids_path = write_parts(tmp_path / "ids", *table)
    streamed, whole = report._tally(ids_path, list(SIZES)), report._tally_in_memory(ids_path, list(SIZES))
    assert streamed.n_items == whole.n_items == len(table[0])
    assert all(np.array_equal(a, b) for a, b in zip(streamed.usage, whole.usage, strict=True))
    assert np.array_equal(streamed.buckets, whole.buckets) and whole.buckets[2:].sum() > 0
    assert read_semantic_ids(ids_path)[0].tolist() == table[0].tolist()
