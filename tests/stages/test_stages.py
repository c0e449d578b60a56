"""The include/ stages on small real data, without a scheduler: settings, snapshots, each stage, the GX
suites catching each bad case (with sample item ids in the message) and the publish guarantees."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include import settings
from include.files import read_json
from include.gx_suites import ValidationFailed
from include.layout import RunFolder
from include.snapshot import SnapshotError, parse_snapshot, resolve_snapshot, snapshot_ready
from include.stages.load_embeddings import load_embeddings
from include.stages.publish import PublishError, read_latest
from include.stages.train_rqvae import train_rqvae
from include.stages.validate_codes import validate_codes
from include.stages.validate_dims import validate_dims
from rqvae.config import CodeChecks, InputChecks, ModelConfig, RetrainPolicy, TrainConfig
from rqvae.errors import InputError
from rqvae.io.fsutil import sha256_file
from rqvae.io.idfile import SemanticIdWriter, read_semantic_ids
from rqvae.io.synth import synth
from tests.helpers import encode_all, publish_work, run_info

N, DIM = 2000, 16
IDS = np.arange(N, dtype=np.int64) * 7 + 1_000


def write_snapshot(folder: Path, ids: list, vectors: list, success: bool = True) -> Path:
    """A snapshot folder with one Parquet part (list<float32>, so ragged rows are possible)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"item_id": pa.array(ids, pa.int64()), "embedding": pa.array(vectors, pa.list_(pa.float32()))}
    )
    pq.write_table(table, folder / "part-00000.parquet")
    if success:
        (folder / "_SUCCESS").touch()
    return folder


def unit_vectors(n: int = N, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows(vectors: np.ndarray) -> list:
    return [list(map(float, v)) for v in vectors]


# ------------------------------------------------------------------------------------------------ settings


def test_resolve_under_keeps_paths_inside_the_roots(tmp_path):
    root = tmp_path / "embeddings"
    assert settings.resolve_under(root, "") == root
    assert settings.resolve_under(root, None) == root
    assert settings.resolve_under(root, "team-a/2026-01-01") == root / "team-a" / "2026-01-01"
    assert settings.resolve_under(root, "a/../b") == root / "b"
    assert settings.resolve_under(root, str(root / "x")) == root / "x"
    assert settings.resolve_under(root, str(tmp_path / "other"), allowed=[tmp_path / "other"]) == tmp_path / "other"
    for escape in ("../secrets", "a/../../secrets", "/etc", str(tmp_path / "embeddings-evil")):
        with pytest.raises(settings.PathOutsideRootError, match="outside the configured roots"):
            settings.resolve_under(root, escape)


def test_roots_come_from_env_then_variables_then_project_default(monkeypatch, tmp_path):
    for var in settings.ROOT_ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RQVAE_WORK_ROOT", str(tmp_path / "work"))
    variables = {"rqvae_publish_root": str(tmp_path / "pub"), "rqvae_work_root": "/ignored/env/wins"}
    roots = settings.load_roots(variables.get)
    assert roots.work == tmp_path / "work"
    assert roots.publish == tmp_path / "pub"
    assert roots.embeddings == settings.project_dir() / "var" / "data" / "embeddings"
    assert settings.load_roots().publish == settings.project_dir() / "var" / "data" / "published"


def test_a_sub_dataset_gets_its_own_work_and_publish_namespace(tmp_path):
    roots = settings.Roots(tmp_path / "emb", tmp_path / "work", tmp_path / "pub")
    assert settings.dataset_roots(roots, "") == roots
    movielens = settings.dataset_roots(roots, "movielens")
    assert movielens == settings.Roots(tmp_path / "emb" / "movielens", tmp_path / "work" / "movielens",
                                       tmp_path / "pub" / "movielens", tmp_path / "interactions" / "movielens")
    assert roots.interactions == tmp_path / "interactions", "interaction logs default to a sibling of the inputs"
    with pytest.raises(settings.PathOutsideRootError):
        settings.dataset_roots(roots, "../work")


# ----------------------------------------------------------------------------------------------- snapshots


def test_snapshot_comes_from_param_then_logical_date_then_run_after():
    logical = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)
    after = datetime(2026, 3, 5, 9, 30, tzinfo=UTC)
    assert resolve_snapshot("2026-01-02", logical, after) == "2026-01-02"
    assert resolve_snapshot("", logical, after) == "2026-03-04"
    assert resolve_snapshot(None, None, after) == "2026-03-05"
    with pytest.raises(SnapshotError):
        resolve_snapshot("", None, None)
    for bad in ("2026-1-2", "2026-02-30", "20260102", "../2026-01-02", "latest"):
        with pytest.raises(SnapshotError):
            parse_snapshot(bad)


