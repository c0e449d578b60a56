"""The DAGs' trigger forms, generated from the config classes' field metadata, and the way back to config objects.

:func:`dag_params` turns every per-run field of a form's classes into an Airflow ``Param`` with the field's
default, bounds, title, description and form section, in the form's order. The pipeline's form
(:data:`FORM_CLASSES`: :data:`rqvae.config.CONFIG_CLASSES` plus the pipeline-only :class:`RunOptions`, in
:data:`FORM_ORDER`) is the default; the evaluation DAG's is :data:`EVALUATION_CLASSES` in
:data:`EVALUATION_ORDER`. :func:`from_params` / :func:`evaluation_from_params` turn a run's params back into
those config objects for the task bodies. A deployment changes a form default with the env variable its
Option names (RQVAE_SHARD_SIZE, RQVAE_KEEP_RUNS, RQVAE_SENSOR_TIMEOUT_S). Imported while the scheduler parses the
DAG files, so it stays light: Airflow's ``Param`` is imported only inside :func:`dag_params`, and nothing here
loads torch, numpy or pandas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, fields
from typing import TYPE_CHECKING, Any

from rqvae.config import (
    CONFIG_CLASSES,
    CodeChecks,
    EncodeOptions,
    InputChecks,
    ModelConfig,
    RetrainPolicy,
    RetrieverOptions,
    TrainConfig,
)
from rqvae.errors import ConfigError
from rqvae.options import build, check_bounds, coerce, default_of, described, option, option_of, plain

if TYPE_CHECKING:
    from airflow.sdk import Param

SENSOR_TIMEOUT_DEFAULT_S = 12 * 3600


@dataclass
class RunOptions:
    """Per-run options that only the pipeline has (no CLI flag): which snapshot, how long to wait, what to keep."""

    snapshot: str | None = option(
        "", title="Snapshot", section="Input", nullable=True, cli=False, pattern=r"^(\d{4}-\d{2}-\d{2})?$",
        description="Snapshot date YYYY-MM-DD to process; empty = the run's date (logical date, else run_after).",
    )
    embeddings_root: str | None = option(
        "", title="Embeddings root", section="Input", nullable=True, cli=False,
        description="Folder holding {snapshot}/ sub-folders: empty = the configured root; a sub-folder "
        "(e.g. movielens) reads {root}/movielens/{snapshot}/ and gets its own work and publish namespace. "
        "Paths must stay inside the configured root.",
    )
    sensor_timeout: int = option(
        SENSOR_TIMEOUT_DEFAULT_S, title="Sensor timeout (s)", section="Input", minimum=1, cli=False,
        env="RQVAE_SENSOR_TIMEOUT_S", cap_at_default=True,  # the sensor's own timeout: no run can wait longer
        description="Fail the run (publishing nothing) when the snapshot is not complete after this long.",
    )
    keep_runs: int = option(
        2, title="Run folders kept per snapshot", section="Output", minimum=1, maximum=100, cli=False,
        env="RQVAE_KEEP_RUNS",
        description="After publishing, keep this many finished run folders {work_root}/{snapshot}/{run}/ of the "
        "snapshot (this run's included) and delete older ones; an unfinished folder is deleted only when "
        "untouched for a week, so a concurrent run's folder is never removed.",
    )
    export_json: bool = option(
        False, title="Export JSON dictionary", section="Output", cli=False,
        description="Also publish semantic_id_dict.json ({item_id: [codes]}) for the existing inference code.",
    )

    def __post_init__(self) -> None:
        check_bounds(self)



@dataclass
class EvaluationOptions:
    """Per-run options of the `semantic_ids_evaluation` DAG beside the retriever's budget
    (:class:`rqvae.config.RetrieverOptions`): which version, what the interactions must satisfy, the gate."""

    version: str | None = option(
        "", title="Version", section="Input", nullable=True, cli=False,
        description="Published version folder to evaluate (relative to the publish root, e.g. 2026-11-30 or "
        "movielens/2026-11-30); empty = the version of the triggering asset event, else latest.",
    )
    embeddings_root: str | None = option(
        "", title="Data set namespace", section="Input", nullable=True, cli=False,
        description="With an empty version: the sub-folder (as in rqvae_semantic_ids' embeddings_root) whose "
        "latest version is evaluated.",
    )
    min_known_share: float = option(
        0.5, title="Minimum share of known items", section="Interactions", minimum=0, maximum=1, cli=False,
        description="Fail when fewer interaction events than this share are on items with a semantic ID.",
    )
    min_users: int = option(
        10, title="Minimum users", section="Interactions", minimum=1, cli=False,
        description="Users with at least 3 events on known items needed for a leave-one-out evaluation.",
    )
    max_se: float = option(
        2.0, title="Gate: standard errors", section="Gate", minimum=0, cli=False,
        description="Fail the gate when this version is worse than residual k-means or the previous version by "
        "more than this many paired standard errors (NLL or Recall@10).",
    )
    promote_without_evaluation: bool = option(
        False, title="Promote without evaluation", section="Promotion", cli=False,
        description="When the version's day has no interactions snapshot (nothing to judge it with), still move "
        "the serving alias to it. Off: serving stays on the last version that passed the gate.",
    )

    def __post_init__(self) -> None:
        check_bounds(self)


VERSION_PATTERN = r"^([A-Za-z0-9_-][A-Za-z0-9_.-]*/){0,3}\d{4}-\d{2}-\d{2}$"  # [namespace/...]snapshot


@dataclass
class PromotionOptions:
    """The `semantic_ids_promote` DAG's form: a person moves (or rolls back) the serving alias, on the record."""

    version: str = option(
        "", title="Version", section="Promotion", cli=False, pattern=VERSION_PATTERN,
        description="Published version to serve, relative to the publish root (e.g. 2026-11-30 or "
        "movielens/2026-11-30). Older than the one serving now: a rollback.",
    )
    reason: str = option(
        "", title="Reason", section="Promotion", cli=False, pattern=r"\S",
        description="Why (written to promotions.jsonl with your user name, the time and the version's verdict).",
    )
    force: bool = option(
        False, title="Force a failed version", section="Promotion", cli=False,
        description="Needed to serve a version that failed the downstream gate; the log marks the move forced.",
    )


