"""Progress of the rqvae command as a log or a terminal sees it: periodic plain lines, a redrawn line, --quiet.

The commands run as real subprocesses whose stderr is a pipe (not a terminal), as in an Airflow task or CI.
`RQVAE_PROGRESS_INTERVAL_S=0` makes every update a line, so a few batches give several lines.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rqvae.cli import main
from rqvae.progress import Progress

N = 3000
PROGRESS = r"{desc}: [\d,]+/{total} {unit} \(\d+%\), [\d,]+ {unit}/s, elapsed \S+, ETA \S+"


def rqvae(*argv: str, interval: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RQVAE_PROGRESS_INTERVAL_S": interval}
    return subprocess.run([sys.executable, "-m", "rqvae.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def lines(stderr: str, desc: str, total: str, unit: str) -> list[str]:
    pattern = re.compile(PROGRESS.format(desc=re.escape(desc), total=total, unit=unit))
    return [line for line in stderr.splitlines() if pattern.search(line)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """synth -> train -> encode once, not quiet, stderr piped; their outputs and logs for the tests below."""
    root = tmp_path_factory.mktemp("cli-progress")
    data, model, ids = root / "items.parquet", root / "model", root / "ids.parquet"
    runs = {
        "synth": rqvae("synth", "--n", str(N), "--dim", "8", "--out", str(data)),
        "train": rqvae("train", "--embeddings", str(data), "--out", str(model), "--num-codebooks", "2",
                       "--codebook-size", "8", "--epochs", "2", "--batch-size", "512"),
        "encode": rqvae("encode", "--model", str(model), "--embeddings", str(data), "--out", str(ids),
                        "--batch-rows", "500"),
    }
    for name, proc in runs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        assert "\r" not in proc.stderr, f"{name}: terminal redraws in a log"
    return {"root": root, "data": data, "model": model, **{name: proc.stderr for name, proc in runs.items()}}


def test_synth_logs_items_done(trained):
    found = lines(trained["synth"], "synth", "3,000", "items")
    assert found and "(100%)" in found[-1], trained["synth"]
    assert " INFO rqvae.progress: " in found[-1], "a plain log line with time and level, as in a task log"


def test_train_logs_batches_within_each_epoch_and_a_line_per_epoch(trained):
    stderr = trained["train"]
    for epoch in (1, 2):
        within = lines(stderr, f"epoch {epoch}/2", "6", "batches")  # 3000 items / 512 per batch
        assert len(within) >= 2, stderr
        assert "(100%)" in within[-1]
        assert re.search(rf"epoch {epoch}/2: loss [\d.]+ recon_mse [\d.]+ .*ETA \S+", stderr), stderr


def test_encode_logs_items_rate_and_eta_with_total_from_parquet_metadata(trained):
    found = lines(trained["encode"], "encode", "3,000", "items")
    assert len(found) >= 2, trained["encode"]  # 6 batches of 500 rows
    assert "(100%)" in found[-1]


def test_log_lines_are_periodic_not_per_update(trained, tmp_path):
    proc = rqvae("encode", "--model", str(trained["model"]), "--embeddings", str(trained["data"]),
                 "--out", str(tmp_path / "ids.parquet"), "--batch-rows", "100", interval="3600")
    assert proc.returncode == 0, proc.stderr
    found = lines(proc.stderr, "encode", "3,000", "items")
    assert len(found) == 1 and "(100%)" in found[0], "30 batches, one period: only the final line"


@pytest.mark.parametrize("command", ["synth", "train", "encode"])
def test_quiet_prints_the_result_and_nothing_on_stderr(trained, tmp_path, command):
    args = {
        "synth": ["synth", "--n", str(N), "--dim", "8", "--out", str(tmp_path / "q.parquet")],
        "train": ["train", "--embeddings", str(trained["data"]), "--out", str(tmp_path / "m"), "--num-codebooks",
                  "2", "--codebook-size", "8", "--epochs", "1", "--batch-size", "512"],
        "encode": ["encode", "--model", str(trained["model"]), "--embeddings", str(trained["data"]), "--out",
                   str(tmp_path / "q-ids.parquet"), "--batch-rows", "500"],
    }[command]
    for argv in (["--quiet", *args], [*args[:1], "--quiet", *args[1:]]):  # before or after the subcommand
        proc = rqvae(*argv)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        assert proc.stdout.strip(), "the result still goes to stdout"


def test_a_terminal_gets_one_redrawn_line():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(4, "encode", stream=stream) as bar:
        for _ in range(4):
            bar.update(1)
    out = stream.getvalue()
    assert out.startswith("\r") and out.endswith("\n") and out.count("\n") == 1
    assert re.search(PROGRESS.format(desc="encode", total="4", unit="items"), out.rsplit("\r", 1)[-1])


@pytest.mark.parametrize("command", ["synth", "train", "encode", "evaluate"])
def test_help_shows_examples_and_exit_codes(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"rqvae {command} " in text
    assert "exit codes: 0 ok, 2 bad input" in text and "1 other failure" in text
    assert "--quiet" in text
