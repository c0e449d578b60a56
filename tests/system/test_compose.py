"""docker-compose.yaml as Compose itself resolves it (`docker-compose config`, Debian's package; no engine).

The resolved file (anchors merged, `.env.example` interpolated) must hold the cluster the docs promise: the
services, a `gpu` worker that takes one task at a time on a reserved NVIDIA device, health checks and start-up
ordering, shared secrets and data roots, and no secret with a default in the file itself.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
SERVICES = {
    "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu",
}  # fmt: skip
AIRFLOW_LONG_RUNNING = SERVICES - {"postgres", "redis", "airflow-init"}
SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_USER_PASSWORDS")

pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose not installed (.ci/run installs Debian's docker-compose in CI)"
)


def _compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    # Only PATH and HOME from the caller: a developer's exported secrets must not satisfy the file's ${VAR:?}.
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run(
        [str(COMPOSE), "--project-directory", str(REPO), "--env-file", str(env_file), "-f",
         str(REPO / "docker-compose.yaml"), "config"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result = _compose_config(REPO / ".env.example")
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_services_exist(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == SERVICES


def test_gpu_worker_takes_the_gpu_queue_one_task_at_a_time_on_a_reserved_nvidia_device(resolved) -> None:
    gpu = resolved["services"]["airflow-worker-gpu"]
    words = _words(gpu["command"])
    assert words[:2] == ["celery", "worker"]
    assert words[words.index("--queues") + 1] == "gpu"
    assert words[words.index("--concurrency") + 1] == "1"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    assert gpu["environment"]["RQVAE_GPU_QUEUE"] == "gpu"  # the DAG routes train/encode to this queue


def test_default_worker_takes_the_default_queue_without_a_gpu(resolved) -> None:
    cpu = resolved["services"]["airflow-worker"]
    words = _words(cpu["command"])
    assert words[words.index("--queues") + 1] == "default"
    assert "deploy" not in cpu


def test_health_checks_and_start_order(resolved) -> None:
    services = resolved["services"]
    for name in SERVICES - {"airflow-init"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in AIRFLOW_LONG_RUNNING | {"airflow-init"}:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in AIRFLOW_LONG_RUNNING:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name
    for name in ("airflow-worker", "airflow-worker-gpu"):
        assert services[name]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy", name


def test_airflow_services_share_executor_secrets_and_data(resolved) -> None:
    example = _env_example()
    for name in AIRFLOW_LONG_RUNNING | {"airflow-init"}:
        service = resolved["services"][name]
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == example["AIRFLOW_JWT_SECRET"], name
        assert env["AIRFLOW__CORE__FERNET_KEY"] == example["AIRFLOW_FERNET_KEY"], name
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False", name
        assert "redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"], name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert "build" in service, f"{name} must run the project's image"
        mounts = {str(v["target"]) if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]}
        assert "/opt/airflow/data" in mounts, name
        for root in ("RQVAE_EMBEDDINGS_ROOT", "RQVAE_WORK_ROOT", "RQVAE_PUBLISH_ROOT"):
            assert env[root].startswith("/opt/airflow/data/"), (name, root)


def test_secrets_have_no_default_in_the_compose_file(tmp_path: Path) -> None:
    """Without a .env, Compose refuses to start rather than run with a guessable secret."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose_config(empty)
    assert result.returncode != 0
    assert any(name in result.stderr for name in SECRETS), result.stderr


def test_env_example_documents_every_variable_the_file_reads() -> None:
    import re

    text = (REPO / "docker-compose.yaml").read_text()
    # ${NAME...} is interpolated by Compose; $${NAME} is an escaped shell variable inside a container.
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used - set(_env_example()) == set()
