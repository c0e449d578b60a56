"""The rqvae command end to end: synth -> train -> encode -> evaluate, and its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rqvae.cli import EXIT_BAD_INPUT, EXIT_OK, main
from rqvae.config import TrainConfig
from rqvae.errors import ConfigError
from rqvae.io.readers import write_embeddings


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def test_synth_train_encode_evaluate(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    data = workdir / "synth.parquet"
    assert run(capsys, "synth", "--n", "3000", "--dim", "16", "--out", str(data), "--seed", "1")[0] == EXIT_OK
    assert pq.ParquetFile(data).metadata.num_rows == 3000

    model = workdir / "model"
    code, out, _ = run(capsys, "train", "--embeddings", str(data), "--out", str(model), "--num-codebooks", "2",
                       "--codebook-size", "32", "--epochs", "1", "--batch-size", "256")
    assert code == EXIT_OK
    assert json.loads(out)["model"] == str(model)
    assert (model / "config.json").exists() and (model / "model.safetensors").exists()

    ids_path, json_path = workdir / "ids.parquet", workdir / "semantic_id_dict.json"
    code, out, _ = run(capsys, "encode", "--model", str(model), "--embeddings", str(data), "--out", str(ids_path),
                       "--json-dict", str(json_path))
    assert code == EXIT_OK
    timing = json.loads(out)  # where the time went, for users and bench/encode.py
    assert 0 <= timing["read_seconds"] <= timing["encode_seconds"] and timing["write_seconds"] >= 0
    table = pq.read_table(ids_path)
    assert table.column_names == ["item_id", "codes", "dedup"]
    assert table.num_rows == 3000
    codes = np.stack(table.column("codes").to_pylist())
    full = np.column_stack([codes, table.column("dedup").to_numpy()])
    assert len(np.unique(full, axis=0)) == 3000  # codes + dedup identify every item
    mapping = json.loads(json_path.read_text())
    first = table.slice(0, 1).to_pylist()[0]
    assert mapping[str(first["item_id"])] == first["codes"]

    code, out, _ = run(capsys, "evaluate", "--model", str(model), "--embeddings", str(data), "--json")
    assert code == EXIT_OK
    metrics = json.loads(out)
    assert set(metrics) >= {"n_items", "recon_mse", "unique_ratio", "collision_rate", "usage", "perplexity"}
    assert metrics["n_items"] == 3000 and len(metrics["usage"]) == 2
    assert metrics["unique_ratio"] == pytest.approx(len(np.unique(codes, axis=0)) / 3000, abs=1e-6)


def test_bad_input_exits_2_and_names_items(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    vectors = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    vectors[7, 3] = np.nan
    ids = np.arange(1000, 1050)
    bad = workdir / "nan.parquet"
    write_embeddings(bad, ids, vectors)
    code, _, err = run(capsys, "train", "--embeddings", str(bad), "--out", str(workdir / "never"))
    assert code == EXIT_BAD_INPUT
    assert err.startswith("error:") and "1007" in err and "NaN" in err
    assert not (workdir / "never").exists()


def test_unreadable_model_exits_2(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "evaluate", "--model", str(workdir / "missing"), "--embeddings", "x.parquet")
    assert code == EXIT_BAD_INPUT and "config.json is missing" in err


@pytest.mark.parametrize("command", ["synth", "train", "encode", "evaluate"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"rqvae {command}" in capsys.readouterr().out


def test_precision_and_encode_device_flags(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """--precision reaches training (bf16 autocast is CUDA-only: CPU training reports it off), a bad value is
    refused naming the choices, and `encode --device cpu` gives the IDs the default device gives here."""
    data = workdir / "prec.parquet"
    assert run(capsys, "synth", "--n", "1500", "--dim", "8", "--out", str(data))[0] == EXIT_OK
    model = workdir / "prec-model"
    code, out, _ = run(capsys, "train", "--embeddings", str(data), "--out", str(model), "--num-codebooks", "2",
                       "--codebook-size", "16", "--epochs", "1", "--device", "cpu", "--precision", "fp32")
    assert code == EXIT_OK and json.loads(out)["autocast_bf16"] is False
    assert json.loads((model / "config.json").read_text())["extra"]["train"]["precision"] == "fp32"
    with pytest.raises(SystemExit) as refused:
        run(capsys, "train", "--embeddings", str(data), "--out", str(workdir / "bad"), "--precision", "fp16")
    err = capsys.readouterr().err
    assert refused.value.code == EXIT_BAD_INPUT and "'bf16', 'fp32'" in err and "fp16" in err
    with pytest.raises(ConfigError, match=r"unknown precision 'fp16'; expected one of \['bf16', 'fp32'\]"):
        TrainConfig(precision="fp16")  # a --config file or the library is checked the same way
    tables = []
    for device in ("cpu", "auto"):
        ids = workdir / f"prec-{device}.parquet"
        assert run(capsys, "encode", "--model", str(model), "--embeddings", str(data), "--out", str(ids),
                   "--device", device)[0] == EXIT_OK
        tables.append(pq.read_table(ids))
    assert tables[0].equals(tables[1])
