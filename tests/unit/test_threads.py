"""Thread discipline: the CPU count a step may use, and OpenMP's passive wait set before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rqvae.threads import (
    CONCURRENCY_ENV,
    SERIAL_STEP_MACS,
    cgroup_cpu_limit,
    configure,
    step_threads,
    usable_cpus,
    worker_concurrency,
)

ROOT = Path(__file__).resolve().parents[2]


def _cgroup(tmp_path: Path, self_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup tree and /proc/self/cgroup file."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(self_line + "\n")
    return root, self_cgroup


def test_cgroup_v2_quota_rounds_up_and_caps_affinity(tmp_path: Path) -> None:
    root, me = _cgroup(tmp_path, "0::/", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, me) == 1.5
    assert usable_cpus({}, cgroup_root=root, self_cgroup=me, affinity=8) == 2
    assert usable_cpus({}, cgroup_root=root, self_cgroup=me, affinity=1) == 1


def test_cgroup_v2_without_quota_keeps_affinity(tmp_path: Path) -> None:
    root, me = _cgroup(tmp_path, "0::/", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, me) is None
    assert usable_cpus({}, cgroup_root=root, self_cgroup=me, affinity=6) == 6


def test_cgroup_v2_tightest_limit_along_the_path(tmp_path: Path) -> None:
    root, me = _cgroup(
        tmp_path, "0::/kubepods/pod1/box",
        {"kubepods/pod1/box/cpu.max": "max 100000", "kubepods/pod1/cpu.max": "300000 100000",
         "kubepods/cpu.max": "800000 100000"},
    )
    assert cgroup_cpu_limit(root, me) == 3.0
    assert usable_cpus({}, cgroup_root=root, self_cgroup=me, affinity=16) == 3


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}
    root, me = _cgroup(tmp_path, "3:cpuset:/\n2:cpu:/\n1:cpuacct:/", files)
    assert cgroup_cpu_limit(root, me) == 2.5
    assert usable_cpus({}, cgroup_root=root, self_cgroup=me, affinity=32) == 3
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(root, me) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing_self") is None


@pytest.mark.parametrize(("hint", "expected"), [("4", 2), ("3", 2), ("16", 1), ("0", 8), ("x", 8), ("", 8)])
def test_worker_concurrency_shares_the_cores(tmp_path: Path, hint: str, expected: int) -> None:
    env = {CONCURRENCY_ENV: hint}
    assert usable_cpus(env, cgroup_root=tmp_path, self_cgroup=tmp_path / "none", affinity=8) == expected
    assert worker_concurrency(env) >= 1


def test_configure_sets_defaults_and_keeps_user_values() -> None:
    env: dict[str, str] = {}
    threads = configure(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == str(threads) and threads >= 1
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    configure(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}


def _openmp_spin_count(code: str) -> str:
    """GOMP_SPINCOUNT as the OpenMP runtime loaded by torch reports it (0 when passive wait was set in time)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    lines = [line for line in proc.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    assert lines, proc.stderr[-2000:]
    return lines[0].split("=", 1)[1].strip().strip("'")


ENTRY_POINTS = {  # what each process owner runs first, then whatever it does loads torch
    "cli": "import rqvae.cli\ntry:\n    rqvae.cli.main(['--help'])\nexcept SystemExit:\n    pass\nimport torch",
    "task": "from include.dag_defaults import prepare_process\nprepare_process({})\n"
            "import include.stages.train_rqvae, torch",
    "configure": "from rqvae import threads\nthreads.configure()\nimport rqvae.training.loop",
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_points_set_passive_wait_before_torch_loads(entry: str) -> None:
    assert _openmp_spin_count(ENTRY_POINTS[entry]) == "0"


def test_importing_the_library_changes_nothing() -> None:
    """A notebook or a serving process that imports rqvae (torch included) keeps OpenMP's defaults and its
    environment: only the entry points above configure the process."""
    code = ("import os; before = dict(os.environ)\n"
            "import rqvae, include, rqvae.training.loop, rqvae.io.readers, include.stages.train_rqvae, torch\n"
            "print(sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert _openmp_spin_count("import rqvae, include, rqvae.training.loop, torch") != "0"


def test_spin_count_check_can_fail() -> None:
    """The control: torch loaded before configure() keeps OpenMP's default spinning (what the workers' env fixes)."""
    assert _openmp_spin_count("import torch\nfrom rqvae import threads\nthreads.configure()") != "0"


def _printed_by_a_worker_task(code: str) -> int:
    """The last number ``code`` prints in a fresh process on a worker running two CPU-heavy tasks at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env[CONCURRENCY_ENV] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return int(out[-1])


def test_torch_threads_follow_the_usable_cpus() -> None:
    """A worker running two CPU-heavy tasks at once gives each half the cores (at least one thread)."""
    threads = _printed_by_a_worker_task(
        "from rqvae import threads; threads.configure(); import rqvae.model, torch; print(torch.get_num_threads())")
    assert threads == usable_cpus({CONCURRENCY_ENV: "2"}) == max(1, usable_cpus({}) // 2)


def test_arrow_pool_follows_the_usable_cpus() -> None:
    pool = _printed_by_a_worker_task(
        "from rqvae import threads; threads.configure(); import rqvae.io.readers, pyarrow; print(pyarrow.cpu_count())")
    assert pool == usable_cpus({CONCURRENCY_ENV: "2"})


def test_small_training_steps_run_on_one_thread_and_restore_the_count() -> None:
    """Steps below SERIAL_STEP_MACS take one thread (waking a second costs more than it saves); bigger steps
    keep the count; either way the caller's count comes back, also after an error."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with step_threads(SERIAL_STEP_MACS - 1) as used:
            assert used == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with step_threads(SERIAL_STEP_MACS) as used:
            assert used == 2 and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), step_threads(0):
            raise RuntimeError("a failing step")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_training_reports_the_step_threads_it_used() -> None:
    import numpy as np
    import torch

    import rqvae.training.loop
    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.training.loop import train

    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    seen: list[int] = []
    real_forward = rqvae.training.loop.RQVAE.forward

    def forward(self, xb):  # the thread count the optimisation steps really run with
        seen.append(torch.get_num_threads())
        return real_forward(self, xb)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(rqvae.training.loop.RQVAE, "forward", forward)
            small = train(x, ModelConfig(input_dim=8, num_codebooks=2, codebook_size=16),
                          TrainConfig(epochs=1, batch_size=256, device="cpu"), show_progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1} and small.metrics["step_threads"] == 1
    rqkmeans = train(x, ModelConfig(input_dim=8, num_codebooks=2, codebook_size=16, method="rqkmeans"),
                     TrainConfig(epochs=1, device="cpu"), show_progress=False)
    assert rqkmeans.metrics["step_threads"] is None  # no optimisation step, so no step threads to report
