"""Helpers shared by the tests that run the real DAG with `dag.test()` (Airflow on SQLite, tasks in-process).

The `roots` fixture (tests/conftest.py) gives a module its own embeddings / work / publish roots; these
functions run the DAG for one snapshot day and read back task states, XComs and the `latest` pointer.
`encode_all` replays the DAG's encoding tasks in one process, for the tests that call the stages directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from include.results import Encoded, Loaded, Plan, Published, RunInfo, Trained

DIM = 16
# Small enough that a run takes seconds on 2 CPU cores, large enough that the quality gates are meaningful.
SMALL = {
    "num_codebooks": 2,
    "codebook_size": 16,
    "epochs": 1,
    "batch_size": 256,
    "expected_dim": DIM,
    "min_items": 500,
    "min_unique_ratio": 0.01,
    "min_usage": 0.5,
    "max_recon_mse": 0.05,
}
TASK_IDS = [
    "wait_for_embeddings", "load_embeddings", "validate_dims", "plan_shards", "train_rqvae", "encode_items",
    "resolve_collisions", "validate_codes", "publish",
]


def make_snapshot(roots: dict[str, Path], snapshot: str, n: int = 3000, seed: int = 0) -> Path:
    """A complete synthetic snapshot (Parquet parts + `_SUCCESS`) under the embeddings root."""
    from rqvae.io.synth import synth

    return synth(roots["embeddings"] / snapshot, n, dim=DIM, seed=seed)


def run(dag, snapshot: str, **conf):
    """Run the DAG for the day `snapshot` (its logical date), the way a scheduled or backfill run would."""
    day = datetime.fromisoformat(snapshot).replace(tzinfo=UTC)
    # Every param is passed: in-process tasks keep an earlier run's conf in their params (a fresh worker
    # process would not), so a key one test sets must not leak into the next test's run.
    defaults = {name: dag.params[name] for name in dag.params}
    return dag.test(logical_date=day, run_conf={**defaults, **SMALL, **conf})


def states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def xcoms(dag_run) -> dict[str, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, key="return_value"))
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}


def latest(roots: dict[str, Path]) -> str | None:
    from include.stages.publish import read_latest

    return read_latest(roots["publish"])


def tree(folder: Path) -> set[str]:
    """Every path under `folder` (relative, symlinks not followed): the before/after picture of a root."""
    if not folder.exists():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def scrub_paths(text: str, base: Path) -> str:
    """Replace the test's temporary roots by `{work_root}`-style names (no machine path in the report)."""
    for name in ("work", "embeddings", "published"):
        text = text.replace(f"{base}/{name}", "{" + name + "_root}")
    return text.replace(str(base), "{tmp}")


def run_info(
    work_dir: str | Path,
    *,
    publish_root: str | Path | None = None,
    snapshot: str | None = None,
    interactions_dir: str | Path | None = None,
) -> RunInfo:
    """The RunInfo `wait_for_embeddings` would hand on, for a stage called directly (the snapshot defaults to
    the work folder's name; no interactions unless given)."""
    work = Path(work_dir)
    interactions = Path(interactions_dir) if interactions_dir is not None else work / "no-interactions"
    return {
        "snapshot": snapshot or work.name,
        "snapshot_dir": str(work / "snapshot"),
        "work_dir": str(work),
        "publish_root": None if publish_root is None else str(publish_root),
        "interactions_dir": str(interactions),
        "interactions_name": interactions.name,
    }


def encode_all(
    model_dir: str | Path,
    artifact: str | Path,
    work_dir: str | Path,
    *,
    shard_size: int | None = None,
    collision_mode: str | None = None,
    plan: Plan | None = None,
    device: str | None = None,
    publish_root: str | Path | None = None,
    snapshot: str | None = None,
    retire_after: int | None = None,
) -> Encoded:
    """`plan_shards`, every `encode_items` shard, then `resolve_collisions`, in this process: what the DAG's
    mapped tasks do, for tests that exercise the stages without a scheduler.

    `publish_root` / `snapshot` / `retire_after`: continuity with the previous version (include.continuity).
    Options left None keep EncodeOptions' and TrainConfig's defaults, as a run with an untouched form would.
    """
    from include.stages.encode_items import encode_items
    from include.stages.plan_shards import plan_shards
    from include.stages.resolve_collisions import resolve_collisions
    from rqvae.config import EncodeOptions, TrainConfig
    from rqvae.io.readers import row_count

    total = row_count(artifact)
    if total is None:
        raise ValueError(f"cannot count the rows of {artifact}")
    given = {"shard_size": shard_size, "collision_mode": collision_mode, "retire_after": retire_after}
    options = EncodeOptions(**{k: v for k, v in given.items() if v is not None})
    device = device or TrainConfig().device
    run = run_info(work_dir, publish_root=publish_root, snapshot=snapshot)
    trained: Trained = {"model_path": str(model_dir), "plan": plan or RETRAINED}  # type: ignore[typeddict-item]
    shards = [encode_items(run, artifact, trained, shard, device) for shard in plan_shards(total, options, None)]
    return resolve_collisions(run, artifact, trained, shards, options)


