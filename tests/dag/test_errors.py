"""Which failures a retry can help: the classification of every project exception, and the DAGs' policy on it.

A permanent failure (bad input, failed validation or gate, bad snapshot, path outside the roots, unusable model
directory, refused publish, stale evaluation, bad config, refused promotion) derives from
`rqvae.errors.PermanentError`: the DAGs fail such a task at once and the CLI exits with 2. Anything else keeps
the task's normal retries.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from include.gx_suites import ValidationFailed
from include.settings import PathOutsideRootError
from include.snapshot import SnapshotError
from include.stages.publish import PublishError
from include.stages.record_evaluation import QualityGateFailed, StaleEvaluation
from rqvae import cli
from rqvae.errors import ConfigError, InputError, ModelLoadError, PermanentError, RQVAEError
from rqvae.ids.promotion import PromotionRefused

REPO = Path(__file__).resolve().parents[2]
PERMANENT = (
    InputError, ModelLoadError, ConfigError, ValidationFailed, PathOutsideRootError, SnapshotError,
    QualityGateFailed, StaleEvaluation, PublishError, PromotionRefused,  # its subclasses: unknown version, ...
)
BASES = (RQVAEError, PermanentError)
# Failures another try may not repeat: a lost or overloaded worker, a full disk, a flaky mount, CUDA out of
# memory (a RuntimeError), a file another task has not written yet.
TRANSIENT = (OSError, FileNotFoundError, TimeoutError, ConnectionError, MemoryError, RuntimeError)
# The existing `except ValueError` callers keep working: these permanent classes are ValueErrors too.
STILL_VALUE_ERRORS = (InputError, ConfigError, ValidationFailed, PathOutsideRootError, SnapshotError, QualityGateFailed)


def example(cls: type[BaseException]) -> BaseException:
    """An instance as the code raises it (ValidationFailed takes a suite and its failures)."""
    if cls is ValidationFailed:
        return ValidationFailed("embeddings_input", ["dim: expected 32, got 16 (3 items)"])
    return cls("example failure")


def project_exceptions() -> set[type[BaseException]]:
    """Every exception class defined in rqvae/, include/, dags/ and plugins/ (found in the source, then imported)."""
    found: set[type[BaseException]] = set()
    for folder in ("rqvae", "include", "dags", "plugins"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = [
                node.name for node in tree.body
                if isinstance(node, ast.ClassDef) and any(_exception_like(base) for base in node.bases)
            ]
            if names:
                module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
                classes = [getattr(module, name) for name in names]
                found |= {c for c in classes if isinstance(c, type) and issubclass(c, BaseException)}
    return found


def _exception_like(base: ast.expr) -> bool:
    name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
    return name.endswith(("Error", "Exception", "Failed", "Evaluation")) or name == "BaseException"


def test_every_project_exception_is_classified():
    """A new exception class must be added here, to PERMANENT or as a documented transient one."""
    assert project_exceptions() == set(PERMANENT) | set(BASES)


@pytest.mark.parametrize("cls", PERMANENT, ids=lambda c: c.__name__)
def test_permanent_classes_derive_from_the_one_base(cls):
    assert issubclass(cls, PermanentError)


@pytest.mark.parametrize("cls", TRANSIENT, ids=lambda c: c.__name__)
def test_transient_failures_are_not_permanent(cls):
    assert not issubclass(cls, PermanentError)


def test_value_error_callers_still_catch_the_bad_input_classes():
    assert all(issubclass(cls, ValueError) for cls in STILL_VALUE_ERRORS)


@pytest.fixture(scope="module")
def tasks(pipeline_dag, evaluation_dag):
    return [*pipeline_dag.tasks, *evaluation_dag.tasks]


def test_the_policy_names_the_permanent_base(tasks):
    """Both DAGs hand every task the one policy; its first rule is `rqvae.errors.PermanentError` -> fail."""
    assert all(task.retry_policy is not None for task in tasks)
    policies = {json.dumps(task.retry_policy.serialize(), sort_keys=True) for task in tasks}
    assert len(policies) == 1, policies
    first = tasks[0].retry_policy.serialize()["rules"][0]
    assert first["exception"] == "rqvae.errors.PermanentError"
    assert first["action"] == "fail" and first["match_subclasses"] is True


@pytest.mark.parametrize("cls", PERMANENT, ids=lambda c: c.__name__)
def test_permanent_failures_fail_at_once(tasks, cls):
    from airflow.sdk import RetryAction

    for task in tasks:
        decision = task.retry_policy.evaluate(example(cls), try_number=1, max_tries=task.retries + 1)
        assert decision.action == RetryAction.FAIL, (task.task_id, cls.__name__)


@pytest.mark.parametrize("cls", TRANSIENT, ids=lambda c: c.__name__)
def test_transient_failures_keep_the_normal_retries(tasks, cls):
    from airflow.sdk import RetryAction

    for task in tasks:
        assert task.retries >= 1, task.task_id
        decision = task.retry_policy.evaluate(cls("example failure"), try_number=1, max_tries=task.retries + 1)
        assert decision.action == RetryAction.DEFAULT, (task.task_id, cls.__name__)


@pytest.mark.parametrize(
    ("error", "code"),
    [(example(cls), cli.EXIT_BAD_INPUT) for cls in PERMANENT]
    + [(ValueError("bad value"), cli.EXIT_BAD_INPUT), (FileNotFoundError("gone"), cli.EXIT_BAD_INPUT)]
    + [(cls("example failure"), cli.EXIT_FAILURE) for cls in (OSError, TimeoutError, RuntimeError)],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_cli_exit_code_follows_the_classification(monkeypatch, tmp_path, error, code):
    def fail(args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "synth", fail)
    assert cli.main(["--quiet", "synth", "--n", "10", "--out", str(tmp_path / "x.parquet")]) == code
