"""Great Expectations suites of the two validation tasks, run with GX 1.x used directly.

Why GX and not a handful of numpy checks: the results are the standard GX validation objects (saved as JSON
beside the artifacts, comparable across runs), and each rule is a named expectation that data owners can read.
The stage modules compute compact per-row frames (a few numeric columns per item, never the vectors) and
hand them here together with the expectations to check.

Millions of rows cost GX seconds per expectation, so a stage hands over a compact per-row frame and
:func:`split_batches` keeps GX's work small without changing any rule's meaning: a row-level rule (values
between, in a set, not null, unique) can only fail on rows a cheap numpy pass flags as suspect for it, so GX
checks those rows and the report counts them against the full row count; table-level rules (row count,
unique-value counts and proportions) run on frames that have the same aggregates as the full one.

Each expectation carries `meta={"what": ...}`: the phrase that completes "N of M rows ..." in the failure
message, so a failed task says which rule failed, how many rows, which values and which item ids, e.g.
`expect_column_values_to_be_between(dim): 1 of 2000 rows have dim 31 != 32; sample item ids: [1234]`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.files import jsonable
from rqvae.errors import PermanentError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from great_expectations.expectations import Expectation

log = logging.getLogger(__name__)

ID_COLUMN = "item_id"
ROW_COLUMN = "row"
SAMPLE_SIZE = 5
# GX logs every decorated API at INFO while importing; with Airflow's logging that floods task logs.
_NOISY_LOGGERS = ("great_expectations._docs_decorators", "great_expectations.data_context", "great_expectations")


class ValidationFailed(PermanentError, ValueError):
    """A GX suite failed; the message lists each failed expectation with counts and sample item ids.

    Permanent like the library's InputError: bad data stays bad, so a retry cannot fix it.
    """

    def __init__(self, suite: str, failures: list[str], report_path: str | None = None) -> None:
        self.suite = suite
        self.failures = failures
        self.report_path = report_path
        where = f" (full report: {report_path})" if report_path else ""
        lines = "\n".join(f"  - {line}" for line in failures)
        super().__init__(f"{suite} validation failed, {len(failures)} expectation(s){where}:\n{lines}")


@dataclass
class Batch:
    """One frame to validate and the expectations to run on it.

    `index_columns` name the columns GX reports for unexpected rows (the item id, and the row number for
    rows that have no id); they must exist in `frame`.
    """

    name: str
    frame: pd.DataFrame
    expectations: list[Expectation]
    index_columns: list[str] = field(default_factory=list)
    # rows of the table `frame` stands for, when it holds only that table's suspect rows (see split_batches)
    element_count: int | None = None


@dataclass
class SuiteResult:
    """Outcome of a suite: overall success and one JSON-able summary per expectation."""

    suite: str
    success: bool
    checks: list[dict[str, Any]]
    seconds: float

    @property
    def failures(self) -> list[str]:
        return [describe(check) for check in self.checks if not check["success"]]

    def to_dict(self) -> dict[str, Any]:
        failed = sum(1 for c in self.checks if not c["success"])
        return {
            "suite": self.suite,
            "success": self.success,
            "evaluated": len(self.checks),
            "failed": failed,
            "seconds": self.seconds,
            "failures": self.failures,
            "checks": self.checks,
        }

    def raise_for_failures(self, report_path: str | None = None) -> None:
        if not self.success:
            raise ValidationFailed(self.suite, self.failures, report_path)


def gx_module() -> Any:
    """Import great_expectations quietly (its import-time INFO logs would swamp the task log)."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def expectations_module() -> Any:
    gx_module()
    import great_expectations.expectations as gxe

    return gxe


def preload() -> threading.Thread:
    """Import Great Expectations on a background thread while the caller computes its row statistics.

    GX's import is ~6 s of Python on a 2-core worker, as long as reading and summarising 5.7M rows, and that
    work (Arrow decoding, numpy) releases the GIL, so the two overlap. The stage imports GX again where it uses
    it: that waits for this thread and, when the import failed here, raises the same error there (the thread
    itself only logs it).
    """

    def load() -> None:
        try:
            expectations_module()
            import great_expectations.data_context.types.base  # noqa: F401  (what run_suite uses)
        except Exception:  # re-raised by the stage's own import of the same module
            log.debug("background import of great_expectations failed", exc_info=True)

    thread = threading.Thread(target=load, name="gx-preload", daemon=True)
    thread.start()
    return thread


