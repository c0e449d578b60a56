"""One config: the DAG's form and the CLI's flags are generated from the config classes' field metadata, model
directories store the whole ModelConfig, and a bad value names its field."""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest
import torch

from include.params import (
    EVALUATION_CLASSES,
    EVALUATION_ORDER,
    FORM_CLASSES,
    PROMOTION_CLASSES,
    PROMOTION_ORDER,
    EvaluationOptions,
    PromotionOptions,
    RunOptions,
    dag_params,
    deployed_default,
    evaluation_from_params,
    from_params,
    promotion_from_params,
)
from rqvae.cli import build_parser, main
from rqvae.config import (
    CONFIG_CLASSES,
    DEFAULT_SHARD_SIZE,
    CodeChecks,
    EncodeOptions,
    InputChecks,
    ModelConfig,
    RetrainPolicy,
    RetrieverOptions,
    TrainConfig,
)
from rqvae.errors import ConfigError
from rqvae.options import cli_default_of, default_of, described, plain

REPO = Path(__file__).resolve().parents[2]

# The form as it was before it was generated: every one of these keeps its place, section and bounds.
FORM_BEFORE = [
    "snapshot", "embeddings_root", "sensor_timeout", "expected_dim", "min_items", "min_norm", "max_norm",
    "num_codebooks", "codebook_size", "latent_dim", "epochs", "batch_size", "max_train_items",
    "collaborative_weight", "shard_size", "min_unique_ratio", "min_usage", "max_recon_mse", "keep_runs",
    "export_json", "mode", "retrain_factor", "collision_mode", "retire_after", "align_retrain",
]


def all_fields(classes: tuple[type, ...] = FORM_CLASSES) -> dict[str, tuple]:
    """(field, Option) of every described field of a form's classes (by default the pipeline's), by name."""
    return {spec.name: (spec, opt) for cls in classes for spec, opt in described(cls)}


# ----------------------------------------------------------------------------------------------- the form


def assert_params_are_config_fields(params, known: dict[str, tuple]) -> None:
    """Every param of a DAG is a per-run form field of its config classes, with that field's default, bounds,
    enum, title, description and section."""
    form = [name for name, (_, opt) in known.items() if opt.in_form]
    assert sorted(params.keys()) == sorted(form), "the form has exactly the per-run form fields"
    for name in params:
        spec, opt = known[name]
        param = params.get_param(name)
        schema = param.schema
        default = plain(deployed_default(spec))  # a mode's default is its plain string in the form
        assert param.value == default and type(param.value) is type(default), name
        assert schema.get("minimum") == opt.minimum, name
        expected_max = deployed_default(spec) if opt.cap_at_default else opt.maximum
        assert schema.get("maximum") == expected_max, name
        assert schema.get("exclusiveMinimum") == opt.exclusive_minimum, name
        assert schema.get("enum") == (list(opt.enum) if opt.enum else None), name
        assert schema.get("pattern") == opt.pattern, name
        assert (schema["title"], schema["section"], param.description) == (opt.title, opt.section, opt.description)


def test_every_dag_param_is_its_config_field(pipeline_dag):
    assert_params_are_config_fields(pipeline_dag.params, all_fields())


def test_form_keeps_its_old_fields_in_their_order_and_gains_the_cli_ones(pipeline_dag):
    names = list(pipeline_dag.params.keys())
    assert [n for n in names if n in FORM_BEFORE] == FORM_BEFORE
    assert {"distances_method", "kmeans_method", "shared_codebook", "lr", "seed"} <= set(names)
    schema = {n: pipeline_dag.params.get_param(n).schema for n in names}
    assert schema["snapshot"]["type"] == schema["embeddings_root"]["type"] == ["null", "string"]
    assert schema["codebook_size"]["type"] == "integer"
    sections = [schema[n]["section"] for n in names]
    assert list(dict.fromkeys(sections)) == ["Input", "Input validation", "Model", "Training", "Output validation",
                                             "Output", "Stability"]
    assert sections == sorted(sections, key=sections.index), "each section's fields are together"


