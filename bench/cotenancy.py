"""Co-tenancy benchmark: N `rqvae train` processes at once against the same N run one after another.

Airflow workers run several tasks on one machine, so a training must not collapse when a neighbour holds the
cores. Each run is the CLI as a user runs it, in a fresh process whose environment has no OMP_* variables
(rqvae.threads sets its defaults). Writes the table into docs/benchmarks.md between the ``cotenancy`` markers.

    python bench/cotenancy.py                     # N = 2 and 4, 100k x 32, 4 x 256, 1 epoch
    python bench/cotenancy.py --n 2 --control     # also N = 2 with OpenMP spin-waiting (OMP_WAIT_POLICY=ACTIVE)

The figure that matters is ``concurrent / sequential`` (1.0: sharing the cores costs nothing beyond the
work itself; the target is <= 1.2 for N = 2).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import provenance, replace_section  # noqa: E402

RQVAE = [sys.executable, "-m", "rqvae.cli", "-q"]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without OpenMP/worker settings: what a plain shell gives a user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_", "RQVAE_WORKER"))}
    env.update(extra)
    return env


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stdout of one command run from the repository root; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return wall, proc.stdout


def train_cmd(data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [*RQVAE, "train", "--embeddings", str(data), "--out", str(out), "--num-codebooks", str(args.levels),
            "--codebook-size", str(args.codebook_size), "--epochs", str(args.epochs), "--seed", "0"]


def run_batch(cmds: list[list[str]], env: dict[str, str], concurrent: bool) -> float:
    """Wall seconds for all commands, started together or one after another."""
    start = time.perf_counter()
    if concurrent:
        procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.DEVNULL) for c in cmds]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.run(c, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, check=False).returncode
                 for c in cmds]
    if any(codes):
        raise SystemExit(f"a training failed (exit codes {codes})")
    return time.perf_counter() - start


def load_average() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def measure(n: int, data: Path, work: Path, args: argparse.Namespace, env: dict[str, str], label: str) -> dict:
    cmds = [train_cmd(data, work / f"{label}-{n}-{i}", args) for i in range(n)]
    load_before = load_average()
    sequential = run_batch(cmds, env, concurrent=False)
    concurrent = run_batch(cmds, env, concurrent=True)
    row = {"n": n, "label": label, "sequential": sequential, "concurrent": concurrent,
           "ratio": concurrent / sequential, "load": load_before}
    print(f"{label:>8} N={n}: sequential {sequential:.1f}s, concurrent {concurrent:.1f}s, "
          f"ratio {row['ratio']:.2f} (load before: {load_before})", flush=True)
    return row


def to_markdown(rows: list[dict], args: argparse.Namespace, shape: tuple[int, int]) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPU cores; "
        f"`python bench/cotenancy.py` (also run by `make bench`). Each run: `rqvae train` on {shape[0]:,} x "
        f"{shape[1]} synthetic items, {args.levels} x {args.codebook_size}, {args.epochs} epoch(s), in a fresh "
        "process without OMP_* variables (rqvae.threads sets passive waiting and the thread count). "
        "`ratio` = concurrent / sequential wall time of the same N runs, measured back to back; target <= 1.2 "
        "for N = 2. Load average (1, 5, 15 min) taken before each pair of measurements: other jobs on the box "
        "add noise to both sides.",
        "",
        "| setting | N | one after another (s) | all at once (s) | ratio | load before |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['n']} | {r['sequential']:.1f} | {r['concurrent']:.1f} | "
                     f"{r['ratio']:.2f} | {r['load']} |")
    if any(r["label"] != "default" for r in rows):
        lines += ["", "`spinning` is the control: OMP_WAIT_POLICY=ACTIVE, OpenMP threads spin while they wait."]
    lines += ["", "Set `RQVAE_WORKER_CONCURRENCY` to the number of CPU-heavy tasks a worker runs at once: each "
              "then sizes its threads to its share of the CPUs (affinity and cgroup quota)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="2,4", help="concurrency levels, e.g. 2,4")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--control", action="store_true", help="also N=2 with OMP_WAIT_POLICY=ACTIVE")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench"))
    args = parser.parse_args(argv)
    run = provenance()  # before any work: the load average is the start's
    cache = Path(args.cache)
    data = cache / f"synth_{args.items}_{args.dim}.parquet"
    if not data.exists():
        subprocess.run([*RQVAE, "synth", "--n", str(args.items), "--dim", str(args.dim), "--out", str(data)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    work = cache / "cotenancy"
    shutil.rmtree(work, ignore_errors=True)
    rows = [measure(int(n), data, work, args, clean_env(), "default") for n in args.n.split(",")]
    if args.control:
        rows.append(measure(2, data, work, args, clean_env(OMP_WAIT_POLICY="ACTIVE"), "spinning"))
    shutil.rmtree(work, ignore_errors=True)
    table = to_markdown(rows, args, (args.items, args.dim))
    print()
    print(table)
    replace_section(Path(args.out), "cotenancy", "## Co-tenancy: trainings sharing a worker's cores", table, run)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
