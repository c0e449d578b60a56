"""What the DAG files share: retry defaults, the retry policy, GPU routing and the two assets.

Imported at DAG-parse time, so it stays light: Airflow's SDK and :mod:`rqvae.errors` only (no torch, pandas,
pyarrow or Great Expectations). Deployment settings come from the environment of the process that parses the
DAG files and are read when the functions are called, so a test can parse with other values.

How Airflow 3.3 matches a :class:`RetryRule` (``airflow/sdk/definitions/retry_policy.py``): the exception
class is imported once, on first use, and compared with ``isinstance`` (``match_subclasses=True``, the
default), so one rule naming a base class covers every subclass through its MRO; the first matching rule wins.
The policy object itself is not serialized: the worker evaluates the one its own parse of the DAG file built.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, NamedTuple

from airflow.sdk import Asset, ExceptionRetryPolicy, RetryAction, RetryRule

from rqvae.errors import PermanentError

OWNER = "ml-platform"
RETRY_BACKOFF = 2.0  # each retry waits twice as long as the one before

# `rqvae_semantic_ids.publish` updates it ("published"); `semantic_ids_evaluation` is scheduled on it.
SEMANTIC_IDS = Asset("semantic_ids")
# Updated whenever the `serving` alias moves (`semantic_ids_evaluation.promote`, `semantic_ids_promote`, the UI
# page's promote button): what consumers that load the served version schedule on.
SERVING_ASSET = "semantic_ids_serving"
SEMANTIC_IDS_SERVING = Asset(SERVING_ASSET)

# A retry repeats the same input, params and files: permanent failures (bad input, failed validation or quality
# gate, bad snapshot, path outside the roots, unusable model directory, refused publish) fail the task at once.
# Plain ValueErrors keep failing at once too, as before this base existed: third-party readers report bad data
# that way (pyarrow's ArrowInvalid is one) and so do argument checks. Anything else (a lost worker, a full disk,
# an I/O error, CUDA out of memory) is left to the task's normal retries.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=PermanentError,
            action=RetryAction.FAIL,
            reason="permanent failure (bad input, params, validation or state): a retry would fail the same way",
        ),
        RetryRule(
            exception=ValueError,
            action=RetryAction.FAIL,
            reason="bad value: a retry would fail the same way",
        ),
    ]
)


class GpuRouting(NamedTuple):
    """Where the GPU stages run: the Celery queue of the GPU workers, the pool that caps them, their timeout."""

    queue: str
    pool: str
    timeout: timedelta


def gpu_routing() -> GpuRouting:
    """GPU routing from env `RQVAE_GPU_QUEUE` (gpu), `RQVAE_GPU_POOL` (default_pool), `RQVAE_GPU_TASK_TIMEOUT_H` (8)."""
    return GpuRouting(
        queue=os.environ.get("RQVAE_GPU_QUEUE", "gpu"),
        pool=os.environ.get("RQVAE_GPU_POOL", "default_pool"),
        timeout=timedelta(hours=float(os.environ.get("RQVAE_GPU_TASK_TIMEOUT_H", "8"))),
    )


def prepare_process(context: Any) -> None:
    """Every task's `on_execute_callback`: the task process is the pipeline's own, so it sets OpenMP's passive
    wait and this worker's thread share before a stage can import torch (rqvae.threads.configure); importing
    the library changes nothing by itself."""
    from rqvae import threads

    threads.configure()


def default_args() -> dict[str, Any]:
    """Every task's owner, retries (env `RQVAE_RETRIES` (2) and `RQVAE_RETRY_DELAY_S` (300, doubling)) and the
    process set-up that runs before it (:func:`prepare_process`)."""
    return {
        "owner": OWNER,
        "on_execute_callback": prepare_process,
        "retries": int(os.environ.get("RQVAE_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("RQVAE_RETRY_DELAY_S", "300"))),
        "retry_exponential_backoff": RETRY_BACKOFF,
        "retry_policy": RETRY_POLICY,
    }
