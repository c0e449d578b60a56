"""Every mode the project knows, one ``StrEnum`` each: the only place their values are spelled.

Config fields (:mod:`rqvae.config`), the trigger forms and CLI choices (generated from the fields' ``enum``),
the XCom types (:mod:`include.results`) and the code that branches on a mode all use these members, so a value
is never restated (``tests/unit/test_structure.py`` checks that no other module spells one). Members are
strings, so they serialise to JSON, compare equal to the plain strings read back from XCom or a manifest, and
``Mode.parse`` turns any such string back into a member, naming the valid choices when it is not one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from .errors import ConfigError


class Mode(StrEnum):
    """A closed set of names. ``aliases()`` are extra spellings a user may give, parsed to a member. A subclass's
    docstring starts with the config field's name, which error messages use."""

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {}

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """What a form, a flag or a config file accepts: the members' values, then the aliases."""
        return (*(m.value for m in cls), *cls.aliases())

    @classmethod
    def parse(cls, value: str | Self) -> Self:
        """The member named by ``value`` (case-insensitive, aliases included); ConfigError lists the choices."""
        text = str(value).strip().lower()
        text = cls.aliases().get(text, text)
        try:
            return cls(text)
        except ValueError:
            name = cls.__doc__.split(":")[0] if cls.__doc__ else cls.__name__  # the config field's name
            raise ConfigError(f"unknown {name} {value!r}; expected one of {list(cls.choices())}") from None


class Method(Mode):
    """method: how the IDs are made"""

    RQVAE = "rqvae"  # a trained encoder / decoder around the residual codebooks
    RQKMEANS = "rqkmeans"  # residual k-means only: identity encoder / decoder, no training steps


class KMeansInit(Mode):
    """kmeans_method: how the codebooks start"""

    PROGRESSIVE = "progressive"  # k-means over growing principal dimensions
    KMEANS = "kmeans"  # k-means++ seeded Lloyd
    BKMEANS = "bkmeans"  # balanced k-means
    NONE = "none"  # random items as codewords


class Distance(Mode):
    """distances_method: how a residual picks its codeword"""

    L2 = "l2"
    COSINE = "cosine"

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {"euclidean": cls.L2.value}


class Gradient(Mode):
    """gradient: how the encoder gets gradients through the quantiser"""

    STE = "ste"  # straight-through
    ROTATION = "rotation"  # the rotation trick


class Precision(Mode):
    """precision: of the encoder and decoder on CUDA"""

    BF16 = "bf16"
    FP32 = "fp32"


class CollisionMode(Mode):
    """collision_mode: how items sharing a code tuple are told apart"""

    DEDUP = "dedup"  # items sharing codes get a dedup digit 0, 1, ...
    REASSIGN = "reassign"  # colliding items move to the nearest free last-level code of their prefix


class RunMode(Mode):
    """mode: whether a run trains a new model or builds on the published one"""

    RETRAIN = "retrain"
    INCREMENTAL = "incremental"
    AUTO = "auto"  # incremental unless the published model no longer fits the new items


class Alignment(Mode):
    """align_retrain: how a retrain keeps the previous version's codes"""

    ANCHOR = "anchor"  # refit from the previous codebooks, then relabel
    PERMUTE = "permute"  # relabel each level's codes only
    OFF = "off"  # a new code space


class Protocol(Mode):
    """protocol: which events of each user a retriever is tested on"""

    LEAVE_ONE_OUT = "leave_one_out"  # the last event (TIGER's protocol): comparable to published figures
    TEMPORAL = "temporal"  # the last 20% of events (1 to 20), each from all earlier ones: many events, more power

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {"leave-one-out": cls.LEAVE_ONE_OUT.value, "loo": cls.LEAVE_ONE_OUT.value}


class Verdict(Mode):
    """verdict: what the downstream judge (the evaluation DAG's gate) said about a published version"""

    PASSED = "passed"
    FAILED = "failed"
    NOT_EVALUATED = "not evaluated"  # no evaluation.json, or one describing other IDs (a re-publish since)


class PromotionKind(Mode):
    """kind: how the `serving` alias was moved"""

    AUTOMATIC = "automatic"  # the evaluation DAG's last task, after the gate passed; never to an older snapshot
    MANUAL = "manual"  # a person (page, REST, CLI, the promote DAG) to a snapshot not older than serving's
    ROLLBACK = "rollback"  # a person, to a snapshot older than the one serving named
