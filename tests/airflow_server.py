"""A real `airflow standalone` for the tests that need the API server itself (the browser test, the plugin's
login checks): started with `make airflow`'s own script, scripts/airflow_standalone.sh, with its home and data
roots in a temp folder, and stopped by killing exactly the process group it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts.airflow_env import pythonpath

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 180  # api-server, scheduler, dag-processor and triggerer starting on a busy 2-core machine


@dataclass
class AirflowUI:
    url: str
    password: str
    home: Path
    publish_root: Path
    log: Path

    def token(self, username: str = "admin") -> str:
        """A JWT from the auth manager's own `POST /auth/token`, as an API client gets one."""
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        answer = requests.post(f"{self.url}/auth/token", json={"username": username, "password": passwords[username]},
                               timeout=10)
        answer.raise_for_status()
        return answer.json()["access_token"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(root: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The developer's own Airflow settings are dropped: this server must not touch var/airflow.

    The folders, executor and SQLite database come from scripts/airflow_env.py (which airflow_standalone.sh
    applies for the AIRFLOW_HOME set here); only what the tests need on top is set, plus `extra`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RQVAE_"))}
    url = f"http://127.0.0.1:{port}"
    home = root / "airflow"
    env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "PYTHONPATH": pythonpath(os.environ.get("PYTHONPATH", "")),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            # Only the runs a test triggers: unpausing must not add today's scheduled run.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "RQVAE_EMBEDDINGS_ROOT": str(root / "data" / "embeddings"),
            "RQVAE_WORK_ROOT": str(root / "data" / "work"),
            "RQVAE_PUBLISH_ROOT": str(root / "data" / "published"),
            "RQVAE_SENSOR_POKE_S": "1",
            "RQVAE_RETRIES": "0",
            **(extra or {}),
        }
    )
    return env


def wait_until_ready(ui: AirflowUI, proc: subprocess.Popen, dag_id: str | None) -> None:
    """Health endpoint up, the admin password written, and (with `dag_id`) the DAG parsed into the database."""
    passwords = ui.home / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {proc.returncode}; see {ui.log}")
        try:
            if passwords.is_file() and not ui.password:
                ui.password = json.loads(passwords.read_text())["admin"]
            if ui.password:
                token = requests.post(
                    f"{ui.url}/auth/token", json={"username": "admin", "password": ui.password}, timeout=5
                ).json()["access_token"]
                probe = f"/api/v2/dags/{dag_id}" if dag_id else "/api/v2/version"
                answer = requests.get(f"{ui.url}{probe}", headers={"Authorization": f"Bearer {token}"}, timeout=5)
                if answer.status_code == 200:
                    return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(1)
    raise TimeoutError(f"Airflow was not ready after {STARTUP_TIMEOUT_S}s; see {ui.log}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group the fixture created (standalone and every component it spawned)."""
    pgid = proc.pid
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(pgid, 0)  # any member of our group left?
            except ProcessLookupError:
                return
            time.sleep(0.2)


@contextmanager
def standalone(root: Path, log: Path, dag_id: str | None = None,
               extra_env: dict[str, str] | None = None) -> Iterator[AirflowUI]:
    """`make airflow`'s script (db migrate, GPU pool, then exec airflow standalone), pointed at `root`."""
    port = free_port()
    env = airflow_env(root, port, extra_env)
    ui = AirflowUI(f"http://127.0.0.1:{port}", "", Path(env["AIRFLOW_HOME"]), root / "data" / "published", log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(REPO / "scripts" / "airflow_standalone.sh")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_ready(ui, proc, dag_id)
        yield ui
    finally:
        stop(proc)
