"""Promotion: the publish root's `serving` alias, moved only to versions the downstream judge passed (or by a
person, on the record), and `promotions.jsonl`, the append-only log of every move.

`latest` is the pipeline's own view (the newest complete version, moved at publish time); `serving` is what
consumers read. The evaluation DAG's last task promotes automatically: only a version that passed the gate,
never to an older snapshot than serving names (a backfill's late verdict does not pull serving back). A person
promotes or rolls back explicitly, with a reason; a version that failed the gate needs `force` and is logged as
forced. Either way one line goes to the log: who, when, from, to, reason, verdict, kind.

`serving` names a version's stored copy (`.versions/{snapshot}/{copy}/{snapshot}`), not its `{snapshot}` name:
a re-publish of the snapshot makes a new copy no judge has seen, which must not reach consumers before it
passes. Publish never deletes the copy serving names.

One move, under the publish lock (publish's own, so it never interleaves with a pointer switch or a verdict
being written): finish or discard an interrupted move; resolve the name to its stored copy (complete: it has
a manifest) and read the copy's verdict; decide; write the record to the journal `.serving.pending.json`;
swap `serving` (a fresh symlink renamed over it); rewrite `serving.json`; append the record to the log; delete
the journal. A kill at any step leaves `serving` on the old copy or the new one, each complete and judged, and
the next move (or the retry) completes serving.json and the log line from the journal, or drops the journal
when the swap never happened: the log holds exactly one line per move that took effect.

Here in the library (standard library, the modes, the file helpers) so that `rqvae promote` works without
Airflow or the pipeline package; the pipeline's stages and the UI page call the same functions.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import PermanentError
from ..io.fsutil import write_json_atomic
from ..io.published import (
    ALIASES,
    EVALUATION,
    LATEST_JSON,
    MANIFEST,
    PROMOTION_PENDING,
    PROMOTIONS,
    SERVING,
    SERVING_JSON,
    VERSIONS,
    publish_lock,
    read_pointer,
    swap_link,
)
from ..modes import PromotionKind, Verdict

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255  # a longer name cannot be a folder: refused as unknown rather than raising on the disk
NOT_NAMES = (*ALIASES, LATEST_JSON, SERVING_JSON, PROMOTIONS)


class PromotionRefused(PermanentError, ValueError):
    """A promotion that cannot be made as asked (nothing moved); a retry would be refused the same way."""


class UnknownVersion(PromotionRefused):
    """The name is not a complete published version of this publish root."""


class NeedsForce(PromotionRefused):
    """The version failed the downstream gate: serving it takes an explicit force."""


class ReasonRequired(PromotionRefused):
    """A person's promotion or rollback must say why (and who): the log is the audit trail."""


@dataclass(frozen=True)
class Judged:
    """A version's verdict and its detail (the gate's reasons for a failure, why it counts as not evaluated)."""

    verdict: Verdict
    detail: str


# a promotion's rule: (kind, forced) to move, a sentence to stay; raising refuses the request
Decide = Callable[[Judged, "str | None"], "tuple[PromotionKind, bool] | str"]


@dataclass(frozen=True)
class Outcome:
    """What a promotion did: `moved`, the snapshot `serving` names afterwards, the version's verdict, why, and the
    log line when it moved."""

    moved: bool
    serving: str | None
    verdict: Verdict
    message: str
    record: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"moved": self.moved, "serving": self.serving, "verdict": self.verdict, "message": self.message,
                "record": self.record}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def judge(version: str | Path) -> Judged:
    """The verdict of a version folder (a `{snapshot}` name or a stored copy), from its evaluation.json.

    Passed or failed as the gate recorded it; not evaluated without one, with an unreadable one, or with one
    whose evaluated IDs are not the version's (its checksum differs from the manifest's).
    """
    folder = Path(version)
    evaluation = _read_json(folder / EVALUATION)
    summary = evaluation.get("summary") if isinstance(evaluation, dict) else None
    if not isinstance(summary, dict):
        detail = "no evaluation yet" if not (folder / EVALUATION).exists() else f"{EVALUATION} is unreadable"
        return Judged(Verdict.NOT_EVALUATED, detail)
    manifest = _read_json(folder / MANIFEST)
    published = (manifest.get("checksums") or {}).get("semantic_ids") if isinstance(manifest, dict) else None
    evaluated = evaluation.get("semantic_ids_sha256")
    if evaluated and published and evaluated != published:
        return Judged(Verdict.NOT_EVALUATED, f"{EVALUATION} describes other IDs than the version's")
    status = summary.get("status")
    if status == Verdict.PASSED:
        return Judged(Verdict.PASSED, "")
    if status == Verdict.FAILED:
        return Judged(Verdict.FAILED, str(summary.get("reason") or "no reason recorded"))
    return Judged(Verdict.NOT_EVALUATED, f"{EVALUATION} records no verdict ({status!r})")


