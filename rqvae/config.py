"""One typed config vocabulary shared by the CLI, the pipeline's params and model directories.

Every default, bound, description and form section lives here, in each field's :func:`rqvae.options.option`
metadata: the DAG's trigger form (include/params.py) and the CLI's flags (rqvae/cli.py) are generated from it.
Names follow the users' RQVAE constructor (num_codebooks, codebook_size, latent_dim, ...). Unknown keys and
bad values raise :class:`rqvae.errors.ConfigError` naming the field, so a typo never passes silently.
docs/configuration.md lists every field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

from .errors import ConfigError
from .modes import Alignment, CollisionMode, Distance, Gradient, KMeansInit, Method, Precision, Protocol, RunMode
from .options import check_bounds, option, parse_modes, plain


def codebook_sizes(codebook_size: int | list[int] | tuple[int, ...], num_codebooks: int | None) -> list[int]:
    """Normalise ``codebook_size`` (an int or one size per level) to a list of length num_codebooks."""
    if isinstance(codebook_size, int):
        sizes = [codebook_size] * (num_codebooks if num_codebooks is not None else 3)
    else:
        sizes = [int(k) for k in codebook_size]
        if num_codebooks is not None and len(sizes) != num_codebooks:
            raise ConfigError(
                f"codebook_size has {len(sizes)} entries but num_codebooks={num_codebooks}; "
                "give one size per level or a single int"
            )
    if not sizes:
        raise ConfigError("need at least one codebook level (num_codebooks >= 1)")
    bad = [k for k in sizes if k < 2]
    if bad:
        raise ConfigError(f"every codebook_size must be >= 2, got {sizes}")
    return sizes


def default_architecture(input_dim: int) -> tuple[list[int], int]:
    """The users' existing rule for hidden widths and latent size when they give none."""
    if input_dim < 8:
        latent = max(4, input_dim // 2)
        return [input_dim], latent
    latent = max(8, input_dim // 4)
    return [max(8, input_dim // 2), latent], latent


DEFAULT_SHARD_SIZE = 2_000_000
DEFAULT_RESOLVE_ROWS = 4_000_000  # items resolve_collisions holds at once (~1 GiB at 4 levels)
INIT_ITEMS = 131_072  # items a codebook fit starts from (TrainConfig.init_items; rqvae.ids.align's anchored refit)
MAX_WIDTH = 65_536  # the largest vector dimension or codebook size a config accepts
DEFAULT_BATCH_ROWS = 262_144  # rows per streamed batch: ~256 MiB of float32 at D=256, the one default everywhere
AUTO_DEVICE = "auto"  # a device setting that picks CUDA when present, else the CPU (rqvae.model.resolve_device)
DEFAULT_USERS = 1000  # users rqvae.io.synth.synth_interactions makes up (the CLI's --users default)


class _Strict:
    """from_dict / to_dict with unknown keys refused; mode fields parsed to their rqvae.modes member."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        valid = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (modes as their strings), as model directories and manifests record them."""
        return plain(asdict(self))  # type: ignore[call-overload]


# ModelConfig and TrainConfig check in __post_init__ only what would break the library (tests and benchmarks
# train tiny models); their Option bounds are what the pipeline's form lets one run ask for. The check classes
# further down enforce their Option bounds (check_bounds), since those bounds are the real limits.


@dataclass
class ModelConfig(_Strict):
    """Architecture of an RQVAE. ``latent_dim=0`` means the input dimension (identity-initialised encoder).

    ``method="rqkmeans"`` stops after the residual k-means initialisation (no learned encoder/decoder);
    ``gradient`` is "ste" (straight-through) or "rotation" (rotation trick); ``last_level_balance`` > 0
    penalises popular last-level codes (see ResidualQuantizer.fit_last_level_balance_). The users' ``RQVAE(...)``
    constructor has other defaults (docs/configuration.md says which and why); ``RQVAE.from_config`` builds
    this one.
    """

    input_dim: int = option(
        title="Input dimension", description="Values per input vector; taken from the data.", section="Model",
        per_run=False,
    )
    num_codebooks: int = option(
        3, title="Codebook levels", section="Model", minimum=1, maximum=8,
        description="Number of residual levels L (codes per item, before the dedup digit).",
    )
    codebook_size: int | list[int] = option(  # an int is one size for every level; a list becomes one per level
        256, title="Codebook size", description="Codes per level K.", section="Model", minimum=2, maximum=MAX_WIDTH,
        many=True, cli_help="codes per level: 256 or one per level, 256,256,512",
    )
    latent_dim: int = option(
        0, title="Latent dimension", description="Width of the quantised latent; 0 = the input dimension.",
        section="Model", minimum=0, maximum=MAX_WIDTH,
    )
    hidden_channels: list[int] | None = option(
        None, title="Hidden widths", section="Model", nullable=True, many=True, flag="--hidden", form=False,
        description="Widths of the encoder's MLP branch (the decoder mirrors them), e.g. 64 or 128,64; "
        "none = one layer of max(64, 2 x input dimension).",
    )
    shared_codebook: bool = option(
        False, title="Shared codebook", description="One codebook for all levels.", section="Model",
    )
    kmeans_method: KMeansInit = option(
        KMeansInit.PROGRESSIVE, title="Codebook initialisation", section="Model", enum=KMeansInit,
        description="How the codebooks start: progressive (k-means over growing principal dimensions), kmeans "
        "(k-means++ seeded Lloyd), bkmeans (balanced k-means) or none (random items).",
    )
    kmeans_iters: int = option(
        20, title="k-means iterations", description="Lloyd iterations of the codebook initialisation.",
        section="Model", minimum=0, per_run=False,
    )
    distances_method: Distance = option(
        Distance.L2, title="Code search distance", section="Model", enum=Distance, flag="--distance",
        description="How a residual picks its codeword: l2 (euclidean is the same) or cosine.",
    )
    loss_beta: float = option(
        0.25, title="Commitment weight", description="Weight of the encoder's commitment term in the loss.",
        section="Model", minimum=0, per_run=False,
    )
    center: bool = option(
        True, title="Centre inputs", section="Model", per_run=False,
        description="Subtract the data mean (stored with the model) before encoding.",
    )
    gradient: Gradient = option(
        Gradient.STE, title="Gradient through the quantiser", section="Model", enum=Gradient, per_run=False,
        description="ste (straight-through) or rotation (the rotation trick).",
    )
    method: Method = option(
        Method.RQVAE, title="Method", section="Model", enum=Method, per_run=False,
        description="rqvae (trained encoder/decoder) or rqkmeans (residual k-means only, no training steps).",
    )
    last_level_balance: float = option(
        0.0, title="Last-level balance", section="Model", minimum=0, per_run=False,
        description="Penalty on popular last-level codes, fitted after training; 0 = none.",
    )

    def __post_init__(self) -> None:
        parse_modes(self)
        if self.last_level_balance < 0:
            raise ConfigError(f"last_level_balance must be >= 0, got {self.last_level_balance}")
        if self.input_dim < 1:
            raise ConfigError(f"input_dim must be >= 1, got {self.input_dim}")
        self.codebook_size = codebook_sizes(self.codebook_size, self.num_codebooks)
        if self.latent_dim < 0:
            raise ConfigError(f"latent_dim must be >= 0 (0 = input_dim), got {self.latent_dim}")
        if self.hidden_channels is None:
            self.hidden_channels = [max(64, 2 * self.input_dim)]

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``RQVAE(...)``."""
        kwargs = self.to_dict()
        kwargs["latent_dim"] = self.latent_dim or self.input_dim
        for training_only in TRAINING_ONLY:
            kwargs.pop(training_only)
        return kwargs


TRAINING_ONLY = ("method", "last_level_balance")  # ModelConfig fields RQVAE's constructor does not take


@dataclass
class TrainConfig(_Strict):
    """How to train. ``max_steps > 0`` caps optimiser steps; otherwise ``epochs`` passes are made."""

    # The budget: one pass of 4,096-item steps over the sample, then the codebooks refitted (refit_codebooks). At
    # 5.7M x 32, 4 x 256 against faiss residual k-means in one quiet run: recon MSE 0.995x, unique-ID ratio -0.002,
    # 0.32x its wall time; five passes of 1,024-item steps gave 0.936x, -0.029 and 0.64x (docs/benchmarks.md,
    # quality-seed).
    epochs: int = option(
        1, title="Epochs", description="Passes over the training sample.", section="Training", minimum=1,
        maximum=1000,
    )
    batch_size: int = option(
        4096, title="Batch size", description="Items per optimiser step.", section="Training", minimum=16,
        maximum=1_048_576,
    )
    lr: float = option(
        1e-3, title="Learning rate", description="AdamW learning rate (after a linear warm-up).",
        section="Training", exclusive_minimum=0,
    )
    weight_decay: float = option(
        1e-4, title="Weight decay", description="AdamW weight decay of the encoder and decoder (not codebooks).",
        section="Training", minimum=0, per_run=False,
    )
    warmup_frac: float = option(
        0.05, title="Warm-up share", description="Share of the steps over which the learning rate ramps up.",
        section="Training", minimum=0, maximum=1, per_run=False,
    )
    max_steps: int = option(
        0, title="Step cap", description="Cap on optimiser steps; 0 = epochs x batches per epoch.",
        section="Training", minimum=0, per_run=False,
    )
    max_train_items: int = option(
        1_000_000, title="Training sample cap", section="Training", minimum=100,
        description="Train on a seeded random sample of at most this many items (all items are encoded).",
    )
    init_items: int = option(
        INIT_ITEMS, title="Initialisation sample", section="Training", minimum=1, per_run=False,
        description="Items the codebooks are initialised from (residual k-means).",
    )
    eval_items: int = option(
        65_536, title="Evaluation sample", section="Training", minimum=1, per_run=False,
        description="Items the per-epoch metrics are measured on.",
    )
    early_stop_patience: int = option(
        0, title="Early-stopping patience", section="Training", minimum=0,
        description="Stop after this many epochs in a row whose held-out recon MSE improves by less than "
        "early_stop_delta; the held-out items are left out of training. 0 = always run every epoch.",
    )
    early_stop_delta: float = option(
        0.002, title="Early-stopping tolerance", section="Training", minimum=0, maximum=1, per_run=False,
        description="Relative improvement of the held-out recon MSE an epoch must make to count as progress.",
    )
    refit_codebooks: bool = option(
        True, title="Refit codebooks", section="Training", per_run=False,
        description="After training, refit the codebooks by k-means on the trained latent, kept when it spreads the "
        "items over more IDs: many steps concentrate code usage (more items share an ID), the refit spreads it "
        "again, for a slightly higher recon MSE.",
    )
    reseed_every: int = option(
        200, title="Dead-code reseed interval", section="Training", minimum=0, per_run=False,
        description="Steps between re-seeding unused codes from current residuals; 0 = never.",
    )
    seed: int = option(
        0, title="Seed", section="Training", minimum=0,
        description="Seeds the training sample, the initialisation and the batch order: the same data, params "
        "and seed give the same IDs.",
    )
    device: str = option(
        AUTO_DEVICE, title="Device", description="auto (CUDA when present), cpu, cuda, cuda:1 ...",
        section="Training", form=False,  # the pipeline's gpu queue decides where training runs
    )
    precision: Precision = option(
        Precision.BF16, title="CUDA precision", section="Training", form=False, enum=Precision,
        description="On CUDA, bf16 runs the encoder and decoder under bf16 autocast (the code search stays "
        "fp32); fp32 turns autocast off. CPU training is always fp32.",
    )
    collaborative_weight: float = option(
        1.0,  # the default since the downstream benchmark showed the win against faiss (docs/collaborative.md)
        title="Collaborative weight", section="Training", minimum=0, maximum=100,
        description="When the interactions snapshot {interactions_root}/{snapshot}/ is complete (_SUCCESS), the "
        "model quantises each item's content plus its behaviour (what users consume it with), the behaviour "
        "block weighted by this (1 = as much as the content); the events the evaluation tests on are held out. "
        "0, or no snapshot, = content-only IDs.",
        cli_help="behaviour's weight against content in the model's input, used with --interactions (0 = content "
        "only)",
    )
    collaborative_dim: int = option(
        64, title="Behaviour dimensions", section="Training", minimum=1, per_run=False,
        description="Behaviour factors per item (a truncated SVD of the user-item matrix) added to the content.",
    )

    def __post_init__(self) -> None:
        parse_modes(self)
        for name in ("epochs", "batch_size", "max_train_items", "init_items", "eval_items", "collaborative_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.collaborative_weight < 0:
            raise ConfigError(f"collaborative_weight must be >= 0, got {self.collaborative_weight}")


class _Bounded(_Strict):
    """Config classes whose Option bounds are their validation."""

    def __post_init__(self) -> None:
        parse_modes(self)
        check_bounds(self)


@dataclass
class InputChecks(_Bounded):
    """What input embeddings must satisfy before anything trains on them (stage validate_dims, `rqvae train`)."""

    expected_dim: int = option(
        0, title="Expected dimension", section="Input validation", minimum=0, maximum=MAX_WIDTH,
        description="Values per vector; 0 = infer (the most common length) and require all rows to have it.",
        cli_help="refuse inputs whose vectors do not have this many values (default 0: any)",
    )
    min_items: int = option(
        1000, title="Minimum items", section="Input validation", minimum=1,
        description="Fail when the snapshot has fewer rows (a truncated upstream export).",
        cli_default=1,  # a local file or a sample may be small; the pipeline guards daily exports
        cli_help="refuse inputs with fewer rows (a truncated export)",
    )
    min_norm: float = option(
        1e-6, title="Minimum L2 norm", section="Input validation", minimum=0, cli=False,
        description="Rows with a smaller norm (e.g. all-zero vectors) fail validation.",
    )
    max_norm: float = option(
        1e3, title="Maximum L2 norm", section="Input validation", exclusive_minimum=0, cli=False,
        description="Rows with a larger norm fail validation.",
    )
    max_abs: float = option(
        1e3, title="Maximum |value|", section="Input validation", exclusive_minimum=0, per_run=False,
        description="Rows with a larger absolute value fail validation.",
    )


@dataclass
class CodeChecks(_Bounded):
    """What the semantic IDs must satisfy before they are published (stage validate_codes)."""

    min_unique_ratio: float = option(
        0.5, title="Minimum unique-ID ratio", section="Output validation", minimum=0, maximum=1, cli=False,
        description="Distinct code tuples (before dedup) / items.",
    )
    min_usage: float = option(
        0.5, title="Minimum codebook usage", section="Output validation", minimum=0, maximum=1, cli=False,
        description="Share of each level's K codes used at least once.",
    )
    max_recon_mse: float = option(
        0.05, title="Maximum reconstruction MSE", section="Output validation", exclusive_minimum=0, cli=False,
        description="Mean squared error per element between input vectors and their reconstructions.",
    )


@dataclass
class EncodeOptions(_Bounded):
    """How items get their final IDs: collision resolution, retired IDs, encode shards."""

    shard_size: int = option(
        DEFAULT_SHARD_SIZE, title="Shard size", section="Training", minimum=1, cli=False, env="RQVAE_SHARD_SIZE",
        description="Items per encode_items instance: a larger snapshot is encoded by several mapped instances "
        "(in parallel on as many gpu workers); the IDs are the same for any value.",
    )
    resolve_rows: int = option(
        DEFAULT_RESOLVE_ROWS, title="Items resolved at once", section="Training", minimum=1, cli=False,
        env="RQVAE_RESOLVE_ROWS",
        description="resolve_collisions holds at most about this many items in memory: a larger run is split into "
        "groups of whole level-1 codes, resolved one at a time (same IDs; a run carrying a previous version's IDs "
        "is resolved in one piece).",
    )
    collision_mode: CollisionMode = option(
        CollisionMode.DEDUP, title="Collision resolution", section="Stability", enum=CollisionMode,
        description="dedup: items sharing codes get a dedup digit 0, 1, ... reassign: colliding items move to the "
        "nearest free last-level code of their prefix (IDs stay L codes; dedup only where a prefix is full).",
    )
    retire_after: int = option(
        7, title="Retire IDs after (versions)", section="Stability", minimum=0, maximum=3650, cli=False,
        description="An ID whose item disappeared stays reserved (given to no other item) for this many versions; "
        "0 = free at once. Applies while the code space is kept (incremental runs, aligned retrains).",
    )


@dataclass
class RetrainPolicy(_Bounded):
    """Whether a run trains a new model or reuses the published one, and how a retrain keeps IDs stable."""

    mode: RunMode = option(
        RunMode.RETRAIN, title="Mode", section="Stability", enum=RunMode, cli=False,
        description="retrain: a new model, all IDs recomputed. incremental: reuse the latest published model, keep "
        "the published ID of every item whose embedding is unchanged, encode only new or changed items. auto: "
        "incremental unless the published model's recon MSE on new items exceeds its recorded one by the "
        "retrain factor. Without a published version every mode retrains.",
    )
    retrain_factor: float = option(
        1.5, title="Retrain factor (auto)", section="Stability", exclusive_minimum=0, cli=False,
        description="auto retrains when recon MSE on new/changed items > factor x the published model's recon MSE.",
    )
    align_retrain: Alignment = option(
        Alignment.ANCHOR, title="Align retrained codes", section="Stability", enum=Alignment, cli=False,
        description="After a retrain, make the codes agree with the previous version so fewer IDs change. permute: "
        "relabel each level's codes (changes no ID's meaning). anchor: first refit the codebooks starting from the "
        "previous ones, kept when recon MSE rises by at most 2%, then relabel. off: a new code space.",
    )



@dataclass
class RetrieverOptions(_Bounded):
    """The downstream retriever's protocol and budget per evaluation (the `semantic_ids_evaluation` DAG's Retriever
    section, `rqvae evaluate-retrieval`'s flags); ``protocol``, ``epochs`` and ``max_users`` become
    rqvae.retrieval.RetrievalConfig's."""

    protocol: Protocol = option(
        Protocol.TEMPORAL, title="Protocol", section="Retriever", enum=Protocol,
        description="Which events of each user the retriever predicts. temporal: the last 20% (1 to 20), each from "
        "every earlier event, none trained on: many test events, so small differences are resolved (the gate "
        "judges with it). leave_one_out: the last event only, TIGER's protocol, comparable to published figures.",
        cli_default=Protocol.LEAVE_ONE_OUT,  # a local comparison reports TIGER's protocol unless told otherwise
        cli_help="temporal (each user's last 20% of events, 1-20: many test events, small SEs) or leave_one_out "
        "(the last event: TIGER's protocol)",
    )
    also_leave_one_out: bool = option(
        True, title="Also leave-one-out", section="Retriever", cli=False,
        description="With the temporal protocol, also report leave-one-out (TIGER's protocol, comparable to published "
        "figures) beside it: a second retriever per ID set. The gate judges with the protocol above.",
    )
    epochs: int = option(
        5, title="Epochs", section="Retriever", minimum=1, maximum=200,
        description="Training epochs of the retriever per ID set (the best validation epoch is kept).",
    )
    max_users: int = option(
        5000, title="Users evaluated", section="Retriever", minimum=10,
        description="A seeded sample of at most this many users is evaluated where the data is larger.",
        cli_default=0,  # RetrievalConfig's: a local comparison evaluates every user unless told otherwise
        cli_help="evaluate a seeded sample of at most this many users; 0 = all",
    )
    seeds: int = option(
        1, title="Seeds", section="Retriever", minimum=1, maximum=10,
        cli=False,  # the CLI's --seeds lists the seeds themselves (0,1,2)
        description="Retriever seeds per ID set; per-user metrics are averaged over seeds before pairing.",
    )

    def retrieval_fields(self) -> dict[str, Any]:
        """The RetrievalConfig fields these options set (the rest keep RetrievalConfig's defaults)."""
        return {"protocol": self.protocol, "epochs": self.epochs, "max_users": self.max_users}


CONFIG_CLASSES = (ModelConfig, TrainConfig, InputChecks, CodeChecks, EncodeOptions, RetrainPolicy)


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a JSON file ``{"model": {...}, "train": {...}}``; returns the two sections (either may be empty)."""
    data = json.loads(Path(path).read_text())
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise ConfigError(f"unknown sections {unknown} in {path}; expected 'model' and/or 'train'")
    return dict(data.get("model", {})), dict(data.get("train", {}))