def run_suite(suite_name: str, batches: Sequence[Batch]) -> SuiteResult:
    """Validate each batch with its expectations in one ephemeral GX context (nothing written to disk)."""
    gx = gx_module()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    started = time.perf_counter()
    context = gx.get_context(mode="ephemeral")
    # tqdm bars go to stderr, which Airflow logs at ERROR level: turn them off.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name=f"{suite_name}_frames")
    checks: list[dict[str, Any]] = []
    success = True
    for batch in batches:
        asset = source.add_dataframe_asset(name=batch.name)
        batch_definition = asset.add_batch_definition_whole_dataframe(name=f"{batch.name}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{suite_name}_{batch.name}"))
        for expectation in batch.expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}_{batch.name}", data=batch_definition, suite=suite)
        )
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
        if batch.index_columns:
            result_format["unexpected_index_column_names"] = list(batch.index_columns)
        outcome = definition.run(batch_parameters={"dataframe": batch.frame}, result_format=result_format)
        success = success and bool(outcome.success)
        checks.extend(_summarise(r, batch.name, batch.element_count) for r in outcome.results)
    seconds = round(time.perf_counter() - started, 3)
    log.info("GX suite %s: success=%s, %d expectations in %.2fs", suite_name, success, len(checks), seconds)
    return SuiteResult(suite=suite_name, success=success, checks=checks, seconds=seconds)


def _summarise(result: Any, batch: str, element_count: int | None = None) -> dict[str, Any]:
    """Keep what a reader needs from a GX result: rule, verdict, counts, values seen, sample ids."""
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    details = dict(result.result or {})
    if element_count is not None and details.get("element_count") is not None:
        details["element_count"] = element_count  # GX saw the suspect rows of a table of this many
    index_rows = details.get("partial_unexpected_index_list") or []
    sample_ids = _unique([row.get(ID_COLUMN) for row in index_rows if isinstance(row, dict)])
    sample_rows = [] if sample_ids else _unique([row.get(ROW_COLUMN) for row in index_rows if isinstance(row, dict)])
    seen = _unique([entry.get("value") for entry in details.get("partial_unexpected_counts") or []])
    column = config.kwargs.get("column") or config.kwargs.get("column_list")
    summary = {
        "expectation": config.type,
        "batch": batch,
        "column": column,
        "kwargs": kwargs,
        "success": bool(result.success),
        "what": (config.meta or {}).get("what", "fail the expectation"),
        "element_count": details.get("element_count"),
        "unexpected_count": details.get("unexpected_count"),
        "observed_value": details.get("observed_value"),
        "unexpected_values": seen,
        "sample_ids": sample_ids,
        "sample_rows": sample_rows,
    }
    if result.exception_info and result.exception_info.get("raised_exception"):
        summary["exception"] = str(result.exception_info.get("exception_message"))
    return jsonable(summary)


ROW_RULES = frozenset(
    {
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "expect_compound_columns_to_be_unique",
    }
)


def is_row_rule(expectation: Expectation) -> bool:
    """Whether the rule is decided row by row (so the suspect rows decide it): no `mostly` below 1."""
    mostly = getattr(expectation, "mostly", 1)
    return expectation.expectation_type in ROW_RULES and (mostly is None or mostly >= 1)


def suspect_rows(frame: pd.DataFrame, expectations: Sequence[Expectation]) -> np.ndarray:
    """Boolean mask of the rows that could fail any of the row-level rules (a superset of GX's failures).

    Null values are always suspect and hash collisions only add suspects, so GX, run on these rows, finds
    exactly the failures (and the same unexpected values and row order) it would find on the whole frame.
    """
    import numpy as np

    mask = np.zeros(len(frame), dtype=bool)
    for expectation in expectations:
        if is_row_rule(expectation):
            mask |= _suspects(frame, expectation)
    return mask


def _suspects(frame: pd.DataFrame, rule: Expectation) -> np.ndarray:
    import numpy as np
    import pandas as pd

    kind = rule.expectation_type
    if kind == "expect_compound_columns_to_be_unique":
        columns = [frame[c] for c in rule.column_list]
        if all(pd.api.types.is_integer_dtype(c.dtype) for c in columns):
            return duplicated_rows(_row_hash(columns))
        hashes = pd.util.hash_pandas_object(frame[list(rule.column_list)], index=False)
        return hashes.duplicated(keep=False).to_numpy()
    column = frame[rule.column]
    nulls = column.isna().to_numpy()
    if kind == "expect_column_values_to_not_be_null":
        return nulls
    if kind == "expect_column_values_to_be_unique":
        if not pd.api.types.is_integer_dtype(column.dtype):
            return column.duplicated(keep=False).to_numpy() & ~nulls
        values = column.to_numpy(dtype="int64", na_value=0)
        mask = np.zeros(len(values), dtype=bool)
        mask[~nulls] = duplicated_rows(values[~nulls])
        return mask
    if kind == "expect_column_values_to_be_in_set":
        return ~column.isin(list(rule.value_set)).to_numpy()
    values = column.to_numpy(dtype="float64", na_value=np.nan)  # between; NaN compares False: suspect
    low = np.ones(len(values), dtype=bool) if rule.min_value is None else (
        values > rule.min_value if rule.strict_min else values >= rule.min_value)
    high = np.ones(len(values), dtype=bool) if rule.max_value is None else (
        values < rule.max_value if rule.strict_max else values <= rule.max_value)
    return ~(low & high)


