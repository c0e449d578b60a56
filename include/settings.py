"""Where the pipeline reads and writes: four roots, configured once, never taken blindly from a user.

The roots come from environment variables (set per deployment), then from Airflow Variables of the same
lowercase names (editable in the UI without a redeploy), then default to
`var/data/{embeddings,work,published,interactions}` inside this project so a fresh clone runs the demo with
no setup. Path params typed into the trigger form are resolved with :func:`resolve_under`, which keeps them
inside the configured roots: a form field must not become a way to read or overwrite arbitrary files on the
workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rqvae.errors import PermanentError

log = logging.getLogger(__name__)

ROOT_ENV_VARS = {
    "embeddings": "RQVAE_EMBEDDINGS_ROOT",
    "work": "RQVAE_WORK_ROOT",
    "publish": "RQVAE_PUBLISH_ROOT",
    "interactions": "RQVAE_INTERACTIONS_ROOT",
}

DEFAULT_FOLDERS = {
    "embeddings": "embeddings", "work": "work", "publish": "published", "interactions": "interactions"
}

VariableGetter = Callable[[str], "str | None"]


class PathOutsideRootError(PermanentError, ValueError):
    """A path parameter that would leave the configured roots (a retry resolves it the same way)."""


def project_dir() -> Path:
    """The repository folder (the parent of `include/`), so defaults need no absolute path in code."""
    return Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """The project's data folder: `var/data` (ignored by git, removed by `make clean`)."""
    return project_dir() / "var" / "data"


@dataclass(frozen=True)
class Roots:
    """The folders the pipeline touches: inputs, per-snapshot work folders, published versions, and the
    optional interaction logs (`{interactions}/{snapshot}/`, read by training and the downstream evaluation).

    `interactions` defaults to a sibling `interactions/` of the embeddings root when not given.
    """

    embeddings: Path
    work: Path
    publish: Path
    interactions: Path = Path()

    def __post_init__(self) -> None:
        if self.interactions == Path():
            object.__setattr__(self, "interactions", Path(self.embeddings).parent / DEFAULT_FOLDERS["interactions"])

    def as_dict(self) -> dict[str, str]:
        return {
            "embeddings": str(self.embeddings), "work": str(self.work), "publish": str(self.publish),
            "interactions": str(self.interactions),
        }


def load_roots(variable_getter: VariableGetter | None = None) -> Roots:
    """Read the roots: environment variable, else Airflow Variable (when a getter is given), else default.

    The getter is optional because reading a Variable needs a running Airflow task (or a metadata DB);
    tests and scripts rely on the environment alone.
    """
    found: dict[str, Path] = {}
    for kind, env_var in ROOT_ENV_VARS.items():
        value = os.environ.get(env_var, "").strip()
        source = env_var
        if not value and variable_getter is not None:
            value = (variable_getter(env_var.lower()) or "").strip()
            source = f"Airflow Variable {env_var.lower()}"
        if not value and kind == "interactions":
            found[kind] = found["embeddings"].parent / DEFAULT_FOLDERS[kind]
            source = "beside the embeddings root"
        elif not value:
            found[kind] = default_data_dir() / DEFAULT_FOLDERS[kind]
            source = "default"
        else:
            found[kind] = _absolute(Path(value).expanduser())
        log.debug("%s root %s (from %s)", kind, found[kind], source)
    return Roots(
        embeddings=found["embeddings"], work=found["work"], publish=found["publish"],
        interactions=found["interactions"],
    )


def dataset_roots(roots: Roots, embeddings_root: str | Path | None) -> Roots:
    """Roots for a run reading `embeddings_root` (the form's param): its own work and publish namespace.

    Empty means the configured roots unchanged. A sub-folder (e.g. `movielens`) reads
    `{embeddings}/movielens/{snapshot}/` and writes `{work}/movielens/...` and `{publish}/movielens/...`,
    with its own `latest`, so two data sets with snapshots of the same day never share a folder. Interaction logs follow
    the same namespace: `{interactions}/movielens/{snapshot}/`.
    """
    source = resolve_under(roots.embeddings, embeddings_root)
    namespace = source.relative_to(roots.embeddings)
    return Roots(
        embeddings=source, work=roots.work / namespace, publish=roots.publish / namespace,
        interactions=roots.interactions / namespace,
    )


def airflow_variable_getter() -> VariableGetter:
    """A getter reading Airflow Variables, in a task (through the task SDK) or in the API server (the UI plugin:
    the metadata DB and secrets backends). Each read is a round trip: call it per task or request, never while a
    DAG file is parsed."""
    import sys

    if hasattr(sys.modules.get("airflow.sdk.execution_time.task_runner"), "SUPERVISOR_COMMS"):
        from airflow.sdk import Variable

        def in_task(key: str) -> str | None:
            return Variable.get(key, default=None)

        return in_task

    # The API server has no task SDK channel (the SDK's Variable.get quietly returns the default there): read the
    # metadata DB and secrets backends through the model, as Airflow's own API does.
    from airflow.models.variable import Variable as StoredVariable

    def in_server(key: str) -> str | None:
        return StoredVariable.get(key, default_var=None)

    return in_server


def configured_roots() -> Roots:
    """The deployment's roots as every Airflow component sees them: environment, then Airflow Variables, then
    the defaults. The one function both DAGs and the UI plugin resolve roots with."""
    return load_roots(airflow_variable_getter())


def resolve_under(root: str | Path, value: str | Path | None, allowed: Iterable[str | Path] = ()) -> Path:
    """Resolve a path parameter against `root`, refusing anything that lands outside the allowed roots.

    Empty means `root` itself; a relative value is taken under `root`; an absolute value is accepted only
    when it lies inside `root` or one of `allowed`. `..` segments are collapsed before the check, so
    `a/../../etc` is refused. The check is lexical on purpose: a symlink an operator placed inside a root
    (e.g. to a shared data set) is trusted, while a user-typed path cannot climb out.
    """
    base = _absolute(Path(root))
    if value is None or str(value).strip() == "":
        return base
    raw = Path(str(value).strip()).expanduser()
    candidate = _absolute(raw if raw.is_absolute() else base / raw)
    roots = [base, *(_absolute(Path(r)) for r in allowed)]
    if any(candidate == r or r in candidate.parents for r in roots):
        return candidate
    shown = ", ".join(str(r) for r in roots)
    raise PathOutsideRootError(
        f"path {str(value)!r} resolves to {candidate}, outside the configured roots ({shown}); give a path "
        f"relative to {base}, or move the root with {', '.join(ROOT_ENV_VARS.values())}"
    )


def _absolute(path: Path) -> Path:
    """Absolute and normalised (`..` collapsed) without following symlinks."""
    return Path(os.path.normpath(os.path.abspath(path)))