def test_the_forms_defaults_are_the_libraries_defaults():
    """A run with the form untouched trains, checks and encodes exactly as the config classes' defaults."""
    config = from_params({name: param.value for name, param in dag_params().items()})
    assert config.input_checks == InputChecks() and config.code_checks == CodeChecks()
    assert config.train == TrainConfig() and config.encode == EncodeOptions() and config.policy == RetrainPolicy()
    assert config.model(32) == ModelConfig(input_dim=32)
    assert config.run == RunOptions()
    assert from_params({}) == config, "a missing param keeps its default"


def test_deployment_env_changes_form_defaults(monkeypatch):
    monkeypatch.setenv("RQVAE_SHARD_SIZE", "1234")
    monkeypatch.setenv("RQVAE_SENSOR_TIMEOUT_S", "60")
    params = dag_params()
    assert params["shard_size"].value == 1234 and from_params({}).encode.shard_size == 1234
    assert params["sensor_timeout"].value == 60 and params["sensor_timeout"].schema["maximum"] == 60


def test_params_become_typed_config_objects():
    config = from_params({"codebook_size": 16.0, "num_codebooks": 2, "max_norm": 5, "kmeans_method": "kmeans",
                          "collision_mode": "reassign", "mode": "auto", "seed": 3, "min_items": 10})
    model = config.model(8)
    assert model.codebook_size == [16, 16] and model.kmeans_method == "kmeans"
    assert isinstance(config.input_checks.max_norm, float) and config.input_checks.min_items == 10
    assert config.encode.collision_mode == "reassign" and config.policy.mode == "auto" and config.train.seed == 3


# --------------------------------------------------------------------------------- the evaluation DAG's form

# The evaluation form as it was written by hand before it was generated: name, default, JSON type, bounds, section.
EVALUATION_BEFORE = [
    ("version", "", ["null", "string"], {}, "Input"),
    ("embeddings_root", "", ["null", "string"], {}, "Input"),
    ("min_known_share", 0.5, "number", {"minimum": 0, "maximum": 1}, "Interactions"),
    ("min_users", 10, "integer", {"minimum": 1}, "Interactions"),
    ("protocol", "temporal", "string", {"enum": ["leave_one_out", "temporal", "leave-one-out", "loo"]}, "Retriever"),
    ("also_leave_one_out", True, "boolean", {}, "Retriever"),
    ("max_users", 5000, "integer", {"minimum": 10}, "Retriever"),
    ("epochs", 5, "integer", {"minimum": 1, "maximum": 200}, "Retriever"),
    ("seeds", 1, "integer", {"minimum": 1, "maximum": 10}, "Retriever"),
    ("max_se", 2.0, "number", {"minimum": 0}, "Gate"),
]


def test_every_evaluation_param_is_its_config_field(evaluation_dag):
    assert_params_are_config_fields(evaluation_dag.params, all_fields(EVALUATION_CLASSES))
    assert list(evaluation_dag.params.keys()) == list(EVALUATION_ORDER)


def test_evaluation_form_is_the_one_written_by_hand_before(evaluation_dag):
    for name, default, kind, bounds, section in EVALUATION_BEFORE:
        param = evaluation_dag.params.get_param(name)
        assert param.value == default and type(param.value) is type(default), name
        schema = {k: v for k, v in param.schema.items() if k in ("minimum", "maximum", "exclusiveMinimum", "enum")}
        assert (param.schema["type"], schema, param.schema["section"]) == (kind, bounds, section), name
    # fields added since keep the old ones' places: promotion (issue 27) comes last, in its own section
    assert [*(n for n, *_ in EVALUATION_BEFORE), "promote_without_evaluation"] == list(evaluation_dag.params.keys())
    promote = evaluation_dag.params.get_param("promote_without_evaluation")
    assert promote.value is False and promote.schema["section"] == "Promotion"


def test_every_promote_param_is_its_config_field(promote_dag):
    """The by-hand promotion form: a version that must look like one, a reason that must say something, force."""
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    assert_params_are_config_fields(promote_dag.params, all_fields(PROMOTION_CLASSES))
    assert list(promote_dag.params.keys()) == list(PROMOTION_ORDER)
    for name, good, bad in (("version", "movielens/2026-11-30", "../2026-11-30"), ("reason", "rollback", "  "),
                            ("version", "2026-11-30", "")):
        param = copy.deepcopy(promote_dag.params.get_param(name))
        assert param.resolve(good) == good
        with pytest.raises(ParamValidationError):
            copy.deepcopy(promote_dag.params.get_param(name)).resolve(bad)
    options = promotion_from_params({"version": "2026-11-30", "reason": "r", "force": True})
    assert options == PromotionOptions(version="2026-11-30", reason="r", force=True)
    assert promotion_from_params({}) == PromotionOptions()


