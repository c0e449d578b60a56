"""Faults: a publish or an encode killed at each step, a killed training task retried, two snapshots at once,
the same snapshot published twice. Whatever happens, consumers see the previous version or the complete new
one, and a retry ends with exactly one consistent version per snapshot.

A kill is simulated faithfully: the stage runs in a child process whose step function is wrapped to call
`os._exit(137)` (what SIGKILL leaves: no `finally`, no cleanup), then the test inspects the folders and
retries the stage in-process, as Airflow's retry of the task would.
(The library-level kill/resume of training is tests/unit/test_train_resume.py; the test here covers the
`train_rqvae` stage the DAG retries.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from include.files import read_json
from include.layout import RunFolder
from include.stages import publish as publish_module
from include.stages.load_embeddings import load_embeddings
from include.stages.publish import KEEP_SUPERSEDED
from include.stages.train_rqvae import train_rqvae
from include.stages.validate_codes import validate_codes
from include.stages.validate_dims import validate_dims
from include.versions import LATEST, LATEST_JSON, LOCK_FILE, MANIFEST, VERSIONS, read_latest
from rqvae.config import CodeChecks, InputChecks, ModelConfig, RetrainPolicy, TrainConfig
from rqvae.io.fsutil import sha256_file, sha256_tree
from rqvae.io.idfile import read_semantic_ids
from rqvae.io.synth import synth
from tests.helpers import encode_all, publish_work, run_info

DIM = 16
OLD, NEW = "2026-07-01", "2026-07-02"
KILLED = 137
MODEL = ModelConfig(input_dim=DIM, num_codebooks=2, codebook_size=16)
CODE_CHECKS = CodeChecks(min_unique_ratio=0.01, min_usage=0.25, max_recon_mse=1.0)


def prepare(snapshot_dir: Path, work_dir: Path) -> dict:
    """Run the stages up to validate_codes: a work folder ready to publish."""
    loaded = load_embeddings(snapshot_dir, work_dir)
    folder = RunFolder(work_dir)
    validate_dims(loaded["path"], folder.input_report, InputChecks(expected_dim=DIM, min_items=100))
    trained = train_rqvae(run_info(work_dir), loaded["path"], MODEL, TrainConfig(epochs=1, batch_size=128),
                          RetrainPolicy())
    encoded = encode_all(trained["model_path"], loaded["path"], work_dir)
    validate_codes(
        encoded["path"], loaded["path"], folder.codes_report, CODE_CHECKS, codebook_sizes=encoded["codebook_size"],
        recon_mse=encoded["recon_mse"],
    )
    return {"loaded": loaded, "trained": trained, "encoded": encoded}


@pytest.fixture(scope="module")
def ready(tmp_path_factory) -> Path:
    """One trained, encoded and validated work folder; publishing it under any snapshot name is valid."""
    base = tmp_path_factory.mktemp("faults")
    synth(base / "input", 800, dim=DIM, seed=4)
    prepare(base / "input", base / "work")
    return base / "work"


def verify(version: Path) -> None:
    """A published version is complete: exactly the files its manifest lists, each with its checksum."""
    manifest = read_json(version / MANIFEST)
    assert manifest["snapshot"] == version.name
    found = {p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()}
    assert found == set(manifest["files"]) | {MANIFEST}, sorted(found ^ set(manifest["files"]))
    for name, entry in manifest["files"].items():
        assert sha256_file(version / name, tagged=True) == entry["sha256"], name
    assert pq.ParquetFile(version / "semantic_ids.parquet").metadata.num_rows == manifest["counts"]["n_items"]


def consistent(root: Path, versions: set[str], latest: str) -> None:
    """The end state after any retry: these versions, all complete, both pointers agree, nothing left over."""
    assert {p.name for p in root.iterdir() if not p.name.startswith(".")} == versions | {LATEST, LATEST_JSON}
    assert {p.name for p in root.iterdir() if p.name.startswith(".")} <= {LOCK_FILE, VERSIONS}, "leftovers"
    for name in versions:
        assert (root / name).is_symlink(), f"{name} is a pointer to its stored copy"
        verify(root / name)
        copies = sorted((root / VERSIONS / name).iterdir())
        assert 1 <= len(copies) <= 1 + KEEP_SUPERSEDED, f"{name}: {len(copies)} stored copies"
        for copy in copies:  # the current one and at most one superseded: each complete, none half-written
            verify(copy / name)
    assert os.readlink(root / LATEST) == latest and read_json(root / LATEST_JSON)["snapshot"] == latest
    assert read_latest(root) == latest


def pointers_resolve(root: Path) -> None:
    """What a consumer sees at any moment: `latest` and every version name lead to a complete version."""
    assert os.path.exists(root / LATEST), f"latest is {'dangling' if os.path.lexists(root / LATEST) else 'missing'}"
    verify_as((root / LATEST).resolve(), read_latest(root))
    for entry in root.iterdir():
        if not entry.name.startswith(".") and entry.name not in (LATEST, LATEST_JSON):
            assert entry.exists(), f"{entry.name} dangles"
            verify(entry)


def make_legacy(root: Path, snapshot: str) -> None:
    """Turn a version into a plain folder, as publishes before immutable copies left them."""
    copy = (root / snapshot).resolve()
    (root / snapshot).unlink()
    shutil.copytree(copy, root / snapshot)
    shutil.rmtree(root / VERSIONS / snapshot)


# Each fault wraps one step of include.stages.publish in the child and exits at it, as a SIGKILL there would.
PUBLISH_FAULTS = {
    "staging_half_written": "p._make_readable = lambda folder: die()",
    "staging_written": "p._stage = after(p._stage)",
    "copy_stored": "p._store = after(p._store)",
    "temp_link_made": "os.replace = before(os.replace, lambda src, dst: Path(dst).name == sys.argv[1])",
    "snapshot_linked": "p._link_snapshot = after(p._link_snapshot)",
    "latest_temp_link_made": "os.replace = before(os.replace, lambda src, dst: Path(dst).name == 'latest')",
    "latest_switched_json_not": "p.write_json_atomic = before(p.write_json_atomic, "
    "lambda path, payload: Path(path).name == 'latest.json')",
    "republish_temp_link_made": "os.replace = before(os.replace, lambda src, dst: Path(dst).name == sys.argv[1])",
    "republish_before_drop": "p.shutil.rmtree = before(shutil.rmtree, "
    "lambda path: Path(path).parent.name == sys.argv[1] and Path(path).parent.parent.name == p.VERSIONS)",
    "legacy_moved_aside": "os.replace = before(os.replace, lambda src, dst: Path(dst).name == sys.argv[1] "
    "and any(Path(dst).parent.glob('.old-*')))",
}
FAULT_LABELS = {
    "staging_half_written": "staging folder half written (no manifest yet)",
    "staging_written": "staging folder complete, not stored",
    "copy_stored": "copy stored under .versions/, no name points to it yet",
    "temp_link_made": "temp symlink for the version's name made, not swapped in",
    "snapshot_linked": "version name swapped in, latest not switched",
    "latest_temp_link_made": "temp symlink for latest made, latest not switched",
    "latest_switched_json_not": "latest symlink switched, latest.json not yet rewritten",
    "republish_temp_link_made": "re-publish: new copy stored, name not yet swapped",
    "republish_before_drop": "re-publish (third): name swapped, oldest copy not yet deleted",
    "legacy_moved_aside": "re-publish of a pre-immutable folder: folder moved aside, latest on the new copy",
}
CHILD = """
import os, shutil, sys
from pathlib import Path
from include.stages import publish as p
from tests.helpers import publish_work

