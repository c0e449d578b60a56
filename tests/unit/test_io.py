"""Readers (rqvae.io.readers) and the semantic-ID file (rqvae.io.idfile) on real files: Parquet, .npy, JSON, pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rqvae.errors import InputError
from rqvae.io import formats, idfile, readers

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
COMPETITION_PART = SHARED / "competition_sample" / "emb_81_32" / "part-00000"
MOVIELENS = SHARED / "movielens_small" / "embeddings.parquet"


def _data(n: int = 50, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = 20_000_000_000 + np.arange(n, dtype=np.int64) * 7
    return ids, rng.standard_normal((n, dim)).astype(np.float32)


def _json_lines(
    ids: np.ndarray, vectors: np.ndarray, id_key: str = "anonymous_cid", vec_key: str = "emb"
) -> str:
    return "\n".join(
        json.dumps({id_key: int(i), vec_key: v.tolist()}) for i, v in zip(ids, vectors, strict=True)
    )


def _write_table(path: Path, columns: dict[str, pa.Array]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _assert_same(emb: readers.Embeddings, ids: np.ndarray, vectors: np.ndarray) -> None:
    assert emb.ids.dtype == np.int64 and emb.vectors.dtype == np.float32
    np.testing.assert_array_equal(emb.ids, ids)
    np.testing.assert_allclose(emb.vectors, vectors, rtol=1e-6)
    assert len(emb) == len(ids) and emb.dim == vectors.shape[1]


# --------------------------------------------------------------------------------------------- parquet


def test_write_read_roundtrip_uses_fixed_size_lists_and_row_groups(tmp_path: Path) -> None:
    ids, vectors = _data(300_000, 4)
    out = readers.write_embeddings(tmp_path / "sub" / "emb.parquet", ids, vectors)
    meta = pq.ParquetFile(out)
    assert meta.schema_arrow.field("embedding").type == pa.list_(pa.float32(), 4)
    assert meta.metadata.num_row_groups == 3
    assert not list(tmp_path.rglob("*.tmp*"))
    _assert_same(readers.read_embeddings(out), ids, vectors)
    assert readers.detect_format(out) == "parquet"


def test_parquet_directory_ignores_markers_and_batches(tmp_path: Path) -> None:
    ids, vectors = _data(250, 6)
    readers.write_embeddings(tmp_path / "part-00000.parquet", ids[:100], vectors[:100])
    readers.write_embeddings(tmp_path / "part-00001.parquet", ids[100:], vectors[100:])
    (tmp_path / "_SUCCESS").touch()
    (tmp_path / ".part-00000.parquet.crc").write_bytes(b"junk")
    tables = list(readers.iter_tables(tmp_path, batch_rows=64))
    assert [t.num_rows for t in tables] == [64, 36, 64, 64, 22]
    assert all(t.schema == readers.TABLE_SCHEMA for t in tables)
    _assert_same(readers.read_embeddings(tmp_path), ids, vectors)


def test_competition_parquet_layout_with_list_of_double(tmp_path: Path) -> None:
    ids, vectors = _data(40, 32)
    folder = tmp_path / "emb_81_32_parquet"
    folder.mkdir()
    emb = pa.array(vectors.astype(np.float64).tolist(), type=pa.large_list(pa.float64()))
    pq.write_table(
        pa.table({"anonymous_cid": ids[:20], "emb": emb[:20]}), folder / "part-00000-a.snappy.parquet"
    )
    # Spark sometimes leaves parts without extension: detected by their magic bytes.
    pq.write_table(pa.table({"anonymous_cid": ids[20:], "emb": emb[20:]}), folder / "part-00001")
    assert readers.detect_format(folder) == "parquet"
    _assert_same(readers.read_embeddings(folder), ids, vectors)


def test_snapshot_directory_with_one_subfolder(tmp_path: Path) -> None:
    ids, vectors = _data(30, 5)
    inner = tmp_path / "2025-01-02" / "emb_81_5"
    inner.mkdir(parents=True)
    (inner / "part-00000").write_text(_json_lines(ids, vectors) + "\n")
    (tmp_path / "2025-01-02" / "_SUCCESS").touch()
    assert readers.detect_format(tmp_path / "2025-01-02") == "jsonl"
    _assert_same(readers.read_embeddings(tmp_path / "2025-01-02"), ids, vectors)


@pytest.mark.skipif(not MOVIELENS.exists(), reason="shared MovieLens sample not present")
def test_movielens_parquet() -> None:
    emb = readers.read_embeddings(MOVIELENS)
    assert (len(emb), emb.dim) == (9066, 384)
    assert len(np.unique(emb.ids)) == len(emb)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)
    first = next(readers.iter_tables(MOVIELENS, batch_rows=1000))
    assert first.num_rows == 1000 and first.schema == readers.TABLE_SCHEMA


# ----------------------------------------------------------------------------------------------- jsonl


@pytest.mark.skipif(not COMPETITION_PART.exists(), reason="shared competition sample not present")
def test_real_competition_json_lines_part() -> None:
    emb = readers.read_embeddings(COMPETITION_PART)
    assert (len(emb), emb.dim) == (479, 32)
    assert emb.ids[0] == 20001973219
    np.testing.assert_allclose(emb.vectors[0, :2], [0.05808627977967262, -0.10434802621603012], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert readers.detect_format(COMPETITION_PART.parent) == "jsonl"
    assert sum(t.num_rows for t in readers.iter_tables(COMPETITION_PART.parent, batch_rows=100)) == 479


def test_jsonl_item_id_keys_blank_lines_and_parts(tmp_path: Path) -> None:
    ids, vectors = _data(20, 3)
    (tmp_path / "part-00000.jsonl").write_text(
        _json_lines(ids[:10], vectors[:10], "item_id", "embedding") + "\n\n"
    )
    (tmp_path / "part-00001.json").write_text(_json_lines(ids[10:], vectors[10:], "item_id", "embedding"))
    _assert_same(readers.read_embeddings(tmp_path), ids, vectors)


def test_jsonl_multi_block_rebatching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "JSON_BLOCK_BYTES", 4096)
    ids, vectors = _data(500, 16)
    (tmp_path / "part-00000").write_text(_json_lines(ids, vectors))
    batches = list(readers.iter_embeddings(tmp_path, batch_rows=128))
    assert [len(b[0]) for b in batches] == [128, 128, 128, 116]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), ids)


def test_jsonl_broken_line_reports_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "JSON_BLOCK_BYTES", 2048)
    ids, vectors = _data(200, 8)
    lines = _json_lines(ids, vectors).split("\n")
    lines[150] = lines[150][:-5]  # truncated object
    part = tmp_path / "part-00003"
    part.write_text("\n".join(lines))
    with pytest.raises(InputError, match=r"broken JSON line .* at line 151") as err:
        readers.read_embeddings(tmp_path)
    assert "part-00003" in str(err.value)


def test_jsonl_non_numeric_value_names_line_and_id(tmp_path: Path) -> None:
    ids, vectors = _data(5, 3)
    lines = _json_lines(ids, vectors).split("\n")
    lines[3] = json.dumps({"anonymous_cid": 4242, "emb": [0.1, "x", 0.3]})
    (tmp_path / "part-00000").write_text("\n".join(lines))
    with pytest.raises(InputError, match="non-numeric embedding values at line 4") as err:
        list(readers.iter_tables(tmp_path))
    assert err.value.sample_ids == [4242]


def test_jsonl_non_integer_id(tmp_path: Path) -> None:
    part = tmp_path / "part-00000"
    part.write_text('{"anonymous_cid": 1, "emb": [1.0]}\n{"anonymous_cid": "abc", "emb": [1.0]}\n')
    with pytest.raises(InputError, match="non-integer item id 'abc' at line 2") as err:
        readers.read_embeddings(part)
    assert err.value.sample_ids == ["abc"]


def test_jsonl_id_out_of_int64_range(tmp_path: Path) -> None:
    part = tmp_path / "part-00000"
    part.write_text(
        '{"anonymous_cid": 1, "emb": [1.0]}\n{"anonymous_cid": 99999999999999999999, "emb": [1.0]}\n'
    )
    with pytest.raises(InputError, match="out of int64 range at line 2") as err:
        readers.read_embeddings(part)
    assert err.value.sample_ids == [99999999999999999999]


def test_jsonl_missing_keys_lists_found_and_expected(tmp_path: Path) -> None:
    part = tmp_path / "part-00000"
    part.write_text('{"cid": 1, "vector": [1.0]}\n')
    with pytest.raises(
        InputError,
        match=r"missing keys at line 1: expected item_id\+embedding or "
        r"anonymous_cid\+emb, found \['cid', 'vector'\]",
    ):
        readers.read_embeddings(part)


def test_jsonl_ragged_lenient_then_strict(tmp_path: Path) -> None:
    part = tmp_path / "part-00000"
    part.write_text(
        '{"anonymous_cid": 1, "emb": [1, 2]}\n{"anonymous_cid": 2, "emb": [1, 2]}\n'
        '{"anonymous_cid": 3, "emb": [1]}\n'
    )
    table = next(readers.iter_tables(part))
    assert table.column("embedding").to_pylist() == [[1.0, 2.0], [1.0, 2.0], [1.0]]
    with pytest.raises(
        InputError, match=r"ragged embeddings: most rows have 2 values but some have \[1\]"
    ) as err:
        readers.read_embeddings(part)
    assert err.value.sample_ids == [3] and err.value.count == 1


# ------------------------------------------------------------------------------------------------- npy


def test_npy_with_stem_ids_and_plain_ids(tmp_path: Path) -> None:
    ids, vectors = _data(33, 4)
    np.save(tmp_path / "vecs.npy", vectors.astype(np.float64))
    np.save(tmp_path / "vecs_ids.npy", ids)
    _assert_same(readers.read_embeddings(tmp_path / "vecs.npy"), ids, vectors)
    other = tmp_path / "d"
    other.mkdir()
    np.save(other / "embeddings.npy", vectors)
    np.save(other / "ids.npy", (ids - 20_000_000_000 + 5).astype(np.int32))
    emb = readers.read_embeddings(other)
    assert readers.detect_format(other) == "npy"
    np.testing.assert_array_equal(emb.ids, ids - 20_000_000_000 + 5)
    tables = list(readers.iter_tables(other / "embeddings.npy", batch_rows=10))
    assert [t.num_rows for t in tables] == [10, 10, 10, 3] and tables[0].schema == readers.TABLE_SCHEMA


def test_npy_explicit_ids_path_and_missing_ids(tmp_path: Path) -> None:
    ids, vectors = _data(10, 2)
    np.save(tmp_path / "m.npy", vectors)
    with pytest.raises(InputError, match="ids file for the .npy matrix not found"):
        readers.read_embeddings(tmp_path / "m.npy")
    np.save(tmp_path / "catalog.npy", ids)
    _assert_same(readers.read_embeddings(tmp_path / "m.npy", ids_path=tmp_path / "catalog.npy"), ids, vectors)


def test_npy_length_mismatch_and_fractional_ids(tmp_path: Path) -> None:
    ids, vectors = _data(10, 2)
    np.save(tmp_path / "m.npy", vectors)
    np.save(tmp_path / "m_ids.npy", ids[:9])
    with pytest.raises(InputError, match="does not match the 10 matrix rows"):
        readers.read_embeddings(tmp_path / "m.npy")
    np.save(tmp_path / "m_ids.npy", np.arange(10) + 0.5)
    with pytest.raises(InputError, match="non-integer item ids") as err:
        readers.read_embeddings(tmp_path / "m.npy")
    assert err.value.sample_ids[:2] == [0.5, 1.5]


# ---------------------------------------------------------------------------------------------- pickle


def test_pickle_refused_without_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "emb_81_32.pkl"
    path.write_bytes(pickle.dumps({1: [0.0, 1.0]}))
    assert readers.detect_format(path) == "pickle"
    with pytest.raises(InputError, match="execute arbitrary code"):
        readers.read_embeddings(path)


def test_pickle_mixed_arrays_and_lists(tmp_path: Path) -> None:
    ids, vectors = _data(12, 4)
    data = {int(i): (v if k % 2 else v.tolist()) for k, (i, v) in enumerate(zip(ids, vectors, strict=True))}
    path = tmp_path / "emb.pkl"
    path.write_bytes(pickle.dumps(data))
    _assert_same(readers.read_embeddings(path, allow_pickle=True), ids, vectors)
    assert sum(t.num_rows for t in readers.iter_tables(path, batch_rows=5, allow_pickle=True)) == 12


@pytest.mark.parametrize(
    ("payload", "message", "sample"),
    [
        ({1: [1.0], 2: ["a", "b"]}, "non-numeric embedding values", 2),
        ({1: [1.0], 3: [[1.0, 2.0], [3.0]]}, "non-numeric embedding values", 3),
        ({1: [1.0], "x7": [2.0]}, "non-integer item ids", "x7"),
        ([[1.0, 2.0]], "pickle must hold a dict", None),
    ],
)
def test_pickle_bad_content(tmp_path: Path, payload: object, message: str, sample: object) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InputError, match=message) as err:
        readers.read_embeddings(path, allow_pickle=True)
    if sample is not None:
        assert err.value.sample_ids == [sample]


def test_pickle_null_vector_is_kept_lenient_and_refused_strict(tmp_path: Path) -> None:
    path = tmp_path / "emb.pkl"
    path.write_bytes(pickle.dumps({1: np.ones(3), 99: None}))
    table = next(readers.iter_tables(path, allow_pickle=True))
    assert table.column("embedding").to_pylist() == [[1.0, 1.0, 1.0], None]
    with pytest.raises(InputError, match="null embeddings") as err:
        readers.read_embeddings(path, allow_pickle=True)
    assert err.value.sample_ids == [99]


# -------------------------------------------------------------------------------------- parquet errors


def test_truncated_parquet(tmp_path: Path) -> None:
    ids, vectors = _data()
    good = readers.write_embeddings(tmp_path / "good.parquet", ids, vectors)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputError, match="corrupt or truncated Parquet file") as err:
        readers.read_embeddings(bad)
    assert "bad.parquet" in str(err.value)


def test_corrupt_parquet_pages(tmp_path: Path) -> None:
    ids, vectors = _data()
    blob = bytearray(readers.write_embeddings(tmp_path / "good.parquet", ids, vectors).read_bytes())
    blob[4:40] = b"\xff" * 36  # the first page header
    bad = tmp_path / "part-00000.parquet"
    bad.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="corrupt Parquet data"):
        list(readers.iter_tables(bad))


def test_missing_parquet_columns_named(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "x.parquet", {"id": pa.array([1]), "vec": pa.array([[1.0]])})
    with pytest.raises(
        InputError, match=r"expected item_id\+embedding or anonymous_cid\+emb, found \['id', 'vec'\]"
    ):
        readers.read_embeddings(path)


@pytest.mark.parametrize(
    ("id_values", "sample"),
    [(pa.array([1.0, 2.5, 3.0]), 2.5), (pa.array(["7", "x", "9"]), "7")],
)
def test_non_integer_parquet_ids(tmp_path: Path, id_values: pa.Array, sample: object) -> None:
    path = _write_table(tmp_path / "x.parquet", {"item_id": id_values, "embedding": pa.array([[1.0]] * 3)})
    with pytest.raises(InputError, match="non-integer item ids") as err:
        list(readers.iter_tables(path))
    assert err.value.sample_ids[0] == sample


def test_integral_float_ids_are_accepted(tmp_path: Path) -> None:
    path = _write_table(
        tmp_path / "x.parquet", {"item_id": pa.array([1.0, 2.0]), "embedding": pa.array([[1.0]] * 2)}
    )
    np.testing.assert_array_equal(readers.read_embeddings(path).ids, [1, 2])


def test_non_numeric_parquet_embeddings(tmp_path: Path) -> None:
    path = _write_table(
        tmp_path / "x.parquet", {"item_id": pa.array([11, 12]), "embedding": pa.array([["a"], ["b"]])}
    )
    with pytest.raises(InputError, match="non-numeric embedding values") as err:
        list(readers.iter_tables(path))
    assert err.value.sample_ids == [11, 12]


def test_null_ids_lenient_then_strict(tmp_path: Path) -> None:
    path = _write_table(
        tmp_path / "x.parquet", {"item_id": pa.array([5, None, 7]), "embedding": pa.array([[1.0]] * 3)}
    )
    assert next(readers.iter_tables(path)).column("item_id").to_pylist() == [5, None, 7]
    with pytest.raises(InputError, match=r"null item ids at rows \[1\]"):
        readers.read_embeddings(path)


def test_null_values_inside_vectors_are_strict_errors(tmp_path: Path) -> None:
    path = _write_table(
        tmp_path / "x.parquet",
        {"item_id": pa.array([5, 6]), "embedding": pa.array([[1.0, None], [1.0, 2.0]])},
    )
    with pytest.raises(InputError, match="null values inside embeddings") as err:
        readers.read_embeddings(path)
    assert err.value.sample_ids == [5]


def test_dimension_change_between_parts(tmp_path: Path) -> None:
    readers.write_embeddings(tmp_path / "part-0.parquet", *_data(5, 4))
    readers.write_embeddings(tmp_path / "part-1.parquet", np.array([901, 902]), np.ones((2, 5), dtype=np.float32))
    assert [t.num_rows for t in readers.iter_tables(tmp_path)] == [5, 2]
    with pytest.raises(InputError, match="embedding dimension changes from 4 to 5") as err:
        readers.read_embeddings(tmp_path)
    assert err.value.sample_ids == [901, 902]


# ------------------------------------------------------------------------------------ detection errors


def test_unsupported_format_lists_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "emb.csv"
    path.write_text("item_id,embedding\n1,0.5\n")
    with pytest.raises(InputError, match="unsupported input format") as err:
        readers.detect_format(path)
    for name in readers.SUPPORTED_FORMATS:
        assert name in str(err.value)


def test_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    readers.write_embeddings(empty, np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(InputError, match="empty input"):
        readers.read_embeddings(empty)
    with pytest.raises(InputError, match="empty input"):
        list(readers.iter_tables(empty))
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "_SUCCESS").touch()
    with pytest.raises(InputError, match=r"no data files found .*_SUCCESS"):
        readers.read_embeddings(snapshot)
    blank = tmp_path / "part-00000.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(InputError, match="empty input"):
        readers.read_embeddings(blank)


def test_missing_path_and_mixed_formats(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input not found"):
        readers.read_embeddings(tmp_path / "nope")
    readers.write_embeddings(tmp_path / "a.parquet", *_data(3, 2))
    (tmp_path / "b.jsonl").write_text('{"item_id": 1, "embedding": [1.0, 2.0]}\n')
    with pytest.raises(InputError, match=r"mixes formats \['jsonl', 'parquet'\]"):
        readers.detect_format(tmp_path)


# ---------------------------------------------------------------------------------------- semantic ids


def _codes(n: int, levels: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return np.arange(n, dtype=np.int64) * 3 + 100, rng.integers(0, 256, (n, levels)), rng.integers(0, 3, n)


def test_semantic_id_writer_roundtrip(tmp_path: Path) -> None:
    ids, codes, dedup = _codes(1000)
    out = tmp_path / "codes" / "semantic_ids.parquet"
    with idfile.SemanticIdWriter(out, num_levels=3) as writer:
        writer.write(ids[:600], codes[:600], dedup[:600])
        assert not out.exists() and writer.tmp_path.exists()
        writer.write(ids[600:], codes[600:], dedup[600:])
    assert writer.rows_written == 1000 and not writer.tmp_path.exists()
    schema = pq.read_schema(out)
    assert schema.field("codes").type == pa.list_(pa.int32(), 3) and schema.field("dedup").type == pa.int32()
    got_ids, got_codes, got_dedup = idfile.read_semantic_ids(out)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_dedup, dedup)
    assert got_codes.dtype == np.int32 and got_dedup.dtype == np.int32 and got_ids.dtype == np.int64


def test_semantic_id_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    ids, codes, dedup = _codes(10)
    out = tmp_path / "semantic_ids.parquet"
    with pytest.raises(RuntimeError, match="boom"), idfile.SemanticIdWriter(out, 3) as writer:
        writer.write(ids, codes, dedup)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"codes \[n, 3\]"), idfile.SemanticIdWriter(out, 3) as writer:
        writer.write(ids, codes[:, :2], dedup)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="inside its `with` block"):
        idfile.SemanticIdWriter(out, 3).write(ids, codes, dedup)


def test_read_semantic_ids_missing_columns(tmp_path: Path) -> None:
    path = _write_table(tmp_path / "x.parquet", {"item_id": pa.array([1]), "codes": pa.array([[1, 2]])})
    with pytest.raises(InputError, match=r"missing columns \['dedup'\]"):
        idfile.read_semantic_ids(path)


def test_write_json_dict_content(tmp_path: Path) -> None:
    ids, codes, dedup = _codes(300_000, 4)
    src = tmp_path / "semantic_ids.parquet"
    with idfile.SemanticIdWriter(src, 4) as writer:
        writer.write(ids, codes, dedup)
    out = tmp_path / "json" / "semantic_ids.json"
    assert idfile.write_json_dict(src, out) == 300_000
    loaded = json.loads(out.read_text())
    assert len(loaded) == 300_000
    assert all(isinstance(k, str) for k in loaded)
    assert loaded[str(ids[0])] == codes[0].tolist()
    assert loaded[str(ids[-1])] == codes[-1].tolist()
    assert loaded == {str(i): c.tolist() for i, c in zip(ids, codes, strict=True)}
    assert not list(out.parent.glob("*.tmp*"))


def test_write_json_dict_empty_and_bad_source(tmp_path: Path) -> None:
    src = tmp_path / "empty.parquet"
    with idfile.SemanticIdWriter(src, 2):
        pass
    out = tmp_path / "out.json"
    assert idfile.write_json_dict(src, out) == 0
    assert json.loads(out.read_text()) == {}
    ids, codes, dedup = idfile.read_semantic_ids(src)
    assert ids.shape == (0,) and codes.shape == (0, 2) and dedup.shape == (0,)
    bad = _write_table(tmp_path / "bad.parquet", {"item_id": pa.array([1])})
    with pytest.raises(InputError, match=r"missing columns \['codes'\]"):
        idfile.write_json_dict(bad, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()
