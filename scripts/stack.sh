#!/usr/bin/env bash
# The compose topology (docker-compose.yaml) run natively on one machine, for machines with no Docker engine:
# PostgreSQL (metadata DB + Celery result backend), Redis (Celery broker), the Airflow api-server, scheduler,
# dag-processor and triggerer, and Celery workers: `default` (the CPU tasks) and `gpu` (train_rqvae and the
# encode_items shards, concurrency 1 each, STACK_GPU_WORKERS of them). Everything lives under $STACK_DIR
# (default var/stack) on loopback ports.
#
#   scripts/stack.sh up        start what is not running yet and wait until every component is healthy
#   scripts/stack.sh down      stop exactly the processes `up` started (by PID file), children included
#   scripts/stack.sh status    one line per component; exit 0 only when all are up
#   scripts/stack.sh airflow ARGS...   the Airflow CLI against this stack (e.g. `backfill create ...`)
#   scripts/stack.sh start|stop NAME   one component (postgres, redis, scheduler, worker-gpu-2, ...), as a
#                                      supervisor restarting it would (scripts/chaos.py); `up` is still needed first
#
# Knobs (environment): STACK_DIR, STACK_PG_PORT (55432), STACK_REDIS_PORT (56379), STACK_API_PORT (58080),
# STACK_SCHEDULER_HEALTH_PORT (58974), STACK_LOG_PORT (58793; one port per worker from there),
# STACK_GPU_WORKERS (1: gpu-queue workers, as one per GPU; the rqvae_gpu pool gets as many slots),
# STACK_VENV (.venv), STACK_PG_BIN (Debian's newest /usr/lib/postgresql/*/bin), STACK_TIMEOUT_S (240).
# RQVAE_* tuning variables (RQVAE_SENSOR_POKE_S, RQVAE_RETRY_DELAY_S, ...) pass through to the workers;
# the data roots are always $STACK_DIR/data/{embeddings,work,published,interactions}. STACK_ENV_FILE: a file of
# VAR=value lines sourced after the stack's own settings, for every component (e.g. AIRFLOW__SCHEDULER__* timeouts).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="$(mkdir -p "${STACK_DIR:-$REPO/var/stack}" && cd "${STACK_DIR:-$REPO/var/stack}" && pwd)"
PG_PORT="${STACK_PG_PORT:-55432}"
REDIS_PORT="${STACK_REDIS_PORT:-56379}"
API_PORT="${STACK_API_PORT:-58080}"
SCHED_HEALTH_PORT="${STACK_SCHEDULER_HEALTH_PORT:-58974}"
LOG_PORT="${STACK_LOG_PORT:-58793}"
BIN="${STACK_VENV:-$REPO/.venv}/bin"
TIMEOUT_S="${STACK_TIMEOUT_S:-240}"
RUN="$STACK_DIR/run"
LOGS="$STACK_DIR/logs"
PG_DIR="$STACK_DIR/pg"
HOME_DIR="$STACK_DIR/airflow"
DATA="$STACK_DIR/data"
API_URL="http://127.0.0.1:$API_PORT"
GPU_WORKERS="${STACK_GPU_WORKERS:-1}"
[[ "$GPU_WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "STACK_GPU_WORKERS must be a positive integer" >&2; exit 2; }
gpu_workers() { local i; echo worker-gpu; for ((i = 2; i <= GPU_WORKERS; i++)); do echo "worker-gpu-$i"; done; }
mapfile -t GPU_WORKER_NAMES < <(gpu_workers)
AIRFLOW_COMPONENTS=(api-server scheduler dag-processor triggerer worker "${GPU_WORKER_NAMES[@]}")

pg_bin() {
    if [[ -n "${STACK_PG_BIN:-}" ]]; then echo "$STACK_PG_BIN"; return; fi
    # Debian keeps the server binaries (initdb, pg_ctl, postgres) off PATH, one folder per major version.
    local found
    found="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)"
    echo "${found:-$(dirname "$(command -v pg_ctl 2>/dev/null || echo /usr/bin/pg_ctl)")}"
}
PG_BIN="$(pg_bin)"

log() { printf '[stack %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# PostgreSQL refuses to run as root: as root, run its commands as the `postgres` user on folders it owns.
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The stack's own Airflow settings, exported for every airflow process. The caller's AIRFLOW_* variables are
# dropped first (a test session or the demo sets its own SQLite home): the stack must not inherit them.
stack_env() {
    local var
    for var in $(compgen -e); do
        [[ "$var" == AIRFLOW_HOME || "$var" == AIRFLOW_CONFIG || "$var" == AIRFLOW__* ]] && unset "$var"
    done
    # shellcheck disable=SC1091
    source "$STACK_DIR/secrets.env"
    local db="postgresql+psycopg2://airflow@127.0.0.1:$PG_PORT/airflow"
    export AIRFLOW_HOME="$HOME_DIR"
    export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
    export AIRFLOW__CORE__PARALLELISM=4  # 2-core machines: more task processes than cores only thrash
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
    export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
    export AIRFLOW__CORE__FERNET_KEY="$STACK_FERNET_KEY"
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$API_URL/execution/"
    # ti.hostname comes from this callable: plain gethostname, so a worker in its own UTS namespace reports
    # its own name (see start_worker) and no DNS lookup of that name is attempted.
    export AIRFLOW__CORE__HOSTNAME_CALLABLE=socket.gethostname
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$HOME_DIR/passwords.json"
    export AIRFLOW__API__HOST=127.0.0.1
    export AIRFLOW__API__PORT="$API_PORT"
    export AIRFLOW__API__BASE_URL="$API_URL"
    export AIRFLOW__API__WORKERS=1
    export AIRFLOW__API_AUTH__JWT_SECRET="$STACK_JWT_SECRET"
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$db"
    export AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: name the installed driver.
    export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql+psycopg2://airflow@127.0.0.1:$PG_PORT/airflow"
    export AIRFLOW__CELERY__WORKER_CONCURRENCY=2
    export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True
    export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=127.0.0.1
    export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT="$SCHED_HEALTH_PORT"
    export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$LOG_PORT"
    export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="$((LOG_PORT + 2))"
    export RQVAE_GPU_POOL=rqvae_gpu
    export RQVAE_EMBEDDINGS_ROOT="$DATA/embeddings"
    export RQVAE_WORK_ROOT="$DATA/work"
    export RQVAE_PUBLISH_ROOT="$DATA/published"
    export RQVAE_INTERACTIONS_ROOT="$DATA/interactions"
    # `include/` is a top-level package of the project, imported by the task code on the workers.
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$BIN:$PATH"
    # A caller's overrides (the chaos stack's short heartbeat timeouts), after the defaults so they win.
    if [[ -n "${STACK_ENV_FILE:-}" ]]; then
        [[ -f "$STACK_ENV_FILE" ]] || die "STACK_ENV_FILE $STACK_ENV_FILE not found"
        set -a
        # shellcheck disable=SC1090
        source "$STACK_ENV_FILE"
        set +a
    fi
}

# Secrets are generated once per stack folder (never committed): the JWT secret every component shares, the
# Fernet key, and the admin password, written in the simple auth manager's passwords file.
ensure_secrets() {
    mkdir -p "$HOME_DIR"
    if [[ ! -f "$STACK_DIR/secrets.env" ]]; then
        (umask 077 && "$BIN/python" - "$STACK_DIR/secrets.env" "$HOME_DIR/passwords.json" <<'EOF'
import base64, json, os, secrets, sys
with open(sys.argv[1], "w") as out:
    out.write(f"STACK_JWT_SECRET={secrets.token_urlsafe(48)}\n")
    out.write(f"STACK_FERNET_KEY={base64.urlsafe_b64encode(os.urandom(32)).decode()}\n")
with open(sys.argv[2], "w") as out:
    json.dump({"admin": secrets.token_urlsafe(16), "viewer": secrets.token_urlsafe(16)}, out)
EOF
        )
    fi
}

pid_of() { [[ -f "$RUN/$1.pid" ]] && cat "$RUN/$1.pid" || true; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; }

# Run a command in the background in its own session, its PID written by the process itself (after setsid and
# unshare have exec'd), so the PID file names the real server and `down` can find its children.
launch() {
    local name="$1"; shift
    rm -f "$RUN/$name.pid"
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$RUN/$name.pid" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    local waited=0
    until [[ -s "$RUN/$name.pid" ]]; do
        sleep 0.1; waited=$((waited + 1)); ((waited < 100)) || die "$name did not start (see $LOGS/$name.log)"
    done
}

wait_for() {
    local what="$1" name="$2"; shift 2
    local deadline=$((SECONDS + TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        if [[ -n "$name" ]] && ! alive "$name"; then
            tail -n 40 "$LOGS/$name.log" >&2 || true
            die "$name exited while waiting for $what (log: $LOGS/$name.log)"
        fi
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT_S}s waiting for $what (logs: $LOGS)"
        sleep 1
    done
    log "$what: ok"
}

# --- PostgreSQL ------------------------------------------------------------------------------------------------
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

start_postgres() {
    if alive postgres; then log "postgres already running (pid $(pid_of postgres))"; return; fi
    [[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL server binaries not found in $PG_BIN (apt-get install postgresql)"
    mkdir -p "$PG_DIR/run"
    [[ "$(id -u)" == 0 ]] && chown -R postgres:postgres "$PG_DIR"
    if [[ ! -f "$PG_DIR/data/PG_VERSION" ]]; then
        # trust on loopback only: the server listens on 127.0.0.1 and a socket folder inside the stack.
        as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U airflow --auth=trust -E UTF8 --no-locale >>"$LOGS/postgres-init.log"
    fi
    # Its log sits in its own folder: the server writes it as the postgres user.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -k $PG_DIR/run -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    head -1 "$PG_DIR/data/postmaster.pid" >"$RUN/postgres.pid"
    wait_for "postgres on 127.0.0.1:$PG_PORT" postgres pg_ready
    if [[ -z "$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U airflow -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'airflow'")" ]]; then
        "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U airflow airflow
    fi
}

stop_postgres() {
    alive postgres || { rm -f "$RUN/postgres.pid"; return 0; }
    # pg_ctl signals the postmaster (SIGINT, fast shutdown) and waits until it and its backends are gone.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null || stop_pid postgres
    rm -f "$RUN/postgres.pid"
    log "postgres stopped"
}

# --- Redis -----------------------------------------------------------------------------------------------------
redis_ready() { [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }

start_redis() {
    if alive redis; then log "redis already running (pid $(pid_of redis))"; return; fi
    command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
    mkdir -p "$STACK_DIR/redis"
    # A broker only: no snapshots to disk, loopback only.
    cat >"$STACK_DIR/redis/redis.conf" <<EOF
bind 127.0.0.1
port $REDIS_PORT
dir $STACK_DIR/redis
daemonize no
save ""
appendonly no
protected-mode yes
EOF
    launch redis redis-server "$STACK_DIR/redis/redis.conf"
    wait_for "redis on 127.0.0.1:$REDIS_PORT" redis redis_ready
}

# --- Airflow ---------------------------------------------------------------------------------------------------
api_healthy() {
    # Healthy means the api-server answers and reports the metadata DB, scheduler, triggerer and dag-processor up.
    curl -fsS "$API_URL/api/v2/monitor/health" | "$BIN/python" -c '
import json, sys
health = json.load(sys.stdin)
sys.exit(0 if all(health.get(k, {}).get("status") == "healthy"
                  for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")) else 1)'
}
scheduler_healthy() { curl -fsS "http://127.0.0.1:$SCHED_HEALTH_PORT/health"; }
worker_ready() { grep -q "ready\." "$LOGS/$1.log"; }

# Each worker gets its own UTS namespace and hostname (as a compose container would), so the hostname recorded
# on every task instance says which worker ran it. Where namespaces are not allowed, both keep the machine's
# hostname and only the queue tells them apart; run/<worker>.hostname records what the task instances show.
start_worker() {
    local name="$1" queue="$2" concurrency="$3" log_port="$4" host="stack-$1"
    if alive "$name"; then log "$name already running (pid $(pid_of "$name"))"; return; fi
    : >"$LOGS/$name.log"
    local cmd=(airflow celery worker --celery-hostname "$name@%h" --queues "$queue" --concurrency "$concurrency")
    if unshare --uts true 2>/dev/null; then
        echo "$host" >"$RUN/$name.hostname"
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$log_port" \
            launch "$name" unshare --uts bash -c 'hostname "$0" && exec "$@"' "$host" "${cmd[@]}"
    else
        hostname >"$RUN/$name.hostname"
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$log_port" launch "$name" "${cmd[@]}"
    fi
}

start_airflow() {
    airflow db migrate >"$LOGS/db-migrate.log" 2>&1 || { tail -n 30 "$LOGS/db-migrate.log" >&2; die "db migrate failed"; }
    log "metadata DB migrated"
    # train_rqvae and encode_items share this pool: one slot per GPU worker, one job at a time on each.
    airflow pools set rqvae_gpu "$GPU_WORKERS" "GPU slots for train_rqvae and encode_items" \
        >>"$LOGS/db-migrate.log" 2>&1
    local name
    for name in api-server scheduler dag-processor triggerer; do
        if alive "$name"; then log "$name already running (pid $(pid_of "$name"))"; continue; fi
        launch "$name" airflow "$name"
    done
    start_worker worker default 2 "$LOG_PORT"
    local i
    for i in "${!GPU_WORKER_NAMES[@]}"; do start_worker "${GPU_WORKER_NAMES[$i]}" gpu 1 "$((LOG_PORT + 1 + i))"; done
    wait_for "scheduler health on :$SCHED_HEALTH_PORT" scheduler scheduler_healthy
    wait_for "api-server health (db, scheduler, triggerer, dag-processor) on $API_URL" api-server api_healthy
    wait_for "celery worker (queue default)" worker worker_ready worker
    for name in "${GPU_WORKER_NAMES[@]}"; do wait_for "celery worker $name (queue gpu)" "$name" worker_ready "$name"; done
}

# --- stopping --------------------------------------------------------------------------------------------------
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        descendants "$child"
        echo "$child"
    done
}

# SIGTERM to the children (deepest first) and then the parent, as Airflow's components expect, wait, then
# SIGKILL whatever of that same set is still there. Only PIDs from our PID file and its process tree.
stop_pid() {
    local name="$1" pid
    pid="$(pid_of "$name")"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then rm -f "$RUN/$name.pid"; return 0; fi
    local tree=($(descendants "$pid") "$pid")
    kill -TERM "${tree[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 30)) left
    while :; do
        left=()
        for p in "${tree[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
        ((${#left[@]} == 0)) && break
        if ((SECONDS >= deadline)); then
            log "$name: SIGKILL to ${left[*]} after 30s"
            kill -KILL "${left[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
    rm -f "$RUN/$name.pid"
    log "$name stopped (pid $pid)"
}

# --- verbs -----------------------------------------------------------------------------------------------------
up() {
    local started=$SECONDS
    [[ -x "$BIN/airflow" ]] || die "$BIN/airflow not found: run \`make venv\` first"
    mkdir -p "$RUN" "$LOGS" "$DATA/embeddings" "$DATA/work" "$DATA/published"
    ensure_secrets
    stack_env
    start_postgres
    start_redis
    start_airflow
    log "stack up in $((SECONDS - started))s: API $API_URL (user admin, password in $HOME_DIR/passwords.json)"
}

down() {
    mkdir -p "$RUN"
    local name file
    # every gpu worker with a PID file, however many `up` started
    for file in "$RUN"/worker-gpu*.pid; do [[ -e "$file" ]] && stop_pid "$(basename "$file" .pid)"; done
    for name in worker triggerer dag-processor scheduler api-server; do stop_pid "$name"; done
    stop_pid redis
    stop_postgres
}

status() {
    local name ok=0 state
    for name in postgres redis "${AIRFLOW_COMPONENTS[@]}"; do
        if alive "$name"; then state="running (pid $(pid_of "$name"))"; else state="stopped"; ok=1; fi
        case "$name" in
            postgres) alive postgres && ! pg_ready && { state+=", not accepting connections"; ok=1; } ;;
            redis) alive redis && ! redis_ready && { state+=", no PONG"; ok=1; } ;;
            scheduler) alive scheduler && ! scheduler_healthy >/dev/null 2>&1 && { state+=", unhealthy"; ok=1; } ;;
            worker | worker-gpu*) [[ -f "$RUN/$name.hostname" ]] && state+=", hostname $(cat "$RUN/$name.hostname")" ;;
        esac
        printf '%-14s %s\n' "$name" "$state"
    done
    if alive api-server; then
        printf '%-14s %s\n' health "$(curl -fsS "$API_URL/api/v2/monitor/health" 2>/dev/null || echo unreachable)"
    fi
    return "$ok"
}

# One component started or stopped alone, the others left as they are (a supervisor's restart, a chaos test).
start_one() {
    local name="$1" i
    mkdir -p "$RUN" "$LOGS"
    ensure_secrets
    stack_env
    case "$name" in
        postgres) start_postgres ;;
        redis) start_redis ;;
        scheduler)
            alive scheduler || launch scheduler airflow scheduler
            wait_for "scheduler health on :$SCHED_HEALTH_PORT" scheduler scheduler_healthy ;;
        api-server | dag-processor | triggerer)
            alive "$name" || launch "$name" airflow "$name"
            wait_for "$name running" "$name" alive "$name" ;;
        worker)
            start_worker worker default 2 "$LOG_PORT"
            wait_for "celery worker (queue default)" worker worker_ready worker ;;
        worker-gpu*)
            for i in "${!GPU_WORKER_NAMES[@]}"; do
                [[ "${GPU_WORKER_NAMES[$i]}" == "$name" ]] || continue
                start_worker "$name" gpu 1 "$((LOG_PORT + 1 + i))"
                wait_for "celery worker $name (queue gpu)" "$name" worker_ready "$name"
                return
            done
            die "no gpu worker $name with STACK_GPU_WORKERS=$GPU_WORKERS" ;;
        *) die "unknown component $name (one of: postgres redis ${AIRFLOW_COMPONENTS[*]})" ;;
    esac
}

stop_one() {
    mkdir -p "$RUN"
    if [[ "$1" == postgres ]]; then stop_postgres; else stop_pid "$1"; fi
}

case "${1:-}" in
    up) up ;;
    start) [[ -n "${2:-}" ]] || die "usage: stack.sh start NAME"; start_one "$2" ;;
    stop) [[ -n "${2:-}" ]] || die "usage: stack.sh stop NAME"; stop_one "$2" ;;
    down) down ;;
    status) status ;;
    airflow) shift; ensure_secrets; stack_env; exec airflow "$@" ;;
    *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
