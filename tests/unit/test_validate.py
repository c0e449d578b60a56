"""check_embeddings: every problem is reported with its count and the offending ids."""

from __future__ import annotations

import numpy as np
import pytest

from rqvae.errors import InputError
from rqvae.io.validate import check_embeddings


def _clean(n: int = 100, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return np.arange(n, dtype=np.int64) * 10 + 1000, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_clean_input_passes() -> None:
    ids, vectors = _clean()
    assert check_embeddings(ids, vectors, expected_dim=8, min_items=100) is None


def test_clean_input_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import rqvae.io.validate as validate

    monkeypatch.setattr(validate, "CHECK_CHUNK_ROWS", 7)
    ids, vectors = _clean(50)
    vectors[[3, 20, 49]] = 0.0
    with pytest.raises(InputError, match="all-zero vectors") as err:
        check_embeddings(ids, vectors)
    assert err.value.count == 3 and err.value.sample_ids == [1030, 1200, 1490]


def test_empty_and_shape_problems() -> None:
    with pytest.raises(InputError, match="empty input"):
        check_embeddings(np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(InputError, match="2-D matrix"):
        check_embeddings(np.arange(3), np.zeros(3))
    with pytest.raises(InputError, match="2 ids for 3 vectors"):
        check_embeddings(np.arange(2), np.ones((3, 4)))


def test_too_few_items_and_wrong_dim() -> None:
    ids, vectors = _clean(10)
    with pytest.raises(InputError, match=r"too few items: 10 < min_items=11") as err:
        check_embeddings(ids, vectors, min_items=11)
    assert err.value.sample_ids[0] == 1000
    with pytest.raises(InputError, match="embedding dimension 8 != expected 32"):
        check_embeddings(ids, vectors, expected_dim=32)


@pytest.mark.parametrize(
    ("value", "message"), [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (5e3, r"\|value\| > 1000")]
)
def test_bad_values_name_rows(value: float, message: str) -> None:
    ids, vectors = _clean()
    vectors[7, 2] = value
    vectors[42, 0] = value
    with pytest.raises(InputError, match=message) as err:
        check_embeddings(ids, vectors)
    assert err.value.count == 2 and err.value.sample_ids == [1070, 1420]
    assert "1070" in str(err.value)


def test_max_abs_is_configurable() -> None:
    ids, vectors = _clean()
    vectors[1, 1] = 2.0
    check_embeddings(ids, vectors)
    with pytest.raises(InputError, match=r"\|value\| > 1.5"):
        check_embeddings(ids, vectors, max_abs=1.5)


def test_duplicate_ids() -> None:
    ids, vectors = _clean()
    ids[[5, 6, 80]] = [1010, 1010, 1990]
    with pytest.raises(InputError, match="duplicate item ids") as err:
        check_embeddings(ids, vectors)
    assert err.value.count == 2 and err.value.sample_ids == [1010, 1990]


def test_null_ids_float_and_object() -> None:
    _, vectors = _clean(4)
    with pytest.raises(InputError, match="null item ids") as err:
        check_embeddings(np.array([1.0, np.nan, 3.0, np.nan]), vectors)
    assert err.value.count == 2 and err.value.sample_ids == [1, 3]
    with pytest.raises(InputError, match="null item ids") as err:
        check_embeddings(np.array([1, None, 3, 4], dtype=object), vectors)
    assert err.value.sample_ids == [1]
    with pytest.raises(InputError, match="non-integer item ids") as err:
        check_embeddings(np.array([1.0, 2.5, 3.0, 4.0]), vectors)
    assert err.value.sample_ids == [2.5]


def test_integral_float_ids_are_checked_for_duplicates() -> None:
    _, vectors = _clean(3)
    with pytest.raises(InputError, match="duplicate item ids") as err:
        check_embeddings(np.array([1.0, 2.0, 2.0]), vectors)
    assert err.value.sample_ids == [2]


def test_several_problems_are_reported_together() -> None:
    ids, vectors = _clean()
    vectors[3] = np.nan
    vectors[9] = 0.0
    ids[50] = ids[51]
    with pytest.raises(InputError, match="3 problems") as err:
        check_embeddings(ids, vectors, path="snap/emb.parquet")
    text = str(err.value)
    for fragment in (
        "duplicate item ids",
        "[1510]",
        "NaN or Inf",
        "[1030]",
        "all-zero",
        "[1090]",
        "snap/emb.parquet",
    ):
        assert fragment in text