def duplicated_rows(values: np.ndarray) -> np.ndarray:
    """Rows whose value occurs more than once: one sort, and nothing more when all are distinct (the usual
    case); pandas' hash-based ``duplicated`` takes seconds on millions of nullable ints."""
    import numpy as np

    ordered = np.sort(values)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return np.zeros(len(values), dtype=bool)
    return np.isin(values, repeated)


def _row_hash(columns: Sequence[pd.Series]) -> np.ndarray:
    """One uint64 per row of nullable integer columns (nulls distinct from every value); equal rows, equal hashes."""
    from rqvae.io.hashing import int_rows_hash

    return int_rows_hash([(column.to_numpy(dtype="int64", na_value=0), column.isna().to_numpy()) for column in columns])


def split_batches(
    name: str,
    frame: pd.DataFrame,
    expectations: Sequence[Expectation],
    index_columns: Sequence[str],
    table_frames: Sequence[pd.DataFrame],
    order: str | None = None,
    element_count: int | None = None,
) -> list[Batch]:
    """Batches that check ``frame`` as one batch would, in rule order, at a fraction of the cost.

    Consecutive row-level rules run on ``frame``'s suspect rows (reported against ``len(frame)`` rows).
    Every other rule runs on the first of ``table_frames`` that holds its column (the first one for table
    rules such as the row count); the caller builds those with the aggregates the rules read (row count,
    distinct values, unique proportion) equal to ``frame``'s. ``order``: a column the full frame is read in
    order of (a stable sort of the suspect rows), so sample ids come out as they would from that frame.
    ``element_count``: the rows ``frame`` stands for when it holds only a superset of the suspect rows already
    (a streamed pass kept them); by default ``len(frame)``.
    """
    runs: list[tuple[int, list[Expectation]]] = []  # (-1 for row rules, else the table frame's index)
    for expectation in expectations:
        where = -1 if is_row_rule(expectation) else _table_for(expectation, table_frames)
        if runs and runs[-1][0] == where:
            runs[-1][1].append(expectation)
        else:
            runs.append((where, [expectation]))
    batches = []
    for index, (where, rules) in enumerate(runs):
        label = f"{name}_{'rows' if where < 0 else 'table'}_{index}"
        if where < 0:
            suspects = frame[suspect_rows(frame, rules)]
            if order is not None:
                suspects = suspects.sort_values(order, kind="stable")
            suspects = suspects.reset_index(drop=True)
            count = len(frame) if element_count is None else element_count
            batches.append(Batch(label, suspects, rules, list(index_columns), element_count=count))
        else:
            batches.append(Batch(label, table_frames[where], rules))
    return batches


def _table_for(expectation: Expectation, frames: Sequence[pd.DataFrame]) -> int:
    column = getattr(expectation, "column", None)
    if column is None:
        return 0
    for index, frame in enumerate(frames):
        if column in frame.columns:
            return index
    raise ValueError(f"no table frame holds column {column!r} for {expectation.expectation_type}")


def _unique(values: Sequence[Any]) -> list[Any]:
    """First SAMPLE_SIZE distinct non-missing values, numpy scalars made plain."""
    out: list[Any] = []
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)) or _is_na(value):
            continue
        plain = jsonable(value)
        if plain not in out:
            out.append(plain)
        if len(out) == SAMPLE_SIZE:
            break
    return out


def _is_na(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, list | tuple | dict) else False
    except (TypeError, ValueError):
        return False


def describe(check: dict[str, Any]) -> str:
    """One line per failed expectation, e.g. `expect_...(dim): 1 of 2000 rows have dim 31 != 32; ...`."""
    column = check.get("column")
    if isinstance(column, list):
        column = "+".join(column)
    head = f"{check['expectation']}({column})" if column else check["expectation"]
    if check.get("exception"):
        return f"{head}: could not be evaluated: {check['exception']}"
    seen = ", ".join(_short(v) for v in check.get("unexpected_values") or [])
    what = str(check.get("what", "")).replace("{seen}", seen or "?")
    if check.get("unexpected_count") is not None:
        line = f"{head}: {check['unexpected_count']} of {check['element_count']} rows {what}"
    else:
        line = f"{head}: observed {_short(check.get('observed_value'))}; {what}"
    if check.get("sample_ids"):
        line += f"; sample item ids: {check['sample_ids']}"
    elif check.get("sample_rows"):
        line += f"; sample rows: {check['sample_rows']}"
    return line


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
