"""The fast validation path (GX on suspect rows + aggregate frames) says exactly what GX on the full frame says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.gx_rules import codes_expectations, input_expectations
from include.gx_suites import ID_COLUMN, ROW_COLUMN, Batch, ValidationFailed, run_suite, split_batches, suspect_rows
from include.stages.validate_codes import _distinct_codes, _tuple_keys, coverage_frame, joined_frame, validate_codes
from include.stages.validate_dims import row_stats, suspect_stats
from rqvae.config import CodeChecks
from rqvae.io.idfile import SemanticIdWriter
from rqvae.quantize.metrics import assign_dedup, code_metrics

KEYS = ("success", "element_count", "unexpected_count", "observed_value", "unexpected_values", "sample_ids",
        "sample_rows")


def _by_rule(checks: list[dict]) -> dict[tuple[str, str], dict]:
    return {(c["expectation"], str(c["column"])): {k: c[k] for k in KEYS} for c in checks}


def _artifact(tmp_path: Path, edit: str) -> Path:
    rng = np.random.default_rng(1)
    n, dim = 400, 8
    ids: list[int | None] = [int(i) for i in rng.permutation(10_000)[:n]]
    vectors: list[list[float] | None] = [list(v / np.linalg.norm(v)) for v in rng.standard_normal((n, dim))]
    if edit == "bad":
        ids[3] = None
        ids[10] = ids[11]
        ids[12] = ids[11]
        vectors[5] = vectors[5][:-1]
        vectors[6] = None
        vectors[7][2] = float("nan")
        vectors[8][0] = 1e30
        vectors[9] = [0.0] * dim
        vectors[20][1] = float("inf")
    table = pa.table({ID_COLUMN: pa.array(ids, pa.int64()), "embedding": pa.array(vectors, pa.list_(pa.float32()))})
    path = tmp_path / f"{edit}.parquet"
    pq.write_table(table, path, row_group_size=150)
    return path


@pytest.mark.parametrize("edit", ["clean", "bad"])
def test_input_suite_split_matches_the_full_frame(tmp_path: Path, edit: str) -> None:
    stats = row_stats(_artifact(tmp_path, edit))
    def rules() -> list:  # a GX expectation belongs to one suite: a fresh set for each run
        return input_expectations(8, 500, 0.5, 2.0, 1e3)

    full = run_suite("full", [Batch("rows", stats, rules(), index_columns=[ID_COLUMN, ROW_COLUMN])])
    table = pd.DataFrame(index=pd.RangeIndex(len(stats)))
    fast = run_suite("fast", split_batches("rows", stats, rules(), [ID_COLUMN, ROW_COLUMN], [table]))
    assert _by_rule(fast.checks) == _by_rule(full.checks)
    assert sorted(fast.failures) == sorted(full.failures)
    if edit == "bad":
        assert not fast.success and len(fast.failures) == 7  # every rule, the row count included
        assert 0 < int(suspect_rows(stats, rules()).sum()) < len(stats)


@pytest.mark.parametrize("edit", ["clean", "bad"])
@pytest.mark.parametrize("expected_dim", [0, 8])
def test_streamed_suspects_give_the_full_frame_verdict(tmp_path: Path, edit: str, expected_dim: int) -> None:
    """validate_dims keeps only suspect rows while streaming (plus ids and lengths): GX says the same."""
    path = _artifact(tmp_path, edit)
    if edit == "bad":  # a duplicate id in another row group and a short vector only the length rule catches
        table = pq.read_table(path)
        ids = table.column(ID_COLUMN).to_pylist()
        vectors = table.column("embedding").to_pylist()
        ids[310] = ids[40]
        vectors[200] = vectors[200][:4]
        table = pa.table({ID_COLUMN: pa.array(ids, pa.int64()), "embedding": pa.array(vectors, pa.list_(pa.float32()))})
        pq.write_table(table, path, row_group_size=150)
    stats = row_stats(path)

    def rules(dim: int = 8) -> list:
        return input_expectations(dim, 100, 0.5, 2.0, 1e3)

    full = run_suite("full", [Batch("rows", stats, rules(), index_columns=[ID_COLUMN, ROW_COLUMN])])
    suspects, n, dim = suspect_stats(path, rules(), expected_dim)
    assert (n, dim) == (len(stats), 8)
    table = pd.DataFrame(index=pd.RangeIndex(n))
    streamed = run_suite("streamed", split_batches("rows", suspects, rules(dim), [ID_COLUMN, ROW_COLUMN], [table],
                                                   element_count=n))
    assert _by_rule(streamed.checks) == _by_rule(full.checks)
    assert sorted(streamed.failures) == sorted(full.failures)
    if edit == "bad":
        assert 0 < len(suspects) < 30 and {40, 200, 310} <= set(suspects[ROW_COLUMN])
        assert len(streamed.failures) == 6  # every row rule
    else:
        assert len(suspects) == 0 and full.success


def _outputs(edit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    input_ids = rng.permutation(50_000)[:600].astype(np.int64)
    ids = rng.permutation(input_ids)
    codes = rng.integers(0, 6, size=(len(ids), 3)).astype(np.int32)
    dedup = np.zeros(len(ids), dtype=np.int32)
    if edit == "bad":
        ids, codes, dedup = ids[2:], codes[2:], dedup[2:]  # two input items without an ID
        ids[0] = 999_999  # an ID for an item never seen
        ids = np.r_[ids, ids[5]]  # one item twice
        codes = np.r_[codes, codes[5:6]]
        dedup = np.r_[dedup, dedup[5]]
        codes[7, 1] = 6  # out of range
        codes[9, 2] = -1
    return input_ids, ids, codes, dedup


@pytest.mark.parametrize("edit", ["clean", "bad"])
def test_codes_suite_split_matches_the_joined_frame(edit: str) -> None:
    input_ids, ids, codes, dedup = _outputs(edit)
    sizes = [6, 6, 6]
    full_frame = joined_frame(input_ids, ids, codes, dedup)
    frame = coverage_frame(input_ids, ids, codes, dedup)
    ordered = frame.sort_values(ID_COLUMN, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(ordered.astype({"coverage": str}), full_frame, check_dtype=False)

    def rules() -> list:
        return codes_expectations(sizes, min_unique_ratio=0.9, min_usage=1.0)

    full = run_suite("full", [Batch("rows", full_frame, rules(), index_columns=[ID_COLUMN])])
    tables = [pd.DataFrame({"prefix": _tuple_keys(codes)}), _distinct_codes(codes)]
    fast = run_suite("fast", split_batches("rows", frame, rules(), [ID_COLUMN], tables, order=ID_COLUMN))
    assert _by_rule(fast.checks) == _by_rule(full.checks)
    assert sorted(fast.failures) == sorted(full.failures)
    failed = {c["expectation"] for c in fast.checks if not c["success"]}
    if edit == "bad":
        assert {"expect_column_values_to_be_in_set", "expect_column_values_to_be_unique",
                "expect_column_values_to_be_between", "expect_compound_columns_to_be_unique"} <= failed
    else:
        assert "expect_column_values_to_be_in_set" not in failed


def test_mostly_rules_run_on_every_row() -> None:
    """A rule allowed to fail on some rows is decided by the share of all rows, so it is never split."""
    from include.gx_suites import expectations_module, is_row_rule

    gxe = expectations_module()
    assert is_row_rule(gxe.ExpectColumnValuesToBeBetween(column="dim", min_value=1, max_value=2))
    assert not is_row_rule(gxe.ExpectColumnValuesToBeBetween(column="dim", min_value=1, max_value=2, mostly=0.9))


def test_gx_preload_imports_in_the_background_and_leaves_errors_to_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """preload() overlaps GX's import with the statistics; a failed background import is not hidden."""
    import subprocess
    import sys

    from include import gx_rules, gx_suites

    probe = ("import sys; from include.gx_suites import preload; before = 'great_expectations' in sys.modules; "
             "t = preload(); t.join(120); print(before, 'great_expectations.expectations' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"], done.stderr  # a fresh process: imported by the thread

    def broken() -> None:
        raise ImportError("simulated broken install")

    monkeypatch.setattr(gx_suites, "expectations_module", broken)
    gx_suites.preload().join(30)  # logs at debug, raises nothing in the thread
    with pytest.raises(ImportError, match="simulated"):
        gx_rules.input_expectations(4, 1, 0.0, 10.0, 10.0)