def die():
    os._exit({killed})

def after(step):
    def wrapped(*args, **kwargs):
        step(*args, **kwargs)
        die()
    return wrapped

def before(step, when):
    def wrapped(*args, **kwargs):
        if when(*args, **kwargs):
            die()
        return step(*args, **kwargs)
    return wrapped

{patch}
publish_work(sys.argv[1], sys.argv[2], sys.argv[3], run_id="killed")
"""


def killed_publish(fault: str, snapshot: str, work: Path, root: Path) -> int:
    script = CHILD.format(killed=KILLED, patch=PUBLISH_FAULTS[fault])
    done = subprocess.run([sys.executable, "-c", script, snapshot, str(work), str(root)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == KILLED, f"the fault at {fault} did not fire: {done.stderr[-2000:]}"
    return done.returncode


def setup_root(root: Path, ready: Path, scenario: str) -> None:
    """OLD published; then NEW not yet (`first`), once or twice (`republish`), or as a plain folder (`legacy`)."""
    publish_work(OLD, ready, root, run_id="old")
    for run_id in {"first": [], "republish": ["first", "second"], "legacy": ["first"]}[scenario]:
        publish_work(NEW, ready, root, run_id=run_id)
    if scenario == "legacy":
        make_legacy(root, NEW)


@pytest.mark.parametrize("fault", list(PUBLISH_FAULTS))
def test_publish_killed_at_each_step_keeps_latest_and_the_retry_completes(fault, ready, tmp_path, reliability_log):
    root = tmp_path / "published"
    scenario = "republish" if fault.startswith("republish") else "legacy" if fault.startswith("legacy") else "first"
    setup_root(root, ready, scenario)
    before = read_latest(root)
    killed_publish(fault, NEW, ready, root)

    # What a consumer sees right after the kill: latest and every name lead to a complete version.
    verify(root / OLD)
    pointers_resolve(root)
    if fault == "latest_switched_json_not":  # the atomic switch happened: latest is the complete new version
        assert os.readlink(root / LATEST) == NEW and read_json(root / LATEST_JSON)["snapshot"] == OLD
    elif fault == "legacy_moved_aside":  # the name is missing for a moment; latest names the new copy directly
        assert read_latest(root) == NEW and not os.path.lexists(root / NEW)
        assert os.readlink(root / LATEST).startswith(f"{VERSIONS}/{NEW}/")
        assert read_json((root / LATEST).resolve() / MANIFEST)["airflow"]["run_id"] == "killed"
    else:
        assert read_latest(root) == before
        if fault in ("snapshot_linked", "latest_temp_link_made", "republish_before_drop"):
            assert read_json(root / NEW / MANIFEST)["airflow"]["run_id"] == "killed", "the new copy is named"
        elif os.path.lexists(root / NEW):
            assert read_json(root / NEW / MANIFEST)["airflow"]["run_id"] != "killed", "still the old copy"
    leftovers = sorted(p.name for p in root.iterdir() if p.name.startswith(".") and p.name not in (LOCK_FILE,
                                                                                                   VERSIONS))
    after_kill = read_latest(root)

    if fault == "legacy_moved_aside":  # a first retry that fails too (disk full) must still bring the name back
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(publish_module, "_stage", _disk_full)
            with pytest.raises(OSError, match="No space left"):
                publish_work(NEW, ready, root, run_id="failed-retry")
        pointers_resolve(root)
        assert read_latest(root) == NEW and (root / NEW).is_dir()
    result = publish_work(NEW, ready, root, run_id="retry")  # Airflow's retry of the publish task
    consistent(root, {OLD, NEW}, NEW)
    assert read_json(root / NEW / MANIFEST)["airflow"]["run_id"] == "retry" and result["latest"] == NEW
    reliability_log.append(
        {
            "section": "fault",
            "fault": f"publish killed: {FAULT_LABELS[fault]}",
            "left_behind": ", ".join(_generic(n) for n in leftovers) or "nothing outside .versions/",
            "latest_before": before,
            "latest_after_kill": after_kill,
            "after_retry": f"versions {OLD} + {NEW} complete, latest -> {NEW}, no leftovers",
            "versions_lost": 0,
        }
    )


SCENARIO_LABELS = {"first": "first publish of a snapshot", "republish": "third publish of a snapshot",
                   "legacy": "re-publish of a pre-immutable version folder"}
SWEEP_CHILD = """
import os, shutil, sys
from pathlib import Path
from include.stages import publish as p
from tests.helpers import publish_work

