"""How many threads a CPU-heavy step may use, and OpenMP settings that do not spin on shared cores.

Airflow workers run several tasks on one machine. PyTorch sizes its OpenMP team from the machine's cores and
its threads spin-wait between parallel regions, so two trainings side by side each spin on cores the other
needs (measured: 11x slower than running them one after the other). The remedies, all here:

- ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning). OpenMP reads it once, when
  the runtime loads with torch, so :func:`configure` must run before the first ``import torch``: the entry
  points that own a process call it (``rqvae.cli.main``, every pipeline task's ``on_execute_callback`` in
  ``include.dag_defaults``, the benchmarks), and the Celery worker's environment sets it too
  (docker-compose.yaml). Importing ``rqvae`` does not: a library must not change the process that imports it.
- thread counts from the CPUs this process may really use (:func:`usable_cpus`): its CPU affinity, the
  container's cgroup CPU quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), divided by
  ``RQVAE_WORKER_CONCURRENCY`` when set: how many CPU-heavy tasks the worker runs at once (e.g. the Celery
  worker's concurrency), so each task gets its share of the cores instead of all of them.
- small training steps on one thread (:func:`step_threads`): a step of a 32-d model over 1,024 items is a few
  hundred tiny ops, and waking a second thread for each costs more than it saves (and leaves that core to a
  neighbour).

A user's own ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` always win (only defaults are set), except that small
training steps run on one thread whatever the count.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

CONCURRENCY_ENV = "RQVAE_WORKER_CONCURRENCY"
# Below this many multiply-adds in a training step's forward pass, one thread steps faster than two: each op is
# too small to split, and waking a second thread costs more than it saves. Measured on 2 cores, batch 1024,
# 4 x 256: 32-d (44M) 8.6 vs 11.0 ms a step and 50-d (78M) 10.9 vs 15.3 ms on one thread vs two; 384-d (1.6G)
# 153 vs 110 ms, where two win.
SERIAL_STEP_MACS = 400_000_000
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def affinity_cpus() -> int:
    """CPUs the scheduler lets this process run on (taskset, cpusets); the machine's count where unknown."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs' worth of time the cgroup quota allows (e.g. 1.5), the tightest along the cgroup path; None: no quota.

    Reads cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000") or v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` in this process's cgroup folder and each parent up to ``root``.
    """
    limits = [limit for folder in _cgroup_folders(root, self_cgroup) if (limit := _folder_limit(folder))]
    return min(limits) if limits else None


def _cgroup_folders(root: Path, self_cgroup: Path) -> list[Path]:
    """The folders whose CPU controller files may limit this process: its own cgroup, then each parent."""
    relative: dict[str, str] = {}
    try:
        for line in self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            relative["v2" if controllers == "" else controllers] = path
    except (OSError, ValueError):
        pass
    bases = [(root, relative.get("v2", "/"))]
    for name in ("cpu,cpuacct", "cpu"):
        if (root / name).is_dir():
            v1 = next((p for c, p in relative.items() if "cpu" in c.split(",")), "/")
            bases.append((root / name, v1))
    folders: list[Path] = []
    for base, path in bases:
        folder = base / path.strip("/") if path.strip("/") else base
        while True:
            folders.append(folder)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return folders


def _folder_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota < 0 else _ratio(quota, period)


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def worker_concurrency(environ: MutableMapping[str, str] | None = None) -> int:
    """``RQVAE_WORKER_CONCURRENCY`` as a positive int; 1 when unset or not a positive integer."""
    raw = (os.environ if environ is None else environ).get(CONCURRENCY_ENV, "").strip()
    try:
        return max(1, int(raw)) if raw else 1
    except ValueError:
        return 1


def usable_cpus(
    environ: MutableMapping[str, str] | None = None,
    *,
    cgroup_root: Path = CGROUP_ROOT,
    self_cgroup: Path = SELF_CGROUP,
    affinity: int | None = None,
) -> int:
    """Threads one CPU-heavy step should use: min(affinity, ceil(cgroup quota)) // worker concurrency, >= 1."""
    cpus = affinity_cpus() if affinity is None else max(1, affinity)
    quota = cgroup_cpu_limit(cgroup_root, self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus // worker_concurrency(environ))


def configure(environ: MutableMapping[str, str] | None = None) -> int:
    """Set OpenMP defaults (passive wait, team size) before torch loads; size torch and Arrow if they already have.

    ``OMP_NUM_THREADS`` also sizes Arrow's CPU pool when pyarrow loads later. Returns the thread count.
    Idempotent and cheap (a few small file reads); user settings are kept.
    """
    env = os.environ if environ is None else environ
    threads = usable_cpus(env)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ours = "OMP_NUM_THREADS" not in env
    env.setdefault("OMP_NUM_THREADS", str(threads))
    torch = sys.modules.get("torch")
    loaded = ours and environ is None and torch is not None and hasattr(torch, "set_num_threads")
    if loaded and torch.get_num_threads() > threads:
        # torch loaded first (e.g. by the caller): passive wait cannot apply any more, a smaller team can
        torch.set_num_threads(threads)
    if ours and environ is None and "pyarrow" in sys.modules:
        size_arrow()
    return threads


def size_arrow() -> int:
    """Shrink Arrow's CPU pool (Parquet decoding, compute kernels) to the usable CPUs; returns its size."""
    import pyarrow

    threads = usable_cpus()
    if pyarrow.cpu_count() > threads:
        pyarrow.set_cpu_count(threads)
    return pyarrow.cpu_count()


@contextmanager
def step_threads(step_macs: int) -> Iterator[int]:
    """Run a block of small training steps on one torch thread when a step is below SERIAL_STEP_MACS.

    Yields the thread count used; the caller's count is restored afterwards (evaluation and encoding, which
    work on large blocks, keep every usable thread).
    """
    import torch

    before = torch.get_num_threads()
    threads = 1 if step_macs < SERIAL_STEP_MACS else before
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