def test_evaluation_params_become_typed_config_objects():
    defaults = evaluation_from_params({name: p.value for name, p in dag_params(EVALUATION_CLASSES,
                                                                                EVALUATION_ORDER).items()})
    assert defaults.run == EvaluationOptions() and defaults.retriever == RetrieverOptions()
    assert evaluation_from_params({}) == defaults, "a missing param keeps its default"
    config = evaluation_from_params({"epochs": 2.0, "max_users": 200, "seeds": 3, "min_users": 4, "max_se": 1,
                                     "version": None, "min_known_share": 1})
    assert config.retriever.retrieval_fields() == {"protocol": "temporal", "epochs": 2, "max_users": 200}
    assert config.retriever.seeds == 3
    assert isinstance(config.run.max_se, float) and isinstance(config.run.min_known_share, float)
    assert config.run.min_users == 4 and config.run.version is None


def test_retriever_cli_defaults_are_retrievalconfigs():
    """The DAG samples 5000 users; the CLI's documented second default (0 = all) is the library's own."""
    from rqvae.retrieval import RetrievalConfig

    library = RetrievalConfig()
    specs = {spec.name: spec for spec, _ in described(RetrieverOptions)}
    assert cli_default_of(specs["max_users"]) == library.max_users == 0
    assert default_of(specs["max_users"]) == 5000
    assert cli_default_of(specs["epochs"]) == default_of(specs["epochs"]) == library.epochs
    flags = {a.dest: a for a in subcommands()["evaluate-retrieval"]._actions}
    assert flags["max_users"].default == 0 and flags["epochs"].default == library.epochs
    assert flags["seeds"].default == [0], "the CLI lists its seeds; the form counts them"


# ------------------------------------------------------------------------------------------------ the CLI


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_cli_has_a_flag_for_every_per_run_field_it_covers():
    flags = {command: {s: a for a in p._actions for s in a.option_strings} for command, p in subcommands().items()}
    covered = set()
    for cls in CONFIG_CLASSES:
        for spec, opt in described(cls):
            if not opt.in_cli:
                continue
            flag = opt.flag or "--" + spec.name.replace("_", "-")
            command = "encode" if cls is EncodeOptions else "train"
            action = flags[command].get(flag)
            assert action is not None, f"`rqvae {command}` lacks {flag} for {cls.__name__}.{spec.name}"
            assert action.dest == spec.name and action.help
            assert action.choices == (list(opt.enum) if opt.enum else None), flag
            overlay = cls in (ModelConfig, TrainConfig)  # flags over a --config file: absent = None
            assert action.default == (None if overlay else cli_default_of(spec)), flag
            covered.add(spec.name)
    # today's flag names keep working
    for flag in ("--num-codebooks", "--codebook-size", "--latent-dim", "--hidden", "--distance", "--kmeans-method",
                 "--shared-codebook", "--epochs", "--batch-size", "--lr", "--max-train-items", "--seed", "--device",
                 "--expected-dim", "--min-items", "--collaborative-weight"):
        assert flag in flags["train"], flag
    assert flags["encode"]["--collision-mode"].choices == ["dedup", "reassign"]
    # every field a user sets per run is reachable: by the form, the CLI, or both
    for name, (_, opt) in all_fields().items():
        if opt.per_run:
            assert opt.in_form or name in covered, name