RETRAINED: Plan = {"requested": "retrain", "used": "retrain", "reason": "test", "base_version": None}


def publish_work(
    snapshot: str,
    work_dir: str | Path,
    publish_root: str | Path,
    *,
    export_json: bool = False,
    loaded: Loaded | None = None,
    trained: Trained | None = None,
    encoded: Encoded | None = None,
    run_id: str | None = None,
    params: dict | None = None,
) -> Published:
    """`publish` of a work folder as the DAG's task calls it (RunInfo + the run's options), for stage tests."""
    from include.params import RunOptions
    from include.stages.publish import publish

    run = run_info(work_dir, publish_root=publish_root, snapshot=snapshot)
    return publish(run, RunOptions(export_json=export_json), loaded=loaded, trained=trained, encoded=encoded,
                   run_id=run_id, params=params)


def prepare_work(snapshot_dir: str | Path, work_dir: str | Path, dim: int = DIM, min_items: int = 100) -> Path:
    """load_embeddings -> validate_dims -> train_rqvae (1 epoch, 2 x 16) -> encode -> validate_codes in this
    process: a work folder ready to publish under any snapshot name (the tests that exercise publish and what
    follows it without the DAG)."""
    from include.layout import RunFolder
    from include.stages.load_embeddings import load_embeddings
    from include.stages.train_rqvae import train_rqvae
    from include.stages.validate_codes import validate_codes
    from include.stages.validate_dims import validate_dims
    from rqvae.config import CodeChecks, InputChecks, ModelConfig, RetrainPolicy, TrainConfig

    loaded = load_embeddings(snapshot_dir, work_dir)
    folder = RunFolder(Path(work_dir))
    validate_dims(loaded["path"], folder.input_report, InputChecks(expected_dim=dim, min_items=min_items))
    trained = train_rqvae(run_info(work_dir), loaded["path"], ModelConfig(input_dim=dim, num_codebooks=2,
                          codebook_size=16), TrainConfig(epochs=1, batch_size=128), RetrainPolicy())
    encoded = encode_all(trained["model_path"], loaded["path"], work_dir)
    validate_codes(encoded["path"], loaded["path"], folder.codes_report,
                   CodeChecks(min_unique_ratio=0.01, min_usage=0.25, max_recon_mse=1.0),
                   codebook_sizes=encoded["codebook_size"], recon_mse=encoded["recon_mse"])
    return Path(work_dir)


def evaluation_result(version: str | Path, nll_vs_rqkmeans: float, path: str | Path) -> Path:
    """A `result.json` as evaluate_retrieval writes it for `version` (its IDs' checksum included), with the paired
    NLL difference this - residual k-means set to `nll_vs_rqkmeans` ± 0.1 (0.5: 5 SE worse, the gate fails at
    max_se=2; -0.1: better, it passes), for record_evaluation's real gate without training a retriever."""
    import json

    def stat(mean: float, se: float = 0.01) -> dict:
        return {"mean": mean, "se": se, "n": 100}

    folder = Path(version)
    manifest = json.loads((folder / "manifest.json").read_text())
    metrics = {"recall@5": stat(0.05), "recall@10": stat(0.07), "ndcg@10": stat(0.04), "nll": stat(5.2, 0.08)}
    result = {
        "snapshot": folder.name,
        "version_path": str(folder),
        "semantic_ids_sha256": manifest["checksums"]["semantic_ids"],
        "labels": {"this": "this version", "rqkmeans": "residual k-means", "random": "random IDs"},
        "retrieval": {"n_users": 100, "seeds": [0],
                      "id_sets": {name: {"all": metrics, "cold": {"nll": stat(5.5, 0.1)}}
                                  for name in ("this", "rqkmeans", "random")}},
        "paired": {"this-rqkmeans": {"nll": stat(nll_vs_rqkmeans, 0.1), "recall@10": stat(0.0),
                                     "ndcg@10": stat(0.0)}},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result))
    return target