FORM_CLASSES: tuple[type, ...] = (RunOptions, *CONFIG_CLASSES)

# The form's layout: sections appear in this order, fields within a section too. Every per-run form field of
# FORM_CLASSES appears exactly once (checked when the form is built).
FORM_ORDER = (
    "snapshot", "embeddings_root", "sensor_timeout",
    "expected_dim", "min_items", "min_norm", "max_norm",
    "num_codebooks", "codebook_size", "latent_dim", "distances_method", "kmeans_method", "shared_codebook",
    "epochs", "batch_size", "lr", "max_train_items", "early_stop_patience", "seed", "collaborative_weight",
    "shard_size", "resolve_rows",
    "min_unique_ratio", "min_usage", "max_recon_mse",
    "keep_runs", "export_json",
    "mode", "retrain_factor", "collision_mode", "retire_after", "align_retrain",
)

# The evaluation DAG's form: Input, Interactions, Retriever, Gate.
EVALUATION_CLASSES: tuple[type, ...] = (EvaluationOptions, RetrieverOptions)
EVALUATION_ORDER = ("version", "embeddings_root", "min_known_share", "min_users", "protocol", "also_leave_one_out",
                    "max_users", "epochs", "seeds", "max_se", "promote_without_evaluation")

# The promote DAG's form.
PROMOTION_CLASSES: tuple[type, ...] = (PromotionOptions,)
PROMOTION_ORDER = ("version", "reason", "force")

JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))


def form_fields(
    classes: tuple[type, ...] = FORM_CLASSES, order: tuple[str, ...] = FORM_ORDER
) -> dict[str, Field[Any]]:
    """Every field of a trigger form (by default the pipeline's) by name, in the form's order."""
    found: dict[str, Field[Any]] = {}
    for cls in classes:
        for spec, opt in described(cls):
            if opt.in_form:
                if spec.name in found:
                    raise ConfigError(f"form field {spec.name!r} is declared by two config classes")
                found[spec.name] = spec
    if sorted(found) != sorted(order):
        raise ConfigError(f"the form's order lacks {sorted(set(found) - set(order))} or names unknown fields "
                          f"{sorted(set(order) - set(found))}")
    return {name: found[name] for name in order}


