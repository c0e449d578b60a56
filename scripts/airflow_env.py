"""The Airflow settings of the local demo and UI, in one place: an Airflow home inside the project.

`scripts/demo.py` imports `airflow_env()`; `scripts/airflow_standalone.sh` evaluates `--export` output.
Values already in the environment win (the Makefile exports AIRFLOW_HOME), so a user can point any of them
elsewhere. SQLite + LocalExecutor keep the demo dependency-free; production swaps the DB and executor.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_POOL = "rqvae_gpu"
GPU_POOL_SLOTS = 1


def airflow_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `airflow` commands run from this project (existing values are kept)."""
    environ = dict(os.environ if environ is None else environ)
    home = Path(environ.get("AIRFLOW_HOME") or REPO / "var" / "airflow")
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # train_rqvae / encode_items share this pool: one GPU, one job at a time (created by the scripts).
        "RQVAE_GPU_POOL": GPU_POOL,
    }
    env = {key: environ.get(key) or value for key, value in defaults.items()}
    # Workers import `include` (task logic) as a top-level package of the project.
    paths = [str(REPO), *(p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
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
