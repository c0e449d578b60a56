"""Field metadata that lets one config dataclass drive the Airflow form, the CLI flags and the docs.

A config field declared with :func:`option` carries its title, description, form section and bounds. The
pipeline's trigger form (``include/params.py``) and the ``rqvae train`` / ``rqvae encode`` flags
(``rqvae/cli.py``) are generated from it, so a default or a bound is written once. Nothing here imports
Airflow, torch or numpy: the DAG file reads these classes while the scheduler parses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import Enum
from typing import Any

from .errors import ConfigError
from .modes import Mode

METADATA_KEY = "rqvae_option"


@dataclass(frozen=True)
class Option:
    """What the form, the CLI and the docs need to know about one config field.

    ``minimum`` / ``maximum`` / ``exclusive_minimum`` / ``enum`` are JSON-schema bounds of the form (and of the
    dataclass where it calls :func:`check_bounds`); a mode field names its :class:`rqvae.modes.Mode` as
    ``modes``, and ``enum`` is derived from it (:func:`option` does both from ``enum=TheMode``). ``per_run``: a user
    sets it per run, so it gets a form field (unless ``form`` is False) and a CLI flag (unless ``cli`` is False: the
    CLI has no such step). ``cli_default`` (when not None) is a second, documented default for the CLI; ``env`` names
    the deployment variable that changes the form's default, and ``cap_at_default`` makes that default the form's
    maximum too.
    """

    title: str
    description: str
    section: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    enum: tuple[str, ...] | None = None
    modes: type[Mode] | None = None
    pattern: str | None = None
    nullable: bool = False
    per_run: bool = True
    form: bool = True
    cli: bool = True
    flag: str | None = None
    many: bool = False
    cli_default: Any = None
    cli_help: str | None = None
    env: str | None = None
    cap_at_default: bool = False

    @property
    def in_form(self) -> bool:
        return self.per_run and self.form

    @property
    def in_cli(self) -> bool:
        return self.per_run and self.cli


def cli_default_of(spec: Field[Any]) -> Any:
    """The default the CLI applies: the Option's cli_default, else the field's default."""
    opt = option_of(spec)
    return opt.cli_default if opt.cli_default is not None else default_of(spec)


def option(
    default: Any = MISSING,
    *,
    title: str,
    description: str,
    section: str,
    factory: Any = MISSING,
    **facts: Any,
) -> Any:
    """A dataclass field whose metadata is an :class:`Option` (``facts`` are Option's keyword fields).

    ``enum`` may be a :class:`rqvae.modes.Mode` class: the field is then a mode, its choices the Mode's."""
    enum = facts.get("enum")
    if isinstance(enum, type) and issubclass(enum, Mode):
        facts = {**facts, "enum": enum.choices(), "modes": enum}
    meta = {METADATA_KEY: Option(title=title, description=description, section=section, **facts)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def option_of(spec: Field[Any]) -> Option:
    """The Option of a field declared with :func:`option` (KeyError for a plain field)."""
    return spec.metadata[METADATA_KEY]


def described(cls: type) -> Iterator[tuple[Field[Any], Option]]:
    """(field, Option) of every field of a config class that has metadata, in declaration order."""
    for spec in fields(cls):
        if METADATA_KEY in spec.metadata:
            yield spec, option_of(spec)


def default_of(spec: Field[Any]) -> Any:
    """The field's default value (MISSING when the field is required)."""
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return MISSING


def coerce(spec: Field[Any], value: Any) -> Any:
    """A form or flag value as the field's Python type, judged by its default (JSON numbers may be ints); a
    mode field's value as its Mode member."""
    modes = option_of(spec).modes if METADATA_KEY in spec.metadata else None
    if modes is not None and value is not None:
        return modes.parse(value)
    default = default_of(spec)
    if value is None or default is MISSING or default is None:
        return value
    for kind in (bool, int, float, str):  # bool first: it is an int too
        if isinstance(default, kind):
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"{spec.name} must be true or false, got {value!r}")
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{spec.name} must be {kind.__name__}, got {value!r}") from None
    return value


def parse_modes(config: Any) -> None:
    """Turn every mode field of ``config`` into its Mode member (a plain string from JSON, a form or a flag
    included); ConfigError names the field's valid choices."""
    for spec, opt in described(type(config)):
        value = getattr(config, spec.name)
        if opt.modes is not None and value is not None:
            setattr(config, spec.name, opt.modes.parse(value))


def plain(value: Any) -> Any:
    """``value`` with every Enum member replaced by its value (nested dicts and lists too): what JSON records."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


def check_bounds(config: Any) -> None:
    """Raise ConfigError naming the first field of ``config`` outside its Option's bounds or enum."""
    name = type(config).__name__
    for spec, opt in described(type(config)):
        value = getattr(config, spec.name)
        if value is None and opt.nullable:
            continue
        if opt.enum is not None:
            if value not in opt.enum:
                raise ConfigError(f"{name}.{spec.name} must be one of {list(opt.enum)}, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if opt.minimum is not None and value < opt.minimum:
            raise ConfigError(f"{name}.{spec.name} must be >= {opt.minimum}, got {value}")
        if opt.maximum is not None and value > opt.maximum:
            raise ConfigError(f"{name}.{spec.name} must be <= {opt.maximum}, got {value}")
        if opt.exclusive_minimum is not None and value <= opt.exclusive_minimum:
            raise ConfigError(f"{name}.{spec.name} must be > {opt.exclusive_minimum}, got {value}")


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of config class ``cls`` from the entries of ``values`` that name its fields (others are
    ignored), each coerced to the field's type; absent ones keep their defaults."""
    given = {spec.name: coerce(spec, values[spec.name]) for spec in fields(cls) if spec.name in values}
    return cls(**given)