def test_snapshot_is_ready_only_with_data_and_marker(tmp_path):
    folder = tmp_path / "2026-01-01"
    assert not snapshot_ready(folder)
    folder.mkdir()
    (folder / "_SUCCESS").touch()
    assert not snapshot_ready(folder), "a marker without data"
    (folder / "_SUCCESS").unlink()
    write_snapshot(folder, [1], [[0.5, 0.5]], success=False)
    assert not snapshot_ready(folder), "data without a marker (still being written)"
    (folder / "_SUCCESS").touch()
    assert snapshot_ready(folder)


# ------------------------------------------------------------------------------------------ load_embeddings


def test_load_embeddings_writes_the_artifact_and_resets_the_work_folder(tmp_path):
    snapshot = synth(tmp_path / "emb" / "2026-01-01", N, dim=DIM, seed=1)
    work = tmp_path / "work" / "2026-01-01"
    stale = work / "model" / "checkpoint" / "old.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an earlier run")
    result = load_embeddings(snapshot, work)
    assert result["n_items"] == N and result["dim"] == DIM
    assert result["checksum"] == sha256_file(result["path"], tagged=True)
    assert not stale.exists()
    table = pq.read_table(result["path"])
    assert table.schema.field("item_id").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)  # fixed size: faster to read
    assert len(set(table.column("item_id").to_pylist())) == N
    json.dumps(result)


@pytest.mark.parametrize("bad_row", [None, 20, 45])
def test_load_embeddings_writes_fixed_size_lists_only_when_every_row_fits(tmp_path, bad_row):
    """One short row anywhere (also in a later batch, after fixed-size batches were written) gives a
    variable-length artifact that keeps it; either way the artifact holds the snapshot's values exactly. A
    first batch of null vectors only (no width to read yet) does not stop the fixed-size layout."""
    vectors = rows(unit_vectors(50))
    if bad_row is not None:
        vectors[bad_row] = vectors[bad_row][:-1]
    for row in range(20):  # the whole first batch: null vectors, allowed in both layouts; validate_dims names them
        vectors[row] = None
    snapshot = write_snapshot(tmp_path / "emb" / "2026-01-01", IDS[:50].tolist(), vectors)
    result = load_embeddings(snapshot, tmp_path / "work", batch_rows=20)
    column = pq.read_table(result["path"]).column("embedding")
    fixed = pa.list_(pa.float32(), DIM)
    assert column.type == (fixed if bad_row is None else pa.list_(pa.float32()))
    assert column.to_pylist() == pa.array(vectors, pa.list_(pa.float32())).to_pylist()
    assert result["dims"] == ({"0": 20, str(DIM): 30} if bad_row is None else {"0": 20, str(DIM - 1): 1, str(DIM): 29})


def test_load_embeddings_keeps_wrong_length_rows_for_validation(tmp_path):
    vectors = rows(unit_vectors(50))
    vectors[3] = vectors[3][:-1]
    snapshot = write_snapshot(tmp_path / "emb" / "2026-01-01", IDS[:50].tolist(), vectors)
    result = load_embeddings(snapshot, tmp_path / "work")
    assert result["n_items"] == 50 and result["dim"] == DIM
    assert result["dims"] == {str(DIM - 1): 1, str(DIM): 49}


def test_load_embeddings_reads_json_lines_snapshots(tmp_path):
    folder = tmp_path / "emb" / "2026-01-01" / "emb_81_16"
    folder.mkdir(parents=True)
    pairs = zip(IDS[:30].tolist(), rows(unit_vectors(30)), strict=True)
    lines = [json.dumps({"anonymous_cid": i, "emb": v}) for i, v in pairs]
    (folder / "part-00000").write_text("\n".join(lines) + "\n")
    (folder.parent / "_SUCCESS").touch()
    result = load_embeddings(folder.parent, tmp_path / "work")
    assert result["n_items"] == 30 and result["dim"] == DIM


# -------------------------------------------------------------------------------------------- validate_dims


def loaded_artifact(tmp_path: Path, ids: list, vectors: list) -> str:
    snapshot = write_snapshot(tmp_path / "emb" / "2026-01-01", ids, vectors)
    return load_embeddings(snapshot, tmp_path / "work")["path"]