def deployed_default(spec: Field[Any]) -> Any:
    """The field's default, or the value of the env variable its Option names when that is set."""
    env = option_of(spec).env
    if env and os.environ.get(env):
        return coerce(spec, os.environ[env])
    return default_of(spec)


def param_schema(spec: Field[Any]) -> dict[str, Any]:
    """Keyword arguments of the field's ``Param``: default, JSON type, title, description, section, bounds."""
    opt = option_of(spec)
    default = plain(deployed_default(spec))  # a mode as its string: the form and the serialized DAG hold JSON
    kind = next(name for py, name in JSON_TYPES if isinstance(default, py))
    schema: dict[str, Any] = {
        "default": default,
        "type": ["null", kind] if opt.nullable else kind,  # null: optional in the form (else Trigger is disabled)
        "title": opt.title,
        "description": opt.description,
        "section": opt.section,
    }
    maximum = default if opt.cap_at_default else opt.maximum
    bounds = {"minimum": opt.minimum, "maximum": maximum, "exclusiveMinimum": opt.exclusive_minimum,
              "pattern": opt.pattern, "enum": list(opt.enum) if opt.enum else None}
    schema.update({key: value for key, value in bounds.items() if value is not None})
    return schema


def dag_params(
    classes: tuple[type, ...] = FORM_CLASSES, order: tuple[str, ...] = FORM_ORDER
) -> dict[str, Param]:
    """A DAG's ``params`` (by default the pipeline's): one typed, bounded form field per per-run config field."""
    from airflow.sdk import Param

    return {name: Param(**param_schema(spec)) for name, spec in form_fields(classes, order).items()}


def deployed(name: str) -> Any:
    """The deployment's default of one form field (e.g. the sensor timeout the DAG file gives its sensor)."""
    return deployed_default(form_fields()[name])



def form_values(params: Mapping[str, Any], specs: Mapping[str, Field[Any]]) -> dict[str, Any]:
    """A run's value of every form field in ``specs``; a missing one takes its deployed default."""
    return {name: params[name] if name in params else deployed_default(spec) for name, spec in specs.items()}


@dataclass(frozen=True)
class RunConfig:
    """A run's params as config objects; the model's needs the input dimension, known once data is loaded."""

    run: RunOptions
    input_checks: InputChecks
    train: TrainConfig
    code_checks: CodeChecks
    encode: EncodeOptions
    policy: RetrainPolicy
    model_fields: Mapping[str, Any]

    def model(self, input_dim: int) -> ModelConfig:
        return ModelConfig(input_dim=int(input_dim), **self.model_fields)


def from_params(params: Mapping[str, Any]) -> RunConfig:
    """Config objects from a run's params (form fields only; a missing one keeps its deployed default).

    Raises ConfigError naming the field for a value outside the field's bounds.
    """
    specs = form_fields()
    values = form_values(params, specs)

    def of(cls: type) -> Any:
        return build(cls, {spec.name: values[spec.name] for spec in fields(cls) if spec.name in specs})

    model_fields = {spec.name: coerce(spec, values[spec.name]) for spec in fields(ModelConfig) if spec.name in specs}
    ModelConfig(input_dim=1, **model_fields)  # fail at the first task, not after the data is loaded
    return RunConfig(
        run=of(RunOptions),
        input_checks=of(InputChecks),
        train=of(TrainConfig),
        code_checks=of(CodeChecks),
        encode=of(EncodeOptions),
        policy=of(RetrainPolicy),
        model_fields=model_fields,
    )


@dataclass(frozen=True)
class EvaluationConfig:
    """An evaluation run's params as config objects."""

    run: EvaluationOptions
    retriever: RetrieverOptions


def evaluation_from_params(params: Mapping[str, Any]) -> EvaluationConfig:
    """Config objects from an evaluation run's params (a missing one keeps its default); ConfigError names a
    field outside its bounds."""
    specs = form_fields(EVALUATION_CLASSES, EVALUATION_ORDER)
    values = form_values(params, specs)
    return EvaluationConfig(run=build(EvaluationOptions, values), retriever=build(RetrieverOptions, values))


def promotion_from_params(params: Mapping[str, Any]) -> PromotionOptions:
    """The promote DAG's params as PromotionOptions (a missing one keeps its default)."""
    return build(PromotionOptions, form_values(params, form_fields(PROMOTION_CLASSES, PROMOTION_ORDER)))