def stored_target(publish_root: str | Path, name: str) -> Path:
    """`.versions/{name}/{copy}/{name}`, the stored copy `{root}/{name}` points to, relative to the root.

    UnknownVersion unless `name` is a complete published version: a plain entry name (no path, not hidden, not
    an alias) whose pointer names a stored copy holding a manifest of that snapshot.
    """
    root = Path(publish_root)
    if (not name or "/" in name or "\\" in name or "\x00" in name or name.startswith(".") or name in NOT_NAMES
            or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES):
        raise UnknownVersion(f"{name!r} is not a version name (a snapshot such as 2026-11-30)")
    link = root / name
    if link.is_dir() and not link.is_symlink():
        raise UnknownVersion(f"{name} in {root} is a plain folder, published before immutable stored copies: "
                             "re-publish the snapshot to make it promotable")
    target = Path(os.readlink(link)) if link.is_symlink() else None
    if target is None or len(target.parts) != 4 or target.parts[:2] != (VERSIONS, name) or target.parts[3] != name:
        raise UnknownVersion(f"{name} is not a published version of {root}")
    manifest = _read_json(root / target / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("snapshot") != name:
        raise UnknownVersion(f"{name} in {root} is not complete (no {MANIFEST} of {name} in its stored copy)")
    return target


def serving_target(publish_root: str | Path) -> Path | None:
    """The stored copy `serving` points to, relative to the root (None before the first promotion)."""
    link = Path(publish_root) / SERVING
    return Path(os.readlink(link)) if link.is_symlink() else None


def read_serving(publish_root: str | Path) -> str | None:
    """The snapshot `serving` names (None before the first promotion): what consumers should load."""
    return read_pointer(publish_root, SERVING, SERVING_JSON)


def read_promotions(publish_root: str | Path) -> list[dict[str, Any]]:
    """Every line of `promotions.jsonl`, oldest first (a line torn by a power cut is skipped)."""
    try:
        text = (Path(publish_root) / PROMOTIONS).read_text(encoding="utf-8")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def promote_automatically(
    publish_root: str | Path,
    name: str,
    *,
    by: str,
    reason: str,
    allow_unevaluated: bool = False,
    run_id: str | None = None,
) -> Outcome:
    """Move `serving` to `name` if its verdict is passed (or not evaluated, with `allow_unevaluated`: the day had
    no interactions to judge it with) and it is not older than what serving names. Not moving is an answer, not
    an error: the Outcome says why."""

    def decide(judged: Judged, current: str | None) -> tuple[PromotionKind, bool] | str:
        allowed = judged.verdict == Verdict.PASSED or (judged.verdict == Verdict.NOT_EVALUATED and allow_unevaluated)
        if not allowed:
            return f"{name} not promoted: {judged.verdict}" + (f" ({judged.detail})" if judged.detail else "")
        if current is not None and name < current:
            return (f"{name} not promoted: serving names the newer {current}; automatic promotion never moves it "
                    "back (a rollback does)")
        return PromotionKind.AUTOMATIC, False

    return _move(Path(publish_root), name, decide, by=by, via="evaluation", reason=reason, run_id=run_id)


def promote(
    publish_root: str | Path,
    name: str,
    *,
    by: str,
    via: str,
    reason: str,
    force: bool = False,
    run_id: str | None = None,
) -> Outcome:
    """A person's promotion (or rollback, to a snapshot older than serving's) of `name`, from `via` (ui, api, cli,
    dag). Any verdict may be served on purpose, but a failed one needs `force` and is logged as forced.

    Raises UnknownVersion, ReasonRequired (empty `reason` or `by`) or NeedsForce; nothing moves then.
    """

    def decide(judged: Judged, current: str | None) -> tuple[PromotionKind, bool] | str:
        if not reason.strip() or not by.strip():
            raise ReasonRequired(f"promoting {name} by hand needs a reason and a user: the log records both")
        if judged.verdict == Verdict.FAILED and not force:
            raise NeedsForce(f"{name} failed the downstream gate ({judged.detail}): promote it with force to "
                             "serve it anyway (the log marks it forced)")
        kind = PromotionKind.ROLLBACK if current is not None and name < current else PromotionKind.MANUAL
        return kind, judged.verdict == Verdict.FAILED

    return _move(Path(publish_root), name, decide, by=by, via=via, reason=reason, run_id=run_id)


def _move(root: Path, name: str, decide: Decide, *, by: str, via: str, reason: str, run_id: str | None) -> Outcome:
    """Resolve, judge, decide and swap, all under the publish lock (see the module docstring for the order)."""
    if not root.is_dir():
        raise UnknownVersion(f"no publish root at {root}")
    with publish_lock(root):
        finish_interrupted(root)
        target = stored_target(root, name)
        judged = judge(root / target)
        current_target = serving_target(root)
        current = current_target.name if current_target is not None else None
        decision = decide(judged, current)
        if isinstance(decision, str):
            log.info("%s", decision)
            return Outcome(False, current, judged.verdict, decision, None)
        if current_target == target:
            message = f"{name} is already serving (stored copy {target.parts[2]})"
            return Outcome(False, current, judged.verdict, message, None)
        kind, forced = decision
        record = {
            "id": uuid.uuid4().hex,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "by": by,
            "via": via,
            "kind": kind,
            "from": current,
            "to": name,
            "verdict": judged.verdict,
            "forced": forced,
            "reason": reason,
            "run_id": run_id,
            "path": target.as_posix(),
            "from_path": current_target.as_posix() if current_target is not None else None,
        }
        write_json_atomic(root / PROMOTION_PENDING, record)
        swap_link(root / SERVING, target)
        _write_serving_json(root, record)
        _append(root / PROMOTIONS, record)
        (root / PROMOTION_PENDING).unlink()
    message = f"serving -> {name} ({kind}, verdict {judged.verdict}{', forced' if forced else ''}; was {current})"
    log.info("%s", message)
    return Outcome(True, name, judged.verdict, message, record)


def finish_interrupted(root: Path) -> None:
    """Complete or drop a move a kill interrupted, and remove its temporary files. Call with the lock held.

    The journal's move took effect exactly when `serving` already names its copy: then serving.json and the
    log line are written if missing; otherwise the journal is dropped (serving never moved).
    """
    journal = root / PROMOTION_PENDING
    if journal.exists():
        record = _read_json(journal)
        if isinstance(record, dict) and record.get("path") and serving_target(root) == Path(record["path"]):
            if (_read_json(root / SERVING_JSON) or {}).get("promotion", {}).get("id") != record["id"]:
                _write_serving_json(root, record)
            logged = read_promotions(root)
            if not logged or logged[-1].get("id") != record["id"]:
                _append(root / PROMOTIONS, record)
            log.warning("completed the interrupted promotion to %s (serving had moved)", record.get("to"))
        else:
            log.warning("dropped an interrupted promotion: serving never moved")
        journal.unlink()
    for leftover in [*root.glob(f".{SERVING}.link-*"), *root.glob(f".{SERVING_JSON}.tmp-*"),
                     *root.glob(f".{PROMOTION_PENDING}.tmp-*")]:
        leftover.unlink()


def _write_serving_json(root: Path, record: dict[str, Any]) -> None:
    """`serving.json`: the same pointer as a file, for readers without symlinks, with the move that set it."""
    write_json_atomic(root / SERVING_JSON, {
        "snapshot": record["to"], "path": record["path"], "verdict": record["verdict"],
        "updated_at": record["at"], "promotion": record,
    })


def _append(path: Path, record: dict[str, Any]) -> None:
    """One JSON line appended with a single write and fsynced; a torn last line (a power cut) is ended first."""
    line = (json.dumps(record) + "\n").encode("utf-8")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                line = b"\n" + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
