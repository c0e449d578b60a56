"""The Airflow REST API of a `scripts/stack.sh` stack, as the scripts that drive one (chaos, the 50M bench) use it.

Logs in with the admin password the stack wrote; errors (a restarting database or api-server) come back as None
and are logged, never raised, so a caller polling through a fault keeps polling.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def log(message: str, who: str = "stack") -> None:
    print(f"[{who} {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


class Api:
    """`call(method, path, body)` on /api/v2 with the admin JWT; `run` / `tis` for one DAG's runs."""

    def __init__(self, port: int | str, stack_dir: Path, dag_id: str) -> None:
        import httpx

        self.url = f"http://127.0.0.1:{port}"
        self.stack_dir = stack_dir
        self.dag_id = dag_id
        self.client = httpx.Client(timeout=20)
        self.token = ""

    def login(self) -> None:
        password = json.loads((self.stack_dir / "airflow" / "passwords.json").read_text())["admin"]
        response = self.client.post(f"{self.url}/auth/token", json={"username": "admin", "password": password})
        response.raise_for_status()
        self.token = response.json()["access_token"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.client.request(method, f"{self.url}/api/v2{path}", json=body,
                                           headers={"Authorization": f"Bearer {self.token}"})
        except Exception as exc:  # noqa: BLE001 - connection refused while a component restarts
            log(f"api {method} {path}: {type(exc).__name__}")
            return None
        if response.status_code == 401:
            self.login()
            return self.call(method, path, body)
        if response.status_code >= 300:
            log(f"api {method} {path}: {response.status_code} {response.text[:200]}")
            return None
        return response.json()

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self.call("GET", f"/dags/{self.dag_id}/dagRuns/{run_id}")

    def tis(self, run_id: str) -> list[dict[str, Any]] | None:
        found = self.call("GET", f"/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return None if found is None else found["task_instances"]