def test_cli_flags_reach_the_configs(tmp_path):
    from rqvae.cli import _given, _train_configs

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"kmeans_iters": 5, "num_codebooks": 4}, "train": {"epochs": 9}}))
    args = build_parser().parse_args(["train", "--embeddings", "x", "--out", "y", "--config", str(config),
                                      "--codebook-size", "8", "--distance", "cosine", "--hidden", "32,16",
                                      "--shared-codebook", "--lr", "0.01", "--min-items", "5"])
    model, training = _train_configs(args, 12)
    assert model == ModelConfig(input_dim=12, num_codebooks=4, codebook_size=8, kmeans_iters=5,
                                distances_method="cosine", hidden_channels=[32, 16], shared_codebook=True)
    assert training == TrainConfig(epochs=9, lr=0.01)
    assert InputChecks(**_given(args, InputChecks)) == InputChecks(expected_dim=0, min_items=5)
    defaults = build_parser().parse_args(["train", "--embeddings", "x", "--out", "y"])
    assert InputChecks(**_given(defaults, InputChecks)).min_items == 1, "the CLI's documented second default"


# ---------------------------------------------------------------------------------------- model directories


def small_model(**changes) -> tuple:
    from rqvae.model import RQVAE

    config = ModelConfig(input_dim=8, num_codebooks=2, codebook_size=4, **changes)
    model = RQVAE.from_config(config, device="cpu")
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    model.initialize(x)
    return config, model.eval(), x


def test_model_directory_stores_the_whole_model_config(tmp_path):
    from rqvae.io.checkpoint import load_model, read_config, save_model

    config, model, x = small_model(method="rqkmeans", last_level_balance=0.25, kmeans_method="kmeans")
    saved = read_config(save_model(model, tmp_path / "m"))["model"]
    assert saved["method"] == "rqkmeans" and saved["last_level_balance"] == 0.25
    assert set(saved) == {f.name for f in fields(ModelConfig)}
    assert ModelConfig.from_dict(saved) == model.model_config()
    loaded = load_model(tmp_path / "m")
    assert (loaded.method, loaded.last_level_balance) == ("rqkmeans", 0.25)
    assert torch.equal(loaded.encode(x), model.encode(x))
    save_model(loaded, tmp_path / "again")  # a re-save (e.g. aligning a retrain) keeps them
    assert read_config(tmp_path / "again")["model"]["method"] == "rqkmeans"


def test_model_directory_of_the_old_format_still_loads(tmp_path):
    from rqvae.io.checkpoint import CONFIG_NAME, load_model, save_model

    _, model, x = small_model()
    path = save_model(model, tmp_path / "old")
    config = json.loads((path / CONFIG_NAME).read_text())
    config["model"] = model.config()  # what directories stored before: RQVAE.config(), no method / balance
    assert "method" not in config["model"] and "last_level_balance" not in config["model"]
    (path / CONFIG_NAME).write_text(json.dumps(config))
    loaded = load_model(path)
    assert (loaded.method, loaded.last_level_balance) == ("rqvae", 0.0)
    assert torch.equal(loaded.encode(x), model.encode(x))


def test_train_writes_method_into_the_model_directory(tmp_path):
    from rqvae.io.checkpoint import read_config
    from rqvae.training.loop import train

    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(1)).numpy()
    cfg = ModelConfig(input_dim=8, num_codebooks=2, codebook_size=4, method="rqkmeans")
    train(x, cfg, TrainConfig(epochs=1, device="cpu"), out_dir=tmp_path / "m", show_progress=False)
    assert read_config(tmp_path / "m")["model"]["method"] == "rqkmeans"


def test_from_config_and_the_users_constructor_differ_only_where_documented():
    from rqvae.model import RQVAE

    users = RQVAE(32, device="cpu").config()
    pipeline = RQVAE.from_config(ModelConfig(input_dim=32), device="cpu").config()
    differ = sorted(k for k in users if users[k] != pipeline[k])
    assert differ == ["hidden_channels", "kmeans_method", "latent_dim"]
    doc = (REPO / "docs" / "configuration.md").read_text()
    for name in differ:
        assert f"`{name}`" in doc