def test_validate_dims_passes_clean_data_and_saves_the_report(tmp_path):
    artifact = loaded_artifact(tmp_path, IDS.tolist(), rows(unit_vectors()))
    report = tmp_path / "work" / "validation" / "input.json"
    result = validate_dims(artifact, report, InputChecks(expected_dim=DIM, min_items=N, min_norm=0.5, max_norm=2))
    assert result["ok"] and result["n_items"] == N and result["dim"] == DIM
    saved = read_json(report)
    assert saved["success"] is True and saved["failed"] == 0 and saved["evaluated"] == 7


def corrupt(case: str) -> tuple[list, list, dict]:
    """Clean ids and vectors with one kind of damage at item 1234 (row 33)."""
    ids = IDS.tolist()
    vectors = rows(unit_vectors())
    ids[33] = 1234
    params: dict = {"expected_dim": 0, "min_items": 1, "min_norm": 0.5, "max_norm": 2.0}
    if case == "dim":
        vectors[33] = vectors[33][:-1]
    elif case == "nan":
        vectors[33][5] = float("nan")
    elif case == "inf":
        vectors[33][0] = float("inf")
    elif case == "duplicate":
        ids[34] = 1234
    elif case == "null_id":
        ids[33] = None
    elif case == "norm":
        vectors[33] = [0.0] * DIM
    elif case == "min_items":
        params["min_items"] = N + 1
    return ids, vectors, params


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("dim", rf"expect_column_values_to_be_between\(dim\): 1 of {N} rows have dim {DIM - 1} != {DIM}; "
                r"sample item ids: \[1234\]"),
        ("nan", r"expect_column_values_to_be_between\(nonfinite\): 1 of .* NaN/Inf.*sample item ids: \[1234\]"),
        ("inf", r"expect_column_values_to_be_between\(nonfinite\): 1 of .*sample item ids: \[1234\]"),
        ("duplicate", r"expect_column_values_to_be_unique\(item_id\): 2 of .*sample item ids: \[1234\]"),
        ("null_id", r"expect_column_values_to_not_be_null\(item_id\): 1 of .*null item_id; sample rows: \[33\]"),
        ("norm", r"expect_column_values_to_be_between\(norm\): 1 of .*outside \[0.5, 2.0\]; sample item ids: \[1234\]"),
        ("min_items", rf"expect_table_row_count_to_be_between: observed {N}; .*min_items={N + 1}"),
    ],
)
def test_validate_dims_names_each_failure_with_sample_ids(tmp_path, case, expected):
    ids, vectors, params = corrupt(case)
    artifact = loaded_artifact(tmp_path, ids, vectors)
    report = tmp_path / "work" / "validation" / "input.json"
    with pytest.raises(ValidationFailed, match=expected) as caught:
        validate_dims(artifact, report, InputChecks(**params))
    assert isinstance(caught.value, ValueError)
    assert len(caught.value.failures) == (3 if case == "inf" else 1), caught.value.failures  # inf: norm, max_abs
    saved = read_json(report)
    assert saved["success"] is False and saved["failures"] == caught.value.failures


def test_validate_dims_reports_every_failed_rule_at_once(tmp_path):
    ids, vectors, _ = corrupt("dim")
    vectors[40][1] = float("nan")
    ids[50] = ids[51]
    artifact = loaded_artifact(tmp_path, ids, vectors)
    with pytest.raises(ValidationFailed) as caught:
        validate_dims(artifact, tmp_path / "input.json",
                      InputChecks(expected_dim=DIM, min_items=1, min_norm=0.0, max_norm=1e6))
    rules = [line.split(":")[0] for line in caught.value.failures]
    assert rules == [
        "expect_column_values_to_be_unique(item_id)",
        "expect_column_values_to_be_between(dim)",
        "expect_column_values_to_be_between(nonfinite)",
    ]
    assert str(ids[51]) in caught.value.failures[0] and str(IDS[40]) in caught.value.failures[2]


