#!/usr/bin/env bash
# `make airflow`: the Airflow UI, scheduler, dag-processor and triggerer in one process (`airflow standalone`),
# with the same project-local settings as `make demo` (AIRFLOW_HOME=var/airflow, SQLite, LocalExecutor).
# Log in at http://localhost:8080 as `admin`; the password is in
# $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated (written on the first start).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PATH="$PWD/$BIN:$PATH"  # standalone starts its components as `airflow ...` subprocesses
eval "$("$BIN/python" scripts/airflow_env.py --export)"
mkdir -p "$AIRFLOW_HOME"
"$BIN/airflow" db migrate
"$BIN/airflow" pools set "$RQVAE_GPU_POOL" "$RQVAE_GPU_POOL_SLOTS" "GPU slots for train_rqvae and encode_items"
echo "Airflow home: $AIRFLOW_HOME"
echo "UI: http://localhost:8080  user: admin  password: see $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
echo "The DAG rqvae_semantic_ids starts paused: unpause it, or use Trigger (the params form) in the UI."
exec "$BIN/airflow" standalone