# ------------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: InputChecks(min_items=0), "min_items"),
        (lambda: InputChecks(max_norm=0.0), "max_norm"),
        (lambda: CodeChecks(min_usage=1.5), "min_usage"),
        (lambda: EncodeOptions(collision_mode="merge"), "collision_mode"),
        (lambda: RetrainPolicy(align_retrain="twist"), "align_retrain"),
        (lambda: ModelConfig(input_dim=0), "input_dim"),
        (lambda: ModelConfig(input_dim=4, method="magic"), "method"),
        (lambda: TrainConfig(lr=0), "lr"),
        (lambda: TrainConfig.from_dict({"epoch": 3}), "epoch"),
        (lambda: from_params({"retire_after": -1}), "retire_after"),
        (lambda: from_params({"num_codebooks": 0}), "num_codebooks"),
        (lambda: from_params({"export_json": "yes"}), "export_json"),
        (lambda: evaluation_from_params({"min_users": 0}), "min_users"),
        (lambda: evaluation_from_params({"max_users": 5}), "max_users"),
        (lambda: evaluation_from_params({"min_known_share": 1.5}), "min_known_share"),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_field(build, field):
    with pytest.raises(ConfigError, match=field) as caught:
        build()
    assert isinstance(caught.value, ValueError)


def test_cli_refuses_a_bad_value_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--embeddings", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "m"),
                 "--min-items", "0"]) == 2
    assert "min_items" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- one value per constant


def test_every_mode_field_takes_its_choices_from_one_enum():
    """A mode's values are spelled once (rqvae.modes): the form's enum, the CLI's choices and the parsed config
    value all come from its Mode, and the code that acts on a mode accepts every member."""
    import torch

    from rqvae.ids.collisions import resolve_collisions
    from rqvae.modes import CollisionMode, KMeansInit, Mode
    from rqvae.quantize.kmeans import fit_codebook

    modes = set()
    for cls in (*FORM_CLASSES, *EVALUATION_CLASSES):
        for spec, opt in described(cls):
            if opt.enum is None:
                continue
            assert opt.modes is not None and issubclass(opt.modes, Mode), spec.name
            assert opt.enum == opt.modes.choices(), spec.name
            assert isinstance(default_of(spec), opt.modes), spec.name
            modes.add(opt.modes)
            if opt.in_form:
                form = dag_params() if cls in FORM_CLASSES else dag_params(EVALUATION_CLASSES, EVALUATION_ORDER)
                assert form[spec.name].schema["enum"] == list(opt.modes.choices())
                assert type(form[spec.name].value) is str, "the form holds the mode's plain string"
            for choice in opt.modes.choices():  # every choice parses, as a form or flag value would arrive
                assert opt.modes.parse(choice) in set(opt.modes)
    assert {m.__name__ for m in modes} >= {"CollisionMode", "Method", "KMeansInit", "Distance", "Gradient",
                                           "Alignment", "RunMode", "Precision", "Protocol"}
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for init in KMeansInit:
        assert fit_codebook(x, 4, init, 2, torch.Generator().manual_seed(0)).shape == (4, 2)
    codes = np.zeros((3, 2), np.int32)
    for mode in CollisionMode:
        resolved = resolve_collisions(np.arange(3), codes, [4, 4], mode, lambda rows: np.ones((len(rows), 4)))
        assert len({(*c, d) for c, d in zip(resolved.codes.tolist(), resolved.dedup.tolist(), strict=True)}) == 3
    with pytest.raises(ConfigError, match=r"expected one of \['dedup', 'reassign'\]"):
        EncodeOptions(collision_mode="shuffle")


def test_shard_size_default_is_written_once():
    import include.stages.plan_shards

    assert not hasattr(include.stages.plan_shards, "DEFAULT_SHARD_SIZE")  # the stage takes it from the config
    spec = next(s for s in fields(EncodeOptions) if s.name == "shard_size")
    assert default_of(spec) == DEFAULT_SHARD_SIZE


@pytest.mark.parametrize(("classes", "heading"), [(FORM_CLASSES, "## Every field"),
                                                  (EVALUATION_CLASSES, "## The evaluation DAG's form"),
                                                  (PROMOTION_CLASSES, "## The promote DAG's form")])
def test_docs_list_every_field_with_its_default(classes, heading):
    whole = (REPO / "docs" / "configuration.md").read_text()
    doc = whole[whole.index(heading):]
    for cls in classes:
        for spec, _ in described(cls):
            row = next((line for line in doc.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
            assert row is not None, f"docs/configuration.md lacks {cls.__name__}.{spec.name}"
            default = default_of(spec)
            if default is not MISSING and default is not None and not isinstance(default, str):
                assert f"`{default}`" in row or f"`{default:_}`" in row, (spec.name, row)
