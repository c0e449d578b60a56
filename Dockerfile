# The project's Airflow image: the official Airflow 3.3 image on Python 3.11 plus the rqvae library, the
# pinned requirements (constraints.txt), the Celery/PostgreSQL extras, and the DAG, task code and plugins.
# CUDA-enabled PyTorch by default; `--build-arg TORCH_VARIANT=cpu` builds a smaller CPU-only image.
#
#   docker compose build                                   (TORCH_VARIANT from .env, default cu128)
#   docker build --build-arg TORCH_VARIANT=cpu -t rqvae-semantic-ids:cpu .
FROM apache/airflow:3.3.2-python3.11

ARG AIRFLOW_VERSION=3.3.2
# A PyTorch wheel index name: cu126, cu128 (CUDA 12) or cpu.
ARG TORCH_VARIANT=cu128

USER airflow
WORKDIR /opt/airflow

# Requirements first, so editing code does not re-download torch. torch comes from PyTorch's own index for the
# chosen variant; constraints.txt still pins its version (2.13.0 matches 2.13.0+cu128), and everything else
# comes from PyPI at the pinned versions. apache-airflow is named so pip never moves the image's Airflow.
COPY --chown=airflow:0 pyproject.toml constraints.txt README.md /opt/airflow/project/
COPY --chown=airflow:0 rqvae /opt/airflow/project/rqvae
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "$(grep -E '^torch==' /opt/airflow/project/constraints.txt)" \
    && pip install --no-cache-dir -c /opt/airflow/project/constraints.txt \
        "apache-airflow==${AIRFLOW_VERSION}" "/opt/airflow/project[pipeline,cluster]" \
    && python -c "import torch, rqvae, airflow.providers.celery; print('torch', torch.__version__)"

# DAG, task logic and Airflow extensions; `include` is imported as a top-level package by the tasks.
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 include /opt/airflow/include
COPY --chown=airflow:0 plugins /opt/airflow/plugins
ENV PYTHONPATH=/opt/airflow \
    RQVAE_EMBEDDINGS_ROOT=/opt/airflow/data/embeddings \
    RQVAE_WORK_ROOT=/opt/airflow/data/work \
    RQVAE_PUBLISH_ROOT=/opt/airflow/data/published
