"""Shared test setup: an isolated Airflow (SQLite in a temp folder) and isolated pipeline roots per session.

Airflow reads its configuration once, when it is first imported, so the environment is set here at
collection time, before any test module imports airflow. Nothing touches the developer's `var/airflow` or
`var/data`. The repository root goes on `sys.path` (and PYTHONPATH, for subprocesses) because `include/`
is a top-level package of the project, as it is for the Airflow workers.

Tests live in one folder per kind, and each folder is also a marker (`pytest -m unit`): `unit` (the rqvae
library alone), `stages` (include/ task logic as plain functions or killed subprocesses), `dag` (the DAGs and
the UI plugin in a real Airflow on SQLite) and `system` (whole processes: the Celery stack, a browser,
docker-compose, the README's commands). Shared helpers: tests/helpers.py, tests/airflow_server.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.mkdtemp(prefix="rqvae-tests-"))

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.airflow_env import airflow_settings, pythonpath  # noqa: E402 (needs REPO on sys.path)

TEST_ENV = {
    # The demo's Airflow settings (scripts/airflow_env.py), with the home and its SQLite DB in the session folder.
    **airflow_settings(SESSION_DIR / "airflow"),
    "RQVAE_EMBEDDINGS_ROOT": str(SESSION_DIR / "data" / "embeddings"),
    "RQVAE_WORK_ROOT": str(SESSION_DIR / "data" / "work"),
    "RQVAE_PUBLISH_ROOT": str(SESSION_DIR / "data" / "published"),
    "RQVAE_INTERACTIONS_ROOT": str(SESSION_DIR / "data" / "interactions"),
    # Short waits so a sensor timeout or an unexpected retry costs seconds, not the production minutes.
    "RQVAE_SENSOR_POKE_S": "1",
    "RQVAE_RETRY_DELAY_S": "1",
    "PYTHONPATH": pythonpath(os.environ.get("PYTHONPATH", "")),
}
os.environ.update(TEST_ENV)
(SESSION_DIR / "airflow").mkdir(parents=True, exist_ok=True)


KINDS = ("unit", "stages", "dag", "system")  # the sub-folders of tests/; each is also a marker (pyproject.toml)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its folder's kind, so `-m unit` and `tests/unit` select the same tests."""
    root = Path(__file__).parent
    for item in items:
        kind = item.path.relative_to(root).parts[0] if item.path.is_relative_to(root) else None
        if kind in KINDS:
            item.add_marker(kind)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the metadata DB once per session (about 3 s on SQLite)."""
    from airflow.utils import db

    db.initdb()
    return Path(TEST_ENV["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def pipeline_dag():
    """The DAG as Airflow's own DagBag parses it from the dags folder (import errors fail the fixture)."""
    return _dag_bag().dags["rqvae_semantic_ids"]


@pytest.fixture(scope="session")
def evaluation_dag():
    """The downstream-evaluation DAG (scheduled on the `semantic_ids` asset), parsed by Airflow's DagBag."""
    return _dag_bag().dags["semantic_ids_evaluation"]


@pytest.fixture(scope="session")
def promote_dag():
    """The by-hand promotion DAG (`serving` alias), parsed by Airflow's DagBag."""
    return _dag_bag().dags["semantic_ids_promote"]


def _dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Fresh embeddings / work / publish / interactions roots for one module's DAG runs, set in the environment."""
    base = tmp_path_factory.mktemp("roots")
    found = {
        "embeddings": base / "embeddings", "work": base / "work", "publish": base / "published",
        "interactions": base / "interactions",
    }
    with pytest.MonkeyPatch.context() as patch:
        for kind, path in found.items():
            patch.setenv(f"RQVAE_{kind.upper()}_ROOT", str(path))
        yield found


@pytest.fixture(scope="session")
def reliability_log() -> Iterator[list[dict]]:
    """Outcomes the reliability tests record (bad inputs, faults, security checks), one dict each.

    With RQVAE_RELIABILITY_JSON set they are written there at the end of the session; scripts/
    reliability_report.py sets it and renders docs/reliability.md from the file, so the document always
    says what the tests observed.
    """
    records: list[dict] = []
    yield records
    target = os.environ.get("RQVAE_RELIABILITY_JSON")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(records, indent=2, default=str) + "\n")
