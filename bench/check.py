"""`make bench-check`: which sections of docs/benchmarks.md are older than the code they measure.

A section is stale when the code it measures (``MEASURES``) changed in a commit that the section's run did not
include, when its run had uncommitted changes, or when it records no run at all. Prints one line per section and
exits 1 when any is stale, so a reader (or a CI step) knows which figures to distrust.

    python bench/check.py                   # docs/benchmarks.md against HEAD
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import sections  # noqa: E402

LIBRARY = ["rqvae/model.py", "rqvae/config.py", "rqvae/quantize", "rqvae/training", "rqvae/threads.py"]
ENCODING = ["rqvae/encoding", "rqvae/io", "rqvae/ids/collisions.py"]
PIPELINE = ["include", "dags"]
# The code each section's figures depend on (besides its own script, always included).
MEASURES: dict[str, list[str]] = {
    "quality": [*LIBRARY, "bench/quality.py"],
    "quality-seed": [*LIBRARY, *ENCODING, "bench/quality.py"],
    "scale": [*LIBRARY, *ENCODING, "rqvae/ids", *PIPELINE, "bench/scale.py"],
    "scale-collaborative": [*LIBRARY, "rqvae/io/interactions.py", "include/stages/train_rqvae.py", "bench/scale.py"],
    "scale-stack": [*LIBRARY, *ENCODING, "rqvae/ids", *PIPELINE, "scripts/stack.sh", "bench/stack_scale.py"],
    "alignment": [*LIBRARY, *ENCODING, "rqvae/ids", *PIPELINE, "bench/serving.py"],
    "serving": ["rqvae/ids/serving.py", "rqvae/ids/serving_writer.py", "rqvae/retrieval/index.py", "bench/serving.py"],
    "downstream": [*LIBRARY, "rqvae/retrieval", "rqvae/io/interactions.py", "bench/downstream.py"],
    "encode": [*LIBRARY, *ENCODING, "rqvae/cli.py", "bench/encode.py"],
    "validation": ["include/stages/validate_dims.py", "include/stages/validate_codes.py", "include/gx_suites.py",
                   "include/gx_rules.py", "bench/validation.py"],
    "cotenancy": [*LIBRARY, "rqvae/cli.py", "bench/cotenancy.py"],
    "gpu": [*LIBRARY, *ENCODING, "rqvae/cli.py", "bench/gpu.py"],
}
SHARED = ["bench/report.py"]  # changes here change how every section is written, not what it measures


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def last_change(paths: list[str]) -> str | None:
    """The newest commit touching any of ``paths`` (None: none of them is tracked)."""
    done = git("log", "-1", "--format=%H", "--", *paths)
    return done.stdout.strip() or None


def includes(commit: str, change: str) -> bool:
    """Whether ``commit`` contains ``change`` (the change is an ancestor of, or is, the commit)."""
    return git("merge-base", "--is-ancestor", change, commit).returncode == 0


def verdicts(doc: Path) -> list[tuple[str, str, str]]:
    """(section, "ok" | "stale", why) for every section of ``doc``."""
    out = []
    for key, run in sections(doc).items():
        paths = MEASURES.get(key)
        if paths is None:
            out.append((key, "stale", "no MEASURES entry in bench/check.py says what it measures"))
            continue
        if run is None:
            out.append((key, "stale", "no run recorded (written before runs were)"))
            continue
        change = last_change(paths)
        if run.dirty:
            out.append((key, "stale", f"run on {run.commit[:10]} with uncommitted changes"))
        elif change is not None and not includes(run.commit, change):
            out.append((key, "stale", f"run on {run.commit[:10]} ({run.date}); measured code changed in {change[:10]}"))
        else:
            out.append((key, "ok", f"run on {run.commit[:10]} ({run.date}), `{run.command}`"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    found = verdicts(Path(args.doc))
    for key, state, why in found:
        print(f"{state:5s} {key:26s} {why}")
    stale = [key for key, state, _ in found if state == "stale"]
    print(f"{len(found) - len(stale)} of {len(found)} sections current" + (f"; stale: {', '.join(stale)}" if stale
                                                                            else ""))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
