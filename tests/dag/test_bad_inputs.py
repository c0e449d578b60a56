"""Bad-input matrix: every kind of broken snapshot is refused by the real DAG and by the CLI, with a message
naming the problem and where it is (sample item ids, else the file / line / row numbers).

Which task refuses a case is a design decision, documented here and in docs/reliability.md:

- `wait_for_embeddings`: the snapshot is not complete (no `_SUCCESS`): the sensor times out.
- `load_embeddings`: the structure cannot be read (truncated Parquet, a broken JSON line, non-numeric or
  missing columns, textual ids, a refused pickle, no rows at all): nothing usable can even be copied.
- `validate_dims`: the content is readable but wrong (dimension, NaN/Inf, duplicate or null ids, zero or
  absurd vectors): the GX suite names every failed rule with counts and sample item ids.

Every DAG case runs after one good version was published for an older day, and must leave the publish root
exactly as it was (no version folder, no staging leftovers, `latest` on the good version). The CLI runs the
same snapshots through `rqvae train` and must exit 2 with the same problem named.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.layout import run_key
from tests.helpers import DIM, TASK_IDS, latest, make_snapshot, run, scrub_paths, states, tree

N = 300
IDS = 50_000 + 7 * np.arange(N, dtype=np.int64)  # catalog-like ids: not row numbers, so a sample is unambiguous
GOOD = "2026-06-01"  # the previous good version; every bad snapshot is a later day, so it would move `latest`
BAD_CONF = {"min_items": 100}
CLI_MODEL = ["--num-codebooks", "2", "--codebook-size", "16", "--epochs", "1", "--batch-size", "64"]
PICKLE_SENTINEL = "pickle-was-executed"


def unit_vectors(n: int = N, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_part(folder: Path, ids: list | np.ndarray, vectors: list | np.ndarray, value_type=None) -> Path:
    """One Parquet part with a `list<...>` embedding column, so rows may have any length or type."""
    rows = vectors.tolist() if isinstance(vectors, np.ndarray) else vectors
    table = pa.table(
        {
            "item_id": pa.array(list(ids), pa.int64()),
            "embedding": pa.array(rows, pa.list_(value_type or pa.float32())),
        }
    )
    path = folder / "part-00000.parquet"
    pq.write_table(table, path)
    return path


def with_values(edit: Callable[[np.ndarray], None]) -> Callable[[Path], None]:
    """A builder writing unit vectors after `edit` changed some of them in place."""

    def build(folder: Path) -> None:
        x = unit_vectors()
        edit(x)
        write_part(folder, IDS, x)

    return build


def set_at(rows: list[int], cols: list[int], value: float) -> Callable[[np.ndarray], None]:
    def edit(x: np.ndarray) -> None:
        x[rows, cols] = value

    return edit


def zero_rows(x: np.ndarray) -> None:
    x[[3, 30]] = 0.0


def one_short_row(folder: Path) -> None:
    rows = unit_vectors().tolist()
    rows[5] = rows[5][:-1]
    write_part(folder, IDS, rows)


def ragged(folder: Path) -> None:
    lengths = np.random.default_rng(1).integers(4, DIM, size=N)
    rows = [v[: lengths[i]] if i % 3 == 0 else v for i, v in enumerate(unit_vectors().tolist())]
    write_part(folder, IDS, rows)


def text_values(folder: Path) -> None:
    write_part(folder, IDS, [[f"{v:.4f}" for v in row] for row in unit_vectors().tolist()], pa.string())


def duplicate_ids(folder: Path) -> None:
    ids = IDS.copy()
    ids[[100, 200]] = IDS[7]
    write_part(folder, ids, unit_vectors())


def null_ids(folder: Path) -> None:
    ids: list[int | None] = IDS.tolist()
    ids[9] = ids[11] = None
    write_part(folder, ids, unit_vectors())


def empty(folder: Path) -> None:
    write_part(folder, [], [])


def complete_data(folder: Path) -> None:
    write_part(folder, IDS, unit_vectors())


def truncated_parquet(folder: Path) -> None:
    path = write_part(folder, IDS, unit_vectors())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an upload cut off half way


def broken_json_line(folder: Path) -> None:
    lines = [json.dumps({"anonymous_cid": int(i), "emb": v}) for i, v in zip(IDS, unit_vectors().tolist(), strict=True)]
    lines[57] = lines[57][: len(lines[57]) // 2]  # line 58 cut in the middle of its vector
    (folder / "part-00000.json").write_text("\n".join(lines) + "\n")


class _RunsCode:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


def pickle_file(folder: Path) -> None:
    payload = {int(i): v for i, v in zip(IDS, unit_vectors(), strict=True)}
    payload[int(IDS[0])] = _RunsCode(folder.parent / PICKLE_SENTINEL)
    (folder / "embeddings.pkl").write_bytes(pickle.dumps(payload))


def text_ids(folder: Path) -> None:
    table = pa.table({"item_id": [f"sku-{i}" for i in IDS], "embedding": pa.array(unit_vectors().tolist())})
    pq.write_table(table, folder / "part-00000.parquet")


def wrong_columns(folder: Path) -> None:
    table = pa.table({"id": IDS, "vector": pa.array(unit_vectors().tolist())})
    pq.write_table(table, folder / "part-00000.parquet")


def few_rows(folder: Path) -> None:
    write_part(folder, IDS[:40], unit_vectors(40))


@dataclass(frozen=True)
class Case:
    """One bad snapshot, where the DAG must stop and what both the DAG and the CLI must say about it.

    `ids` are sample item ids both messages must contain; cases without usable ids (unreadable files, null
    ids) are located by the fragments instead (file name, line or row numbers).
    """

    name: str
    problem: str
    build: Callable[[Path], None]
    task: str
    dag_says: tuple[str, ...]
    cli_says: tuple[str, ...] | None  # None: not a CLI concern (completeness markers are the pipeline's)
    ids: tuple[int, ...] = ()
    conf: dict = field(default_factory=dict)
    cli_args: tuple[str, ...] = ()
    marker: bool = True


S = [int(i) for i in IDS]
CASES = [
    Case("nan", "a NaN value in one vector", with_values(set_at([17], [3], np.nan)), "validate_dims",
         ("1 of 300 rows hold NaN/Inf values",), ("vectors with NaN or Inf values (1 item)",), (S[17],)),
    Case("inf", "+Inf and -Inf values", with_values(set_at([42, 43], [0, 5], np.inf * np.array([1, -1]))),
         "validate_dims", ("2 of 300 rows hold NaN/Inf values",), ("vectors with NaN or Inf values (2 items)",),
         (S[42], S[43])),
    Case("one_row_other_dim", "one row has 15 values, the rest 16 (dimension inferred)", one_short_row,
         "validate_dims", ("1 of 300 rows have dim 15 != 16",), ("ragged embeddings", "some have [15]"), (S[5],),
         conf={"expected_dim": 0}),
    Case("ragged_lists", "a third of the rows have 4-15 values", ragged, "validate_dims",
         ("100 of 300 rows have dim", "!= 16"), ("ragged embeddings: most rows have 16 values",), (S[0], S[3]),
         conf={"expected_dim": 0}),
    Case("non_numeric_embedding", "embedding column holds strings", text_values, "load_embeddings",
         ("non-numeric embedding values (element type string)",),
         ("non-numeric embedding values (element type string)",), (S[0], S[1])),
    Case("duplicate_ids", "one item id on three rows", duplicate_ids, "validate_dims",
         ("share their item_id with another row",), ("duplicate item ids",), (S[7],)),
    Case("null_ids", "two rows without an item id", null_ids, "validate_dims",
         ("2 of 300 rows have a null item_id; sample rows: [9, 11]",), ("null item ids at rows [9, 11]",)),
    Case("empty_snapshot", "a Parquet part with the schema and no rows", empty, "load_embeddings",
         ("empty input: no rows found",), ("empty input: no rows found",)),
    Case("no_success_marker", "data present, _SUCCESS never written", complete_data, "wait_for_embeddings",
         ("is not complete after", "_SUCCESS marker"), None, conf={"sensor_timeout": 2}, marker=False),
    Case("truncated_parquet", "Parquet part cut at half its bytes", truncated_parquet, "load_embeddings",
         ("corrupt or truncated Parquet file", "part-00000.parquet"),
         ("corrupt or truncated Parquet file", "part-00000.parquet")),
    Case("broken_json_line", "JSON-lines part whose line 58 is cut mid-vector", broken_json_line,
         "load_embeddings", ("broken JSON line", "at line 58", "part-00000.json"),
         ("broken JSON line", "at line 58", "part-00000.json"), (S[57],)),
    Case("all_zero_vectors", "two vectors of zeros", with_values(zero_rows), "validate_dims",
         ("2 of 300 rows have an L2 norm (0) outside",), ("all-zero vectors (2 items)",), (S[3], S[30])),
    Case("absurd_values", "a value of 1e30", with_values(set_at([77], [2], 1e30)), "validate_dims",
         ("1 of 300 rows hold a value with |value| (1e+30) > 1000",), ("vectors with |value| > 1000 (1 item)",),
         (S[77],)),
    Case("pickle_not_allowed", "a .pkl file (its payload would create a file if unpickled)", pickle_file,
         "load_embeddings", ("refusing to read a pickle", "embeddings.pkl"),
         ("refusing to read a pickle", "embeddings.pkl")),
    Case("dim_not_expected", "16-d vectors, expected_dim=32", complete_data, "validate_dims",
         ("300 of 300 rows have dim 16 != 32",), ("embedding dimension 16 != expected 32",), (S[0], S[1]),
         conf={"expected_dim": 32}, cli_args=("--expected-dim", "32")),
    Case("text_item_ids", "item ids are strings", text_ids, "load_embeddings",
         ("non-integer item ids (type string)",), ("non-integer item ids (type string)",), (f"sku-{S[0]}",)),
    Case("missing_columns", "columns named id / vector", wrong_columns, "load_embeddings",
         ("missing columns: expected item_id+embedding or anonymous_cid+emb", "found ['id', 'vector']"),
         ("missing columns: expected item_id+embedding or anonymous_cid+emb",)),
    Case("too_few_items", "40 rows, min_items=100 (a truncated export)", few_rows, "validate_dims",
         ("the snapshot needs at least min_items=100 rows",), ("too few items: 40 < min_items=100",),
         cli_args=("--min-items", "100")),
]
CLI_CASES = [c for c in CASES if c.cli_says is not None]


def build_snapshot(case: Case, folder: Path) -> Path:
    folder.mkdir(parents=True)
    case.build(folder)
    if case.marker:
        (folder / "_SUCCESS").touch()
    return folder


ERROR_LINE = re.compile(r"^[\w.]*?(\w+(?:Error|Failed|Timeout)): (.*)$")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT")


def task_error(log: str) -> str:
    """The last exception a task raised, as its traceback ends in the captured log (type: message + lines)."""
    lines = log.splitlines()
    found = ""
    for i, line in enumerate(lines):
        match = ERROR_LINE.match(line)
        if match:
            rest = []
            for more in lines[i + 1 :]:
                if LOG_LINE.match(more) or not more.strip():
                    break
                rest.append(more.strip())
            found = " ".join([f"{match.group(1)}: {match.group(2)}", *rest])
    return found


def shown(text: str, base: Path, limit: int = 260) -> str:
    """The message as the report shows it: machine paths replaced by root names, long ones shortened."""
    text = scrub_paths(text, base)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def day(index: int) -> str:
    return f"2026-06-{index + 2:02d}"


@pytest.fixture(scope="module")
def good_version(airflow_db, pipeline_dag, roots) -> str:
    """One good version, published once for the module: every bad run must leave it in place."""
    make_snapshot(roots, GOOD, n=1000, seed=3)
    dag_run = run(pipeline_dag, GOOD)
    assert str(dag_run.state) == "success", states(dag_run)
    assert latest(roots) == GOOD
    return GOOD


@pytest.mark.airflow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dag_refuses_bad_snapshot(case, pipeline_dag, roots, good_version, capfd, reliability_log):
    snapshot = day(CASES.index(case))
    build_snapshot(case, roots["embeddings"] / snapshot)
    before = tree(roots["publish"])
    capfd.readouterr()

    dag_run = run(pipeline_dag, snapshot, **{**BAD_CONF, **case.conf})
    log = capfd.readouterr().out
    found = states(dag_run)
    failed_at = TASK_IDS.index(case.task)
    assert str(dag_run.state) == "failed"
    assert found[case.task] == "failed", found
    assert all(found[t] == "success" for t in TASK_IDS[:failed_at]), found
    assert all(found[t] == "upstream_failed" for t in TASK_IDS[failed_at + 1 :]), found

    error = task_error(log)
    for fragment in [*case.dag_says, *map(str, case.ids)]:
        assert fragment in error, f"{fragment!r} not in the task's error: {error}"
    if case.task == "validate_dims":  # the saved GX report says the same
        run_folder = roots["work"] / snapshot / run_key(dag_run.run_id)
        report = json.loads((run_folder / "validation" / "input.json").read_text())
        assert not report["success"]
        assert any(case.dag_says[0] in line for line in report["failures"]), report["failures"]

    after = tree(roots["publish"])
    assert after == before, f"the publish root changed: {sorted(after ^ before)}"
    assert not any(name.startswith(".staging") for name in after)
    assert latest(roots) == good_version
    assert (roots["publish"] / good_version / "manifest.json").is_file()
    assert not (roots["embeddings"] / PICKLE_SENTINEL).exists(), "a pickle was unpickled"
    reliability_log.append(
        {
            "section": "bad_input_dag",
            "case": case.name,
            "problem": case.problem,
            "failed_task": case.task,
            "error": shown(error, roots["embeddings"].parent),
            "sample_ids": list(case.ids),
            "new_publish_entries": len(after - before),
            "versions_lost": len(before - after),
            "latest": latest(roots),
        }
    )


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_cli_refuses_bad_snapshot(case, tmp_path, capsys, reliability_log):
    from rqvae.cli import EXIT_BAD_INPUT, main

    snapshot = build_snapshot(case, tmp_path / "snapshots" / "2026-06-02")
    out = tmp_path / "model"
    code = main(["--quiet", "train", "--embeddings", str(snapshot), "--out", str(out), *CLI_MODEL, *case.cli_args])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert err.startswith("error: ")
    for fragment in [*case.cli_says, *map(str, case.ids)]:
        assert fragment in err, f"{fragment!r} not in: {err}"
    assert not out.exists(), "a refused input must not leave a model directory"
    assert not (tmp_path / "snapshots" / PICKLE_SENTINEL).exists(), "a pickle was unpickled"
    reliability_log.append(
        {
            "section": "bad_input_cli",
            "case": case.name,
            "exit_code": code,
            "error": shown(err.strip().removeprefix("error: "), tmp_path),
        }
    )


def test_every_case_is_refused_by_both_or_explains_why():
    """The matrix itself: unique names, every DAG stage that should refuse input is exercised."""
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.task for c in CASES} == {"wait_for_embeddings", "load_embeddings", "validate_dims"}
    assert [c.name for c in CASES if c.cli_says is None] == ["no_success_marker"]
