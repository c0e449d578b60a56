# Two commands matter: `make demo` runs the main job, `make test` passes the tests.
# Each creates or updates .venv on its own (Python 3.11, pip, versions pinned in constraints.txt).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AIRFLOW_HOME ?= $(CURDIR)/var/airflow

.PHONY: venv test lint demo airflow bench bench-quality-seed bench-scale bench-downstream bench-serving clean reliability \
	bench-cotenancy bench-encode bench-validation bench-stack-scale bench-gpu bench-check chaos

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/python scripts/demo.py

# The Airflow UI (airflow standalone) with the demo's settings: log in as admin, trigger with the params form.
airflow: venv
	scripts/airflow_standalone.sh

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/cotenancy.py
	$(BIN)/python bench/encode.py

# N = 2 and 4 concurrent `rqvae train` runs against the same runs one after another (a few minutes on 2 cores).
# Training + encoding at the users' scale (5.7M x 32, 4 x 256) against faiss residual k-means, same run (~15 min).
bench-quality-seed: $(BENCH_STAMP)
	$(BIN)/python bench/quality.py --sets seed --levels 4 --peers faiss1 --variants "rqvae,rqvae (5 epochs),rqvae+balance,rqkmeans" \
		--section quality-seed --title "Quality and wall time at seed scale (5.7M x 32)" --command "make bench-quality-seed"

bench-cotenancy: $(BENCH_STAMP)
	$(BIN)/python bench/cotenancy.py

# `rqvae encode` as a user runs it (2M x 32, Parquet in and out) against faiss compute_codes, with a breakdown.
bench-encode: $(BENCH_STAMP)
	$(BIN)/python bench/encode.py

# validate_dims / validate_codes at 5.7M x 32 against GX on the full per-row frames (peak RSS included).
bench-validation: venv
	$(BIN)/python bench/validation.py

# Each ID set judged by a small generative retriever on MovieLens (Recall@10, NDCG@10, NLL; 10-20 min on 2 cores).
bench-downstream: $(BENCH_STAMP)
	$(BIN)/python bench/downstream.py

# Bad-input, fault and security tests, then docs/reliability.md rendered from their recorded outcomes.
reliability: venv
	$(BIN)/python scripts/reliability_report.py

# Faults on the native Celery stack (killed gpu workers, Postgres/Redis restarts, a killed scheduler), one DAG run
# each; outcomes in var/chaos/results.json and docs/reliability.md's chaos section (15-30 min on 2 cores).
chaos: venv
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python scripts/chaos.py

clean:
	rm -rf var build .pytest_cache .ruff_cache

bench-scale: venv
	$(BIN)/python bench/scale.py

# The whole DAG on the native Celery stack (two gpu workers) at N items (default 50M): per-task time and peak RSS.
N ?= 50000000
bench-stack-scale: venv
	$(BIN)/python bench/stack_scale.py --n $(N)

# Train + encode at seed scale on a CUDA GPU against the same machine's CPU (needs a CUDA build of torch; where
# the GPU is on another machine, run `python3 bench/gpu.py run --json ...` there and `render` here).
bench-gpu: venv
	$(BIN)/python bench/gpu.py run --json var/bench/gpu.json
	$(BIN)/python bench/gpu.py render var/bench/gpu.json

# Sections of docs/benchmarks.md older than the code they measure (exit 1 when any is).
bench-check: venv
	$(BIN)/python bench/check.py

# Serving index at 5.7M items (load time, memory, lookups/s) and ID churn of aligned retrains (200k items).
bench-serving: venv
	$(BIN)/python bench/serving.py