# ------------------------------------------------------------------------ train, encode, codes, publish


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> dict:
    """One small real pipeline run up to validate_codes (about 5 s), shared by the tests below."""
    base = tmp_path_factory.mktemp("run")
    snapshot = synth(base / "emb" / "2026-01-01", 3000, dim=DIM, seed=3)
    work = base / "work" / "2026-01-01"
    folder = RunFolder(work)
    loaded = load_embeddings(snapshot, work)
    validate_dims(loaded["path"], folder.input_report, InputChecks(expected_dim=DIM, min_items=1))
    trained = train_rqvae(run_info(work), loaded["path"], ModelConfig(input_dim=DIM, num_codebooks=2,
                          codebook_size=16), TrainConfig(epochs=1, batch_size=256), RetrainPolicy())
    encoded = encode_all(trained["model_path"], loaded["path"], work)
    codes = validate_codes(
        encoded["path"], loaded["path"], folder.codes_report, CodeChecks(min_unique_ratio=0.01),
        codebook_sizes=encoded["codebook_size"], recon_mse=encoded["recon_mse"],
    )
    return {"work": work, "folder": folder, "loaded": loaded, "trained": trained, "encoded": encoded,
            "codes": codes}


def test_train_and_encode_cover_every_item(trained_run):
    trained, encoded = trained_run["trained"], trained_run["encoded"]
    assert (Path(trained["model_path"]) / "config.json").is_file()
    assert trained["device"] in ("cpu", "cuda") and trained["metrics"]["n_train"] == 3000
    ids, codes, dedup = read_semantic_ids(encoded["path"])
    input_ids = pq.read_table(trained_run["loaded"]["path"]).column("item_id").to_numpy()
    assert sorted(ids.tolist()) == sorted(input_ids.tolist())
    assert codes.shape == (3000, 2) and codes.min() >= 0 and codes.max() < 16
    assert len({(*c, d) for c, d in zip(codes.tolist(), dedup.tolist(), strict=True)}) == 3000
    assert trained_run["codes"]["ok"] and read_json(trained_run["folder"].codes_report)["success"]
    for result in (trained, encoded, trained_run["codes"]):
        assert len(json.dumps(result)) < 4096, "XCom-sized"


def rewrite_codes(src: str, dst: Path, edit) -> Path:
    ids, codes, dedup = read_semantic_ids(src)
    ids, codes, dedup = edit(ids.copy(), codes.copy(), dedup.copy())
    with SemanticIdWriter(dst, codes.shape[1]) as writer:
        writer.write(ids, codes, dedup)
    return dst


def _drop_first(i, c, d):
    return i[1:], c[1:], d[1:]


def _extra_id(i, c, d):
    i[0] = 999_999_999
    return i, c, d


def _repeat_row(i, c, d):
    return np.r_[i, i[:1]], np.r_[c, c[:1]], np.r_[d, d[:1]]


def _code_out_of_range(i, c, d):
    c[0, 1] = 16
    return i, c, d


def _same_codes_and_dedup(i, c, d):
    c[1], d[1] = c[0], d[0]
    return i, c, d


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_drop_first, r"expect_column_values_to_be_in_set\(coverage\): 1 of 3000 rows are missing"),
        (_extra_id, r"expect_column_values_to_be_in_set\(coverage\): 2 of 3001 rows are (missing, extra|extra, "
                    r"missing) instead of ok .*; sample item ids: \[[\d, ]*999999999[\d, ]*\]"),
        (_repeat_row, r"expect_column_values_to_be_unique\(item_id\): 2 of 3001 rows appear more than once"),
        (_code_out_of_range, r"expect_column_values_to_be_between\(code_1\): 1 of 3000 rows have level-1 codes "
                             r"\(16\) outside \[0, 16\); sample item ids: \[\d+\]"),
        (_same_codes_and_dedup, r"expect_compound_columns_to_be_unique\(code_0\+code_1\+dedup\): 2 of 3000"),
    ],
)
def test_validate_codes_catches_each_bad_output(trained_run, tmp_path, edit, expected):
    bad = rewrite_codes(trained_run["encoded"]["path"], tmp_path / "semantic_ids.parquet", edit)
    with pytest.raises(ValidationFailed, match=expected):
        validate_codes(
            bad, trained_run["loaded"]["path"], tmp_path / "codes.json", CodeChecks(min_unique_ratio=0.01),
            codebook_sizes=[16, 16], recon_mse=trained_run["encoded"]["recon_mse"],
        )
    assert read_json(tmp_path / "codes.json")["success"] is False


