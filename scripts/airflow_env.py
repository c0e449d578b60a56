"""The Airflow settings of the local demo, the UI and the tests, in one place: an Airflow home in the project.

`scripts/demo.py` imports `airflow_env()`; `scripts/airflow_standalone.sh` evaluates `--export` output;
`tests/conftest.py` builds its isolated environment from `airflow_settings()` and `pythonpath()`;
`scripts/chaos.py` and the stack test share `STACK_SHORT_WAITS`. In `airflow_env()` values already in the
environment win (the Makefile exports AIRFLOW_HOME), so a user can point any of them elsewhere.
SQLite + LocalExecutor keep the demo dependency-free; production swaps the DB and executor.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_POOL = "rqvae_gpu"
GPU_POOL_SLOTS = 1
# The native Celery stack (scripts/stack.sh) driven by scripts/chaos.py and the stack test: the sensor finds a
# prepared snapshot at its first poke, the run the scheduler makes for today (no snapshot) fails after 15 s,
# and a retry starts 1 s after a failure, not minutes.
STACK_SHORT_WAITS = {"RQVAE_SENSOR_POKE_S": "2", "RQVAE_SENSOR_TIMEOUT_S": "15", "RQVAE_RETRY_DELAY_S": "1"}


def airflow_settings(home: Path) -> dict[str, str]:
    """Airflow's own settings for a home folder: this project's DAGs and plugins, SQLite, LocalExecutor."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


def pythonpath(existing: str = "") -> str:
    """PYTHONPATH with the project first: workers import `include` (task logic) as a top-level package."""
    rest = [p for p in existing.split(os.pathsep) if p and p != str(REPO)]
    return os.pathsep.join([str(REPO), *rest])


def airflow_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `airflow` commands run from this project (existing values are kept)."""
    environ = dict(os.environ if environ is None else environ)
    home = Path(environ.get("AIRFLOW_HOME") or REPO / "var" / "airflow")
    defaults = {
        **airflow_settings(home),
        # train_rqvae / encode_items share this pool: one GPU, one job at a time (created by the scripts).
        "RQVAE_GPU_POOL": GPU_POOL,
    }
    env = {key: environ.get(key) or value for key, value in defaults.items()}
    env["PYTHONPATH"] = pythonpath(environ.get("PYTHONPATH", ""))
    return env


def main(argv: list[str]) -> int:
    if argv[1:] != ["--export"]:
        print("usage: airflow_env.py --export   (prints `export KEY=value` lines for a shell to eval)")
        return 2
    for key, value in airflow_env().items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"export RQVAE_GPU_POOL_SLOTS={GPU_POOL_SLOTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