@pytest.mark.parametrize("edit", ["clean", "bad"])
def test_streamed_codes_stage_gives_the_joined_frame_verdict(tmp_path: Path, edit: str) -> None:
    """validate_codes reads the IDs pass by pass and keeps only suspect rows: the same checks, figures, failures."""
    input_ids, ids, codes, _ = _outputs(edit)
    sizes = [6, 6, 6]
    dedup = assign_dedup(ids, codes, sizes)
    if edit == "bad":
        codes[30:33] = codes[40]  # one tuple shared by four items, two of them with the same dedup
        dedup[30:32] = dedup[40] + 1000
    artifact = tmp_path / "embeddings.parquet"
    pq.write_table(pa.table({ID_COLUMN: input_ids, "embedding": [[0.0]] * len(input_ids)}), artifact)
    parts = tmp_path / "semantic_ids"
    half = len(ids) // 2
    parts.mkdir()
    for index, rows in enumerate((slice(0, half), slice(half, None))):
        with SemanticIdWriter(parts / f"part-{index:05d}.parquet", 3) as writer:
            writer.write(ids[rows], codes[rows], dedup[rows])
    checks = CodeChecks(min_unique_ratio=0.3, min_usage=1.0, max_recon_mse=0.5)
    try:
        validate_codes(parts, artifact, tmp_path / "codes.json", checks, codebook_sizes=sizes, recon_mse=0.01)
    except ValidationFailed:  # the report is written first
        assert edit == "bad"
    report = json.loads((tmp_path / "codes.json").read_text())

    full_rules = codes_expectations(sizes, 0.3, 1.0)
    full = run_suite("full", [Batch("rows", joined_frame(input_ids, ids, codes, dedup), full_rules,
                                    index_columns=[ID_COLUMN])])
    rows_checks = [c for c in report["checks"] if not c["batch"].startswith("quality")]
    assert _by_rule(rows_checks) == _by_rule(full.checks)
    assert report["success"] == (edit == "clean") == full.success
    if edit == "clean":
        assert report["metrics"] == {**code_metrics(codes, sizes), "recon_mse": 0.01}
    assert report["n_items"] == len(ids) and report["n_input_items"] == len(input_ids)
