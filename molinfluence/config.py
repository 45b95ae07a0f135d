"""The config contract: JSON-schema validation with defaults, and messages that name the offending key.

``workflow/schemas/config.schema.yaml`` is the single source of truth for keys, types, ranges and defaults. The
Snakefile calls :func:`validate_config` before any job is planned; tests call it directly.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TypeVar

import yaml

if TYPE_CHECKING:
    # jsonschema is imported where a config is validated, not here: the training, influence and validation modules
    # import this one for from_section, and jsonschema's import (format checkers, their grammars) took seconds of
    # every job's start.
    import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


T = TypeVar("T")


def from_section(cls: type[T], section: Mapping[str, Any], name: str) -> T:
    """Build the dataclass ``cls`` (TrainConfig, InfluenceArgs, ...) from the config section ``name``.

    Unknown keys are errors naming ``<name>.<key>`` (a typo must not silently fall back to a default); the dataclass
    validates the values itself.
    """
    if not isinstance(section, Mapping):
        raise ValueError(f"{name} must be a mapping of options, got {type(section).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"{name}.{unknown[0]} is not a known option; valid options: {', '.join(known)}")
    return cls(**dict(section))


class ConfigError(ValueError):
    """The configuration breaks the contract; the message names the key and what is allowed."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@functools.cache
def _validator_class():
    """Draft 7 validator that fills ``default`` values (deep copies) before validating, recursing into filled
    objects."""
    import jsonschema

    validator_class = jsonschema.Draft7Validator
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema) -> Iterator[jsonschema.ValidationError]:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, allowed, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        where = "the top level" if key == "<top level>" else f"`{key}`"
        return f"config: unknown key {', '.join(hints)} in {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"config key `{key}`: {error.instance!r} is not allowed; allowed values: {', '.join(map(repr, error.validator_value))}"
    if error.validator == "oneOf":
        desc = error.schema.get("description")
        return f"config key `{key}`: {error.instance!r} is not valid" + (f"; expected {desc}" if desc else "")
    if error.validator == "required":
        return f"config key `{key}`: {error.message}"
    return f"config key `{key}`: {error.message}"


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate in place (filling defaults) and return ``config``; raise :class:`ConfigError` listing every problem."""
    schema = load_schema() if schema is None else schema
    errors = sorted(_validator_class()(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [_describe(e) for e in errors]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines))
    _check_semantics(config)
    return config


def _check_semantics(config: dict[str, Any]) -> None:
    """Rules a JSON schema cannot say clearly."""
    ext = config["data"]["external"]
    if (ext.get("path") is None) == (ext.get("holdout_fraction") is None):
        raise ConfigError(
            "config key `data.external`: set exactly one of `path` (an external labelled table) "
            "or `holdout_fraction` (hold out part of the dataset as the external pool)"
        )
    if config["data"]["test_fraction"] + config["data"]["validation_fraction"] >= 1:
        raise ConfigError("config keys `data.test_fraction` + `data.validation_fraction` must leave a training split (sum < 1)")
    params = config["influence"]["params"]
    if isinstance(params, str) and params.startswith("last_layers:") and config["model"]["source"] == "random":
        k = int(params.split(":", 1)[1])
        n = config["model"]["random"]["num_hidden_layers"]
        if k > n:
            raise ConfigError(f"config key `influence.params`: last_layers:{k} but the model has {n} layers")