def test_validate_codes_enforces_the_quality_thresholds(trained_run, tmp_path):
    encoded = trained_run["encoded"]
    with pytest.raises(ValidationFailed) as caught:
        # 17 codes per level allowed, at most 16 used: min_usage=1 cannot be met
        validate_codes(
            encoded["path"], trained_run["loaded"]["path"], tmp_path / "codes.json",
            CodeChecks(min_unique_ratio=0.99, min_usage=1.0, max_recon_mse=1e-9),
            codebook_sizes=[17, 17], recon_mse=encoded["recon_mse"],
        )
    text = str(caught.value)
    assert "expect_column_proportion_of_unique_values_to_be_between(prefix)" in text
    assert "min_unique_ratio=0.99" in text
    assert "expect_column_unique_value_count_to_be_between(code_0)" in text
    assert "expect_column_unique_value_count_to_be_between(code_1)" in text
    assert "expect_column_values_to_be_between(recon_mse)" in text and "max_recon_mse=1e-09" in text
    assert len(caught.value.failures) == 4


def test_publish_writes_a_complete_version_and_moves_latest(trained_run, tmp_path):
    run = trained_run
    result = publish_work("2026-01-01", run["work"], tmp_path, export_json=True, run_id="r1", params={"epochs": 1},
                     loaded=run["loaded"], trained=run["trained"], encoded=run["encoded"])
    version = Path(result["version_path"])
    assert version == tmp_path / "2026-01-01" and result["latest"] == "2026-01-01" and result["moved_latest"]
    assert (tmp_path / "latest").resolve() == version.resolve()
    manifest = read_json(version / "manifest.json")
    assert manifest["snapshot"] == "2026-01-01" and manifest["airflow"]["run_id"] == "r1"
    assert manifest["counts"]["n_items"] == 3000 and manifest["counts"]["json_items"] == 3000
    assert manifest["checksums"]["input"] == run["loaded"]["checksum"]
    assert manifest["checksums"]["semantic_ids"] == sha256_file(version / "semantic_ids.parquet", tagged=True)
    assert manifest["validation"]["input"]["success"] and manifest["validation"]["codes"]["success"]
    assert manifest["config"]["model"]["model"]["codebook_size"] == [16, 16]
    assert manifest["config"]["params"] == {"epochs": 1}
    assert (version / "model" / "config.json").is_file() and not (version / "model" / "checkpoint").exists()
    for name, entry in manifest["files"].items():
        assert sha256_file(version / name, tagged=True) == entry["sha256"], name
    assert len(json.loads((version / "semantic_id_dict.json").read_text())) == 3000
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [".publish.lock", ".versions"], "no staging or temp pointer left"
    assert os.readlink(version) == ".versions/2026-01-01/" + os.readlink(version).split("/")[2] + "/2026-01-01"


def test_publish_never_moves_latest_backwards_and_replaces_a_republished_snapshot(trained_run, tmp_path):
    work = trained_run["work"]
    assert publish_work("2026-01-03", work, tmp_path)["moved_latest"] is True
    older = publish_work("2026-01-02", work, tmp_path, run_id="backfill")
    assert older["moved_latest"] is False and older["latest"] == "2026-01-03"
    assert read_latest(tmp_path) == "2026-01-03"
    assert read_json(tmp_path / "latest.json")["snapshot"] == "2026-01-03"
    again = publish_work("2026-01-03", work, tmp_path, run_id="rerun")
    assert again["moved_latest"] is True and again["latest"] == "2026-01-03"
    versions = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".") and p.is_dir())
    assert versions == ["2026-01-02", "2026-01-03", "latest"]  # latest is the symlink
    assert read_json(tmp_path / "2026-01-03" / "manifest.json")["airflow"]["run_id"] == "rerun"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".staging", ".old", ".latest"))]
    newer = publish_work("2026-01-04", work, tmp_path)
    assert newer["moved_latest"] is True and os.readlink(tmp_path / "latest") == "2026-01-04"


def test_publish_refuses_unvalidated_output(trained_run, tmp_path):
    work = tmp_path / "work"
    folder = RunFolder(work)
    shutil.copytree(trained_run["work"], work)
    report = read_json(folder.codes_report)
    report["success"] = False
    folder.codes_report.write_text(json.dumps(report))
    with pytest.raises(PublishError, match="did not pass"):
        publish_work("2026-01-01", work, tmp_path / "pub")
    assert not (tmp_path / "pub" / "2026-01-01").exists() and read_latest(tmp_path / "pub") is None


def test_stage_errors_are_value_errors_so_the_dag_does_not_retry_them(tmp_path):
    empty = tmp_path / "emb" / "2026-01-01"
    empty.mkdir(parents=True)
    (empty / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError) as caught:
        load_embeddings(empty, tmp_path / "work")
    assert isinstance(caught.value, ValueError)
    assert issubclass(ValidationFailed, ValueError) and issubclass(settings.PathOutsideRootError, ValueError)