root, kill_at, seen = Path(sys.argv[3]), int(sys.argv[4]), []

def staged_copy(staging, *args):  # the staging content, made once by the real _stage: the sweep is about the rest
    shutil.copytree(sys.argv[5], staging)
    return p.read_json(staging / p.MANIFEST)

p._stage = staged_copy
NAMESPACE_EVENTS = {{"os.rename", "os.symlink", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"}}

def hook(event, args):
    # every change of a name under the publish root down to a stored copy: what a consumer can observe
    if event not in NAMESPACE_EVENTS:
        return
    paths = [Path(os.fsdecode(a)) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    for path in paths:
        try:
            rel = path.relative_to(root).parts
        except ValueError:
            continue
        if len(rel) == 1 or (len(rel) > 1 and rel[0] == p.VERSIONS and len(rel) <= 4):
            seen.append(event)
            if len(seen) == kill_at:
                os._exit({killed})
            return

sys.addaudithook(hook)
publish_work(sys.argv[1], sys.argv[2], str(root), run_id="killed")
print(len(seen))
"""


@pytest.mark.parametrize("scenario", ["first", "republish", "legacy"])
def test_a_kill_before_any_change_of_the_publish_root_never_leaves_latest_dangling(scenario, ready, tmp_path,
                                                                                   reliability_log):
    """SIGKILL before each rename, symlink, mkdir or delete a publish makes under its root, one run per step.

    The staging folder's content is built once by the real `_stage` and copied in by each run (the steps
    inside staging are invisible to consumers, and the named faults above cover them); all else is real.
    """
    template = tmp_path / "template"
    setup_root(template, ready, scenario)
    staged = tmp_path / "staged"
    publish_module._stage(staged, RunFolder(ready), NEW, False, "killed", None, {}, {}, {}, {})

    def staged_copy(staging: Path, *args) -> dict:
        shutil.copytree(staged, staging)
        return read_json(staging / MANIFEST)

    script = SWEEP_CHILD.format(killed=KILLED)
    kill_at, steps = 1, None
    while steps is None:
        root = tmp_path / f"step-{kill_at}"
        shutil.copytree(template, root, symlinks=True)
        done = subprocess.run([sys.executable, "-c", script, NEW, str(ready), str(root), str(kill_at), str(staged)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode == 0:  # fewer steps than kill_at: the publish completed
            steps = int(done.stdout.split()[-1])
        else:
            assert done.returncode == KILLED, done.stderr[-2000:]
            pointers_resolve(root)
            assert read_latest(root) in (OLD, NEW)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(publish_module, "_stage", staged_copy)
                publish_work(NEW, ready, root, run_id="retry")  # the retry
            consistent(root, {OLD, NEW}, NEW)
        shutil.rmtree(root)
        kill_at += 1
    assert steps == kill_at - 2 and steps >= 5, f"{steps} steps seen"
    reliability_log.append(
        {
            "section": "fault",
            "fault": f"publish killed before each of its {steps} changes of the publish root "
                     f"({SCENARIO_LABELS[scenario]})",
            "left_behind": "at most a staging folder, a temp symlink or an unnamed stored copy",
            "latest_after_kill": f"{OLD} or {NEW}, always resolving to a complete version",
            "after_retry": f"versions {OLD} + {NEW} complete, latest -> {NEW}, no leftovers",
            "versions_lost": 0,
        }
    )


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def verify_as(folder: Path, snapshot: str) -> None:
    """`verify` for a copy under another folder name (a version moved aside)."""
    manifest = read_json(folder / MANIFEST)
    assert manifest["snapshot"] == snapshot
    for name, entry in manifest["files"].items():
        assert sha256_file(folder / name, tagged=True) == entry["sha256"], name


def _generic(name: str) -> str:
    """`.staging-2026-07-02-1a2b3c4d` -> `.staging-2026-07-02-*`: the report shows kinds, not random suffixes."""
    head, sep, tail = name.rpartition("-")
    return f"{head}-*" if sep and len(tail) == 8 else name


# ------------------------------------------------------------------------------------------------ encode

ENCODE_CHILD = """
import os, sys
from rqvae.io import idfile
from tests.helpers import encode_all, run_info
fault = sys.argv[4]
original_write, original_exit = idfile.SemanticIdWriter.write, idfile.SemanticIdWriter.__exit__
parts = []

def write(self, ids, codes, dedup):
    parts.append(self.path.name)
    if fault == "mid_write" and len(parts) == 2:  # the second of three parts, half written
        half = len(ids) // 2
        original_write(self, ids[:half], codes[:half], dedup[:half])
        self._writer.close()  # the half file is on disk, as a kill after a flushed row group leaves it
        os._exit({killed})
    original_write(self, ids, codes, dedup)

def exit_(self, *args):
    if fault == "before_rename" and args[0] is None and self.path.name == "part-00002.parquet":
        self._writer.close()
        os._exit({killed})
    return original_exit(self, *args)

idfile.SemanticIdWriter.write, idfile.SemanticIdWriter.__exit__ = write, exit_
encode_all(sys.argv[1], sys.argv[2], sys.argv[3], shard_size={shard_size})
"""
SHARD_SIZE = 300  # 800 items -> three shards, three parts


@pytest.mark.parametrize("fault", ["mid_write", "before_rename"])
def test_retried_encode_overwrites_its_own_output_and_never_duplicates_rows(fault, ready, tmp_path, reliability_log):
    folder = RunFolder(ready)
    expected_ids = pq.read_table(folder.embeddings, columns=["item_id"]).column("item_id").to_numpy()
    first = encode_all(folder.model_dir, folder.embeddings, ready, shard_size=SHARD_SIZE)
    assert first["n_shards"] == 3
    checksum, _ = sha256_tree(folder.semantic_ids)
    ids0, codes0, dedup0 = read_semantic_ids(folder.semantic_ids)

    script = ENCODE_CHILD.format(killed=KILLED, shard_size=SHARD_SIZE)
    done = subprocess.run([sys.executable, "-c", script, str(folder.model_dir), str(folder.embeddings), str(ready),
                           fault], capture_output=True, text=True, timeout=120)
    assert done.returncode == KILLED, done.stderr[-2000:]
    assert sha256_tree(folder.semantic_ids)[0] == checksum, "a killed encode must not touch the complete output"
    staged = sorted(p.name for p in ready.glob(".semantic_ids.tmp-*/*"))
    # what the kill left: parts (a half-written one under its temporary name) inside the staging folder only
    assert staged and all(name.startswith(("part-", ".part-")) for name in staged), staged

    again = encode_all(folder.model_dir, folder.embeddings, ready, shard_size=SHARD_SIZE)  # the retry
    assert not list(ready.glob(".semantic_ids.*")), "the retry removes what the killed run left"
    ids, codes, dedup = read_semantic_ids(folder.semantic_ids)
    assert len(ids) == len(expected_ids) == first["n_items"] == again["n_items"]
    assert len(np.unique(ids)) == len(ids), "duplicated rows"
    assert np.array_equal(np.sort(ids), np.sort(expected_ids))
    assert np.array_equal(ids, ids0) and np.array_equal(codes, codes0) and np.array_equal(dedup, dedup0)
    reliability_log.append(
        {
            "section": "fault",
            "fault": "encode killed: " + {"mid_write": "second of three parts half written",
                                          "before_rename": "all parts written, folder not swapped in"}[fault],
            "left_behind": f".semantic_ids.tmp-* staging folder ({', '.join(staged)}); the complete earlier "
                           "semantic_ids/ untouched",
            "latest_after_kill": "n/a (work folder)",
            "after_retry": f"{len(ids)} rows in 3 parts, each item once, codes identical to the first run",
            "versions_lost": 0,
        }
    )


# ------------------------------------------------------------------------------------------------ training

TRAIN_CHILD = """
import sys
from include.stages.train_rqvae import train_rqvae
from rqvae.config import ModelConfig, RetrainPolicy, TrainConfig
from tests.helpers import run_info
train_rqvae(run_info(sys.argv[2]), sys.argv[1], ModelConfig(input_dim=16, num_codebooks=2, codebook_size=16),
            TrainConfig(epochs=8, batch_size=32), RetrainPolicy())
"""


def test_killed_train_task_resumes_from_its_checkpoint_on_retry(ready, tmp_path, reliability_log):
    """The DAG path of a killed training: the `train_rqvae` stage rerun on the same work folder resumes."""
    from rqvae.training.loop import CHECKPOINT_DIR

    work = tmp_path / "work"
    work.mkdir()
    artifact = RunFolder(ready).embeddings
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_CHILD, str(artifact), str(work)], start_new_session=True)
    progress = RunFolder(work).model_dir / CHECKPOINT_DIR / "progress.json"
    deadline = time.monotonic() + 120
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, 9)
    proc.wait()
    saved = read_json(progress)["epoch"]

    result = train_rqvae(run_info(work), artifact, MODEL, TrainConfig(epochs=8, batch_size=32), RetrainPolicy())
    assert 1 <= saved <= result["resumed_from_epoch"] < 8
    assert (RunFolder(work).model_dir / "model.safetensors").exists()
    assert not (RunFolder(work).model_dir / CHECKPOINT_DIR).exists()
    reliability_log.append(
        {
            "section": "fault",
            "fault": "train_rqvae killed (SIGKILL) after its first epoch checkpoint",
            "left_behind": f"model/checkpoint/ at epoch {saved}",
            "latest_after_kill": "n/a (work folder)",
            "after_retry": f"resumed from epoch {result['resumed_from_epoch']}, finished 8 epochs",
            "versions_lost": 0,
        }
    )


# ------------------------------------------------------------------------------------------------ concurrency

MUTATING_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.symlink",
                   "shutil.copyfile", "shutil.copytree", "os.truncate", "os.chmod"}
_AUDIT: dict[str, object] = {"labels": {}, "events": []}


def _audit(event: str, args: tuple) -> None:
    """Record every file path a labelled thread opens or changes (Python-level calls; see the test)."""
    label = _AUDIT["labels"].get(threading.get_ident())  # type: ignore[union-attr]
    if label is None or not (event == "open" or event in MUTATING_EVENTS):
        return
    for arg in args:
        if isinstance(arg, str | bytes | os.PathLike):
            _AUDIT["events"].append((label, event, os.fsdecode(arg)))  # type: ignore[union-attr]


sys.addaudithook(_audit)  # hooks cannot be removed; this one is inert for unlabelled threads


def test_two_snapshots_at_once_never_touch_each_others_folders(tmp_path, reliability_log):
    roots = {k: tmp_path / k for k in ("embeddings", "work", "published")}
    days = {"2026-08-01": 1, "2026-08-02": 2}
    for day, seed in days.items():
        synth(roots["embeddings"] / day, 700, dim=DIM, seed=seed)
    barrier = threading.Barrier(len(days))
    errors: list[BaseException] = []

    def process(day: str) -> None:
        _AUDIT["labels"][threading.get_ident()] = day  # type: ignore[index]
        try:
            barrier.wait()
            prepare(roots["embeddings"] / day, roots["work"] / day)
            publish_work(day, roots["work"] / day, roots["published"], run_id=day)
        except BaseException as exc:  # surfaced below, with the thread's traceback
            errors.append(exc)
        finally:
            _AUDIT["labels"].pop(threading.get_ident(), None)  # type: ignore[union-attr]

    threads = [threading.Thread(target=process, args=(day,)) for day in days]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors

    events = list(_AUDIT["events"])  # type: ignore[arg-type]
    _AUDIT["events"].clear()  # type: ignore[union-attr]
    seen = {day: {path for label, _, path in events if label == day} for day in days}
    for day, other in (tuple(days), tuple(reversed(list(days)))):
        own = [p for p in seen[day] if str(roots["work"]) in p or str(roots["published"]) in p]
        assert own, f"no file activity recorded for {day}"
        foreign = [p for p in seen[day] if other in p]
        assert not foreign, f"{day} touched {other}'s paths: {foreign[:5]}"
    for day in days:
        verify(roots["published"] / day)
        published = pq.read_table(roots["published"] / day / "semantic_ids.parquet").column("item_id").to_numpy()
        source = pq.read_table(roots["embeddings"] / day).column("item_id").to_numpy()
        assert np.array_equal(np.sort(published), np.sort(source)), f"{day} published another snapshot's items"
        checksum = read_json(roots["published"] / day / MANIFEST)["checksums"]["input"]
        assert checksum == sha256_file(roots["work"] / day / "embeddings.parquet", tagged=True)
    consistent(roots["published"], set(days), max(days))
    reliability_log.append(
        {
            "section": "fault",
            "fault": "two snapshots processed at the same time (two threads, load -> publish)",
            "left_behind": f"{len(events)} file operations traced, none on the other snapshot's paths",
            "latest_after_kill": "n/a",
            "after_retry": f"both versions complete with their own items, latest -> {max(days)}",
            "versions_lost": 0,
        }
    )


def test_publishing_the_same_snapshot_twice_yields_one_consistent_version(ready, tmp_path, reliability_log):
    root = tmp_path / "published"
    publish_work(OLD, ready, root, run_id="old")
    first = publish_work(NEW, ready, root, run_id="first")
    second = publish_work(NEW, ready, root, run_id="second")  # a cleared task or a re-triggered run
    assert first["version_path"] == second["version_path"]
    consistent(root, {OLD, NEW}, NEW)
    assert read_json(root / NEW / MANIFEST)["airflow"]["run_id"] == "second"

    barrier = threading.Barrier(2)
    results: list[dict] = []

    def again(run_id: str) -> None:
        barrier.wait()
        results.append(publish_work(NEW, ready, root, run_id=run_id))

    threads = [threading.Thread(target=again, args=(f"concurrent-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 2
    consistent(root, {OLD, NEW}, NEW)
    assert read_json(root / NEW / MANIFEST)["airflow"]["run_id"] in {"concurrent-0", "concurrent-1"}
    reliability_log.append(
        {
            "section": "fault",
            "fault": "the same snapshot published twice, then twice at the same time",
            "left_behind": "nothing",
            "latest_after_kill": "n/a",
            "after_retry": f"one version {NEW} (the last publisher's), complete; {OLD} untouched",
            "versions_lost": 0,
        }
    )
